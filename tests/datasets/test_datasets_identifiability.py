# SPDX-License-Identifier: Apache-2.0
"""The identifiability data-generating processes against closed forms and independent samplers.

* uniform sphere: mean 0, covariance I/d, and the marginal of one coordinate, (z_1 + 1)/2 ~ Beta((d-1)/2, (d-1)/2);
* vMF: the mean resultant length E[mu^T x] = A_d(kappa) = I_{d/2}(kappa)/I_{d/2-1}(kappa) (scipy.special.ive),
  the law of the cosine against scipy.stats.vonmises_fisher (an independent sampler), and a uniform tangent part;
* truncated Laplace: E|delta| = lambda and Var = 2 lambda^2 away from the walls, the truncated-Laplace CDF next to
  a wall (closed form), and every draw inside the box;
* anisotropic sphere: moments of z~ - z against plain Gaussian Monte Carlo reweighted by the acceptance indicator
  (a different code path: no rejection loop);
* invertible MLP: against an nn.Sequential of Linear/LeakyReLU layers, exact inverse, the Jacobian (autograd) and
  its condition number bound, the conditioning of the weights against an independent random pool;
* determinism under a seed, the global RNG left alone, and clear errors on bad arguments.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import ive
from torch import nn

from pyro_rpm.datasets.identifiability import (
    InvertibleMLP,
    anisotropic_sphere,
    anisotropic_sphere_pairs,
    bimodal_precision,
    box_laplace_pairs,
    sphere_vmf_pairs,
    truncated_laplace,
    uniform_box,
    uniform_sphere,
    von_mises_fisher,
)

N = 40_000


def _mean_resultant_length(d: int, kappa: float) -> float:
    return float(ive(d / 2, kappa) / ive(d / 2 - 1, kappa))


# ------------------------------------------------------------------------------------ uniform sphere
@pytest.mark.parametrize("d", [3, 10])
def test_uniform_sphere_moments_and_marginal(d):
    z = uniform_sphere(N, d, seed=1)
    assert z.dtype == torch.float64 and z.shape == (N, d)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(N, dtype=torch.float64))
    # each coordinate has variance 1/d, so the mean has standard error 1/sqrt(d N)
    assert z.mean(0).abs().max() < 5 / math.sqrt(d * N)
    cov = torch.cov(z.T)
    # Var of z_i z_j is O(1/d^2): allow 6 standard errors
    assert (cov - torch.eye(d, dtype=torch.float64) / d).abs().max() < 6 * math.sqrt(3 / (d * (d + 2) * N))
    # (z_1 + 1) / 2 ~ Beta((d-1)/2, (d-1)/2)
    u = ((z[:, 0] + 1) / 2).numpy()
    assert stats.kstest(u, stats.beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3


def test_uniform_box_range_and_moments():
    z = uniform_box(N, 4, -1.0, 3.0, seed=2)
    assert bool((z >= -1).all() and (z <= 3).all())
    assert (z.mean(0) - 1).abs().max() < 5 * 4 / math.sqrt(12 * N)
    assert (z.var(0) - 16 / 12).abs().max() < 0.05


# ---------------------------------------------------------------------------------------------- vMF
@pytest.mark.parametrize("d", [3, 10])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 100.0])
def test_vmf_mean_resultant_length_matches_closed_form(d, kappa):
    mu = uniform_sphere(N, d, seed=3)
    x = von_mises_fisher(mu, kappa, seed=4)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(N, dtype=torch.float64))
    w = (x * mu).sum(-1)
    expected = _mean_resultant_length(d, kappa)
    se = w.std().item() / math.sqrt(N)
    assert abs(w.mean().item() - expected) < 5 * se, (w.mean().item(), expected)


@pytest.mark.parametrize("d,kappa", [(3, 2.0), (10, 10.0), (10, 1.0)])
def test_vmf_cosine_law_matches_scipy_sampler(d, kappa):
    mu = np.zeros(d)
    mu[0] = 1.0
    ref = stats.vonmises_fisher(mu, kappa).rvs(20_000, random_state=np.random.default_rng(0))
    x = von_mises_fisher(torch.as_tensor(mu).expand(20_000, d).contiguous(), kappa, seed=5)
    assert stats.ks_2samp(x[:, 0].numpy(), ref[:, 0]).pvalue > 1e-3


def test_vmf_tangent_direction_is_uniform_and_orthogonal():
    d = 6
    mu = uniform_sphere(1, d, seed=6).expand(N, d).contiguous()
    x = von_mises_fisher(mu, 5.0, seed=7)
    w = (x * mu).sum(-1, keepdim=True)
    tangent = x - w * mu
    v = tangent / tangent.norm(dim=-1, keepdim=True)
    assert (v @ mu[0]).abs().max() < 1e-10
    assert v.mean(0).abs().max() < 5 / math.sqrt(d * N)
    projector = torch.eye(d, dtype=torch.float64) - mu[0, :, None] * mu[0, None, :]
    assert (torch.cov(v.T) - projector / (d - 1)).abs().max() < 0.01


# ------------------------------------------------------------------------------------------ Laplace
def test_truncated_laplace_scale_away_from_the_walls():
    lam = 0.05
    z = torch.full((N, 3), 0.5, dtype=torch.float64)
    delta = truncated_laplace(z, lam, seed=8) - z
    # the walls are 10 scales away: the truncation changes these moments by O(e^{-10})
    assert abs(delta.mean().item()) < 5 * math.sqrt(2) * lam / math.sqrt(3 * N)
    assert delta.abs().mean().item() == pytest.approx(lam, rel=0.02)
    assert delta.var().item() == pytest.approx(2 * lam**2, rel=0.03)


def test_truncated_laplace_near_a_wall_is_the_truncated_law():
    lam, z0 = 0.1, 0.03
    z = torch.full((N, 1), z0, dtype=torch.float64)
    sample = truncated_laplace(z, lam, 0.0, 1.0, seed=9)[:, 0].numpy()
    assert sample.min() >= 0.0 and sample.max() <= 1.0

    def laplace_cdf(t):
        return np.where(t < z0, 0.5 * np.exp((t - z0) / lam), 1 - 0.5 * np.exp(-(t - z0) / lam))

    lo, hi = laplace_cdf(0.0), laplace_cdf(1.0)
    assert stats.kstest(sample, lambda t: (laplace_cdf(t) - lo) / (hi - lo)).pvalue > 1e-3
    # about 1/2 e^{-0.3} / (1 - ...) of the mass falls below the anchor, not 1/2
    assert (sample < z0).mean() == pytest.approx((0.5 - lo) / (hi - lo), abs=0.01)


def test_box_laplace_pairs_stay_in_the_box():
    _, _, z1, z2 = box_laplace_pairs(5000, 10, scale=0.2, low=-1.0, high=1.0, seed=10, dtype=torch.float64)
    for z in (z1, z2):
        assert bool((z >= -1).all() and (z <= 1).all())
    assert (z2 - z1).abs().mean() < 0.2


# -------------------------------------------------------------------------------------- anisotropic
def test_bimodal_precision():
    torch.testing.assert_close(bimodal_precision(), torch.tensor([25.0] * 5 + [5.0] * 5, dtype=torch.float64))
    torch.testing.assert_close(bimodal_precision(3, 4.0, 1.0), torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))


def test_anisotropic_sphere_matches_reweighted_gaussian():
    """E[h(z~)] under the rejection sampler equals E_N[h(y/|y|) 1{acc}] / P(acc) with plain Gaussian draws."""
    d, threshold = 10, 0.1
    prec = bimodal_precision(d)
    z0 = uniform_sphere(1, d, seed=11)
    zt = anisotropic_sphere(z0.expand(N, d).contiguous(), prec, threshold, seed=12)
    torch.testing.assert_close(zt.norm(dim=-1), torch.ones(N, dtype=torch.float64))
    gen = torch.Generator().manual_seed(13)
    y = z0 + prec.rsqrt() * torch.randn(400_000, d, generator=gen, dtype=torch.float64)
    accept = ((1 - y.norm(dim=-1)).abs() < threshold).double()
    y = y / y.norm(dim=-1, keepdim=True)
    for h in (lambda t: t - z0, lambda t: (t - z0) ** 2):
        ours = h(zt).mean(0)
        ref = (h(y) * accept[:, None]).sum(0) / accept.sum()
        se = h(zt).std(0) * math.sqrt(1 / N + 1 / accept.sum().item())
        assert bool(((ours - ref).abs() < 5 * se + 1e-12).all()), (ours, ref)
    # the high-precision ("content") latents move less than the low-precision ("style") ones
    sq = ((zt - z0) ** 2).mean(0)
    assert sq[:5].max() < sq[5:].min()


# ---------------------------------------------------------------------------------------- mixing g
def _sequential_reference(g: InvertibleMLP) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, w in enumerate(g.weights):
        lin = nn.Linear(g.dim, g.dim, bias=False).double()
        lin.weight.data = w.clone()
        layers.append(lin)
        if i < g.n_layers - 1:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def test_invertible_mlp_forward_matches_linear_leaky_relu_stack():
    g = InvertibleMLP(10, seed=0)
    z = uniform_sphere(100, 10, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(g(z), _sequential_reference(g)(z))
    assert g(z.float()).dtype == torch.float32


def test_invertible_mlp_weights_are_well_conditioned_unit_columns():
    g = InvertibleMLP(10, seed=0)
    assert g.weights.shape == (3, 10, 10)
    torch.testing.assert_close(g.weights.norm(dim=-2), torch.ones(3, 10, dtype=torch.float64))
    conds = torch.linalg.cond(g.weights)
    torch.testing.assert_close(conds, torch.tensor(g.condition_numbers, dtype=torch.float64))
    assert max(g.condition_numbers) == pytest.approx(g.cond_threshold)
    # an independent pool of such matrices: the chosen ones beat its 1st percentile
    rng = np.random.default_rng(123)
    pool = rng.uniform(-1, 1, (2000, 10, 10))
    pool /= np.linalg.norm(pool, axis=-2, keepdims=True)
    assert g.cond_threshold < np.quantile(np.linalg.cond(pool), 0.01)
    assert g.cond_threshold < 5.0  # Zimmermann et al. log 3.4-3.6 (pool minimum, d = 10)


def test_invertible_mlp_is_invertible_with_bounded_jacobian_condition():
    g = InvertibleMLP(10, seed=1)
    z = uniform_sphere(200, 10, seed=15)
    torch.testing.assert_close(g.inverse(g(z)), z, atol=1e-10, rtol=0)
    x = torch.randn(50, 10, dtype=torch.float64)
    torch.testing.assert_close(g(g.inverse(x)), x, atol=1e-10, rtol=0)
    bound = g.jacobian_condition_bound()
    worst = 0.0
    for point in z[:40]:
        jac = torch.autograd.functional.jacobian(g, point)
        singular = torch.linalg.svdvals(jac)
        assert singular.min() > 0
        worst = max(worst, float(singular.max() / singular.min()))
        # the Jacobian is W3 D2 W2 D1 W1 with D diagonal of 1 or 0.2 according to the pre-activation signs
        w = g.weights
        h1 = w[0] @ point
        d1 = torch.where(h1 >= 0, 1.0, 0.2).double()
        h2 = w[1] @ torch.nn.functional.leaky_relu(h1, 0.2)
        d2 = torch.where(h2 >= 0, 1.0, 0.2).double()
        torch.testing.assert_close(jac, w[2] @ torch.diag(d2) @ w[1] @ torch.diag(d1) @ w[0])
    assert worst <= bound
    assert bound < 2e3


# ------------------------------------------------------------------------------- pairs, determinism
@pytest.mark.parametrize("make", [sphere_vmf_pairs, box_laplace_pairs, anisotropic_sphere_pairs])
def test_pairs_are_deterministic_and_leave_the_global_rng_alone(make):
    state = torch.random.get_rng_state()
    a = make(64, seed=3)
    b = make(64, seed=3)
    c = make(64, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[2], c[2])
    x1, x2, z1, z2 = a
    assert all(t.shape == (64, 10) and t.dtype == torch.float32 for t in a)
    g = InvertibleMLP(10, seed=3)
    torch.testing.assert_close(x1, g(z1.double()).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x2, g(z2.double()).float(), atol=1e-5, rtol=1e-5)


def test_a_shared_generator_streams_fresh_pairs_with_a_fixed_mixing():
    mixing = InvertibleMLP(10, seed=0)
    gen = torch.Generator().manual_seed(0)
    first = sphere_vmf_pairs(16, mixing=mixing, generator=gen)
    second = sphere_vmf_pairs(16, mixing=mixing, generator=gen)
    assert not torch.equal(first[2], second[2])
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sphere_vmf_pairs(16, mixing=mixing, generator=gen)[0], first[0])


def test_pairs_with_an_identity_mixing_are_the_latents():
    x1, x2, z1, z2 = sphere_vmf_pairs(32, dim=4, kappa=3.0, mixing=nn.Identity(), seed=0)
    assert torch.equal(x1, z1) and torch.equal(x2, z2)
    assert (z1.norm(dim=-1) - 1).abs().max() < 1e-6


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: uniform_sphere(0, 3), ValueError, "n must"),
        (lambda: uniform_sphere(5, 1), ValueError, "dim must"),
        (lambda: uniform_sphere(5, 3, seed=1.5), TypeError, "seed must"),
        (lambda: uniform_sphere(5, 3, generator="g"), TypeError, "generator must"),
        (lambda: uniform_box(5, 3, 1.0, 0.0), ValueError, "low must be < high"),
        (lambda: uniform_box(5, 3, float("nan"), 1.0), ValueError, "low must"),
        (lambda: von_mises_fisher(torch.ones(4, 3), 1.0), ValueError, "unit vectors"),
        (lambda: von_mises_fisher(uniform_sphere(4, 3), -1.0), ValueError, "kappa must"),
        (lambda: von_mises_fisher(uniform_sphere(4, 3), float("inf")), ValueError, "kappa must"),
        (lambda: von_mises_fisher(torch.ones(3), 1.0), ValueError, "shape"),
        (lambda: von_mises_fisher([[1.0, 0.0]], 1.0), TypeError, "mu must be a torch.Tensor"),
        (lambda: truncated_laplace(torch.full((3, 2), 2.0), 0.1), ValueError, "box"),
        (lambda: truncated_laplace(torch.full((3, 2), 0.5), 0.0), ValueError, "scale must"),
        (lambda: anisotropic_sphere(uniform_sphere(4, 3), [1.0, 2.0]), ValueError, "precision must have shape"),
        (lambda: anisotropic_sphere(uniform_sphere(4, 3), [1.0, -2.0, 1.0]), ValueError, "strictly positive"),
        (lambda: anisotropic_sphere(uniform_sphere(4, 3), [1.0, 1.0, 1.0], 0.0), ValueError, "threshold must"),
        (lambda: InvertibleMLP(1), ValueError, "dim must"),
        (lambda: InvertibleMLP(4, n_layers=0), ValueError, "n_layers must"),
        (lambda: InvertibleMLP(4, negative_slope=0.0), ValueError, "negative_slope"),
        (lambda: InvertibleMLP(4, pool_size=2), ValueError, "pool_size must"),
        (lambda: InvertibleMLP(4)(torch.zeros(2, 3)), ValueError, "last dimension of size 4"),
        (lambda: sphere_vmf_pairs(4, dtype=torch.int64), TypeError, "dtype must"),
        (lambda: sphere_vmf_pairs(4, mixing=3), TypeError, "mixing must"),
        (lambda: anisotropic_sphere_pairs(4, precision=[[1.0, 2.0]]), ValueError, "precision must be a vector"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_anisotropic_sphere_reports_an_impossible_band():
    with pytest.raises(RuntimeError, match="threshold"):
        anisotropic_sphere(uniform_sphere(2, 20), torch.full((20,), 1e-4), 1e-3)
