# SPDX-License-Identifier: Apache-2.0
"""MixturePrior: density against a direct sum over components, the marginal and the enumerated forms
define the same model, the tied guide uses the product of factors, and a two-cluster RPM trains."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.diagnostics.metrics import cluster_accuracy
from pyro_rpm.priors.mixture import MixturePrior

C, D = 3, 2


def _prior():
    torch.manual_seed(0)
    prior = MixturePrior(C, D, loc=torch.randn(C, D))
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
        prior.raw_scale.copy_(torch.randn(C, D))
    return prior


def test_log_prob_is_the_sum_over_components():
    prior = _prior()
    z = torch.randn(7, D)
    w = prior.weights
    direct = sum(
        w[c] * torch.exp(torch.distributions.Normal(prior.loc[c], prior.scale[c]).log_prob(z).sum(-1)) for c in range(C)
    ).log()
    assert torch.allclose(prior.log_prob(z), direct, atol=1e-5)
    assert torch.allclose(prior.distribution().log_prob(z), direct, atol=1e-5)
    resp = prior.responsibilities(z)
    assert resp.shape == (7, C) and torch.allclose(resp.sum(-1), torch.ones(7))
    manual = torch.stack(
        [w[c] * torch.distributions.Normal(prior.loc[c], prior.scale[c]).log_prob(z).sum(-1).exp() for c in range(C)],
        -1,
    )
    assert torch.allclose(resp, manual / manual.sum(-1, keepdim=True), atol=1e-5)


def test_scale_floor_and_defaults():
    prior = MixturePrior(2, 1, init_scale=0.5, min_scale=0.01)
    assert torch.allclose(prior.scale, torch.full((2, 1), 0.5))
    assert torch.equal(prior.loc.detach(), torch.tensor([[-1.5], [1.5]]))  # distinct starting means
    with torch.no_grad():
        prior.raw_scale.fill_(-100.0)
    assert bool((prior.scale >= 0.01).all())
    fixed = MixturePrior(2, 1, learn=False)
    assert not list(fixed.parameters()) and len(list(fixed.buffers())) == 3


def _two_view_model(prior, r1, r2, enumerate):
    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = prior("z", enumerate=enumerate)
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model


def test_marginal_and_enumerated_forms_have_the_same_elbo():
    """At the same guide draw, Trace_ELBO on the MixtureSameFamily model equals TraceEnum_ELBO on the
    model with an enumerated component indicator (log sum_c pi_c N(z | mu_c) either way)."""
    prior = _prior()
    N, OBS = 6, 4
    x1, x2 = torch.randn(N, OBS), torch.randn(N, OBS)
    r1 = GaussianRecognition(nn.Linear(OBS, 2 * D), D, name="r1")
    r2 = GaussianRecognition(nn.Linear(OBS, 2 * D), D, name="r2")
    marginal = _two_view_model(prior, r1, r2, enumerate=False)
    enumerated = _two_view_model(prior, r1, r2, enumerate=True)
    g_marginal, g_enumerated = RecognitionGuide(marginal), RecognitionGuide(enumerated)
    pyro.set_rng_seed(5)
    a = Trace_ELBO().loss(marginal, g_marginal, x1, x2)
    pyro.set_rng_seed(5)
    b = TraceEnum_ELBO(max_plate_nesting=1).loss(enumerated, g_enumerated, x1, x2)
    assert a == pytest.approx(b, rel=1e-5)
    # the guide samples z only, never the enumerated indicator
    tr = pyro.poutine.trace(g_enumerated).get_trace(x1, x2)
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == ["data", "z"]


@pytest.mark.parametrize("enumerate", [False, True])
def test_guide_uses_the_product_of_factors(enumerate):
    """combine='auto' with a non-Gaussian prior (or one depending on an enumerated site): q ∝ f1 f2."""
    prior = _prior()
    N, OBS = 5, 4
    x1, x2 = torch.randn(N, OBS), torch.randn(N, OBS)
    r1 = GaussianRecognition(nn.Linear(OBS, 2 * D), D, name="r1")
    r2 = GaussianRecognition(nn.Linear(OBS, 2 * D), D, name="r2")
    model = _two_view_model(prior, r1, r2, enumerate=enumerate)
    q = pyro.poutine.trace(RecognitionGuide(model)).get_trace(x1, x2).nodes["z"]["fn"].base
    f1, f2 = r1(x1), r2(x2)
    precision = f1.scale.pow(-2) + f2.scale.pow(-2)
    loc = (f1.loc * f1.scale.pow(-2) + f2.loc * f2.scale.pow(-2)) / precision
    assert torch.allclose(q.loc, loc, atol=1e-5) and torch.allclose(q.scale, precision.rsqrt(), atol=1e-5)


def test_two_cluster_rpm_trains_and_finds_the_clusters():
    """Two views of a latent drawn from two well-separated clusters: the loss decreases, the prior's
    responsibilities at the posterior means recover the clusters and the weights are near 1/2."""
    pyro.set_rng_seed(0)
    N, OBS = 128, 8
    c_true = torch.randint(0, 2, (N,))
    z_true = torch.where(c_true == 1, 2.0, -2.0)[:, None] + 0.4 * torch.randn(N, 1)
    W1, W2 = torch.randn(1, OBS), torch.randn(1, OBS)
    x1 = torch.tanh(z_true @ W1) + 0.1 * torch.randn(N, OBS)
    x2 = torch.tanh(z_true @ W2) + 0.1 * torch.randn(N, OBS)

    def mlp():
        return nn.Sequential(nn.Linear(OBS, 32), nn.Tanh(), nn.Linear(32, 2))

    r1, r2 = GaussianRecognition(mlp(), 1, name="r1"), GaussianRecognition(mlp(), 1, name="r2")
    prior = MixturePrior(2, 1)
    model = _two_view_model(prior, r1, r2, enumerate=False)
    guide = RecognitionGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    losses = [svi.step(x1, x2) / N for _ in range(300)]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.3
    with torch.no_grad():
        z_mean = pyro.poutine.trace(guide).get_trace(x1, x2).nodes["z"]["fn"].mean
        clusters = prior.responsibilities(z_mean).argmax(-1)
    assert cluster_accuracy(clusters, c_true) >= 0.95
    assert bool((prior.weights - 0.5).abs().max() < 0.15)
    assert abs(float(np.corrcoef(z_mean.squeeze().numpy(), z_true.squeeze().numpy())[0, 1])) > 0.9
    # the two learned components are separated by several of their scales
    gap = (prior.loc[0] - prior.loc[1]).abs().item()
    assert gap > 3 * prior.scale.max().item()


def test_validation():
    with pytest.raises(ValueError, match="num_components must be an int >= 1"):
        MixturePrior(0, 2)
    with pytest.raises(ValueError, match="latent_dim must be an int >= 1"):
        MixturePrior(2, 1.5)
    with pytest.raises(ValueError, match=r"loc must have shape \(2, 3\)"):
        MixturePrior(2, 3, loc=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="loc must be finite"):
        MixturePrior(1, 1, loc=torch.tensor([[math.nan]]))
    with pytest.raises(ValueError, match="init_scale must be finite and strictly positive"):
        MixturePrior(2, 1, init_scale=0.0)
    with pytest.raises(ValueError, match="init_scale must exceed min_scale"):
        MixturePrior(2, 1, init_scale=0.01, min_scale=0.1)
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 2\)"):
        MixturePrior(2, 2).log_prob(torch.zeros(4, 3))
    assert isinstance(MixturePrior(2, 2).distribution(), dist.MixtureSameFamily)
