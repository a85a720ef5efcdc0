# SPDX-License-Identifier: Apache-2.0
r"""The screened exact normaliser (:mod:`pyro_rpm.normalisers.screened`) against float64 references.

Each test checks that the screening path really ran (a strict subset of the support was computed,
seen through a spy on the private forward) or that it fell back where it must, and compares
values and gradients with the float64 difference form of ``tests/normalisers/test_normalisers.py`` (values to
1e-12 relative; gradients to 1e-10 of ``|g| + max|g|``, elementwise). The certificate itself is
checked against the dense float64 table: no dropped point has weight above
:math:`e^{-T}`, :math:`T = 40 + \log N`, and the float32 bounds :math:`U_m` are upper bounds.
"""

import math

import pytest
import torch
from test_normalisers import naive_gaussian, naive_scores

from pyro_rpm.normalisers import (
    fused_available,
    gaussian_logsumexp,
    resolve_backend,
    score_logsumexp,
    screening_available,
)
from pyro_rpm.normalisers import screened as screened_module
from pyro_rpm.normalisers.features import LOG_DET_ROWS, GaussianFeatures
from pyro_rpm.normalisers.fused import fused_kernel

pytestmark = pytest.mark.skipif(
    not (fused_available("cpu", torch.float32) and fused_available("cpu", torch.float64)),
    reason="no fused CPU attention kernel in this torch build",
)


def rpm_problem(n=6000, batch=48, d=4, log_scale=(-3.0, -1.0), spread=3.0, seed=0, dtype=torch.float64):
    """Narrow factors spread over a wide region; latents drawn from random support points' factors."""
    g = torch.Generator().manual_seed(seed)
    loc = spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = torch.empty(n, d, dtype=torch.float64).uniform_(*log_scale, generator=g).exp()
    idx = torch.randint(n, (batch,), generator=g)
    z = loc[idx] + scale[idx] * torch.randn(batch, d, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (z, loc, scale)]


@pytest.fixture
def kept(monkeypatch):
    """Records the support subset of every screened call (``None``: all points computed exactly)."""
    calls = []
    original = screened_module._screened_forward

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result[2])
        return result

    monkeypatch.setattr(screened_module, "_screened_forward", spy)
    return calls


def assert_close(got, want, rel):
    got, want = got.detach().double(), want.detach().double()
    err = ((got - want).abs() / (want.abs() + want.abs().max())).max()
    assert err <= rel, f"relative error {float(err):.2e}"


def check_against_reference(inputs, got, want, names=("z", "loc", "scale")):
    assert_close(got, want, 1e-12)
    grads = torch.autograd.grad(got.sum(), inputs)
    want_grads = torch.autograd.grad(want.sum(), inputs)
    for g, w, name in zip(grads, want_grads, names):
        assert g.dtype == w.dtype, name
        assert_close(g, w, 1e-10)


