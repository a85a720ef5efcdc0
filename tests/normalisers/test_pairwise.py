# SPDX-License-Identifier: Apache-2.0
r"""Pairwise log-density tables against the naive broadcast formula.

Relative error throughout: :math:`\operatorname{rel}(a, b) = |a - b| / \max(|b|, 1)`, with ``b`` the
reference computed in float64 by the naive broadcast formula
:math:`\sum_d [-\tfrac12 (z_d - \mu_{md})^2 / s_{md}^2 - \log s_{md} - \tfrac12 \log 2\pi]`.
"""

import math

import pytest
import torch

from pyro_rpm import DeltaFactor, GaussianFactor
from pyro_rpm.normalisers.dense import gaussian_pairwise_log_prob, quadratic_pairwise

SCALES = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over entries of |a - b| / max(|b|, 1), computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b).abs() / b.abs().clamp(min=1.0)).max())


def naive_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Broadcast (..., M, D) formula of the diagonal Gaussian log-density table."""
    scale = scale.expand_as(loc)
    diff = z.unsqueeze(-2) - loc
    return (-0.5 * (diff / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def naive_quadratic(z: torch.Tensor, loc: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    diff = z.unsqueeze(-2) - loc
    return -0.5 * (precision.expand_as(loc) * diff * diff).sum(-1)


def _problem(scale: float, shared: bool, B: int = 48, M: int = 40, D: int = 3, seed: int = 0):
    """Random latents/locations in [-10, 10]; scales ``scale * U(0.5, 2)`` per point or shared (D,).

    Some latents sit exactly on support locations (the point-mass diagonal, where the
    quadratic form vanishes and cancellation is worst).
    """
    g = torch.Generator().manual_seed(seed)
    loc = torch.empty(M, D).uniform_(-10, 10, generator=g)
    z = torch.empty(B, D).uniform_(-10, 10, generator=g)
    z = torch.cat([z, loc[:8], loc[:4] + 1e-3])
    shape = (D,) if shared else (M, D)
    s = scale * torch.empty(shape).uniform_(0.5, 2.0, generator=g)
    return z, loc, s


@pytest.mark.parametrize("shared", [False, True], ids=["per_point", "shared"])
@pytest.mark.parametrize("scale", SCALES)
def test_gaussian_pairwise_matches_naive_fp32(scale, shared):
    z, loc, s = _problem(scale, shared)
    reference = naive_log_prob(z.double(), loc.double(), s.double())
    table = gaussian_pairwise_log_prob(z, loc, s)
    assert table.dtype == torch.float32
    assert table.shape == (z.shape[0], loc.shape[0])
    assert rel_err(table, reference) < 1e-5
    factor_table = GaussianFactor(loc, s.expand_as(loc)).pairwise_log_prob(z)
    assert rel_err(factor_table, reference) < 1e-5


@pytest.mark.parametrize("scale", SCALES)
def test_quadratic_pairwise_matches_naive_fp32(scale):
    z, loc, s = _problem(scale, shared=False, seed=1)
    precision = s.pow(-2)
    reference = naive_quadratic(z.double(), loc.double(), precision.double())
    assert rel_err(quadratic_pairwise(z, loc, precision), reference) < 1e-5
    shared = precision[0]
    reference = naive_quadratic(z.double(), loc.double(), shared.double())
    assert rel_err(quadratic_pairwise(z, loc, shared), reference) < 1e-5


def test_delta_factor_diagonal_is_exact():
    """A point-mass factor evaluated at its own location: the quadratic form is exactly zero."""
    g = torch.Generator().manual_seed(3)
    loc = torch.empty(16, 4).uniform_(-10, 10, generator=g)
    factor = DeltaFactor(loc, 1e-3)
    diagonal = factor.pairwise_log_prob(loc).diagonal()
    expected = torch.full((16,), 4 * (-math.log(1e-3) - 0.5 * math.log(2 * math.pi)), dtype=torch.float64)
    assert rel_err(diagonal, expected) < 1e-6
    assert rel_err(diagonal, factor.log_prob(loc)) < 1e-6


def test_float64_inputs_stay_float64():
    z, loc, s = _problem(0.1, shared=False, seed=2)
    z, loc, s = z.double(), loc.double(), s.double()
    table = gaussian_pairwise_log_prob(z, loc, s)
    assert table.dtype == torch.float64
    assert rel_err(table, naive_log_prob(z, loc, s)) < 1e-12


@pytest.mark.parametrize("shared", [False, True], ids=["per_point", "shared"])
def test_leading_particle_and_plate_dims(shared):
    g = torch.Generator().manual_seed(4)
    P, B, M, D = 3, 5, 7, 2
    z = torch.empty(P, B, D).uniform_(-10, 10, generator=g)
    loc = torch.empty(M, D).uniform_(-10, 10, generator=g)
    s = torch.empty((D,) if shared else (M, D)).uniform_(0.05, 2.0, generator=g)
    table = gaussian_pairwise_log_prob(z, loc, s)
    assert table.shape == (P, B, M)
    assert rel_err(table, naive_log_prob(z.double(), loc.double(), s.double())) < 1e-5
    for p in range(P):
        torch.testing.assert_close(table[p], gaussian_pairwise_log_prob(z[p], loc, s))
    # extra singleton dims and a scalar-batch latent
    assert gaussian_pairwise_log_prob(z[None], loc, s).shape == (1, P, B, M)
    assert gaussian_pairwise_log_prob(z[0, 0], loc, s).shape == (M,)


@pytest.mark.parametrize("scale", [1e-2, 1e-1, 1.0, 10.0])
def test_gradients_match_float64_autograd(scale):
    """d/d(z, loc, scale) of a weighted sum of the table, against autograd of the naive formula in float64.

    Tolerance 1e-4 in the relative error above (float32 gradients of sums with mixed signs).
    """
    g = torch.Generator().manual_seed(5)
    P, B, M, D = 2, 6, 9, 3
    z0 = torch.empty(P, B, D).uniform_(-10, 10, generator=g)
    loc0 = torch.empty(M, D).uniform_(-10, 10, generator=g)
    s0 = scale * torch.empty(M, D).uniform_(0.5, 2.0, generator=g)
    weights = torch.randn(P, B, M, generator=g)

    def grads(fn, dtype):
        z, loc, s = (t.detach().to(dtype).clone().requires_grad_() for t in (z0, loc0, s0))
        (fn(z, loc, s) * weights.to(dtype)).sum().backward()
        return z.grad, loc.grad, s.grad

    ours = grads(gaussian_pairwise_log_prob, torch.float32)
    reference = grads(naive_log_prob, torch.float64)
    for a, b in zip(ours, reference):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 1e-4


def test_quadratic_gradient_with_shared_precision():
    g = torch.Generator().manual_seed(6)
    z0 = torch.empty(4, 3).uniform_(-3, 3, generator=g)
    loc0 = torch.empty(5, 3).uniform_(-3, 3, generator=g)
    prec0 = torch.empty(3).uniform_(0.5, 4.0, generator=g)

    def grads(fn, dtype):
        z, loc, prec = (t.detach().to(dtype).clone().requires_grad_() for t in (z0, loc0, prec0))
        fn(z, loc, prec).sin().sum().backward()
        return z.grad, loc.grad, prec.grad

    for a, b in zip(grads(quadratic_pairwise, torch.float32), grads(naive_quadratic, torch.float64)):
        assert rel_err(a, b) < 1e-4
