# SPDX-License-Identifier: Apache-2.0
r"""Latents that overflow (issue 14, item 7): the exact finite answer or a clear error, never NaN.

Before: with :math:`|z| = 10^{20}` to :math:`10^{30}` every backend gave NaN in float32 and 0.0 (dense)
or *positive* log-probabilities up to :math:`10^{43}` (streamed, fused, screened) in float64 with a
shared scale, although the exact answers are finite (e.g. :math:`-4\cdot10^{20}`).

Reference: the Gaussian log-softmax evaluated with :mod:`mpmath` at 100 digits from the very inputs
(rounded to the tested dtype), independent of the package. Tolerance: :math:`|a - r| \le 4\epsilon (|r| + 1)`
with :math:`\epsilon` the machine epsilon of the tested dtype (measured at most :math:`0.8\epsilon`).
"""

from __future__ import annotations

import functools

import mpmath
import pytest
import torch

import pyro_rpm
from pyro_rpm import (
    BilinearCoupling,
    ContrastivePrior,
    CosineCoupling,
    DeltaFactor,
    GaussianFactor,
    LaplaceCoupling,
    RBFCoupling,
    RecognitionLikelihood,
)
from pyro_rpm.likelihood.far_latents import (
    FAR_LATENT_MAX_ELEMENTS,
    far_latent_log_softmax,
    far_latent_threshold,
    gaussian_latent_range,
)
from pyro_rpm.normalisers import fused_available

M, D = 6, 2
BACKENDS = [
    "dense",
    "streamed",
    pytest.param("fused", marks=pytest.mark.skipif(not fused_available("cpu", torch.float64), reason="no fused op")),
    pytest.param("screened", marks=pytest.mark.skipif(not fused_available("cpu", torch.float32), reason="no fused op")),
]
MAGNITUDES = [1e20, 1e25, 1e30]


def _problem(magnitude: float, dtype: torch.dtype, shared: bool):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(M, D, generator=g, dtype=torch.float64)
    direction = torch.randn(M, D, generator=g, dtype=torch.float64)
    latent = direction / direction.norm(dim=-1, keepdim=True) * magnitude
    scale = torch.rand(D, generator=g, dtype=torch.float64).add(0.5).expand(M, D) if shared else None
    if scale is None:
        scale = torch.rand(M, D, generator=g, dtype=torch.float64).add(0.5)
    return loc.to(dtype), scale.to(dtype), latent.to(dtype)


@functools.cache
def _reference(magnitude: float, dtype: torch.dtype, shared: bool) -> tuple[float, ...]:
    """log p(x = x_b | z_b) for b = 0..M-1 by mpmath (100 digits) from the inputs in ``dtype``."""
    return tuple(_reference_table(magnitude, dtype, shared).diagonal().tolist())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_scale_far_latents_give_the_exact_answer(backend, magnitude, dtype):
    loc, scale, latent = _problem(magnitude, dtype, shared=True)
    log_prob = RecognitionLikelihood(GaussianFactor(loc, scale), latent, backend=backend).log_prob(torch.arange(M))
    reference = torch.tensor(_reference(magnitude, dtype, True), dtype=torch.float64)
    assert log_prob.dtype == dtype and torch.isfinite(log_prob).all()
    assert (log_prob <= 0).all()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(log_prob.double(), reference, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_per_point_scales_far_latents_are_exact_in_float64(backend, magnitude):
    loc, scale, latent = _problem(magnitude, torch.float64, shared=False)
    log_prob = RecognitionLikelihood(GaussianFactor(loc, scale), latent, backend=backend).log_prob(torch.arange(M))
    reference = torch.tensor(_reference(magnitude, torch.float64, False), dtype=torch.float64)
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(log_prob, reference, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_per_point_scales_far_latents_in_float32_raise_a_clear_error(backend, magnitude):
    """The exact answers (about -1e39 to -1e59) are beyond float32's range: a ValueError, not NaN or -inf."""
    loc, scale, latent = _problem(magnitude, torch.float32, shared=False)
    assert max(abs(v) for v in _reference(magnitude, torch.float32, False)) > torch.finfo(torch.float32).max
    likelihood = RecognitionLikelihood(GaussianFactor(loc, scale), latent, backend=backend)
    with pytest.raises(ValueError, match=r"latent \(at distance .* beyond the range of torch.float32.*use float64"):
        likelihood.log_prob(torch.arange(M))


def test_delta_factors_far_latent_float32_is_exact():
    loc, _, latent = _problem(1e25, torch.float32, shared=True)
    factors = DeltaFactor(loc, eps=1e-3)
    log_prob = RecognitionLikelihood(factors, latent).log_prob(torch.arange(M))
    with mpmath.workdps(100):
        ref = []
        for b, z in enumerate(latent.double().tolist()):
            logits = [
                -sum((mpmath.mpf(z[d]) - mpmath.mpf(mu[d])) ** 2 for d in range(D)) / (2 * mpmath.mpf(1e-3) ** 2)
                for mu in loc.double().tolist()
            ]
            top = max(logits)
            ref.append(float(logits[b] - top - mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in logits))))
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(log_prob.double(), torch.tensor(ref, dtype=torch.float64), rtol=4 * eps, atol=4 * eps)


