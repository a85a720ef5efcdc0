# SPDX-License-Identifier: Apache-2.0
"""Tests of :class:`pyro_rpm.RPM_ELBO`.

* ``loss``, ``differentiable_loss`` and ``loss_and_grads`` are one estimator (same value and
  gradients under one seed) for Gaussian, two-view, contrastive, amortised and categorical models,
  with one or several (vectorised) particles, and every parameter receives a gradient;
* the exact rewrites give the same ELBO as :class:`pyro.infer.Trace_ELBO` on the same model and
  guide (per draw, and in expectation over independent draws);
* gradient variance against ``Trace_ELBO``;
* whole-data-set support under ``subsample_size``: the minibatch loss is unbiased;
* non-finite values raise a :class:`ValueError` rather than returning NaN.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import two_view_model
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    BilinearCoupling,
    CategoricalRecognition,
    ContrastivePrior,
    GaussianRecognition,
    MarginalPrior,
    RecognitionGuide,
    observe,
)

D = 2
OBS = 3


def _mlp(out: int, hidden: int = 8, dropout: float = 0.0) -> nn.Module:
    layers = [nn.Linear(OBS, hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, out))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- model zoo
def single_view(B: int = 8):
    """One view, Gaussian factors, N(0, I) prior: q = f(z | x_n)."""
    r = GaussianRecognition(_mlp(2 * D), D, name="r")
    x = torch.randn(B, OBS)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x", f, z)

    return model, RecognitionGuide(model), (x,), [r]


def walker(B: int = 8, amortised: bool = False):
    """Two views, "prior + network" Gaussian factors, N(0, I) prior: q = p f1 f2 / p^2."""
    r1 = GaussianRecognition(_mlp(2 * D), D, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(_mlp(2 * D), D, prior_scale=1.0, name="r2")
    x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)
    model = two_view_model(r1, r2, D)
    modules = [r1, r2]
    amortiser = None
    if amortised:
        amortiser = nn.Sequential(nn.Linear(2 * 2 * D, 8), nn.Tanh(), nn.Linear(8, 2 * D))
        modules.append(amortiser)
    return model, RecognitionGuide(model, amortiser=amortiser), (x1, x2), modules


def contrastive(B: int = 8):
    """Gaussian factors with a contrastive prior p(z2 | z1) ∝ F2(z2) exp(z1' W z2) (learned W)."""
    r1 = GaussianRecognition(_mlp(2 * D), D, name="c1")
    r2 = GaussianRecognition(_mlp(2 * D), D, name="c2")
    coupling = BilinearCoupling(D, name="W")
    with torch.no_grad():
        coupling.weight.mul_(0.5)
    x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
            observe("x1", f1, z1)
            observe("x2", f2, z2)

    return model, RecognitionGuide(model), (x1, x2), [r1, r2, coupling]


def categorical(B: int = 8, K: int = 3):
    """Discrete latent with a learned prior; two categorical views (product guide, score-function gradients)."""
    r1 = CategoricalRecognition(_mlp(K), K, name="k1")
    r2 = CategoricalRecognition(_mlp(K), K, name="k2")
    x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        logits = pyro.param("prior_logits", torch.tensor([0.3, -0.2, 0.1]))
        with pyro.plate("data", x1.shape[0]):
            k = pyro.sample("k", dist.Categorical(logits=logits))
            observe("x1", f1, k)
            observe("x2", f2, k)

    return model, RecognitionGuide(model), (x1, x2), [r1, r2]


MODELS = {
    "single_view": single_view,
    "walker": walker,
    "amortised": lambda: walker(amortised=True),
    "contrastive": contrastive,
    "categorical": categorical,
}


def _params(modules) -> list[torch.Tensor]:
    params = [p for m in modules for p in m.parameters()]
    params += [v.unconstrained() for _, v in pyro.get_param_store().items() if not any(v is p for p in params)]
    # de-duplicate (pyro.module stores the module's own Parameter objects)
    unique, seen = [], set()
    for p in params:
        if id(p) not in seen:
            unique.append(p)
            seen.add(id(p))
    return unique


def _zero_grads(params) -> None:
    for p in params:
        p.grad = None


# --------------------------------------------------------------------------- 1. three entry points agree
PARTICLES = [
    pytest.param({}, id="1particle"),
    pytest.param({"num_particles": 3}, id="3particles"),
    pytest.param({"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 1}, id="3vectorised"),
]


@pytest.mark.parametrize("elbo_kwargs", PARTICLES)
@pytest.mark.parametrize("name", list(MODELS))
def test_loss_entry_points_agree_and_every_parameter_gets_a_gradient(name, elbo_kwargs):
    model, guide, args, modules = MODELS[name]()
    elbo = RPM_ELBO(**elbo_kwargs)
    # Register every parameter (pyro.param / pyro.module) before collecting them.
    elbo.loss(model, guide, *args)
    params = _params(modules)
    assert params

    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        loss = elbo.loss(model, guide, *args)

        pyro.set_rng_seed(seed)
        _zero_grads(params)
        diff = elbo.differentiable_loss(model, guide, *args)
        diff.backward()
        grads_diff = [p.grad.clone() for p in params]

        pyro.set_rng_seed(seed)
        _zero_grads(params)
        loss_grads = elbo.loss_and_grads(model, guide, *args)

        assert isinstance(loss, float) and isinstance(loss_grads, float)
        assert math.isfinite(loss)
        assert loss == pytest.approx(diff.item(), rel=1e-5, abs=1e-5)
        assert loss == pytest.approx(loss_grads, rel=1e-5, abs=1e-5)
        for p, g in zip(params, grads_diff):
            assert p.grad is not None, f"{name}: a parameter of shape {tuple(p.shape)} got no gradient"
            assert bool((p.grad != 0).any()), f"{name}: all-zero gradient for a parameter of shape {tuple(p.shape)}"
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_first_call_and_later_calls_agree_under_one_seed():
    """The guide's first call traces the model privately (and makes a plan); later calls use the
    plan. Both must draw the same latents under one seed: the private run may not consume the
    global random stream."""
    model, guide, args, _ = single_view()
    elbo = RPM_ELBO()
    pyro.set_rng_seed(5)
    first = elbo.loss(model, guide, *args)
    assert guide._plan is not None  # the fast path is in use from now on
    pyro.set_rng_seed(5)
    second = elbo.loss(model, guide, *args)
    assert first == pytest.approx(second, rel=1e-6)


# --------------------------------------------------------------------------- 2. same ELBO as Trace_ELBO
def _marginal_prior_model(B: int = 8):
    """z ~ MarginalPrior(f1) (log F1(z) cancels against view 1's normaliser), two views, product guide."""
    r1 = GaussianRecognition(_mlp(2 * D), D, name="m1")
    r2 = GaussianRecognition(_mlp(2 * D), D, name="m2")
    x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", MarginalPrior(f1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model), (x1, x2), [r1, r2]


TRACE_CASES = {
    "single_view": single_view,
    "walker": walker,
    "marginal_prior": _marginal_prior_model,
    "contrastive": contrastive,
}


@pytest.mark.parametrize(
    "elbo_kwargs",
    [pytest.param({}, id="1particle"), pytest.param(PARTICLES[2].values[0], id="3vectorised")],
)
@pytest.mark.parametrize("name", list(TRACE_CASES))
def test_rewritten_terms_equal_trace_elbo_draw_by_draw(name, elbo_kwargs):
    """The cancellations are exact identities: under one seed (one draw of z) the loss and its
    gradient equal plain Trace_ELBO's on the same model and guide."""
    model, guide, args, modules = TRACE_CASES[name]()
    rpm, trace = RPM_ELBO(**elbo_kwargs), pyro.infer.Trace_ELBO(**elbo_kwargs)
    rpm.loss(model, guide, *args)
    params = _params(modules)
    for seed in range(3):
        results = []
        for elbo in (rpm, trace):
            pyro.set_rng_seed(seed)
            _zero_grads(params)
            loss = elbo.differentiable_loss(model, guide, *args)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in params]))
        (l_rpm, g_rpm), (l_trace, g_trace) = results
        torch.testing.assert_close(l_rpm, l_trace, rtol=1e-5, atol=1e-4)
        for a, b in zip(g_rpm, g_trace):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["single_view", "walker"])
