# SPDX-License-Identifier: Apache-2.0
r"""Numerical robustness: float32 against float64 references at scale, and a float64 path throughout.

The stress problem: latent dimension D = 64, N = 10^5 support points, recognition scales from
:math:`10^{-3}` to 1 and latents with :math:`|z_d|` up to 50. The support points come in 1000
clusters (half tight, where about 100 points share the softmax mass, half loose); half of the
latents are drawn from a support point's factor (as the tied posterior does), half uniformly in
:math:`[-50, 50]^{64}`, far from every point (log-densities down to :math:`-10^{10}`).

The references are computed in float64 from the *same* float32 inputs by the direct
(difference) formula :math:`\sum_d [-\tfrac12 ((z_d - \mu_{md}) / s_{md})^2 - \log s_{md} - \tfrac12 \log 2\pi]`,
and the gradients of :math:`\sum_b w_b \log\sum_m f(z_b \mid x_m)` in closed form
(:math:`\partial/\partial z_b = -\sum_m w_b p_{bm} (z_b - \mu_m)/s_m^2` etc.), so any error
measured is the package's. Tolerances are written as multiples of the float32 unit roundoff
:math:`u = 2^{-24}` (the largest relative error of rounding one exact value to float32) and are
justified next to each assertion.

Also: float64 inputs stay float64 end to end (a full ``RPM_ELBO`` loss and gradient in float64
equals an independent float64 reference to 1e-10), and no log of a sum of exponentials in the
package is computed naively (a source scan).
"""

from __future__ import annotations

import ast
import math
import pathlib
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import infonce_model
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

import pyro_rpm
from pyro_rpm import (
    RPM_ELBO,
    BilinearCoupling,
    DeltaFactor,
    DeltaRecognition,
    GaussianFactor,
    GaussianRecognition,
    MarginalPrior,
    RecognitionGuide,
    RecognitionLikelihood,
    observe,
)
from pyro_rpm.normalisers import fused_available, gaussian_logsumexp

U32 = 2.0**-24  # float32 unit roundoff: |fl(x) - x| <= U32 |x| for round-to-nearest
N, D, B, CLUSTERS = 100_000, 64, 8, 1000
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Absolute floor of the value tolerances. The table is accumulated in float64 in the expanded
# form [z~^2, z~] . [-lambda/2, lambda mu~] - lambda mu~^2 / 2 (pyro_rpm.normalisers.dense), whose rounding
# error is about eps64 * sum_d lambda_d (|z~_d| + |mu~_d|)^2 <= 1.1e-16 * 64 * 1e6 * 100^2 = 7e-5
# nats in the worst case (lambda = s^-2 = 1e6, |z~|, |mu~| <= 50); measured up to 4e-5 beyond the
# float32 rounding (DeltaFactor, lambda = 1e6 in every dimension). The floor only matters for values
# below 1e-4 / U32 = 1700 nats; larger ones are held to the relative term.
ABS_FLOOR = 1e-4
# Gradient metric: |g - g_ref| / (|g_ref| + 1e-3 max |g_ref|), elementwise. The gradients are
# softmax-weighted sums with weights p_bm = exp(T_bm - L_b); an absolute error dT of the log-density
# entries (the expanded-form error above, up to ~7e-5 nats, even in float64) is a relative error dT
# of the weights, hence of the gradients. Measured 7.5e-6 (loc), 4.5e-6 (scale), 3.7e-7 (z) in float32
# and float64 alike (the float32 output rounding, 6e-8, is negligible); 1e-4 covers the worst case.
GRAD_TOL = 1e-4


@dataclass(repr=False)
class Problem:
    z32: torch.Tensor  # (B, D) float32
    loc32: torch.Tensor  # (N, D)
    scale32: torch.Tensor  # (N, D)
    idx: torch.Tensor  # (B,) the support point each latent is observed at
    table: torch.Tensor  # (B, N) float64 reference log f(z_b | x_m)
    lse: torch.Tensor  # (B,) float64 reference log sum_m f(z_b | x_m)