def test_far_latent_gradients_are_finite_and_match_the_closed_form():
    """Shared scale: d log p(n|z)/dz = lambda (mu_n - sum_m p_m mu_m), exactly the linear scores' softmax."""
    loc, scale, latent = _problem(1e20, torch.float64, shared=True)
    latent = latent.clone().requires_grad_()
    RecognitionLikelihood(GaussianFactor(loc, scale), latent).log_prob(torch.arange(M)).sum().backward()
    precision = scale[0].pow(-2)
    scores = latent.detach() @ (precision * loc).T - 0.5 * (precision * loc * loc).sum(-1)
    expected = precision * (loc - scores.softmax(-1) @ loc)
    torch.testing.assert_close(latent.grad, expected, rtol=1e-12, atol=1e-12)


def test_float64_far_latent_beyond_float64_range_raises():
    loc, scale, latent = _problem(1e20, torch.float64, shared=False)
    with pytest.raises(
        ValueError,
        match=r"latent \(at distance 9.9\de\+159 .* beyond the range of torch.float64 .*; rescale the latent$",
    ):
        RecognitionLikelihood(GaussianFactor(loc, scale), latent * 1e140).log_prob(torch.arange(M))


def test_per_point_path_refuses_problems_too_large_for_it():
    n = 3000
    assert n * n * D > FAR_LATENT_MAX_ELEMENTS
    g = torch.Generator().manual_seed(1)
    factors = GaussianFactor(
        torch.randn(n, D, generator=g, dtype=torch.float64), torch.rand(n, D, generator=g, dtype=torch.float64) + 0.5
    )
    latent = torch.full((n, D), 1e20, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"latent \(at distance .* needs per-pair differences, .* above the limit"):
        RecognitionLikelihood(factors, latent).log_prob(torch.arange(n))


def test_ordinary_latents_take_the_usual_path_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    loc, scale = torch.randn(M, D, generator=g), torch.rand(M, D, generator=g) + 1e-3
    latent = torch.randn(M, D, generator=g) * 50
    likelihood = RecognitionLikelihood(GaussianFactor(loc, scale), latent)
    bound, _ = gaussian_latent_range(latent, loc, scale)
    assert bound <= far_latent_threshold(torch.float32, latent.device)
    index = torch.arange(M)
    assert torch.equal(likelihood.log_prob(index), likelihood.diagonal(index) - likelihood.log_normaliser)


def test_the_range_bound_bounds_every_quadratic_form():
    loc, scale, latent = _problem(1e3, torch.float64, shared=False)
    quadratic = 0.5 * ((latent.unsqueeze(1) - loc) / scale).pow(2).sum(-1)
    bound, extent = gaussian_latent_range(latent, loc, scale)
    assert quadratic.max() <= bound and extent == pytest.approx((latent - loc.mean(0)).abs().max().item())


def test_threshold_is_one_over_the_working_epsilon():
    assert far_latent_threshold(torch.float32, torch.device("cpu")) == 2.0**52
    assert far_latent_threshold(torch.float64, torch.device("cpu")) == 2.0**52


def test_value_checks_off_skips_the_check():
    """The check is a value check: with pyro_rpm.value_checks("off") the usual path runs (no host sync)."""
    loc, scale, latent = _problem(1e20, torch.float32, shared=False)
    likelihood = RecognitionLikelihood(GaussianFactor(loc, scale), latent)
    with pyro_rpm.value_checks("off"):
        log_prob = likelihood.log_prob(torch.arange(M))
    assert not torch.isfinite(log_prob).all()  # the documented cost of switching the checks off


