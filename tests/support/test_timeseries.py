# SPDX-License-Identifier: Apache-2.0
"""Support sets of time-series RPMs: the per-step categoricals equal a direct log-softmax over the
chosen frames, for Gaussian and categorical factors, and bad arguments raise."""

import math

import pyro
import pytest
import torch

from pyro_rpm import CategoricalFactor, DeltaFactor, GaussianFactor
from pyro_rpm.support.sequences import POOLINGS, SequenceSupport, observe_sequence

N, T, D, K = 3, 4, 2, 5


def _gaussian():
    return GaussianFactor(torch.randn(N * T, D), torch.rand(N * T, D) + 0.5)


def _categorical():
    return CategoricalFactor(torch.randn(N * T, K).log_softmax(-1))


def test_poolings():
    assert POOLINGS == ("data", "ergodic")


@pytest.mark.parametrize("make", [_gaussian, _categorical])
def test_support_sets_and_indices(make):
    f = make()
    data = SequenceSupport(f, T, "data")
    ergodic = SequenceSupport(f, T, "ergodic")
    assert data.num_sequences == N and data.num_support == N and ergodic.num_support == N * T
    for t in range(T):
        frames = torch.arange(N) * T + t  # sequence-major layout
        sub = data.support(t)
        assert sub.batch_shape == (N,)
        if isinstance(f, GaussianFactor):
            assert torch.equal(sub.loc, f.loc[frames]) and torch.equal(sub.scale, f.scale[frames])
        else:
            assert torch.allclose(sub.logits, f.logits[frames])
        assert torch.equal(data.index(t), torch.arange(N))
        assert ergodic.support(t) is f
        assert torch.equal(ergodic.index(t), frames)
    assert data.support(1) is data.support(1)  # cached per step
    assert torch.equal(ergodic.index(2, torch.tensor([2, 0])), torch.tensor([2 * T + 2, 2]))
    assert torch.equal(data.index(2, torch.tensor([2, 0])), torch.tensor([2, 0]))


def test_delta_factors_keep_their_type():
    f = DeltaFactor(torch.randn(N * T, D), eps=0.1)
    sub = SequenceSupport(f, T, "data").support(0)
    assert isinstance(sub, DeltaFactor) and sub.eps == 0.1


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gaussian_log_likelihood_is_softmax_over_the_support(pooling):
    f = _gaussian()
    z = torch.randn(N, D)  # latent of step t for each sequence
    t = 2

    def model():
        with pyro.plate("sequences", N):
            SequenceSupport(f, T, pooling).observe("x", z, t)

    site = pyro.poutine.trace(model).get_trace().nodes["x"]
    log_lik = site["fn"].log_prob(site["value"])
    # direct: log N(z_n | frame (n, t)) - logsumexp over the support frames
    frames = torch.arange(N * T) if pooling == "ergodic" else torch.arange(N) * T + t
    table = torch.distributions.Normal(f.loc[frames], f.scale[frames]).log_prob(z[:, None, :]).sum(-1)  # (N, M)
    own = torch.distributions.Normal(f.loc[torch.arange(N) * T + t], f.scale[torch.arange(N) * T + t])
    expected = own.log_prob(z).sum(-1) - table.logsumexp(-1)
    assert torch.allclose(log_lik, expected, atol=1e-5)
    # the constants: log M with M = N (data) or N*T (ergodic); a flat factor gives exactly -log M
    flat = GaussianFactor(torch.zeros(N * T, D), torch.ones(N * T, D))
    tr = pyro.poutine.trace(lambda: observe_sequence("x", flat, z, t, T, pooling)).get_trace()
    M = N if pooling == "data" else N * T
    lp = tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"])
    assert torch.allclose(lp, torch.full((N,), -math.log(M)), atol=1e-5)


def test_subsampled_sequences_use_the_whole_support():
    f = _categorical()
    z = torch.tensor([1, 4])  # latents of sequences 2 and 0 at step 3
    seqs = torch.tensor([2, 0])
    tr = pyro.poutine.trace(lambda: observe_sequence("x", f, z, 3, T, "ergodic", sequences=seqs)).get_trace()
    site = tr.nodes["x"]
    assert torch.equal(site["value"], seqs * T + 3)
    log_f = f.logits  # (N*T, K)
    expected = log_f[seqs * T + 3, z] - log_f[:, z].logsumexp(0)
    assert torch.allclose(site["fn"].log_prob(site["value"]), expected, atol=1e-6)


def test_single_latent_without_batch_dims():
    """A scalar latent (e.g. a size-1 plate squeezed by infer_discrete) observes its one frame."""
    f = CategoricalFactor(torch.randn(T, K).log_softmax(-1))  # one sequence
    support = SequenceSupport(f, T, "ergodic")
    tr = pyro.poutine.trace(lambda: support.observe("x", torch.tensor(3), 1)).get_trace()
    expected = f.logits[1, 3] - f.logits[:, 3].logsumexp(0)
    assert torch.allclose(tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"]), expected)


def test_validation():
    f = _gaussian()
    with pytest.raises(TypeError, match="factors must be a pyro_rpm Factor"):
        SequenceSupport(torch.randn(N * T, D), T)
    with pytest.raises(ValueError, match="pooling must be one of"):
        SequenceSupport(f, T, "time")
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        SequenceSupport(f, 0)
    with pytest.raises(ValueError, match="not a multiple of num_steps=5"):
        SequenceSupport(f, 5)
    with pytest.raises(ValueError, match="pooling='data' needs at least 2 sequences"):
        SequenceSupport(f, N * T, "data")
    with pytest.raises(ValueError, match=r"batch_shape \(N\*T,\)"):
        SequenceSupport(GaussianFactor(torch.randn(N, T, D), torch.ones(N, T, D)), T)
    support = SequenceSupport(f, T)
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 4\)"):
        support.support(T)
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 4\)"):
        support.index(-1)
    with pytest.raises(TypeError, match="sequences must be an integer tensor"):
        support.index(0, torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"sequences must lie in \[0, 3\)"):
        support.index(0, torch.tensor([3]))
    assert SequenceSupport(f, N * T, "ergodic").num_sequences == 1