def _direct_table(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """Float64 difference-form table, support streamed in chunks (no B x N x D intermediate at once)."""
    scale = scale.expand_as(loc)
    parts = []
    for start in range(0, loc.shape[0], chunk):
        mu, s = loc[start : start + chunk], scale[start : start + chunk]
        d = (z[:, None, :] - mu) / s
        parts.append((-0.5 * d * d - s.log() - HALF_LOG_2PI).sum(-1))
    return torch.cat(parts, -1)


@pytest.fixture(scope="module")
def problem() -> Problem:
    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    centres = torch.empty(CLUSTERS, D, **f64).uniform_(-48, 48, generator=g)
    level = torch.empty(CLUSTERS, 1, **f64).uniform_(math.log(1e-3), 0.0, generator=g).exp()  # log-uniform [1e-3, 1]
    which = torch.arange(N) % CLUSTERS
    tight = (which % 2 == 0)[:, None]
    # tight clusters: one scale pattern per cluster and a jitter of 5% of it (many comparable
    # softmax weights); loose clusters: per-point scales and a jitter of one scale.
    pattern = torch.empty(CLUSTERS, D, **f64).uniform_(0.5, 2.0, generator=g)[which]
    own = torch.empty(N, D, **f64).uniform_(0.5, 2.0, generator=g)
    scale = (level[which] * torch.where(tight, pattern, own)).clamp(min=1e-3)
    jitter = torch.where(tight, 0.05, 1.0) * level[which] * torch.randn(N, D, generator=g, **f64)
    loc = centres[which] + jitter
    idx = torch.randint(N, (B,), generator=g)
    z = loc[idx] + scale[idx] * torch.randn(B, D, generator=g, **f64)
    z[B // 2 :] = torch.empty(B - B // 2, D, **f64).uniform_(-50, 50, generator=g)
    z32, loc32, scale32 = z.float(), loc.float(), scale.float()
    assert float(z32.abs().max()) <= 50 and float(scale32.min()) >= 1e-3 * (1 - 1e-7)
    table = _direct_table(z32.double(), loc32.double(), scale32.double())
    return Problem(z32, loc32, scale32, idx, table, table.logsumexp(-1))


def _reference_grads(p: Problem, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Closed-form float64 gradients of :math:`\sum_b w_b \log\sum_m f(z_b \mid x_m)` in (z, loc, scale).

    Only pairs with :math:`p_{bm} > e^{-700}` are visited; the others weigh less than
    :math:`N e^{-700}` in total, far below float64 resolution.
    """
    z, loc, scale = p.z32.double(), p.loc32.double(), p.scale32.double()
    log_p = p.table - p.lse[:, None]
    b, m = (log_p > -700).nonzero(as_tuple=True)
    d = (z[b] - loc[m]) / scale[m]
    w = (log_p[b, m].exp() * weights[b])[:, None]
    grad_z = torch.zeros_like(z).index_add_(0, b, -w * d / scale[m])
    grad_loc = torch.zeros_like(loc).index_add_(0, m, w * d / scale[m])
    grad_scale = torch.zeros_like(scale).index_add_(0, m, w * (d * d - 1) / scale[m])
    return grad_z, grad_loc, grad_scale


def _grad_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float(((got - want).abs() / (want.abs() + 1e-3 * want.abs().max())).max())


def _assert_values(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    assert bool(torch.isfinite(got).all()), f"{what}: non-finite values"
    err = (got.double() - want).abs()
    bound = rel * want.abs() + ABS_FLOOR
    worst = int((err / bound).argmax())
    assert bool((err <= bound).all()), (
        f"{what}: error {err.flatten()[worst]:.3g} > bound {bound.flatten()[worst]:.3g} "
        f"at reference value {want.flatten()[worst]:.6g}"
    )


def test_stress_problem_covers_the_intended_regime(problem):
    """Tight clusters spread the softmax over many points; far latents have normalisers below -1e4."""
    p = problem
    weights = (p.table - p.lse[:, None]).exp()
    effective = 1.0 / (weights**2).sum(-1)  # effective number of support points per latent
    assert float(effective.max()) > 5.0
    assert float(p.table.min()) < -1e9 and float(p.lse[B // 2 :].max()) < -1e4


# ------------------------------------------------------------------------------- float32 against float64
def test_pairwise_table_is_one_float32_rounding_of_the_float64_value(problem):
    """The (B, N) table of log f(z_b | x_m), D = 64, N = 1e5, in float32.

    pyro_rpm.normalisers.dense accumulates the expansion, the precisions and the normalising constant in
    float64 and rounds once, so each entry is within U32 |T| (one rounding) plus ABS_FLOOR of the
    float64 value, including entries of -1e10 (an error of up to ~600 nats there is that rounding).
    """
    p = problem
    table = GaussianFactor(p.loc32, p.scale32).pairwise_log_prob(p.z32)
    assert table.dtype == torch.float32 and table.shape == (B, N)
    _assert_values(table, p.table, U32, "GaussianFactor.pairwise_log_prob")


def test_point_mass_factor_table_at_eps_1e_3(problem):
    """DeltaFactor(eps=1e-3) (a shared scale, precision 1e6): one rounding again, and the diagonal at
    z = e(x_n) is exactly the normalising constant -D log eps - D/2 log 2 pi (~ 383.3 nats)."""
    p = problem
    loc32 = p.loc32[:20_000]  # the shared-scale path; a fifth of the support keeps the reference cheap
    factor = DeltaFactor(loc32, eps=1e-3)
    z32 = torch.cat([p.z32, loc32[:4]])
    table = factor.pairwise_log_prob(z32)
    reference = _direct_table(z32.double(), loc32.double(), torch.tensor(1e-3, dtype=torch.float32).double())
    _assert_values(table, reference, U32, "DeltaFactor.pairwise_log_prob")
    constant = -D * math.log(float(torch.tensor(1e-3, dtype=torch.float32))) - D * HALF_LOG_2PI
    diagonal = table[B:].diagonal().double()
    assert bool(((diagonal - constant).abs() <= U32 * constant + ABS_FLOOR).all()), diagonal


BACKENDS = ["dense", "streamed", "fused", "screened", "auto"]


def _require_backend(backend: str, dtype: torch.dtype) -> None:
    if backend in ("fused", "screened") and not fused_available("cpu", torch.float64):
        pytest.skip("no fused CPU attention kernel in this torch build")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backend", BACKENDS[:4])  # "auto" is "screened" here (B N > 2^20); it runs in the next test
def test_normaliser_and_its_gradients_match_float64(problem, backend, dtype):
    r"""log sum_m f(z_b | x_m) over N = 1e5 points by every backend, value and gradients.

    Value: every backend accumulates in float64 (float32 inputs included) and rounds once, so
    float32 is held to U32 |L| + ABS_FLOOR (measured: 0.85 U32 |L|) and float64 to 1e-12 |L| +
    ABS_FLOOR (measured 3.4e-6 nats: the expanded-form error discussed at ABS_FLOOR).
    Gradients in z, loc and scale (with unequal row weights w_b): GRAD_TOL (see its comment).
    """
    _require_backend(backend, dtype)
    p = problem
    z, loc, scale = (t.to(dtype).clone().requires_grad_() for t in (p.z32, p.loc32, p.scale32))
    weights = torch.linspace(0.5, 1.5, B, dtype=torch.float64)
    lse = gaussian_logsumexp(z, loc, scale, backend=backend)
    assert lse.dtype == dtype and lse.shape == (B,)
    _assert_values(lse, p.lse, U32 if dtype == torch.float32 else 1e-12, f"gaussian_logsumexp[{backend}]")
    (lse * weights.to(dtype)).sum().backward()
    for got, want, name in zip((z.grad, loc.grad, scale.grad), _reference_grads(p, weights), ("z", "loc", "scale")):
        assert got.dtype == dtype and bool(torch.isfinite(got).all()), name
        assert _grad_error(got, want) < GRAD_TOL, (name, _grad_error(got, want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_likelihood_and_marginal_prior_log_prob_match_float64(problem, backend):
    r"""RecognitionLikelihood.log_prob = log f(z | x_n) - log sum_m f(z | x_m) and MarginalPrior.log_prob
    in float32, N = 1e5.

    The difference of two float32 numbers carries their roundings: each term is within a few U32 of
    its own size (the diagonal is a float32 sum of D = 64 terms, or the gathered table entry; the
    normaliser one rounding), so the bound is 4 U32 (|log f_n| + |L|) + ABS_FLOOR (measured at most
    1.23 U32 (...)). That is also the sensitivity of the exact value to rounding z to float32: for a
    far latent the log-probability is -6e6..-1e9 and its error up to 72 nats (measured), a relative
    1e-7. For the latents drawn from their own factor it is near 0 and held to 2e-4 nats.
    """
    _require_backend(backend, torch.float32)
    p = problem
    factors = GaussianFactor(p.loc32, p.scale32)
    lik = RecognitionLikelihood(factors, p.z32, backend=backend)
    log_prob = lik.log_prob(p.idx)
    assert log_prob.dtype == torch.float32 and log_prob.shape == (B,)
    diagonal = p.table.gather(-1, p.idx[:, None]).squeeze(-1)
    reference = diagonal - p.lse
    assert bool(torch.isfinite(log_prob).all()) and bool((log_prob <= 4 * U32 * p.lse.abs() + ABS_FLOOR).all())
    err = (log_prob.double() - reference).abs()
    assert bool((err <= 4 * U32 * (diagonal.abs() + p.lse.abs()) + ABS_FLOOR).all()), err
    assert float(err[: B // 2].max()) < 2e-4

    prior = MarginalPrior(factors, backend=backend).expand((B,))
    _assert_values(prior.log_prob(p.z32), p.lse - math.log(N), U32, f"MarginalPrior.log_prob[{backend}]")


# ------------------------------------------------------------------------------- float64 throughout
def _two_view(dtype: torch.dtype, B: int = 16, obs: int = 5, latent: int = 3):
    """The canonical two-view model with networks and data in ``dtype``."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(obs, 16), nn.Tanh(), nn.Linear(16, 2 * latent)).to(dtype) for _ in range(2)]
    r1 = GaussianRecognition(nets[0], latent, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(nets[1], latent, prior_scale=1.0, name="r2")
    x1, x2 = torch.randn(B, obs, dtype=dtype), torch.randn(B, obs, dtype=dtype)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(x1.new_zeros(latent), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model), (x1, x2), (r1, r2), nets


def _direct_elbo(z: torch.Tensor, q: torch.distributions.Distribution, factors, x_index: torch.Tensor) -> torch.Tensor:
    """sum_n [log N(z_n; 0, I) + sum_j (log f_j(z_n | x_n) - logsumexp_m log f_j(z_n | x_m)) - log q(z_n)]."""
    total = dist.Normal(torch.zeros_like(z), 1.0).log_prob(z).sum(-1) - q.log_prob(z)
    for f in factors:
        table = _direct_table(z, f.loc, f.scale)
        total = total + table.gather(-1, x_index[:, None]).squeeze(-1) - table.logsumexp(-1)
    return total.sum()


def test_float64_rpm_elbo_loss_and_gradients_equal_an_independent_float64_reference():
    """A full RPM_ELBO loss and its gradient in float64: dtypes preserved (latent draw, every site's
    log-probability, loss, every parameter gradient), and the loss equal to the direct float64 ELBO
    at the same draw to 1e-10 relative (a float32 round trip anywhere would show as ~1e-7), the
    gradients to 1e-8 (against autograd of the direct formula)."""
    model, guide, (x1, x2), (r1, r2), nets = _two_view(torch.float64)
    params = [q for net in nets for q in net.parameters()]
    assert all(q.dtype == torch.float64 for q in params)
    elbo = RPM_ELBO()
    elbo.loss(model, guide, x1, x2)  # first call: the guide traces the model privately
    for seed in range(2):
        pyro.set_rng_seed(seed)
        loss = elbo.differentiable_loss(model, guide, x1, x2)
        assert loss.dtype == torch.float64
        grads = torch.autograd.grad(loss, params)
        assert all(g.dtype == torch.float64 and bool(torch.isfinite(g).all()) for g in grads)

        pyro.set_rng_seed(seed)  # the same draw of z
        guide_trace = poutine.trace(guide).get_trace(x1, x2)
        site = guide_trace.nodes["z"]
        assert site["value"].dtype == torch.float64
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x1, x2)
        model_trace.compute_log_prob()
        for name, node in model_trace.nodes.items():
            if node["type"] == "sample" and not site_is_subsample(node):
                assert node["log_prob"].dtype == torch.float64, name
        z = site["value"]
        index = torch.arange(x1.shape[0])
        reference = -_direct_elbo(z, site["fn"], (r1(x1), r2(x2)), index)
        assert abs(loss.item() - reference.item()) <= 1e-10 * abs(reference.item()), (loss.item(), reference.item())
        ref_grads = torch.autograd.grad(reference, params)
        for g, want in zip(grads, ref_grads):
            torch.testing.assert_close(g, want, rtol=1e-8, atol=1e-10)


def test_canonical_model_under_default_dtype_float64():
    """With torch.set_default_dtype(torch.float64) the canonical model as written (``torch.zeros(D)``
    prior, default-dtype networks) trains under SVI with float64 parameters and finite losses."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        D_ = 2
        r1 = GaussianRecognition(nn.Linear(6, 2 * D_), D_, prior_scale=1.0, name="r1")
        r2 = GaussianRecognition(nn.Linear(6, 2 * D_), D_, prior_scale=1.0, name="r2")

        def model(x1, x2):
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", x1.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(D_), 1.0).to_event(1))
                observe("x1", f1, z)
                observe("x2", f2, z)

        x1, x2 = torch.randn(32, 6), torch.randn(32, 6)
        svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
        losses = [svi.step(x1, x2) for _ in range(3)]
        assert all(math.isfinite(v) for v in losses)
        store = dict(pyro.get_param_store().named_parameters())
        assert store and all(v.dtype == torch.float64 for v in store.values())
    finally:
        torch.set_default_dtype(previous)
    assert torch.get_default_dtype() == previous


def test_infonce_identity_holds_to_float64_precision():
    """loss / B = InfoNCE + log B with float64 encoders to 1e-12 relative (the float32 run of the
    same networks agrees to 1e-6, its rounding level)."""
    Bn, D_, obs = 32, 3, 5
    torch.manual_seed(0)
    net1, net2 = nn.Linear(obs, D_).double(), nn.Linear(obs, D_).double()
    coupling = BilinearCoupling(D_).double()
    x1, x2 = torch.randn(Bn, obs, dtype=torch.float64), torch.randn(Bn, obs, dtype=torch.float64)

    def run(dtype):
        for module in (net1, net2, coupling):
            module.to(dtype)
        e1, e2 = DeltaRecognition(net1, D_, name="e1"), DeltaRecognition(net2, D_, name="e2")

        model = infonce_model(e1, e2, coupling)

        pyro.clear_param_store()
        a, b = x1.to(dtype), x2.to(dtype)
        loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model), a, b)
        assert loss.dtype == dtype
        return loss.item() / Bn

    value64 = run(torch.float64)
    with torch.no_grad():
        g = net1(x1) @ coupling.weight @ net2(x2).T
        reference = (-(g.diagonal() - g.logsumexp(-1)).mean() + math.log(Bn)).item()
    assert abs(value64 - reference) <= 1e-12 * abs(reference), (value64, reference)
    value32 = run(torch.float32)
    assert abs(value32 - reference) <= 1e-6 * abs(reference), (value32, reference)


# ------------------------------------------------------------------------------- logsumexp everywhere
_LOG_NAMES = {"log", "log2", "log10"}
_SUM_NAMES = {"sum", "mean", "nansum", "nanmean", "cumsum", "trapz", "trapezoid"}
_EXP_NAMES = {"exp", "exp2", "softmax"}


def _callee(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return None


def _operands(call: ast.Call) -> list[ast.AST]:
    """The receiver of a method call (``x.log()``) and the positional arguments (``torch.log(x)``)."""
    receiver = [call.func.value] if isinstance(call.func, ast.Attribute) else []
    return receiver + list(call.args)


def naive_log_sum_exp(source: str) -> list[int]:
    r"""Line numbers where a ``log`` is taken of a ``sum``/``mean`` whose operand contains an ``exp``
    (``x.exp().sum(-1).log()``, ``torch.log(torch.sum(torch.exp(x)))``, ``torch.log(softmax(x))``...):
    overflow-prone forms of what :func:`torch.logsumexp` / ``log_softmax`` compute stably."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if _callee(node) not in _LOG_NAMES:
            continue
        for operand in _operands(node):
            name = _callee(operand)
            if name == "softmax" or (
                name in _SUM_NAMES and any(_callee(n) in _EXP_NAMES for n in ast.walk(operand) if n is not operand)
            ):
                hits.append(node.lineno)
    return hits


def test_the_scanner_finds_naive_forms():
    bad = (
        "a = x.exp().sum(-1).log()\n"
        "b = torch.log(torch.sum(torch.exp(x), dim=0))\n"
        "c = torch.log(torch.softmax(x, -1))\n"
        "d = (w * (x - m).exp()).mean(0).log()\n"
    )
    assert naive_log_sum_exp(bad) == [1, 2, 3, 4]
    good = "a = torch.logsumexp(x, -1)\nb = x.log().sum(-1)\nc = scale.log()\nd = (x - x.logsumexp(-1)).exp()\n"
    assert naive_log_sum_exp(good) == []


def test_every_log_of_a_sum_of_exponentials_uses_logsumexp():
    """Scan every module of the package (the streamed kernel's max-shifted ``shift + total.log()``
    is the logsumexp itself and not flagged)."""
    root = pathlib.Path(pyro_rpm.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20
    found = {str(f.relative_to(root)): naive_log_sum_exp(f.read_text()) for f in files}
    assert {k: v for k, v in found.items() if v} == {}