@pytest.mark.parametrize("coupling", [RBFCoupling, LaplaceCoupling], ids=["rbf", "laplace"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_couplings_of_differences_refuse_anchors_that_cannot_resolve_the_support(coupling, dtype):
    """Before: NaN (float32) or the same log-probability for every support point (float64) at |anchor| = 1e20."""
    g = torch.Generator().manual_seed(3)
    factors = DeltaFactor(torch.randn(M, D, generator=g, dtype=dtype))
    far = torch.full((M, D), 1e20, dtype=dtype)
    with pytest.raises(ValueError, match=rf"anchor lies .* beyond what {dtype} resolves .* {coupling.__name__} cannot"):
        ContrastivePrior(factors, coupling(1.0).to(dtype), far)
    near = torch.full((M, D), 1e3, dtype=dtype)  # far, but resolvable: no error, finite answers
    assert torch.isfinite(ContrastivePrior(factors, coupling(1.0).to(dtype), near).log_prob(factors.mean)).all()


def test_bilinear_coupling_is_not_refused_for_far_anchors():
    """A bilinear score z^T W z' is linear in z: nothing cancels, the float64 answer is exact relative to its size."""
    factors = DeltaFactor(torch.randn(M, D, dtype=torch.float64))
    prior = ContrastivePrior(
        factors, BilinearCoupling(D).to(torch.float64), torch.full((M, D), 1e20, dtype=torch.float64)
    )
    assert torch.isfinite(prior.log_prob(factors.mean)).all()


@pytest.mark.parametrize(
    ("dtype", "magnitude"), [(torch.float32, 1e20), (torch.float32, 1e-30), (torch.float64, 1e200)]
)
def test_cosine_coupling_is_scale_invariant_at_any_magnitude(dtype, magnitude):
    """Before: F.normalize squared 1e20 to inf in float32, every cosine was 0 and the prior silently uniform."""
    g = torch.Generator().manual_seed(4)
    means, directions = (
        torch.randn(M, D, generator=g, dtype=torch.float64),
        torch.randn(M, D, generator=g, dtype=torch.float64),
    )
    factors, coupling = DeltaFactor(means), CosineCoupling(0.5).to(torch.float64)
    expected = ContrastivePrior(factors, coupling, directions).log_prob(means)  # unit-scale float64 reference
    far = ContrastivePrior(
        DeltaFactor(means.to(dtype)), CosineCoupling(0.5).to(dtype), (directions * magnitude).to(dtype)
    )
    got = far.log_prob(means.to(dtype))
    assert torch.allclose(got.double(), expected, rtol=10 * torch.finfo(dtype).eps, atol=0)
    assert not torch.allclose(expected, expected.mean().expand(M))  # the answer is not uniform


def test_bilinear_coupling_in_float32_is_accurate_for_far_anchors():
    """z^T W z' in float32 at |z| = 1e20 against the float64 computation from the same float32 inputs."""
    g = torch.Generator().manual_seed(5)
    means, anchors = torch.randn(M, D, generator=g), torch.randn(M, D, generator=g) * 1e20
    coupling = BilinearCoupling(D)
    got = ContrastivePrior(DeltaFactor(means), coupling, anchors).log_prob(means)
    coupling64 = BilinearCoupling(D).to(torch.float64)
    coupling64.load_state_dict(coupling.state_dict())
    expected = ContrastivePrior(DeltaFactor(means.double()), coupling64, anchors.double()).log_prob(means.double())
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=0)


def _reference_table(magnitude: float, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """log p(x = x_m | z_b) for every (b, m), by mpmath (100 digits) from the inputs in ``dtype``, ``(M, M)`` float64."""
    loc, scale, latent = (t.double().tolist() for t in _problem(magnitude, dtype, shared))
    scale = [scale] * M if shared and not isinstance(scale[0], list) else scale
    rows = []
    with mpmath.workdps(100):
        for z in latent:
            logits = [
                sum(
                    -((mpmath.mpf(z[d]) - mpmath.mpf(loc[m][d])) ** 2) / (2 * mpmath.mpf(scale[m][d]) ** 2)
                    - mpmath.log(mpmath.mpf(scale[m][d]))
                    for d in range(D)
                )
                for m in range(M)
            ]
            top = max(logits)
            lse = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in logits))
            rows.append([float(v - lse) for v in logits])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-scale", "per-point-scales"])
@pytest.mark.parametrize("magnitude", [1e20, 1e25])
def test_far_latents_sample_from_the_exact_table(shared, magnitude):
    """Before: ``sample()`` drew from the rounded logits (their differences, ~1e20, below the rounding
    error of each, ~1e24), so the drawn index was noise; now it is the exact table's argmax (the
    probabilities are one-hot to double precision here)."""
    loc, scale, latent = _problem(magnitude, torch.float64, shared)
    table = far_latent_log_softmax(latent, loc, scale)
    reference = _reference_table(magnitude, torch.float64, shared)
    # eps relative to the terms of the differences, which here reach ~10x the answer (per-point scales)
    rtol = 4 * torch.finfo(torch.float64).eps * (1 if shared else 16)
    torch.testing.assert_close(table, reference, rtol=rtol, atol=rtol)
    likelihood = RecognitionLikelihood(GaussianFactor(loc, scale), latent)
    draws = likelihood.sample((50,))
    assert draws.shape == (50, M)
    assert (draws == reference.argmax(-1)).all()


def test_far_latent_table_refuses_problems_too_large_for_it():
    loc, scale, latent = _problem(1e20, torch.float64, shared=False)
    many = latent.expand(FAR_LATENT_MAX_ELEMENTS // (M * D) + 1, M, D)
    with pytest.raises(ValueError, match="exact table of its likelihood needs"):
        far_latent_log_softmax(many, loc, scale)


def test_far_latent_table_refuses_bad_arguments():
    loc, scale, latent = _problem(1e20, torch.float64, shared=True)
    with pytest.raises(TypeError, match="latent must be a torch.Tensor"):
        far_latent_log_softmax(latent.tolist(), loc, scale)
    with pytest.raises(TypeError, match="loc must be a floating-point tensor"):
        far_latent_log_softmax(latent, loc.long(), scale)
    with pytest.raises(ValueError, match="need latent"):
        far_latent_log_softmax(latent[:, :1], loc, scale)
    with pytest.raises(ValueError, match="need latent"):
        far_latent_log_softmax(latent, loc, scale[:, :1])