@pytest.mark.parametrize("shared", [False, True], ids=["per_point", "shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_screened_computes_a_subset_and_matches_float64(kept, dtype, shared):
    z, loc, scale = rpm_problem(dtype=dtype)
    if shared:
        scale = torch.full((4,), 0.05, dtype=dtype, requires_grad=True)
    got = gaussian_logsumexp(z, loc, scale, backend="screened", chunk_size=1000)
    assert got.dtype == dtype and got.shape == (48,)
    assert kept[-1] is not None and 0 < kept[-1].numel() < 0.25 * loc.shape[0]
    want = naive_gaussian(z, loc, scale).to(dtype)
    if dtype == torch.float32:  # one float32 rounding of the float64 value
        assert_close(got, want, 1e-7)
        return
    check_against_reference((z, loc, scale), got, want)


def test_leading_dims_precision_and_partial_gradients(kept):
    z, loc, scale = rpm_problem(batch=40)
    precision = scale.detach().pow(-2).requires_grad_()
    z3 = z.detach().reshape(2, 4, 5, 4).requires_grad_()
    got = gaussian_logsumexp(z3, loc, precision=precision, backend="screened", chunk_size=777)
    assert got.shape == (2, 4, 5) and kept[-1] is not None
    check_against_reference((z3, loc, precision), got, naive_gaussian(z3, loc, precision=precision))
    for wrt in ("loc", "scale"):
        tensors = {"z": z.detach(), "loc": loc.detach(), "scale": scale.detach()}
        tensors[wrt].requires_grad_()
        got = gaussian_logsumexp(*tensors.values(), backend="screened")
        (grad,) = torch.autograd.grad(got.sum(), tensors[wrt])
        (want,) = torch.autograd.grad(naive_gaussian(*tensors.values()).sum(), tensors[wrt])
        assert_close(grad, want, 1e-10)


@pytest.mark.parametrize("chunk_size", [1, 333, 4096, 10**6])
def test_chunk_sizes(kept, chunk_size):
    z, loc, scale = rpm_problem(n=3000 if chunk_size == 1 else 6000, seed=1)
    got = gaussian_logsumexp(z, loc, scale, backend="screened", chunk_size=chunk_size)
    assert kept[-1] is not None
    check_against_reference((z, loc, scale), got, naive_gaussian(z, loc, scale))


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_dot_product_scores_in_float64_are_screened(kept, with_bias):
    g = torch.Generator().manual_seed(2)
    query = (8 * torch.randn(30, 6, generator=g, dtype=torch.float64)).requires_grad_()
    keys = (8 * torch.randn(5000, 6, generator=g, dtype=torch.float64)).requires_grad_()
    bias = (10 * torch.randn(5000, generator=g, dtype=torch.float64)).requires_grad_() if with_bias else None
    inputs, names = ((query, keys, bias), ("query", "keys", "bias")) if with_bias else ((query, keys), ("q", "k"))
    got = score_logsumexp(query, keys, bias, backend="screened", chunk_size=1024)
    assert kept[-1] is not None and kept[-1].numel() < 2500
    check_against_reference(inputs, got, naive_scores(query, keys, bias), names)


@pytest.mark.parametrize("n", [1, 2, 17])
def test_tiny_support_sets(n):
    z, loc, scale = rpm_problem(n=n, batch=5, seed=9)
    got = gaussian_logsumexp(z, loc, scale, backend="screened")
    check_against_reference((z, loc, scale), got, naive_gaussian(z, loc, scale))


@pytest.mark.parametrize("scale_range", [(-7.0, -5.0), (-3.0, 0.0), (-1.0, 4.0)], ids=["1e-3", "0.05-1", "wide"])
@pytest.mark.parametrize("far", [False, True], ids=["near", "z_50"])
def test_certificate_against_the_dense_table(scale_range, far):
    r"""The float32 bounds are upper bounds, and no dropped point weighs more than :math:`e^{-T}` in any row."""
    z, loc, scale = (t.detach() for t in rpm_problem(n=4000, batch=32, d=5, log_scale=scale_range, seed=3))
    if far:
        z[::4] = 50.0 * torch.sign(torch.randn(8, 5, dtype=torch.float64))
    features = GaussianFeatures(loc.mean(0), is_scale=True, shared=False)
    q = features.query(z)
    table = q @ features.keys(loc, scale).T
    lse = table.logsumexp(-1)
    screened = screened_module.screen(q, loc, scale, features, fused_kernel("cpu"), 1000)
    if screened is not None:
        upper, lse_hat = screened
        assert bool((upper >= (table - lse_hat[:, None]).amax(0)).all())
    value, _, keep = screened_module._screened_forward(
        q, loc, scale, features, fused_kernel("cpu"), fused_kernel("cpu"), 1000, 1000, False
    )
    # the float64 expanded form's own cancellation at scale 1e-3 is ~1e-9 nats per score
    assert_close(value, naive_gaussian(z, loc, scale), 1e-10)
    if keep is not None:
        dropped = torch.ones(loc.shape[0], dtype=torch.bool)
        dropped[keep] = False
        worst = (table[:, dropped] - lse[:, None]).max()
        assert float(worst) <= -(screened_module.SCREEN_MARGIN + math.log(loc.shape[0]))


def test_the_selection_grows_until_the_certificate_holds(kept, monkeypatch):
    """Start from a far too small subset (guess of Delta = -20 nats): the loop must add the rest it needs."""
    monkeypatch.setattr(screened_module, "_DELTA_GUESS", -20.0)
    z, loc, scale = rpm_problem(seed=4)
    calls = []
    original = screened_module.ChunkedLogSumExp._forward

    def count(*args):
        calls.append(args[1].shape[0])
        return original(*args)

    monkeypatch.setattr(screened_module.ChunkedLogSumExp, "_forward", staticmethod(count))
    got = gaussian_logsumexp(z, loc, scale, backend="screened")
    assert len(calls) >= 2 and kept[-1] is not None
    check_against_reference((z, loc, scale), got, naive_gaussian(z, loc, scale))


def test_wide_factors_fall_back_to_computing_everything(kept):
    """Every point matters to some latent: the probe sees it and all points are computed exactly."""
    z, loc, scale = rpm_problem(n=5000, log_scale=(0.0, 0.5), spread=0.5, seed=5)
    got = gaussian_logsumexp(z, loc, scale, backend="screened")
    assert kept == [None]
    check_against_reference((z, loc, scale), got, naive_gaussian(z, loc, scale))


def test_wide_factors_are_recognised_before_any_float32_work(kept, monkeypatch):
    """The float64 probe (density peaks bound every row's normaliser) decides alone: no float32 pass runs."""
    calls = []
    monkeypatch.setattr(screened_module, "merge_online", lambda *args: calls.append(1))
    z, loc, scale = rpm_problem(n=5000, log_scale=(0.0, 0.5), spread=0.5, seed=5)
    gaussian_logsumexp(z, loc, scale, backend="screened")
    assert kept == [None] and not calls


@pytest.mark.parametrize("shared", [False, True], ids=["per_point", "shared"])
@pytest.mark.parametrize("is_scale", [True, False], ids=["scale", "precision"])
def test_max_score_is_the_largest_density_peak(shared, is_scale):
    """GaussianFeatures.max_score = max_m log N(mu_m; mu_m, lambda_m^-1), the supremum of every score."""
    z, loc, scale = (t.detach() for t in rpm_problem(n=50, d=3, seed=8))
    param = scale[0] if shared else scale
    param = param if is_scale else param.pow(-2)
    features = GaussianFeatures(loc.mean(0), is_scale=is_scale, shared=shared)
    peaks = (features.query(loc) * features.keys(loc, param)).sum(-1)  # score of z = mu_m against m
    assert features.max_score(loc, param) == pytest.approx(float(peaks.max()), rel=1e-12)
    random_scores = features.query(z) @ features.keys(loc, param).T
    assert float(random_scores.max()) <= features.max_score(loc, param)


def test_blocked_log_determinants_are_the_full_ones(kept):
    """max_score computes the per-point log-determinants LOG_DET_ROWS rows at a time (no (N, D) float64
    temporaries): the cached values equal the one-call computation, and a screened float32 call that reads
    them matches the float64 reference."""
    n = 2 * LOG_DET_ROWS + 37
    z, loc, scale = (t.detach() for t in rpm_problem(n=n, batch=8, seed=12))
    features = GaussianFeatures(loc.mean(0), is_scale=True, shared=False)
    full = features._half_log_det(scale)
    peak = features.max_score(loc, scale)
    ((_, cached),) = features._log_dets
    assert torch.allclose(cached, full, rtol=1e-15, atol=0) and peak == float(full.max())
    z32, loc32, scale32 = (t.float().requires_grad_() for t in (z, loc, scale))
    got = gaussian_logsumexp(z32, loc32, scale32, backend="screened")
    assert kept[-1] is not None and kept[-1].numel() < n
    assert_close(got.double(), naive_gaussian(z32.double(), loc32.double(), scale32.double()), 1e-6)


def test_float32_overflow_falls_back_to_computing_everything(kept):
    """Precisions of 1e40 (scale 1e-20) overflow float32: no screening; the result is the plain fused one."""
    z, loc, scale = (t.detach() for t in rpm_problem(n=3000, seed=6))
    scale[::7] = 1e-20
    got = gaussian_logsumexp(z, loc, scale, backend="screened", chunk_size=1000)
    # float64 inputs: the refinement pass (pyro_rpm.normalisers.refine) calls the backend twice
    assert kept and all(k is None for k in kept) and bool(torch.isfinite(got).all())
    assert torch.equal(got, gaussian_logsumexp(z, loc, scale, backend="fused", chunk_size=1000))


def test_no_grad_and_empty_batch(kept):
    z, loc, scale = rpm_problem(seed=7)
    with torch.no_grad():
        got = gaussian_logsumexp(z, loc, scale, backend="screened")
    assert not got.requires_grad and kept[-1] is not None
    assert_close(got, naive_gaussian(z, loc, scale), 1e-12)
    assert gaussian_logsumexp(z[:0], loc, scale, backend="screened").shape == (0,)


def test_auto_screens_large_float64_problems(kept):
    z, loc, scale = rpm_problem(n=30000, batch=40)  # 1.2e6 pairs >= 2^20
    gaussian_logsumexp(z, loc, scale)
    calls = len(kept)  # 1, or 2 with the float64 refinement pass (pyro_rpm.normalisers.refine)
    assert calls in (1, 2)
    gaussian_logsumexp(z[:8], loc[:5000], scale[:5000])  # 4e4 pairs: the dense table
    gaussian_logsumexp(z[:20], loc[:5000], scale[:5000])  # 1e5 pairs, N < 2^13: fused
    gaussian_logsumexp(z, loc, scale, accumulate_dtype=torch.float32)  # float32 work: plain fused
    assert len(kept) == calls
    gaussian_logsumexp(z[:16], loc[:10000], scale[:10000])  # 1.6e5 pairs, but B <= 32 and N >= 2^13
    assert len(kept) > calls


def test_svi_training_with_the_whole_data_support_matches_the_fused_backend(kept):
    """Five SVI steps of the two-view RPM with every point as support: the screened run computes a strict
    subset exactly and follows the fused run's losses and parameters to float32 rounding."""
    import pyro
    import pyro.distributions as dist
    from torch import nn

    from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe

    n, d = 8000, 3
    g = torch.Generator().manual_seed(10)
    x1, x2 = 4 * torch.randn(n, 5, generator=g), 4 * torch.randn(n, 5, generator=g)

    def run(backend):
        torch.manual_seed(11)
        pyro.clear_param_store()
        nets = [nn.Linear(5, 2 * d) for _ in range(2)]
        with torch.no_grad():  # narrow factors: scales softplus(-3 + small) ~ 0.05
            for net in nets:
                net.weight[d:] *= 0.1
                net.bias[d:] = -3.0
        r1, r2 = (GaussianRecognition(net, d, name=f"r{i}") for i, net in enumerate(nets))

        def model():
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", n, subsample_size=64) as idx:
                z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
                observe("x1", f1, z, index=idx, backend=backend)
                observe("x2", f2, z, index=idx, backend=backend)

        pyro.set_rng_seed(12)
        svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
        losses = [svi.step() for _ in range(5)]
        return torch.tensor(losses), torch.cat([p.detach().flatten() for net in nets for p in net.parameters()])

    fused_losses, fused_params = run("fused")
    assert kept == []
    screened_losses, screened_params = run("screened")
    assert len(kept) >= 10 and all(k is not None and k.numel() < n // 2 for k in kept)
    assert torch.allclose(screened_losses, fused_losses, rtol=1e-6, atol=0.0)
    assert torch.allclose(screened_params, fused_params, rtol=1e-6, atol=1e-7)  # measured: identical


def test_bad_arguments_are_refused_with_the_argument_named():
    z, loc, scale = rpm_problem(n=100, batch=4)
    with pytest.raises(ValueError, match="device must be a torch.device"):
        screening_available("bogus", torch.float64)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        screening_available("cpu", "float64")
    with pytest.raises(ValueError, match="backend='screened' is not available .*float16"):
        resolve_backend("screened", 10, torch.device("cpu"), torch.float16)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        gaussian_logsumexp(z, loc, scale, backend="screened", chunk_size=0)
    with pytest.raises(ValueError, match="scale must be finite and strictly positive"):
        gaussian_logsumexp(z, loc, -scale, backend="screened")
    with pytest.raises(ValueError, match="loc must be finite"):
        gaussian_logsumexp(z, loc.detach() * float("nan"), scale, backend="screened")
    with pytest.raises(ValueError, match="backend must be one of"):
        gaussian_logsumexp(z, loc, scale, backend="Screened")
    assert screening_available("cpu", torch.float64) and not screening_available("cpu", torch.float32)
