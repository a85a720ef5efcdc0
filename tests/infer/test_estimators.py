# SPDX-License-Identifier: Apache-2.0
r"""The interior variational bound (:func:`pyro_rpm.infer.estimators.interior_bound`, ``RPM_ELBO(estimator="interior")``).

For a Gaussian :math:`q_n`, support factors :math:`f_m` and a reference :math:`r` (flat, or the prior),
``interior_bound`` is a lower bound on :math:`-\mathbb E_{q_n}[\log \sum_m f_m(z)]`. Derived here
independently of the code (for any positive :math:`\tilde f`,
:math:`\mathbb E_q[\log F/(\tilde f q)] \le \log \int F/\tilde f` by Jensen), with :math:`\tilde f = r/q`:

.. math::

    -\mathbb E_{q_n}\Big[\log \sum_m f_m(z)\Big] \;\ge\;
    -\log \sum_m \int f_m(z)\, \frac{q_n(z)}{r(z)}\, dz \;-\; \mathbb E_{q_n}[\log r(z)],

i.e. for a flat reference Jensen's :math:`-\log \sum_m \int f_m q_n
= -\log\sum_m \prod_d \mathcal N(\mu_{qd}; \mu_{md}, s_{md}^2 + s_{qd}^2)` (a Gaussian convolution).
The tests check the closed form against this convolution and against numerical quadrature, the
bound against Monte Carlo estimates of the exact term, exactness when every :math:`f_m = r`, and
the ``RPM_ELBO`` loss: :math:`-\mathcal L` summed over the data (divide by the batch size for a
per-datum value), an upper bound on the Monte Carlo loss and within 0.05 nats per datum of it on
small Gaussian cases where the bound is nearly tight.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import two_view_model
from scipy import integrate
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianFactor, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.infer.estimators import ESTIMATORS, interior_bound, monte_carlo_log_normaliser

REFERENCES = ["flat", "prior"]


def _random_case(B: int = 3, M: int = 5, D: int = 2, seed: int = 0):
    """Posteriors q (B,), factors f (M,), an index into the support and a Gaussian reference r, float64.

    Scales lie in [0.4, 1.0] and the reference scale is 1.2, so f_m q_n / r is always proper."""
    g = torch.Generator().manual_seed(seed)
    q = GaussianFactor(
        torch.randn(B, D, generator=g, dtype=torch.float64),
        torch.empty(B, D, dtype=torch.float64).uniform_(0.4, 1.0, generator=g),
    )
    f = GaussianFactor(
        torch.randn(M, D, generator=g, dtype=torch.float64),
        torch.empty(M, D, dtype=torch.float64).uniform_(0.4, 1.0, generator=g),
    )
    index = torch.randperm(M, generator=g)[:B]
    reference = (torch.full((D,), 0.3, dtype=torch.float64), torch.full((D,), 1.2, dtype=torch.float64))
    return q, f, index, reference


def _normal_logpdf(z: float, loc: float, scale: float) -> float:
    return -0.5 * ((z - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)


def _normal_pdf(z: float, loc: float, scale: float) -> float:
    return math.exp(_normal_logpdf(z, loc, scale))


def _quad(fn, loc: float, scale: float) -> float:
    """Integral over the real line, split at a point near the mass (scipy quad, tight tolerances)."""
    left, _ = integrate.quad(fn, -np.inf, loc, epsabs=1e-13, epsrel=1e-11, limit=200)
    right, _ = integrate.quad(fn, loc, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)
    return left + right


def _bound_by_quadrature(q, f, index, reference) -> torch.Tensor:
    r""":math:`-\log\sum_m \prod_d \int f_{md} q_{nd} / r_d - \sum_d \int q_{nd} \log r_d`, each integral 1-D quad."""
    B, D = q.loc.shape
    M = f.loc.shape[0]
    out = torch.empty(B, dtype=torch.float64)
    for n in range(B):
        log_terms = []
        for m in range(M):
            log_integral = 0.0
            for d in range(D):
                mq, sq = float(q.loc[n, d]), float(q.scale[n, d])
                mf, sf = float(f.loc[m, d]), float(f.scale[m, d])
                if reference is None:
                    integrand = lambda z, mq=mq, sq=sq, mf=mf, sf=sf: _normal_pdf(z, mf, sf) * _normal_pdf(z, mq, sq)  # noqa: E731
                else:
                    mr, sr = float(reference[0][d]), float(reference[1][d])
                    integrand = lambda z, mq=mq, sq=sq, mf=mf, sf=sf, mr=mr, sr=sr: (  # noqa: E731
                        math.exp(_normal_logpdf(z, mf, sf) + _normal_logpdf(z, mq, sq) - _normal_logpdf(z, mr, sr))
                    )
                log_integral += math.log(_quad(integrand, mq, sq))
            log_terms.append(log_integral)
        value = -float(torch.logsumexp(torch.tensor(log_terms, dtype=torch.float64), 0))
        if reference is not None:
            for d in range(D):
                mq, sq = float(q.loc[n, d]), float(q.scale[n, d])
                mr, sr = float(reference[0][d]), float(reference[1][d])
                value -= _quad(
                    lambda z, mq=mq, sq=sq, mr=mr, sr=sr: _normal_pdf(z, mq, sq) * _normal_logpdf(z, mr, sr),
                    mq,
                    sq,
                )
        out[n] = value
    return out


# --------------------------------------------------------------------------- closed forms
def test_flat_reference_is_gaussian_convolution():
    r"""Flat reference = Jensen: :math:`-\log\sum_m \prod_d \mathcal N(\mu_{qd}; \mu_{md}, s_{md}^2 + s_{qd}^2)`."""
    q, f, index, _ = _random_case(B=4, M=6, D=3, seed=1)
    conv = torch.distributions.Normal(f.loc, (f.variance + q.variance.unsqueeze(-2)).sqrt())  # (B, M, D)
    expected = -torch.logsumexp(conv.log_prob(q.loc.unsqueeze(-2)).sum(-1), -1)
    torch.testing.assert_close(interior_bound(q, f, index), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reference", REFERENCES)
def test_interior_bound_matches_quadrature(reference):
    q, f, index, ref = _random_case(B=3, M=4, D=2, seed=2)
    ref = ref if reference == "prior" else None
    expected = _bound_by_quadrature(q, f, index, ref)
    torch.testing.assert_close(interior_bound(q, f, index, ref), expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("reference", REFERENCES)
def test_interior_bound_below_exact_term_by_quadrature(reference):
    r"""D = 1: the bound is below :math:`-\int q_n(z) \log\sum_m f_m(z)\,dz` (quadrature) for every datum."""
    q, f, index, ref = _random_case(B=4, M=5, D=1, seed=3)
    ref = ref if reference == "prior" else None
    bound = interior_bound(q, f, index, ref)
    for n in range(4):
        mq, sq = float(q.loc[n, 0]), float(q.scale[n, 0])

        def integrand(z, mq=mq, sq=sq):
            log_f = f.log_prob(torch.tensor([[z]], dtype=torch.float64).expand(f.loc.shape))
            return _normal_pdf(z, mq, sq) * float(torch.logsumexp(log_f, 0))

        exact = -_quad(integrand, mq, sq)
        assert float(bound[n]) <= exact + 1e-9, f"datum {n}: bound {float(bound[n]):.6f} > exact {exact:.6f}"


def test_prior_reference_is_exact_when_every_factor_equals_the_reference():
    r"""If :math:`f_m = r` for all m then :math:`\sum_m f_m = M r`, :math:`\tilde f = r/q` is optimal and the
    bound is the exact :math:`-\log M - \mathbb E_q[\log r]` (closed form for Gaussians)."""
    q, _, _, (r_loc, r_scale) = _random_case(B=5, M=7, D=2, seed=4)
    M = 7
    f = GaussianFactor(r_loc.expand(M, 2).clone(), r_scale.expand(M, 2).clone())
    expected_log_r = (
        -0.5 * torch.log(2 * math.pi * r_scale**2) - ((q.loc - r_loc) ** 2 + q.variance) / (2 * r_scale**2)
    ).sum(-1)
    expected = -math.log(M) - expected_log_r
    index = torch.arange(5)
    torch.testing.assert_close(interior_bound(q, f, index, (r_loc, r_scale)), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reference", REFERENCES)
def test_interior_bound_below_monte_carlo(reference):
    r"""Per datum, the bound is below the Monte Carlo estimate of :math:`-\mathbb E_q[\log\sum_m f_m]`
    (4000 draws) up to 4 standard errors."""
    q, f, index, ref = _random_case(B=6, M=8, D=2, seed=5)
    ref = ref if reference == "prior" else None
    S = 4000
    z = q.rsample((S,))  # (S, B, D)
    values = -monte_carlo_log_normaliser(f.pairwise_log_prob(z))  # (S, B)
    mc, se = values.mean(0), values.std(0) / math.sqrt(S)
    bound = interior_bound(q, f, index, ref)
    assert bool((bound <= mc + 4 * se).all()), f"bound {bound} above MC {mc} (SE {se})"


def test_monte_carlo_log_normaliser_is_logsumexp():
    logits = torch.randn(3, 4, 5, dtype=torch.float64)
    expected = torch.log(torch.exp(logits).sum(-1))
    torch.testing.assert_close(monte_carlo_log_normaliser(logits), expected)
    assert ESTIMATORS == ("mc", "interior")


def test_interior_bound_gradients_match_finite_differences():
    """``torch.autograd.gradcheck`` (float64) in every input: q, the factors and the reference."""
    q, f, index, (r_loc, r_scale) = _random_case(B=3, M=4, D=2, seed=6)
    inputs = [t.clone().requires_grad_() for t in (q.loc, q.scale, f.loc, f.scale, r_loc, r_scale)]

    def fn(q_loc, q_scale, f_loc, f_scale, r_loc=None, r_scale=None):
        reference = None if r_loc is None else (r_loc, r_scale)
        return interior_bound(GaussianFactor(q_loc, q_scale), GaussianFactor(f_loc, f_scale), index, reference)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(fn, inputs[:4])


def test_improper_reference_raises():
    """A reference narrower than f_m q_n allows (precision too high) gives no proper Gaussian: ValueError."""
    q, f, index, (r_loc, _) = _random_case(seed=7)
    with pytest.raises(ValueError, match="reference"):
        interior_bound(q, f, index, (r_loc, torch.full_like(r_loc, 0.05)))


# --------------------------------------------------------------------------- RPM_ELBO(estimator="interior")
def _single_view_model(factors: GaussianFactor, prior_scale: float = 1.0):
    """One view, the given factors as the support set (in-batch), prior N(0, prior_scale^2 I): q_n = f_n."""
    N, D = factors.loc.shape
    zeros = torch.zeros(D, dtype=factors.loc.dtype)

    def model():
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(zeros, prior_scale).to_event(1))
            observe("x", factors, z)

    return model, RecognitionGuide(model)


def _quantile_factors(M: int, s: float) -> GaussianFactor:
    """D = 1: f_m = N(mu_m, s^2) with mu_m the (m + 1/2)/M quantiles of N(0, 1 - s^2): F is close to N(0, 1)."""
    u = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    mu = torch.distributions.Normal(0.0, 1.0).icdf(u).unsqueeze(-1) * math.sqrt(1 - s**2)
    return GaussianFactor(mu, torch.full((M, 1), s, dtype=torch.float64))


def _random_factors(M: int, D: int, s: float) -> GaussianFactor:
    """f_m = N(mu_m, s^2 I), mu_m standardised random draws scaled to variance 1 - s^2 per dimension."""
    g = torch.Generator().manual_seed(11)
    mu = torch.randn(M, D, generator=g, dtype=torch.float64)
    mu = (mu - mu.mean(0)) / mu.std(0) * math.sqrt(1 - s**2)
    return GaussianFactor(mu, torch.full((M, D), s, dtype=torch.float64))


def _paired_losses(model, guide, reference: str, seeds: int = 20, particles: int = 200) -> tuple[float, float, float]:
    """Per-datum mean of loss_interior - loss_mc over ``seeds`` x ``particles`` draws, its standard
    error, and the mean MC loss. Both losses use the same seed (the same draws of z), so the
    difference only carries the Monte Carlo noise of the log-normaliser term."""
    diffs, mc_values = [], []
    for seed in range(seeds):
        losses = []
        for estimator in ("mc", "interior"):
            pyro.set_rng_seed(seed)
            elbo = RPM_ELBO(
                num_particles=particles,
                vectorize_particles=True,
                max_plate_nesting=1,
                estimator=estimator,
                reference=reference,
            )
            losses.append(elbo.loss(model, guide))
        mc_values.append(losses[0])
        diffs.append(losses[1] - losses[0])
    d = torch.tensor(diffs, dtype=torch.float64)
    return d.mean().item(), d.std().item() / math.sqrt(seeds), float(np.mean(mc_values))


TIGHT_CASES = {
    # D = 1, 32 narrow factors on a quantile grid: F is smooth and close to the prior N(0, 1).
    "1d_flat": (lambda: _quantile_factors(32, 0.1), "flat"),
    "1d_prior": (lambda: _quantile_factors(32, 0.1), "prior"),
    # D = 2, 64 broad factors with F close to the N(0, I) prior: the p/q ansatz is nearly tight.
    "2d_prior": (lambda: _random_factors(64, 2, 0.8), "prior"),
}


@pytest.mark.parametrize("case", list(TIGHT_CASES))
def test_interior_loss_bounds_monte_carlo_loss_and_is_tight(case):
    """``RPM_ELBO(estimator="interior")`` loss >= the Monte Carlo loss (4000 draws, 3 standard errors)
    and within 0.05 nats per datum of it. The loss is -ELBO summed over the data: divide by N."""
    make, reference = TIGHT_CASES[case]
    factors = make()
    N = factors.loc.shape[0]
    model, guide = _single_view_model(factors)
    gap, se, mc = _paired_losses(model, guide, reference)
    gap, se = gap / N, se / N
    print(f"{case}: MC loss/datum {mc / N:.4f}, interior - MC = {gap:.4f} +- {se:.4f} nats/datum")
    assert gap >= -3 * se, f"interior loss below the MC loss: gap {gap:.5f} < -3 SE ({-3 * se:.5f})"
    assert gap <= 0.05, f"interior bound not tight: {gap:.4f} nats per datum above the MC loss"


@pytest.mark.parametrize("reference", REFERENCES)
def test_interior_loss_bounds_monte_carlo_loss_two_views(reference):
    """The canonical two-view model (random linear networks, Walker guide): interior loss >= MC loss."""
    torch.manual_seed(0)
    D, N = 2, 32
    x1, x2 = torch.randn(N, 10), torch.randn(N, 10)
    r1 = GaussianRecognition(nn.Linear(10, 2 * D), D, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(nn.Linear(10, 2 * D), D, prior_scale=1.0, name="r2")

    def model():
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    gap, se, mc = _paired_losses(model, RecognitionGuide(model), reference, seeds=10)
    print(f"two views, {reference}: interior - MC = {gap / N:.4f} +- {se / N:.4f} nats/datum")
    assert gap >= -3 * se


def test_loss_convention_against_quadrature():
    r"""D = 1, one view, in-batch support, tied q_n = f_n: the MC loss (4000 draws) estimates
    :math:`-\sum_n \int q_n(z)[\log p(z) - \log\sum_m f_m(z)]\,dz` (quadrature), and the interior loss
    estimates :math:`-\sum_n (\int q_n \log p + \text{bound}_n)`, with bound_n by quadrature too."""
    factors = _quantile_factors(8, 0.4)
    N = 8
    model, guide = _single_view_model(factors)
    exact_mc, exact_interior = 0.0, 0.0
    bounds = _bound_by_quadrature(factors, factors, torch.arange(N), (torch.zeros(1), torch.ones(1)))
    for n in range(N):
        mq, sq = float(factors.loc[n, 0]), float(factors.scale[n, 0])

        def log_normaliser(z):
            return float(torch.logsumexp(factors.log_prob(torch.tensor([[z]], dtype=torch.float64).expand(N, 1)), 0))

        e_log_p = _quad(lambda z, mq=mq, sq=sq: _normal_pdf(z, mq, sq) * _normal_logpdf(z, 0.0, 1.0), mq, sq)
        e_log_norm = _quad(lambda z, mq=mq, sq=sq: _normal_pdf(z, mq, sq) * log_normaliser(z), mq, sq)
        exact_mc -= e_log_p - e_log_norm
        exact_interior -= e_log_p + float(bounds[n])
    for estimator, exact in (("mc", exact_mc), ("interior", exact_interior)):
        values = []
        for seed in range(20):
            pyro.set_rng_seed(seed)
            elbo = RPM_ELBO(
                num_particles=200, vectorize_particles=True, max_plate_nesting=1, estimator=estimator, reference="prior"
            )
            values.append(elbo.loss(model, guide))
        v = torch.tensor(values, dtype=torch.float64)
        se = v.std().item() / math.sqrt(len(values))
        print(f"{estimator}: loss {v.mean():.4f} +- {se:.4f}, quadrature {exact:.4f}")
        assert abs(v.mean().item() - exact) < 4 * se + 1e-6


@pytest.mark.parametrize("reference", REFERENCES)
def test_interior_loss_has_gradients(reference):
    """Every parameter gets a finite, non-zero gradient through the interior loss, and the three
    entry points agree under one seed."""
    torch.manual_seed(0)
    D, N = 2, 16
    x1, x2 = torch.randn(N, 5), torch.randn(N, 5)
    r1 = GaussianRecognition(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2 * D)), D, prior_scale=1.0)
    r2 = GaussianRecognition(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2 * D)), D, prior_scale=1.0)
    model = two_view_model(r1, r2, D)
    guide = RecognitionGuide(model)
    elbo = RPM_ELBO(estimator="interior", reference=reference)
    params = list(r1.parameters()) + list(r2.parameters())
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, guide, x1, x2)
    loss.backward()
    grads = [p.grad.clone() for p in params]
    for g in grads:
        assert bool(torch.isfinite(g).all()) and bool((g != 0).any())
    for p in params:
        p.grad = None
    pyro.set_rng_seed(3)
    value = elbo.loss_and_grads(model, guide, x1, x2)
    assert value == pytest.approx(loss.item(), rel=1e-5)
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    pyro.set_rng_seed(3)
    assert elbo.loss(model, guide, x1, x2) == pytest.approx(loss.item(), rel=1e-5)


def test_prior_reference_needs_a_normal_prior():
    factors = _random_factors(8, 2, 0.5)
    N, D = factors.loc.shape

    def model():
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Laplace(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1))
            observe("x", factors, z)

    guide = RecognitionGuide(model)
    with pytest.raises(ValueError, match="reference='prior'"):
        RPM_ELBO(estimator="interior", reference="prior").loss(model, guide)
    # The flat reference needs no prior.
    assert math.isfinite(RPM_ELBO(estimator="interior").loss(model, guide))
