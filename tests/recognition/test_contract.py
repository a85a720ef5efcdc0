# SPDX-License-Identifier: Apache-2.0
"""The :class:`~pyro_rpm.Factor` contract, checked family by family (one row of ``FAMILIES`` each).

For every family: the RPM likelihood against :class:`pyro.distributions.Categorical`, the pairwise table
against a naive float64 broadcast of ``log_prob``, gradients against finite differences, dtype moves,
``cat``/``index`` round trips and every exact normaliser backend against the dense table. Then the
von Mises-Fisher family's own mathematics (normaliser, sampler, product) and its use in a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    CategoricalFactor,
    DeltaFactor,
    Factor,
    FullDataSupport,
    GaussianFactor,
    RecognitionGuide,
    RecognitionLikelihood,
    VonMisesFisherFactor,
    VonMisesFisherRecognition,
    observe,
)
from pyro_rpm.recognition.von_mises_fisher import bessel_iv_ratio, log_bessel_iv, vmf_log_normaliser

D = 3
K = 4  # categorical states
BACKENDS = ("dense", "streamed", "fused", "screened", "auto")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian(M, seed=0):
    g = _gen(seed)
    return GaussianFactor(
        torch.randn(M, D, generator=g, dtype=torch.float64),
        0.5 + torch.rand(M, D, generator=g, dtype=torch.float64),
    )


def _delta(M, seed=0):
    return DeltaFactor(torch.randn(M, D, generator=_gen(seed), dtype=torch.float64), eps=0.7)


def _categorical(M, seed=0):
    return CategoricalFactor(torch.randn(M, K, generator=_gen(seed), dtype=torch.float64).log_softmax(-1))


def _vmf(M, seed=0):
    g = _gen(seed)
    loc = F.normalize(torch.randn(M, D, generator=g, dtype=torch.float64), dim=-1)
    return VonMisesFisherFactor(loc, 0.5 + 5 * torch.rand(M, generator=g, dtype=torch.float64))


def _real_latents(B, seed=1):
    return torch.randn(B, D, generator=_gen(seed), dtype=torch.float64)


def _sphere_latents(B, seed=1):
    return F.normalize(_real_latents(B, seed), dim=-1)


def _states(B, seed=1):
    return torch.randint(K, (B,), generator=_gen(seed))


@dataclass(frozen=True)
class Family:
    name: str
    factors: Callable[..., Factor]  # (M, seed) -> factors over M support points, float64
    latents: Callable[..., torch.Tensor]  # (B, seed) -> latents, shape (B, *event_shape)
    continuous: bool = True


FAMILIES = [
    Family("gaussian", _gaussian, _real_latents),
    Family("delta", _delta, _real_latents),
    Family("categorical", _categorical, _states, continuous=False),
    Family("von_mises_fisher", _vmf, _sphere_latents),
]
family = pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])


# ----------------------------------------------------------------------------------------------
# The contract, for every family
# ----------------------------------------------------------------------------------------------


@family
def test_pairwise_table_is_the_broadcast_log_prob(fam):
    f, z = fam.factors(7), fam.latents(5)
    table = f.pairwise_log_prob(z)
    assert table.shape == (5, 7) and table.dtype == torch.float64
    naive = f.log_prob(z.unsqueeze(-2) if fam.continuous else z.unsqueeze(-1))
    torch.testing.assert_close(table, naive, rtol=1e-12, atol=1e-12)
    for b in range(5):  # one row by hand, factor by factor
        for m in range(7):
            torch.testing.assert_close(
                table[b, m], f.index(torch.tensor([m])).log_prob(z[b])[0], rtol=1e-12, atol=1e-12
            )


@family
def test_likelihood_is_a_categorical_over_the_support(fam):
    f, z = fam.factors(6), fam.latents(6)
    idx = torch.tensor([0, 3, 2, 5, 1, 1])
    lik = RecognitionLikelihood(f, z)
    expected = dist.Categorical(logits=f.pairwise_log_prob(z)).log_prob(idx)
    torch.testing.assert_close(lik.log_prob(idx), expected, rtol=1e-12, atol=1e-12)
    brute = f.pairwise_log_prob(z).gather(-1, idx[:, None])[:, 0] - torch.logsumexp(f.pairwise_log_prob(z), -1)
    torch.testing.assert_close(lik.log_prob(idx), brute, rtol=1e-12, atol=1e-12)


@family
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_is_exact(fam, backend):
    # "auto" with more than DENSE_MAX_PAIRS = 2**16 pairs leaves the dense table
    M, B = (300, 300) if backend == "auto" else (37, 11)
    f, z = fam.factors(M), fam.latents(B)
    dense = torch.logsumexp(f.pairwise_log_prob(z), -1)
    for chunk_size in (None, 8):
        got = f.pairwise_logsumexp(z, backend=backend, chunk_size=chunk_size)
        assert got.shape == dense.shape and got.dtype == torch.float64
        torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-10)


@family
def test_unknown_backend_is_refused(fam):
    with pytest.raises(ValueError, match="backend"):
        fam.factors(3).pairwise_logsumexp(fam.latents(2), backend="magic")


@family
@pytest.mark.parametrize("backend", ["dense", "streamed"])
def test_gradients_match_finite_differences(fam, backend):
    f, z = fam.factors(5), fam.latents(4)
    tensors = [t.detach().clone().requires_grad_() for t in f.tensors()]
    if fam.continuous:
        z = z.detach().clone().requires_grad_()

        def fn(*args):
            return f.with_tensors(args[:-1]).pairwise_logsumexp(args[-1], backend=backend, chunk_size=2)

        assert torch.autograd.gradcheck(fn, (*tensors, z))
    else:

        def fn(*args):
            return f.with_tensors(args).pairwise_logsumexp(z, backend=backend, chunk_size=2)

        assert torch.autograd.gradcheck(fn, tuple(tensors))


@family
def test_dtype_and_device_moves(fam):
    f = fam.factors(4).to(dtype=torch.float32)
    assert f.dtype == torch.float32 and all(t.dtype == torch.float32 for t in f.tensors() if t.is_floating_point())
    assert type(f) is type(fam.factors(4))
    back = f.to(device="cpu", dtype=torch.float64)
    assert back.dtype == torch.float64 and back.device.type == "cpu"
    z = fam.latents(3)
    torch.testing.assert_close(
        f.pairwise_log_prob(z.float() if fam.continuous else z), fam.factors(4).pairwise_log_prob(z).float()
    )
    with pytest.raises(TypeError, match="dtype"):
        fam.factors(4).to(dtype=torch.int64)


@family
def test_cat_and_index_round_trip(fam):
    f = fam.factors(9)
    parts = [f.index(torch.arange(0, 4)), f.index(torch.arange(4, 9))]
    back = type(f).cat(parts)
    assert back.num_support == 9 and back.settings() == f.settings()
    for a, b in zip(back.tensors(), f.tensors()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    perm = torch.tensor([8, 1, 1, 3])
    z = fam.latents(2)
    torch.testing.assert_close(f.index(perm).pairwise_log_prob(z), f.pairwise_log_prob(z)[:, perm])
    assert f.detach().tensors()[0].requires_grad is False
    assert f.with_tensors(f.tensors()).settings() == f.settings()
    assert len(f.tensor_names) == len(f.tensors())
    with pytest.raises(ValueError):
        type(f).cat(parts[:1] + [parts[1].to(dtype=torch.float32)])


@family
def test_combine_is_a_normalised_product_or_none(fam):
    fs = [fam.factors(6, seed=s) for s in (0, 1)]
    combined = type(fs[0]).combine(fs, None)
    if combined is None:
        return
    q, residual = combined
    z = fam.latents(6, seed=5)
    # residual(z) = log q(z) - sum_j log f_j(z), exactly, at every z
    lhs = q.log_prob(z) - sum(f.log_prob(z) for f in fs)
    torch.testing.assert_close(residual(z) + torch.zeros_like(lhs), lhs, rtol=1e-10, atol=1e-10)


def test_a_factor_missing_an_abstract_method_cannot_be_built():
    class Incomplete(Factor):
        def tensors(self):
            return ()

        def with_tensors(self, tensors):
            return self

        def log_prob(self, value):
            return value

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(torch.Size([2]), torch.Size([1]))


# ----------------------------------------------------------------------------------------------
# The von Mises-Fisher family's mathematics
# ----------------------------------------------------------------------------------------------


def test_log_normaliser_matches_the_closed_form_on_s2():
    k = torch.tensor([1e-6, 1e-3, 0.5, 3.0, 20.0, 700.0, 1e4], dtype=torch.float64)
    log_sinh = torch.where(k < 20, torch.sinh(k).log(), k - math.log(2) + torch.log1p(-torch.exp(-2 * k)))
    closed = k.log() - math.log(4 * math.pi) - log_sinh
    torch.testing.assert_close(vmf_log_normaliser(3, k), closed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [2, 3, 5, 10, 64])
def test_log_prob_matches_scipy(dim):
    stats = pytest.importorskip("scipy.stats")
    if not hasattr(stats, "vonmises_fisher"):
        pytest.skip("scipy.stats.vonmises_fisher needs scipy >= 1.11")
    g = _gen(dim)
    mu = F.normalize(torch.randn(dim, generator=g, dtype=torch.float64), dim=-1)
    x = F.normalize(torch.randn(6, dim, generator=g, dtype=torch.float64), dim=-1)
    for kappa in (1e-3, 0.7, 10.0, 300.0, 5000.0):
        f = VonMisesFisherFactor(mu[None], torch.tensor([kappa], dtype=torch.float64))
        ref = stats.vonmises_fisher(mu.numpy(), kappa).logpdf(x.numpy())
        np.testing.assert_allclose(f.log_prob(x[:, None]).squeeze(-1).numpy(), ref, rtol=1e-10, atol=1e-9)
        ent = stats.vonmises_fisher(mu.numpy(), kappa).entropy()
        np.testing.assert_allclose(f.entropy().item(), ent, rtol=1e-8, atol=1e-8)


def test_log_bessel_is_accurate_and_differentiable():
    special = pytest.importorskip("scipy.special")
    k = torch.tensor([1e-300, 1e-20, 1e-4, 0.3, 7.0, 150.0, 1e5], dtype=torch.float64)
    for nu in (0.0, 0.5, 4.0, 31.0):
        got = log_bessel_iv(nu, k)
        assert torch.isfinite(got).all()
        mid = k[(k > 1e-5) & (k < 100)]
        torch.testing.assert_close(
            log_bessel_iv(nu, mid), torch.from_numpy(np.log(special.iv(nu, mid.numpy()))), rtol=1e-12, atol=1e-12
        )
        ratio = torch.from_numpy(special.ive(nu + 1, mid.numpy()) / special.ive(nu, mid.numpy()))
        torch.testing.assert_close(bessel_iv_ratio(nu, mid), ratio, rtol=1e-12, atol=1e-12)
        kk = torch.tensor([0.05, 1.3, 9.0, 80.0], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, nu=nu: log_bessel_iv(nu, t), (kk,))
        assert torch.autograd.gradgradcheck(lambda t, nu=nu: log_bessel_iv(nu, t), (kk,))
    # small-kappa series: log I_nu(k) ~ nu log(k/2) - lgamma(nu + 1)
    torch.testing.assert_close(log_bessel_iv(4.0, k[:1]), 4.0 * torch.log(k[:1] / 2) - math.lgamma(5.0))
    f32 = log_bessel_iv(1.5, torch.tensor([2.0]))
    assert f32.dtype == torch.float32


@pytest.mark.parametrize("dim, kappa", [(3, 0.5), (3, 8.0), (5, 2.0), (10, 10.0), (10, 200.0)])
def test_samples_have_the_mean_resultant_length(dim, kappa):
    torch.manual_seed(dim)
    mu = F.normalize(torch.randn(2, dim, dtype=torch.float64), dim=-1)
    f = VonMisesFisherFactor(mu, torch.tensor(kappa, dtype=torch.float64))
    n = 40_000
    s = f.rsample((n,))
    assert s.shape == (n, 2, dim)
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(n, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    w = (s * mu).sum(-1)  # the component along the mean direction
    A = f.mean_resultant_length
    tol = 5 * w.std(0) / math.sqrt(n) + 1e-12
    assert ((w.mean(0) - A).abs() <= tol).all(), (w.mean(0), A)
    torch.testing.assert_close(F.normalize(s.mean(0), dim=-1), mu, rtol=0, atol=0.05 / math.sqrt(kappa))
    torch.testing.assert_close(f.mean, A.unsqueeze(-1) * mu)


def test_sampled_component_follows_its_density_on_s2():
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(3)
    kappa = 4.0
    f = VonMisesFisherFactor(torch.tensor([[0.0, 0.6, 0.8]], dtype=torch.float64), kappa)
    w = (f.sample((20_000,))[:, 0] * f.loc[0]).sum(-1).numpy()

    def cdf(t):  # on S^2, w has density kappa e^{kappa w} / (2 sinh kappa) on [-1, 1]
        return (np.exp(kappa * (t - 1)) - np.exp(-2 * kappa)) / (1 - np.exp(-2 * kappa))

    assert stats.kstest(w, cdf).pvalue > 1e-3


def test_samples_are_reparameterised_in_the_mean_direction():
    torch.manual_seed(0)
    mu = F.normalize(torch.tensor([[0.3, -0.5, 0.8, 0.1]], dtype=torch.float64), dim=-1).requires_grad_()
    a = torch.tensor([1.0, 2.0, -0.5, 0.3], dtype=torch.float64)
    f = VonMisesFisherFactor(mu, 5.0)
    (grad,) = torch.autograd.grad((f.rsample((100_000,)) @ a).mean(), mu)
    # E[a . z] = A(kappa) a . mu: its gradient along the sphere is A (I - mu mu^T) a
    m = mu.detach()[0]
    tangent = lambda v: v - (v @ m) * m  # noqa: E731
    expected = f.mean_resultant_length.detach() * tangent(a)
    torch.testing.assert_close(tangent(grad[0]), expected, rtol=0, atol=0.03)
    assert f.has_rsample and f.concentration.grad_fn is None


def test_combine_matches_quadrature_on_the_circle():
    g = _gen(11)
    fs = [
        VonMisesFisherFactor(F.normalize(torch.randn(3, 2, generator=g, dtype=torch.float64), dim=-1), kappa)
        for kappa in (torch.tensor([0.4, 3.0, 30.0], dtype=torch.float64), 2.5)
    ]
    q, residual = VonMisesFisherFactor.combine(fs)
    assert isinstance(q, VonMisesFisherFactor) and q.batch_shape == (3,) and not VonMisesFisherFactor.combine_uses_prior
    t = torch.linspace(-math.pi, math.pi, 20_001, dtype=torch.float64)[:-1]
    z = torch.stack([t.cos(), t.sin()], -1)[:, None]  # (T, 1, 2) against the batch (3,)
    log_prod = sum(f.log_prob(z) for f in fs)
    log_z = torch.logsumexp(log_prod, 0) + math.log(2 * math.pi / t.numel())  # periodic trapezoid rule
    torch.testing.assert_close(residual(z[0]), -log_z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(q.log_prob(z), log_prod - log_z, rtol=1e-9, atol=1e-9)
    # mixed families have no closed form
    assert VonMisesFisherFactor.combine([fs[0], _gaussian(3)]) is None
    assert GaussianFactor.combine([fs[0], _gaussian(3)]) is None


def test_bad_arguments_are_named():
    loc = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    with pytest.raises(ValueError, match="unit vectors"):
        VonMisesFisherFactor(2 * loc, 1.0, validate_args=True)
    with pytest.raises(ValueError, match="loc must be finite"):
        VonMisesFisherFactor(loc.clone().fill_(float("nan")), 1.0, validate_args=True)
    with pytest.raises(ValueError, match="concentration must be finite and strictly positive"):
        VonMisesFisherFactor(loc, torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=torch.float64), validate_args=True)
    with pytest.raises(ValueError, match="concentration must be finite and strictly positive"):
        VonMisesFisherFactor(loc, -1.0, validate_args=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        VonMisesFisherFactor(loc, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="D >= 2"):
        VonMisesFisherFactor(torch.ones(4, 1, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="dtype"):
        VonMisesFisherFactor(loc, torch.ones(4, dtype=torch.float32))
    with pytest.raises(TypeError, match="loc"):
        VonMisesFisherFactor(loc.numpy(), 1.0)
    with pytest.raises(TypeError, match="concentration"):
        VonMisesFisherFactor(loc, "big")
    with pytest.raises(ValueError, match="latent_dim"):
        VonMisesFisherRecognition(nn.Linear(3, 1), 1)
    with pytest.raises(ValueError, match="concentration"):
        VonMisesFisherRecognition(nn.Linear(3, 3), 3, concentration=0.0)
    with pytest.raises(ValueError, match="last dimension of size 3"):
        VonMisesFisherRecognition(nn.Linear(3, 2).double(), 3)(torch.randn(5, 3, dtype=torch.float64))


def test_recognition_normalises_and_learns_its_concentration():
    pyro.clear_param_store()
    fixed = VonMisesFisherRecognition(nn.Linear(4, 3).double(), 3, concentration=7.0, name="vmf_fixed")
    f = fixed(torch.randn(6, 4, dtype=torch.float64))
    assert isinstance(f, VonMisesFisherFactor) and f.batch_shape == (6,) and f.event_shape == (3,)
    torch.testing.assert_close(f.loc.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(f.concentration, torch.full((6,), 7.0, dtype=torch.float64))
    assert "log_concentration" in dict(fixed.named_buffers())
    learned = VonMisesFisherRecognition(nn.Linear(4, 3), 3, concentration=2.0, learn_concentration=True, name="vmf_l")
    f = learned(torch.randn(6, 4))
    (grad,) = torch.autograd.grad(f.log_prob(f.loc.detach()).sum(), learned.log_concentration)
    assert torch.isfinite(grad) and grad != 0


# ----------------------------------------------------------------------------------------------
# In a model: observe, RecognitionGuide, RPM_ELBO, the whole-data support
# ----------------------------------------------------------------------------------------------


class _UniformSphere(dist.TorchDistribution):
    """Uniform prior on the sphere S^{D-1} (events of size D)."""

    support = dist.constraints.sphere
    arg_constraints = {}
    has_rsample = True

    def __init__(self, dim, batch_shape=torch.Size(), dtype=torch.float64):
        self.dim, self._dtype = dim, dtype
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _UniformSphere(self.dim, batch_shape, self._dtype)

    def rsample(self, sample_shape=torch.Size()):
        return F.normalize(torch.randn(self._extended_shape(sample_shape), dtype=self._dtype), dim=-1)

    def log_prob(self, value):
        log_area = math.log(2) + (self.dim / 2) * math.log(math.pi) - math.lgamma(self.dim / 2)
        return torch.full(value.shape[:-1], -log_area, dtype=value.dtype)


def _sphere_data(n, seed=0):
    g = _gen(seed)
    z = F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=-1)
    mix = torch.randn(D, 5, generator=g, dtype=torch.float64)
    return z @ mix + 0.05 * torch.randn(n, 5, generator=g, dtype=torch.float64), z


def test_one_view_svi_trains():
    pyro.clear_param_store()
    torch.manual_seed(0)
    x, _ = _sphere_data(64)
    r = VonMisesFisherRecognition(nn.Linear(5, D).double(), D, concentration=5.0, name="vmf_one_view")

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", _UniformSphere(D))
            observe("x", f, z)

    guide = RecognitionGuide(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), RPM_ELBO())
    losses = [svi.step(x) for _ in range(150)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0
    # q = f: the guide's sample lies on the sphere
    trace = pyro.poutine.trace(guide).get_trace(x)
    torch.testing.assert_close(trace.nodes["z"]["value"].norm(dim=-1), torch.ones(64, dtype=torch.float64))


def test_two_views_use_the_closed_form_product():
    pyro.clear_param_store()
    torch.manual_seed(1)
    x, _ = _sphere_data(48, seed=1)
    r1 = VonMisesFisherRecognition(nn.Linear(5, D).double(), D, learn_concentration=True, name="vmf_v1")
    r2 = VonMisesFisherRecognition(nn.Linear(5, D).double(), D, learn_concentration=True, name="vmf_v2")
    x2 = x + 0.05 * torch.randn_like(x)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", _UniformSphere(D))
            observe("x1", f1, z)
            observe("x2", f2, z)

    guide = RecognitionGuide(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), RPM_ELBO())
    losses = [svi.step(x, x2) for _ in range(150)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0
    assert r1.log_concentration.grad is not None


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_whole_data_support_equals_the_naive_support(chunk_size):
    x, _ = _sphere_data(90, seed=2)

    def loss_and_grads(naive):
        pyro.clear_param_store()
        torch.manual_seed(0)
        r = VonMisesFisherRecognition(nn.Linear(5, D).double(), D, concentration=4.0, name="vmf_full")
        support = FullDataSupport(r, x, chunk_size=chunk_size)

        def model():
            f = r(x) if naive else support()
            with pyro.plate("data", x.shape[0], subsample_size=16) as idx:
                z = pyro.sample("z", _UniformSphere(D))
                observe("x", f, z, index=idx)

        pyro.set_rng_seed(3)
        loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model))
        return loss, torch.autograd.grad(loss, list(r.net.parameters()))

    loss, grads = loss_and_grads(False)
    ref, ref_grads = loss_and_grads(True)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