def test_same_elbo_as_trace_elbo_in_expectation(name):
    """Independent draws (disjoint seeds) of the RPM_ELBO and Trace_ELBO losses have the same mean
    within 3 standard errors of the difference."""
    model, guide, args, _ = TRACE_CASES[name]()
    S = 300
    rpm, trace = RPM_ELBO(), pyro.infer.Trace_ELBO()
    values = {"rpm": [], "trace": []}
    for s in range(S):
        pyro.set_rng_seed(s)
        values["rpm"].append(rpm.loss(model, guide, *args))
        pyro.set_rng_seed(S + s)
        values["trace"].append(trace.loss(model, guide, *args))
    a, b = torch.tensor(values["rpm"]), torch.tensor(values["trace"])
    se = math.sqrt(a.var().item() / S + b.var().item() / S)
    gap = abs(a.mean().item() - b.mean().item())
    assert se > 0
    assert gap < 3 * se, f"{name}: RPM {a.mean():.4f} vs Trace {b.mean():.4f}, |diff| {gap:.4f} > 3 SE = {3 * se:.4f}"


# --------------------------------------------------------------------------- 3. gradient variance
def _grad_samples(elbo, model, guide, args, params, seeds) -> torch.Tensor:
    rows = []
    for s in seeds:
        pyro.set_rng_seed(s)
        _zero_grads(params)
        elbo.differentiable_loss(model, guide, *args).backward()
        rows.append(torch.cat([p.grad.flatten() for p in params]))
    return torch.stack(rows)


