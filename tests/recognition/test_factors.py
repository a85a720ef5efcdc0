# SPDX-License-Identifier: Apache-2.0
"""Recognition factor distributions against torch/pyro references and closed forms."""

import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_rpm import CategoricalFactor, DeltaFactor, Factor, GaussianFactor
from pyro_rpm.recognition.gaussian import gaussian_log_partition


def _gaussian(M=5, D=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(M, D, generator=g, dtype=dtype)
    scale = torch.empty(M, D, dtype=dtype).uniform_(0.2, 2.0, generator=g)
    return loc, scale


# ----------------------------------------------------------------------------------------------
# GaussianFactor
# ----------------------------------------------------------------------------------------------


def test_gaussian_log_prob_and_entropy_match_independent_normal():
    loc, scale = _gaussian()
    factor = GaussianFactor(loc, scale)
    reference = dist.Independent(dist.Normal(loc, scale), 1)
    assert factor.batch_shape == (5,) and factor.event_shape == (3,)
    value = torch.randn(4, 5, 3) * 3
    torch.testing.assert_close(factor.log_prob(value), reference.log_prob(value))
    torch.testing.assert_close(factor.entropy(), reference.entropy())
    torch.testing.assert_close(factor.mean, loc)
    torch.testing.assert_close(factor.variance, scale**2)
    assert isinstance(factor, Factor) and factor.num_support == 5


def test_gaussian_scale_broadcasts():
    loc = torch.randn(4, 2)
    factor = GaussianFactor(loc, torch.tensor(0.5))
    assert factor.scale.shape == (4, 2)
    torch.testing.assert_close(factor.log_prob(loc), dist.Normal(loc, 0.5).log_prob(loc).sum(-1))


def test_gaussian_rsample_shape_and_reparameterisation():
    loc, scale = _gaussian()
    loc.requires_grad_()
    scale.requires_grad_()
    factor = GaussianFactor(loc, scale)
    assert factor.has_rsample
    assert factor.rsample().shape == (5, 3)
    assert factor.rsample((7, 2)).shape == (7, 2, 5, 3)

    pyro.set_rng_seed(11)
    noise = torch.randn(6, 5, 3)
    pyro.set_rng_seed(11)
    z = factor.rsample((6,))
    torch.testing.assert_close(z, loc + scale * noise)
    z.sum().backward()
    torch.testing.assert_close(loc.grad, torch.full_like(loc, 6.0))
    torch.testing.assert_close(scale.grad, noise.sum(0))


def test_gaussian_sample_moments():
    loc, scale = _gaussian(M=3, D=2, seed=1)
    z = GaussianFactor(loc, scale).sample((40000,))
    assert not z.requires_grad
    # 5 standard errors of the mean / of the standard deviation
    assert ((z.mean(0) - loc).abs() < 5 * scale / 200).all()
    assert ((z.std(0) - scale).abs() < 5 * scale / math.sqrt(2 * 40000)).all()


def test_gaussian_validation():
    with pytest.raises(ValueError):
        GaussianFactor(torch.zeros(3, 2), -torch.ones(3, 2))
    with pytest.raises(ValueError, match="loc"):
        GaussianFactor(torch.tensor(0.0), torch.tensor(1.0))
    factor = GaussianFactor(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError):
        factor.log_prob(torch.full((3, 2), float("nan")))


def test_natural_params_round_trip_and_log_partition():
    loc, scale = _gaussian(dtype=torch.float64)
    factor = GaussianFactor(loc, scale)
    eta1, precision = factor.natural_params
    torch.testing.assert_close(precision, scale**-2)
    torch.testing.assert_close(eta1, loc / scale**2)
    back = GaussianFactor.from_natural(eta1, precision)
    torch.testing.assert_close(back.loc, loc)
    torch.testing.assert_close(back.scale, scale)
    # exponential-family form: log f(z) = sum_d [eta1 z - precision z^2 / 2 - A(eta1, precision)]
    z = torch.randn(4, 5, 3, dtype=torch.float64)
    expfam = (eta1 * z - 0.5 * precision * z * z - gaussian_log_partition(eta1, precision)).sum(-1)
    torch.testing.assert_close(expfam, factor.log_prob(z))


def test_log_partition_against_quadrature():
    grid = torch.linspace(-60, 60, 400001, dtype=torch.float64)
    for eta1, precision in [(0.3, 0.7), (-2.0, 4.0), (5.0, 0.5)]:
        integrand = torch.exp(eta1 * grid - 0.5 * precision * grid * grid)
        numeric = torch.trapezoid(integrand, grid).log()
        closed = gaussian_log_partition(torch.tensor(eta1, dtype=torch.float64), torch.tensor(precision).double())
        assert abs(float(numeric - closed)) < 1e-8


def test_gaussian_index():
    loc, scale = _gaussian(M=6)
    factor = GaussianFactor(loc, scale)
    idx = torch.tensor([4, 0, 4])
    sub = factor.index(idx)
    assert type(sub) is GaussianFactor and sub.batch_shape == (3,)
    torch.testing.assert_close(sub.loc, loc[idx])
    torch.testing.assert_close(sub.scale, scale[idx])
    z = torch.randn(2, 3)
    torch.testing.assert_close(sub.pairwise_log_prob(z), factor.pairwise_log_prob(z)[:, idx])


def test_gaussian_expand():
    loc, scale = _gaussian(M=4)
    factor = GaussianFactor(loc, scale)
    expanded = factor.expand((2, 4))
    assert type(expanded) is GaussianFactor
    assert expanded.batch_shape == (2, 4) and expanded.event_shape == (3,)
    value = torch.randn(2, 4, 3)
    torch.testing.assert_close(expanded.log_prob(value), factor.log_prob(value))


# ----------------------------------------------------------------------------------------------
# DeltaFactor
# ----------------------------------------------------------------------------------------------


def test_delta_rsample_returns_loc_exactly():
    loc = torch.randn(5, 3, requires_grad=True)
    factor = DeltaFactor(loc, 1e-2)
    assert factor.is_point_mass and not factor.sample_noise
    z = factor.rsample()
    assert torch.equal(z, loc)
    z3 = factor.rsample((3,))
    assert z3.shape == (3, 5, 3)
    assert torch.equal(z3, loc.expand(3, 5, 3))
    z3.sum().backward()
    torch.testing.assert_close(loc.grad, torch.full_like(loc, 3.0))
    assert torch.equal(factor.sample(), loc.detach())


def test_delta_density_is_eps_gaussian():
    loc = torch.randn(5, 3)
    factor = DeltaFactor(loc, 0.3)
    value = torch.randn(2, 5, 3)
    torch.testing.assert_close(factor.log_prob(value), dist.Normal(loc, 0.3).log_prob(value).sum(-1))
    torch.testing.assert_close(factor.scale, torch.full_like(loc, 0.3))


def test_delta_sample_noise_draws_with_std_eps():
    loc = torch.tensor([[1.0, -2.0], [0.0, 5.0]])
    factor = DeltaFactor(loc, 0.05, sample_noise=True)
    assert not factor.is_point_mass
    z = factor.rsample((40000,))
    assert z.shape == (40000, 2, 2)
    assert not torch.equal(z[0], loc)
    std = z.std(0)
    assert ((std - 0.05).abs() < 5 * 0.05 / math.sqrt(2 * 40000)).all(), std
    assert ((z.mean(0) - loc).abs() < 5 * 0.05 / 200).all()


def test_delta_eps_checks():
    loc = torch.zeros(3, 2)
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            DeltaFactor(loc, bad)
    with pytest.raises(TypeError, match="eps"):
        DeltaFactor(loc, "0.1")
    assert DeltaFactor(loc, torch.tensor(0.2)).eps == pytest.approx(0.2)


def test_delta_index_and_expand_keep_state():
    loc = torch.randn(6, 2)
    factor = DeltaFactor(loc, 0.1, sample_noise=True)
    sub = factor.index(torch.tensor([1, 3]))
    assert type(sub) is DeltaFactor
    assert sub.eps == 0.1 and sub.sample_noise and not sub.is_point_mass
    torch.testing.assert_close(sub.loc, loc[[1, 3]])
    point = DeltaFactor(loc, 0.1).index(torch.tensor([2]))
    assert point.is_point_mass and torch.equal(point.rsample(), loc[[2]])
    expanded = DeltaFactor(loc, 0.1).expand((4, 6))
    assert type(expanded) is DeltaFactor and expanded.is_point_mass and expanded.eps == 0.1
    assert torch.equal(expanded.rsample(), loc.expand(4, 6, 2))


# ----------------------------------------------------------------------------------------------
# CategoricalFactor
# ----------------------------------------------------------------------------------------------


def test_categorical_pairwise_log_prob_matches_manual_indexing():
    g = torch.Generator().manual_seed(2)
    M, K = 5, 4
    raw = torch.randn(M, K, generator=g)
    factor = CategoricalFactor(raw)
    assert factor.num_states == K and factor.batch_shape == (M,) and factor.event_shape == ()
    z = torch.randint(K, (3, 6), generator=g)
    table = factor.pairwise_log_prob(z)
    assert table.shape == (3, 6, M)
    log_probs = raw.log_softmax(-1)
    for p in range(3):
        for b in range(6):
            for m in range(M):
                expected = torch.distributions.Categorical(logits=raw[m]).log_prob(z[p, b])
                assert abs(float(table[p, b, m] - expected)) < 1e-6
                assert abs(float(table[p, b, m] - log_probs[m, z[p, b]])) < 1e-6


def test_categorical_index_and_expand():
    raw = torch.randn(5, 3)
    factor = CategoricalFactor(raw)
    sub = factor.index(torch.tensor([3, 1]))
    assert type(sub) is CategoricalFactor and sub.batch_shape == (2,)
    torch.testing.assert_close(sub.logits, factor.logits[[3, 1]])
    expanded = factor.expand((2, 5))
    assert isinstance(expanded, CategoricalFactor) and expanded.batch_shape == (2, 5)
    torch.testing.assert_close(expanded.log_prob(torch.ones(2, 5)), factor.log_prob(torch.ones(5)).expand(2, 5))


# ----------------------------------------------------------------------------------------------
# Pickling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianFactor(torch.randn(4, 2), torch.rand(4, 2) + 0.1),
        lambda: DeltaFactor(torch.randn(4, 2), 0.05, sample_noise=True),
        lambda: CategoricalFactor(torch.randn(4, 3)),
    ],
    ids=["gaussian", "delta", "categorical"],
)
def test_pickle_round_trip(make):
    factor = make()
    clone = pickle.loads(pickle.dumps(factor))
    assert type(clone) is type(factor)
    assert clone.batch_shape == factor.batch_shape and clone.event_shape == factor.event_shape
    if isinstance(factor, CategoricalFactor):
        z = torch.tensor([0, 2, 1])
    else:
        z = torch.randn(3, 2)
        assert clone.is_point_mass == factor.is_point_mass
    torch.testing.assert_close(clone.pairwise_log_prob(z), factor.pairwise_log_prob(z))
