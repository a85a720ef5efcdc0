# SPDX-License-Identifier: Apache-2.0
"""Exact discrete posteriors: marginals, MAP and samples against brute-force enumeration and
Pyro's own ``compute_marginals``, in plain Pyro models and RPMs."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_rpm import GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.infer.posterior import discrete_marginals, map_path, sample_discrete
from pyro_rpm.priors.mixture import MixturePrior

K = 3
PI = torch.tensor([0.5, 0.3, 0.2])
MU = torch.tensor([-2.0, 0.0, 1.5])


def gmm(x):
    with pyro.plate("data", x.shape[-1]):
        c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(MU[c], 1.0), obs=x)


def test_mixture_assignments_match_bayes_rule_and_pyro():
    x = torch.tensor([-2.5, 0.1, 1.0, 3.0, -0.7])
    marginals = discrete_marginals(gmm, None, x)
    expected = (PI.log() + dist.Normal(MU, 1.0).log_prob(x[:, None])).softmax(-1)
    assert marginals["c"].probs.shape == (5, K)
    assert torch.allclose(marginals["c"].probs, expected, atol=1e-6)
    reference = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(gmm, lambda x: None, x)["c"].probs
    assert torch.allclose(marginals["c"].probs, reference, atol=1e-6)
    assert torch.equal(map_path(gmm, None, x)["c"], expected.argmax(-1))
    assert sample_discrete(gmm, None, x)["c"].shape == (5,)


def test_nested_plates_and_a_global_site_against_brute_force():
    """A global switch s, per-cell assignments c[i, j] in a 2 x 2 grid of plates, Normal observations."""
    y = torch.tensor([[0.3, -1.8], [2.2, 0.9]])
    switch_prior = torch.tensor([0.4, 0.6])
    shift = torch.tensor([0.0, 1.0])

    def model(y):
        s = pyro.sample("s", dist.Categorical(switch_prior), infer={"enumerate": "parallel"})
        with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 2, dim=-1):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            pyro.sample("y", dist.Normal(MU[c] + shift[s], 1.0), obs=y)

    marginals = discrete_marginals(model, None, y)
    # brute force over s and all 3^4 grid assignments
    log_joint, configs = [], []
    for s in range(2):
        for cs in itertools.product(range(K), repeat=4):
            c = torch.tensor(cs).reshape(2, 2)
            lp = switch_prior[s].log() + PI[c].log().sum() + dist.Normal(MU[c] + shift[s], 1.0).log_prob(y).sum()
            log_joint.append(lp)
            configs.append((s, c))
    post = torch.stack(log_joint).softmax(0)
    p_s = torch.stack([sum(p for p, (s, _) in zip(post, configs) if s == k) for k in range(2)])
    p_c = torch.zeros(2, 2, K)
    for p, (_, c) in zip(post, configs):
        for i in range(2):
            for j in range(2):
                p_c[i, j, c[i, j]] += p
    assert marginals["s"].probs.shape == (2,) and marginals["c"].probs.shape == (2, 2, K)
    assert torch.allclose(marginals["s"].probs, p_s, atol=1e-5)
    assert torch.allclose(marginals["c"].probs, p_c, atol=1e-5)
    best = configs[int(post.argmax())]
    values = map_path(model, None, y)
    assert int(values["s"]) == best[0] and torch.equal(values["c"], best[1])


def test_subsampled_plate_gives_the_marginals_of_the_subsample():
    x = torch.linspace(-3, 3, 10)
    idx = torch.tensor([1, 4, 8])

    def model(x):
        with pyro.plate("data", 10, subsample=idx):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MU[c], 1.0), obs=x[idx])

    marginals = discrete_marginals(model, None, x)["c"].probs  # scaled by N/B inside; normalised out
    expected = (PI.log() + dist.Normal(MU, 1.0).log_prob(x[idx, None])).softmax(-1)
    assert torch.allclose(marginals, expected, atol=1e-6)


def test_component_posterior_given_the_guides_latent():
    """Continuous z from the tied guide, enumerated mixture component: p(c | z, X) = p(c | z)."""
    N, OBS, D = 6, 4, 2
    x1, x2 = torch.randn(N, OBS), torch.randn(N, OBS)
    r1 = GaussianRecognition(nn.Linear(OBS, 2 * D), D, name="r1")
    r2 = GaussianRecognition(nn.Linear(OBS, 2 * D), D, name="r2")
    prior = MixturePrior(3, D)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = prior("z", enumerate=True)
            observe("x1", f1, z)
            observe("x2", f2, z)

    guide = RecognitionGuide(model)
    pyro.set_rng_seed(3)
    marginals = discrete_marginals(model, guide, x1, x2)["z_component"].probs
    pyro.set_rng_seed(3)
    z = pyro.poutine.trace(guide).get_trace(x1, x2).nodes["z"]["value"]  # the same draw
    assert torch.allclose(marginals, prior.responsibilities(z).detach(), atol=1e-5)


def test_errors():
    def continuous(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no enumerated sample sites"):
        discrete_marginals(continuous, None, torch.zeros(1))
    with pytest.raises(ValueError, match="no enumerated sample sites"):
        map_path(continuous, None, torch.zeros(1))
    with pytest.raises(TypeError, match="model must be callable"):
        discrete_marginals("gmm", None)
    with pytest.raises(TypeError, match="guide must be callable or None"):
        map_path(gmm, 3, torch.zeros(2))
    with pytest.raises(ValueError, match="max_plate_nesting must be a non-negative int"):
        discrete_marginals(gmm, None, torch.zeros(2), max_plate_nesting=-1)

    def one_hot(x):
        pyro.sample("c", dist.OneHotCategorical(PI), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="enumerable distribution with scalar events"):
        discrete_marginals(one_hot, None, torch.zeros(1))