def _single_view_with(net: nn.Module, B: int = 16):
    r = GaussianRecognition(net, D, prior_scale=1.0, name="gv")
    x = torch.randn(B, OBS)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x", f, z)

    return model, RecognitionGuide(model), (x,), [r]


def test_gradient_variance_deterministic_network_equals_trace_elbo():
    """With a deterministic recognition network the tied-guide cancellation
    log f(z|x_n) - log q(z) = 0 is an identity of functions of (z, theta), so RPM_ELBO's and
    Trace_ELBO's reparameterised gradient estimators are the *same* random variable: their
    variances are equal (ratio 1), not lower. Measured over 200 seeds."""
    model, guide, args, modules = _single_view_with(_mlp(2 * D, hidden=16))
    rpm, trace = RPM_ELBO(), pyro.infer.Trace_ELBO()
    rpm.loss(model, guide, *args)
    params = _params(modules)
    seeds = range(200)
    g_rpm = _grad_samples(rpm, model, guide, args, params, seeds)
    g_trace = _grad_samples(trace, model, guide, args, params, seeds)
    v_rpm, v_trace = g_rpm.var(0).sum().item(), g_trace.var(0).sum().item()
    print(f"gradient variance, deterministic net: RPM {v_rpm:.4f}, Trace {v_trace:.4f}, ratio {v_rpm / v_trace:.4f}")
    torch.testing.assert_close(g_rpm, g_trace, rtol=1e-4, atol=1e-4)
    assert v_rpm / v_trace == pytest.approx(1.0, abs=1e-3)


def test_gradient_variance_lower_than_trace_elbo_with_stochastic_network():
    """Single view, Gaussian factors, N(0, I) prior, a recognition network with dropout (a
    stochastic network). RPM_ELBO evaluates the network once per particle (recognition cache) and
    cancels log f(z|x_n) - log q(z) exactly; Trace_ELBO evaluates it separately in the guide and
    the model (independent dropout masks), so the two log f terms no longer cancel and add noise.
    (Trace_ELBO's objective is then also a different one; only the variance is compared.)
    Variance of the flattened gradient w.r.t. the recognition parameters over 200 seeds."""
    model, guide, args, modules = _single_view_with(_mlp(2 * D, hidden=16, dropout=0.2))
    rpm, trace = RPM_ELBO(), pyro.infer.Trace_ELBO()
    rpm.loss(model, guide, *args)
    params = _params(modules)
    seeds = range(200)
    v_rpm = _grad_samples(rpm, model, guide, args, params, seeds).var(0).sum().item()
    v_trace = _grad_samples(trace, model, guide, args, params, seeds).var(0).sum().item()
    print(f"gradient variance, dropout net: RPM {v_rpm:.4f}, Trace {v_trace:.4f}, ratio {v_rpm / v_trace:.3f}")
    assert v_rpm < 0.8 * v_trace, f"RPM variance {v_rpm:.4f} not < 0.8 x Trace variance {v_trace:.4f}"


