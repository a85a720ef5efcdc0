# SPDX-License-Identifier: Apache-2.0
r"""Normaliser backends of the likelihood and the empirical priors against the dense table and float64 references.

Reference: the broadcast ``(B, N, D)`` float64 difference form of :math:`\log f(z_b \mid x_m)`
(independent of the expanded GEMM form every backend uses), its ``logsumexp`` and autograd
gradients. Tolerances as in ``tests/normalisers/test_normalisers.py``: values :math:`|a - b| \le 10^{-5}\max(|b|, 1)`,
gradients :math:`|a - b| \le 10^{-5} (|b| + \max|b|)` elementwise.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CategoricalFactor,
    ContrastivePrior,
    CosineCoupling,
    DeltaFactor,
    GaussianFactor,
    GaussianRecognition,
    LaplaceCoupling,
    MarginalPrior,
    RBFCoupling,
    RecognitionGuide,
    RecognitionLikelihood,
    observe,
)
from pyro_rpm.normalisers import fused_available

HAS_FUSED = fused_available("cpu", torch.float64)
STREAMED = ["auto", "streamed", pytest.param("fused", marks=pytest.mark.skipif(not HAS_FUSED, reason="no fused op"))]
N, B, D = 4000, 48, 3  # 192k pairs: above the dense threshold of "auto" (2**16)


def assert_values(got, want):
    got, want = got.detach().double(), want.detach().double()
    err = ((got - want).abs() / want.abs().clamp(min=1.0)).max()
    assert err <= 1e-5, f"relative value error {float(err):.2e}"


def assert_grads(got, want, floors=None):
    """Elementwise relative error; ``floors`` (one per tensor) raise the denominator's ``max|w|`` where
    the reference is a small difference of large terms (e.g. a point mass whose softmax is one-hot)."""
    floors = floors if floors is not None else [0.0] * len(want)
    for g, w, floor in zip(got, want, floors):
        g, w = g.double(), w.double()
        err = ((g - w).abs() / (w.abs() + max(float(w.abs().max()), floor))).max()
        assert err <= 1e-5, f"relative gradient error {float(err):.2e} (shape {tuple(w.shape)})"


def naive_table(z, loc, scale):
    """float64 difference form of log N(z_b; mu_m, diag s_m^2), shape z.shape[:-1] + (M,)."""
    z, loc, scale = z.double(), loc.double(), scale.double().expand_as(loc)
    diff = (z.unsqueeze(-2) - loc) / scale
    return (-0.5 * diff * diff - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def problem(kind, seed=0):
    """Factors over N points and latents (2 particles x B) near the observed points idx."""
    g = torch.Generator().manual_seed(seed)
    loc = 2 * torch.randn(N, D, generator=g)
    idx = torch.randperm(N, generator=g)[:B]
    if kind == "gaussian":
        scale = torch.empty(N, D).uniform_(0.2, 1.0, generator=g)
    elif kind == "shared":
        scale = torch.empty(D).uniform_(0.2, 1.0, generator=g).expand(N, D)
    else:
        scale = None
    if kind.startswith("delta"):
        eps = 1e-3 if kind == "delta" else 0.1
        noise = torch.zeros(2, B, D)
        noise[1] = eps * torch.randn(B, D, generator=g)  # particle 0 exactly at e(x), particle 1 off it
        z = loc[idx] + noise
        loc.requires_grad_()
        factors = DeltaFactor(loc, eps)
        params = (loc,)
        scale = factors.scale
    else:
        z = loc[idx] + scale[idx] * torch.randn(2, B, D, generator=g)
        loc.requires_grad_()
        if kind == "shared":
            raw = scale[0].clone().requires_grad_()
            scale = raw.expand(N, D)
            params = (loc, raw)
        else:
            scale.requires_grad_()
            params = (loc, scale)
        factors = GaussianFactor(loc, scale)
    z = z.detach().requires_grad_()
    return factors, z, idx, params + (z,), (loc, scale)


KINDS = ["gaussian", "shared", "delta", "delta_wide"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", STREAMED)
def test_log_prob_matches_dense_and_float64_reference(kind, backend):
    factors, z, idx, wrt, (loc, scale) = problem(kind)
    dense = RecognitionLikelihood(factors, z, backend="dense")
    lik = RecognitionLikelihood(factors, z, backend=backend)
    got = lik.log_prob(idx)
    assert got.shape == (2, B) and got.dtype == torch.float32
    assert "logits" not in lik.__dict__  # no (2, B, N) table was built
    want_dense = dense.log_prob(idx)
    table = naive_table(z, loc, scale)
    want = table.gather(-1, idx.expand(2, B).unsqueeze(-1)).squeeze(-1) - table.logsumexp(-1)
    assert_values(got, want)
    assert_values(got, want_dense)
    assert_values(lik.log_normaliser, table.logsumexp(-1))
    weights = torch.linspace(-1.0, 2.0, 2 * B).reshape(2, B)  # a generic upstream gradient
    norm_grads = torch.autograd.grad((lik.log_normaliser * weights).sum(), wrt, retain_graph=True)
    want_norm = torch.autograd.grad((table.logsumexp(-1) * weights).sum(), wrt, retain_graph=True)
    assert_grads(norm_grads, want_norm)
    # log_prob = diagonal - normaliser: with narrow point masses both terms are ~1/eps and nearly
    # cancel, so its gradient is compared on the scale of the normaliser's gradient.
    floors = [float(g.abs().max()) for g in want_norm]
    grads = torch.autograd.grad((got * weights).sum(), wrt)
    assert_grads(grads, torch.autograd.grad((want * weights).sum(), wrt), floors)
    assert_grads(grads, torch.autograd.grad((want_dense * weights).sum(), wrt), floors)


def test_streamed_path_never_builds_the_table(monkeypatch):
    factors, z, idx, _, _ = problem("gaussian", seed=1)

    def forbidden(self, z):
        raise AssertionError("pairwise_log_prob called: the B x N table was built")

    monkeypatch.setattr(GaussianFactor, "pairwise_log_prob", forbidden)
    lik = RecognitionLikelihood(factors, z)  # "auto": above the dense threshold
    value = lik.log_prob(idx)
    assert torch.isfinite(value).all()
    expanded = lik.expand((2, B))
    torch.testing.assert_close(expanded.log_prob(idx), value)
    with pytest.raises(AssertionError, match="table was built"):
        lik.sample()  # sampling needs the table (the logits property), by design


def test_small_problems_keep_the_dense_table():
    factors, z, idx, _, _ = problem("gaussian", seed=2)
    small = RecognitionLikelihood(factors.index(torch.arange(50)), z[0, :10])
    small.log_prob(torch.arange(10))
    assert "logits" in small.__dict__  # 500 pairs: "auto" uses the dense table


def test_diagonal_is_evaluated_directly():
    factors, z, idx, _, (loc, scale) = problem("gaussian", seed=3)
    lik = RecognitionLikelihood(factors, z, backend="streamed")
    want = torch.distributions.Normal(loc[idx].double(), scale[idx].double()).log_prob(z.double()).sum(-1)
    assert_values(lik.diagonal(idx), want)
    # enumerated values broadcast against the batch
    values = torch.arange(5).reshape(5, 1, 1)
    assert lik.diagonal(values).shape == (5, 2, B)
    assert_values(lik.diagonal(values), naive_table(z, loc, scale)[..., :5].permute(2, 0, 1))


@pytest.mark.parametrize("backend", ["auto", "streamed"])
def test_categorical_normaliser_per_state(backend):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(N, 5, generator=g).log_softmax(-1).requires_grad_()
    states = torch.randint(5, (2, B), generator=g)
    factors = CategoricalFactor(logits)
    idx = torch.randint(N, (B,), generator=g)
    got = RecognitionLikelihood(factors, states, backend=backend).log_prob(idx)
    want = dist.Categorical(logits=factors.logits.T[states].double()).log_prob(idx)  # f = softmax(logits)
    assert_values(got, want)
    assert_grads(torch.autograd.grad(got.sum(), logits, retain_graph=True), torch.autograd.grad(want.sum(), logits))


def test_bad_backend_and_chunk_size_raise():
    factors, z, idx, _, _ = problem("gaussian")
    with pytest.raises(ValueError, match="backend must be one of"):
        RecognitionLikelihood(factors, z, backend="flash")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        RecognitionLikelihood(factors, z, chunk_size=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        MarginalPrior(factors, backend="gemm")
    with pytest.raises(ValueError, match="backend must be one of"):
        RBFCoupling(1.0).expected_logsumexp(z, factors, backend="gemm")


def test_chunk_size_is_passed_through():
    factors, z, idx, _, (loc, scale) = problem("gaussian", seed=5)
    table = naive_table(z, loc, scale)
    for chunk in (7, 1000):
        lik = RecognitionLikelihood(factors, z, backend="streamed", chunk_size=chunk)
        assert_values(lik.log_normaliser, table.logsumexp(-1))


# ----------------------------------------------------------------------------------------------
# Empirical priors: the marginal normaliser and log Z of the contrastive prior
# ----------------------------------------------------------------------------------------------

COUPLINGS = {
    "rbf": lambda: RBFCoupling(0.7),
    "anisotropic": lambda: AnisotropicRBFCoupling(D, torch.tensor([0.5, 1.0, 2.0])),
    "bilinear": lambda: BilinearCoupling(D),
    "cosine": lambda: CosineCoupling(0.3),
    "laplace": lambda: LaplaceCoupling(1.5),
}


@pytest.mark.parametrize("kind", ["gaussian", "shared", "delta_wide"])
@pytest.mark.parametrize("coupling", list(COUPLINGS))
def test_contrastive_prior_streamed_matches_dense(kind, coupling):
    factors, z, idx, wrt, _ = problem(kind, seed=6)
    g = COUPLINGS[coupling]()
    anchor = (z.detach()[0] + 0.3).requires_grad_()
    wrt = wrt[:-1] + (anchor, z) + tuple(p for p in g.parameters())
    value = z[1]
    got = ContrastivePrior(factors, g, anchor, backend="streamed").log_prob(value)
    want = ContrastivePrior(factors, g, anchor, backend="dense").log_prob(value)
    assert got.shape == (B,)
    assert_values(got, want)
    grads = torch.autograd.grad(got.sum(), wrt, allow_unused=True)
    want_grads = torch.autograd.grad(want.sum(), wrt, allow_unused=True)
    assert_grads([a for a, b in zip(grads, want_grads) if b is not None], [b for b in want_grads if b is not None])
    # log Z against the closed form of expected_pairwise, built independently in float64
    prior = ContrastivePrior(factors, g, anchor, backend="streamed")
    want_log_z = g.expected_pairwise(anchor.double(), _double(factors)).logsumexp(-1) - math.log(N)
    assert_values(prior.log_normaliser, want_log_z)
    assert "component_logits" not in prior.__dict__


def _double(factors):
    if isinstance(factors, DeltaFactor):
        return DeltaFactor(factors.loc.double(), factors.eps)
    return GaussianFactor(factors.loc.double(), factors.scale.double())


@pytest.mark.parametrize("kind", ["gaussian", "delta"])
def test_marginal_prior_streamed_matches_reference(kind):
    factors, z, idx, wrt, (loc, scale) = problem(kind, seed=7)
    got = MarginalPrior(factors, backend="streamed").log_prob(z)
    want = naive_table(z, loc, scale).logsumexp(-1) - math.log(N)
    assert_values(got, want)
    assert_grads(torch.autograd.grad(got.sum(), wrt), torch.autograd.grad(want.sum(), wrt))


# ----------------------------------------------------------------------------------------------
# End to end: RPM_ELBO with a whole-data-set support
# ----------------------------------------------------------------------------------------------


def test_elbo_whole_data_support_streamed_equals_dense():
    torch.manual_seed(8)
    n, d = 2000, 2
    x1, x2 = torch.randn(n, 6), torch.randn(n, 6)
    r1 = GaussianRecognition(nn.Linear(6, 2 * d), d, prior_scale=1.0, name="lb_r1")
    r2 = GaussianRecognition(nn.Linear(6, 2 * d), d, prior_scale=1.0, name="lb_r2")

    def model(backend):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", n, subsample_size=64) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            observe("x1", f1, z, index=idx, backend=backend)
            observe("x2", f2, z, index=idx, backend=backend)

    params = list(r1.parameters()) + list(r2.parameters())
    results = {}
    for backend in ("dense", "streamed", "auto"):
        pyro.set_rng_seed(9)
        loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model), backend)
        results[backend] = (loss, torch.autograd.grad(loss, params))
    for backend in ("streamed", "auto"):
        assert_values(results[backend][0], results["dense"][0])
        assert_grads(results[backend][1], results["dense"][1])
