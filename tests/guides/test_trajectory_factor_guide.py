# SPDX-License-Identifier: Apache-2.0
"""TrajectoryFactorGuide (issue 14, item 13): a tied guide for a whole-trajectory prior written by hand."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch import nn

from pyro_rpm import RPM_ELBO, ConjugateGaussianGuide, GaussianRecognition, TrajectoryFactorGuide
from pyro_rpm.likelihood.trajectory import observe_trajectories

D64 = torch.float64
N, T, D, OBS = 4, 6, 2, 3




def _user_model(name):
    torch.manual_seed(0)
    recognitions = [GaussianRecognition(nn.Linear(OBS, 2 * D).double(), D, name=f"{name}{j}") for j in range(2)]
    coefficient = torch.tensor(0.5, dtype=D64)

    class ARPrior(dist.TorchDistribution):  # a trajectory prior written by hand: z_t = a z_{t-1} + noise
        arg_constraints, support = {}, dist.constraints.real
        def __init__(self, a):
            self.a = a
            super().__init__(torch.Size([N]), torch.Size([T, D]))
        def sample(self, sample_shape=torch.Size()):
            noise = torch.randn(sample_shape + (N, T, D), dtype=D64)
            return torch.cumsum(noise, -2)  # any value will do as a placeholder
        def log_prob(self, z):
            start = dist.Normal(0.0, 1.0).log_prob(z[..., 0, :]).sum(-1)
            steps = dist.Normal(self.a * z[..., :-1, :], 1.0).log_prob(z[..., 1:, :]).sum((-1, -2))
            return start + steps

    def model(x1, x2):
        fs = [r(x) for r, x in zip(recognitions, (x1, x2))]
        with pyro.plate("sequences", N):
            z = pyro.sample("z", ARPrior(coefficient))
            for j, f in enumerate(fs):
                observe_trajectories(f"x{j}", f, z)

    g = torch.Generator().manual_seed(1)
    xs = (torch.randn(N * T, OBS, generator=g, dtype=D64), torch.randn(N * T, OBS, generator=g, dtype=D64))
    return recognitions, model, xs


def test_the_guide_is_the_normalised_product_of_the_factors():
    recognitions, model, xs = _user_model("tfg_a")
    guide = TrajectoryFactorGuide(model)
    posterior = guide.posteriors(*xs)["z"]
    # Independent float64 product of the two diagonal Gaussians per frame.
    locs, precs = [], []
    for r, x in zip(recognitions, xs):
        loc, scale = r(x).diagonal_gaussian()
        locs.append(loc.reshape(N, T, D))
        precs.append(scale.reshape(N, T, D).pow(-2))
    precision = precs[0] + precs[1]
    mean = (locs[0] * precs[0] + locs[1] * precs[1]) / precision
    torch.testing.assert_close(posterior.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(posterior.variance, precision.reciprocal(), rtol=1e-12, atol=1e-12)
    z = guide(*xs)["z"]
    assert z.shape == (N, T, D) and z.dtype == D64


def test_svi_trains_a_hand_written_prior_with_it():
    pyro.clear_param_store()
    recognitions, model, xs = _user_model("tfg_b")
    guide = TrajectoryFactorGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO(num_particles=8))
    losses = [svi.step(*xs) for _ in range(60)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


def test_conjugate_guide_points_a_hand_written_prior_to_it():
    _, model, xs = _user_model("tfg_c")
    with pytest.raises(ValueError, match="TrajectoryFactorGuide"):
        ConjugateGaussianGuide(model)(*xs)
