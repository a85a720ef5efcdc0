# SPDX-License-Identifier: Apache-2.0
"""to_inference_data on a model whose only latent is enumerated (issue 14, item 4): the posterior group
holds that latent, drawn from its exact conditional posterior (checked against a brute-force sum)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import CategoricalRecognition, observe, to_inference_data

K, N = 3, 6


def _model_and_exact_posterior():
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    net = nn.Linear(2, K)
    with torch.no_grad():
        net.weight.mul_(3.0)
    recognition = CategoricalRecognition(net, K, name="enum_idata")
    prior = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(N, 2)

    def model(x):
        f = recognition(x)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(prior), infer={"enumerate": "parallel"})
            observe("x", f, c)

    def guide(x):
        pass

    # Brute force in float64: p(c_n = k | X) ∝ prior_k f(k | x_n) / sum_m f(k | x_m).
    with torch.no_grad():
        log_f = torch.log_softmax(net(x).double(), -1)  # (N, K): log f(k | x_n)
    log_joint = prior.double().log() + log_f - torch.logsumexp(log_f, 0)
    return model, guide, x, torch.softmax(log_joint, -1)


def test_enumerated_latent_appears_in_the_posterior_with_its_exact_conditional():
    model, guide, x, exact = _model_and_exact_posterior()
    idata = to_inference_data(model, guide, x, num_samples=4000, psis_particles=None)
    draws = torch.as_tensor(idata.posterior["c"].values).reshape(-1, N)  # (S, N)
    assert draws.shape == (4000, N)
    freq = torch.stack([(draws == k).double().mean(0) for k in range(K)], -1)  # (N, K)
    # 4000 draws: binomial standard error <= 0.008; 5 of them.
    assert torch.allclose(freq, exact, atol=0.04), (freq, exact)
    # The prior alone would be far off for at least one datum (the test sees the conditioning).
    assert (exact - torch.tensor([0.5, 0.3, 0.2]).double()).abs().max() > 0.15
    assert idata.attrs["enumerated_sites"] == ["c"]
    assert "log_weight" not in idata.sample_stats and "omitted" in idata.attrs
    assert "lp" in idata.sample_stats


@pytest.mark.parametrize("psis_particles", [None, 100])
def test_psis_is_skipped_not_wrong_when_latents_are_enumerated(psis_particles):
    model, guide, x, _ = _model_and_exact_posterior()
    idata = to_inference_data(model, guide, x, num_samples=10, psis_particles=psis_particles)
    assert "psis_khat" not in idata.attrs and "elbo" not in idata.attrs