# --------------------------------------------------------------------------- 4. subsampling
def test_whole_data_support_minibatch_loss_is_unbiased():
    """With the whole data set as support (``f = r(x_all)``, ``observe(..., index=idx)``) and
    ``pyro.plate("data", N, subsample_size=B)``, every per-datum term (including the exact
    normaliser log sum_{m=1}^N f(z|x_m)) is scaled by N/B, so the minibatch loss is an unbiased
    estimate of the full-batch loss.

    The in-batch support (normaliser over the B points of the minibatch, InfoNCE-style) is biased:
    its normaliser sums over B instead of N points, which shifts the loss by about N log(N/B)
    (checked below, so that the unbiasedness check has power)."""
    N, B, S = 24, 6, 400
    r = GaussianRecognition(_mlp(2 * D), D, prior_scale=1.0, name="sub")
    x_all = torch.randn(N, OBS)

    def full_support(x_all, subsample_size=None):
        f = r(x_all)
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x", f, z, index=idx)

    def in_batch(x_all, subsample_size=None):
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            f = r(x_all[idx])
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x", f, z)

    elbo = RPM_ELBO()

    def losses(model, subsample_size, offset):
        guide = RecognitionGuide(model)
        out = []
        for s in range(S):
            pyro.set_rng_seed(offset + s)
            out.append(elbo.loss(model, guide, x_all, subsample_size=subsample_size))
        return torch.tensor(out, dtype=torch.float64)

    full = losses(full_support, None, 0)
    mini = losses(full_support, B, 10_000)
    se = math.sqrt(full.var().item() / S + mini.var().item() / S)
    gap = abs(full.mean().item() - mini.mean().item())
    print(f"full {full.mean():.3f}, minibatch {mini.mean():.3f} (3 SE = {3 * se:.3f})")
    assert gap < 3 * se, f"minibatch {mini.mean():.3f} vs full {full.mean():.3f}: |diff| {gap:.3f} > 3 SE {3 * se:.3f}"

    biased = losses(in_batch, B, 20_000)
    se_b = math.sqrt(full.var().item() / S + biased.var().item() / S)
    print(f"in-batch support {biased.mean():.3f}")
    assert full.mean().item() - biased.mean().item() > 3 * se_b  # in-batch support: a smaller loss, biased


# --------------------------------------------------------------------------- 5. bad values and arguments
def _nan_net() -> nn.Module:
    net = _mlp(2 * D)
    with torch.no_grad():
        net[-1].bias[0] = float("nan")
    return net


def test_nan_recognition_output_raises_value_error():
    r = GaussianRecognition(_nan_net(), D, name="nan_net")
    x = torch.randn(6, OBS)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x", f, z)

    guide = RecognitionGuide(model)
    for call in (RPM_ELBO().loss, RPM_ELBO().differentiable_loss, RPM_ELBO().loss_and_grads):
        with pytest.raises(ValueError, match="nan_net"):
            call(model, guide, x)


def test_nan_without_recognition_validation_still_raises_value_error():
    """With the recognition module's own checks off, the NaN is still caught (no NaN loss)."""
    r = GaussianRecognition(_nan_net(), D, name="unchecked", validate=False)
    x = torch.randn(6, OBS)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x", f, z)

    guide = RecognitionGuide(model)
    with pytest.raises(ValueError, match="latent must be finite"):
        RPM_ELBO().loss(model, guide, x)
    with pytest.raises(ValueError, match="latent must be finite"):
        RPM_ELBO().differentiable_loss(model, guide, x)


def test_infinite_elbo_term_raises_value_error_naming_the_site():
    """A prior so narrow that log p(z) = -inf at the guide's draws: a ValueError naming the site."""
    r = GaussianRecognition(_mlp(2 * D), D, name="ok")
    x = torch.randn(6, OBS)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z_narrow", dist.Normal(torch.zeros(D), 1e-30).to_event(1))
            observe("x", f, z)

    guide = RecognitionGuide(model)
    for call in (RPM_ELBO().loss, RPM_ELBO().differentiable_loss, RPM_ELBO().loss_and_grads):
        with pytest.raises(ValueError, match="z_narrow"):
            call(model, guide, x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_particles": 0},
        {"num_particles": -1},
        {"num_particles": 1.5},
        {"num_particles": True},
        {"estimator": "bogus"},
        {"reference": "bogus"},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        RPM_ELBO(**kwargs)


def test_interior_estimator_rejects_non_gaussian_factors():
    model, guide, args, _ = categorical()
    with pytest.raises(ValueError, match="interior"):
        RPM_ELBO(estimator="interior").loss(model, guide, *args)
