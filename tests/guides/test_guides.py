# SPDX-License-Identifier: Apache-2.0
r""":class:`pyro_rpm.RecognitionGuide`: the tied posteriors against hand-computed closed forms.

* J views, Gaussian factors, diagonal Normal prior :math:`\mathcal N(\mu_0, s_0^2)`: Walker et al.'s
  :math:`q \propto p \prod_j f_j / p`, i.e. precision :math:`\sum_j \lambda_j - (J-1)\lambda_0` and mean
  :math:`(\sum_j \lambda_j\mu_j - (J-1)\lambda_0\mu_0) / \lambda` (precision-weighted means);
* the plain product :math:`q \propto \prod_j f_j` (``combine="product"``, non-Normal priors, point-mass and
  categorical factors) with its normaliser :math:`Z = \int f_1 f_2 = \mathcal N(\mu_1; \mu_2, s_1^2 + s_2^2)`;
* the residual :math:`r(z) = \log q(z) - \sum_j \log f_j(z)` against direct evaluation at random z;
* the amortised option, :class:`pyro.infer.Predictive`, subsampling, and bad models.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    CategoricalFactor,
    DeltaFactor,
    DeltaRecognition,
    GaussianFactor,
    GaussianRecognition,
    MarginalPrior,
    RecognitionGuide,
    TiedPosterior,
    observe,
)

B, D = 5, 2


def _gaussian_views(J: int, seed: int = 0, low: float = 0.3, high: float = 0.8):
    """J Gaussian factors over B support points, float64, scales in [low, high]."""
    g = torch.Generator().manual_seed(seed)
    return [
        GaussianFactor(
            torch.randn(B, D, generator=g, dtype=torch.float64),
            torch.empty(B, D, dtype=torch.float64).uniform_(low, high, generator=g),
        )
        for _ in range(J)
    ]


def _model_for(factors, prior):
    def model():
        with pyro.plate("data", B):
            z = pyro.sample("z", prior)
            for j, f in enumerate(factors):
                observe(f"x{j}", f, z)

    return model


def _posterior(guide) -> TiedPosterior:
    site = poutine.trace(guide).get_trace().nodes["z"]
    assert isinstance(site["fn"], TiedPosterior)
    return site["fn"]


def _normal_prior(loc, scale):
    return dist.Normal(loc, scale).to_event(1)


PRIOR_LOC = torch.tensor([0.4, -0.7], dtype=torch.float64)
PRIOR_SCALE = torch.tensor([1.3, 0.9], dtype=torch.float64)


# --------------------------------------------------------------------------- Walker: p prod_j f_j / p
@pytest.mark.parametrize("combine", ["auto", "prior_product"])
@pytest.mark.parametrize("J", [2, 3])
def test_walker_combination_is_the_closed_form_product_of_gaussians(J, combine):
    factors = _gaussian_views(J)
    guide = RecognitionGuide(_model_for(factors, _normal_prior(PRIOR_LOC, PRIOR_SCALE)), combine=combine)
    q = _posterior(guide)
    # By hand: precisions add, the prior's counted once; means are precision-weighted.
    lam0 = PRIOR_SCALE**-2
    lam = sum(f.scale**-2 for f in factors) - (J - 1) * lam0
    mean = (sum(f.loc * f.scale**-2 for f in factors) - (J - 1) * lam0 * PRIOR_LOC) / lam
    torch.testing.assert_close(q.base.loc, mean)
    torch.testing.assert_close(q.base.scale, lam.rsqrt())
    torch.testing.assert_close(q.mean, mean)
    # Residual r(z) = log q(z) - sum_j log f_j(z), evaluated directly with torch.distributions.
    z = torch.randn(7, B, D, dtype=torch.float64) * 2
    log_q = torch.distributions.Normal(mean, lam.rsqrt()).log_prob(z).sum(-1)
    log_f = sum(torch.distributions.Normal(f.loc, f.scale).log_prob(z).sum(-1) for f in factors)
    torch.testing.assert_close(q.residual(z), log_q - log_f)
    torch.testing.assert_close(q.log_prob(z), log_q)
    assert q.likelihood_sites == tuple(f"x{j}" for j in range(J))


def test_walker_with_the_standard_normal_prior_in_float32():
    """The canonical set-up (N(0, I) prior, float32): q's precision is lambda_1 + lambda_2 - 1."""
    f1, f2 = (GaussianFactor(f.loc.float(), f.scale.float()) for f in _gaussian_views(2, seed=1))
    q = _posterior(RecognitionGuide(_model_for([f1, f2], _normal_prior(torch.zeros(D), 1.0))))
    lam = f1.scale**-2 + f2.scale**-2 - 1
    torch.testing.assert_close(q.base.scale, lam.rsqrt())
    torch.testing.assert_close(q.base.loc, (f1.loc * f1.scale**-2 + f2.loc * f2.scale**-2) / lam)
    assert q.base.loc.dtype == torch.float32


def test_improper_walker_posterior_raises_naming_the_latent():
    """Factors broader than the prior: lambda_1 + lambda_2 - lambda_0 = 0.25 + 0.25 - 1 < 0."""
    factors = [GaussianFactor(torch.zeros(B, D), torch.full((B, D), 2.0)) for _ in range(2)]
    guide = RecognitionGuide(_model_for(factors, _normal_prior(torch.zeros(D), 1.0)))
    with pytest.raises(ValueError, match=r"latent 'z'.*precision"):
        poutine.trace(guide).get_trace()
    # The plain product is always proper.
    q = _posterior(RecognitionGuide(_model_for(factors, _normal_prior(torch.zeros(D), 1.0)), combine="product"))
    torch.testing.assert_close(q.base.scale, torch.full((B, D), math.sqrt(2.0)))


# --------------------------------------------------------------------------- plain products
@pytest.mark.parametrize(
    "combine, prior",
    [
        ("product", _normal_prior(PRIOR_LOC, PRIOR_SCALE)),
        ("auto", dist.Laplace(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1)),
    ],
    ids=["combine=product", "auto+laplace_prior"],
)
def test_plain_product_of_two_gaussians(combine, prior):
    f1, f2 = _gaussian_views(2, seed=2)
    q = _posterior(RecognitionGuide(_model_for([f1, f2], prior), combine=combine))
    lam = f1.scale**-2 + f2.scale**-2
    mean = (f1.loc * f1.scale**-2 + f2.loc * f2.scale**-2) / lam
    torch.testing.assert_close(q.base.loc, mean)
    torch.testing.assert_close(q.base.scale, lam.rsqrt())
    # r(z) = -log Z, constant in z, with Z = int f1 f2 = prod_d N(mu_1d; mu_2d, s_1d^2 + s_2d^2).
    log_z = torch.distributions.Normal(f2.loc, (f1.variance + f2.variance).sqrt()).log_prob(f1.loc).sum(-1)
    z = torch.randn(4, B, D, dtype=torch.float64)
    torch.testing.assert_close(q.residual(z), -log_z.expand(4, B))


def test_prior_product_needs_a_normal_prior():
    factors = _gaussian_views(2)
    prior = dist.Laplace(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1)
    with pytest.raises(ValueError, match="prior_product"):
        poutine.trace(RecognitionGuide(_model_for(factors, prior), combine="prior_product")).get_trace()


@pytest.mark.parametrize("mode", ["combine=product", "marginal_prior"])
def test_point_mass_factors_plain_product(mode):
    r"""Two DeltaFactors (eps-Gaussians at :math:`a_1, a_2`): :math:`q = \mathcal N((a_1 + a_2)/2, \varepsilon^2/2)`."""
    eps = 0.05
    g = torch.Generator().manual_seed(3)
    a1, a2 = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    f1, f2 = DeltaFactor(a1, eps), DeltaFactor(a2, eps)
    if mode == "marginal_prior":
        prior, combine = MarginalPrior(f1), "auto"
    else:
        prior, combine = _normal_prior(torch.zeros(D), 1.0), "product"
    q = _posterior(RecognitionGuide(_model_for([f1, f2], prior), combine=combine))
    torch.testing.assert_close(q.base.loc, (a1 + a2) / 2)
    torch.testing.assert_close(q.base.scale, torch.full((B, D), eps / math.sqrt(2)))
    z = q.base.loc + 0.01 * torch.randn(B, D)
    log_f = torch.distributions.Normal(a1, eps).log_prob(z).sum(-1) + torch.distributions.Normal(a2, eps).log_prob(z).sum(-1)
    log_q = torch.distributions.Normal((a1 + a2) / 2, eps / math.sqrt(2)).log_prob(z).sum(-1)
    torch.testing.assert_close(q.residual(z), log_q - log_f, rtol=1e-4, atol=1e-3)


def test_single_point_mass_view_is_the_encoder_output():
    """One view: q = f_n itself; a DeltaRecognition posterior returns e(x_n) exactly, residual 0."""
    net = nn.Linear(3, D)
    enc = DeltaRecognition(net, D, eps=0.1)
    x = torch.randn(B, 3)

    def model(x):
        f = enc(x)
        with pyro.plate("data", B):
            z = pyro.sample("z", _normal_prior(torch.zeros(D), 1.0))
            observe("x", f, z)

    trace = poutine.trace(RecognitionGuide(model)).get_trace(x)
    site = trace.nodes["z"]
    torch.testing.assert_close(site["value"], net(x))
    assert isinstance(site["fn"].base, DeltaFactor)
    assert torch.equal(site["fn"].residual(site["value"]), torch.zeros(B))


def test_categorical_product():
    r""":math:`q_n(k) \propto f_1(k \mid x_n) f_2(k \mid x_n)`, residual :math:`-\log\sum_k f_1 f_2`."""
    K = 4
    g = torch.Generator().manual_seed(4)
    f1 = CategoricalFactor(torch.randn(B, K, generator=g).log_softmax(-1))
    f2 = CategoricalFactor(torch.randn(B, K, generator=g).log_softmax(-1))

    def model():
        with pyro.plate("data", B):
            k = pyro.sample("k", dist.Categorical(logits=torch.zeros(K)))
            observe("x1", f1, k)
            observe("x2", f2, k)

    site = poutine.trace(RecognitionGuide(model)).get_trace().nodes["k"]
    q = site["fn"]
    p1, p2 = f1.probs, f2.probs
    expected = p1 * p2 / (p1 * p2).sum(-1, keepdim=True)
    torch.testing.assert_close(q.base.probs, expected)
    values = torch.arange(K).unsqueeze(-1).expand(K, B)
    torch.testing.assert_close(q.residual(values), -torch.log((p1 * p2).sum(-1)).expand(K, B))
    torch.testing.assert_close(q.log_prob(values), expected.log().T)
    assert site["value"].shape == (B,) and not site["value"].is_floating_point()


# --------------------------------------------------------------------------- amortised posteriors
def _amortised_setup():
    r1 = GaussianRecognition(nn.Linear(3, 2 * D), D, prior_scale=1.0, name="a1")
    r2 = GaussianRecognition(nn.Linear(3, 2 * D), D, prior_scale=1.0, name="a2")
    amortiser = nn.Sequential(nn.Linear(2 * 2 * D, 8), nn.Tanh(), nn.Linear(8, 2 * D))
    x1, x2 = torch.randn(B, 3), torch.randn(B, 3)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", _normal_prior(torch.zeros(D), 1.0))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model, amortiser=amortiser), (x1, x2), (r1, r2, amortiser)


def test_amortised_posterior_is_the_network_of_the_factor_parameters():
    model, guide, (x1, x2), (r1, r2, amortiser) = _amortised_setup()
    q = poutine.trace(guide).get_trace(x1, x2).nodes["z"]["fn"]
    f1, f2 = r1(x1), r2(x2)
    out = amortiser(torch.cat([f1.loc, f1.scale.log(), f2.loc, f2.scale.log()], -1))
    torch.testing.assert_close(q.base.loc, out[:, :D])
    torch.testing.assert_close(q.base.scale, F.softplus(out[:, D:]) + 1e-3)
    z = torch.randn(3, B, D)
    torch.testing.assert_close(q.residual(z), q.base.log_prob(z) - f1.log_prob(z) - f2.log_prob(z))


def test_amortiser_receives_gradients_and_trains_under_svi():
    model, guide, args, (_, _, amortiser) = _amortised_setup()
    loss = RPM_ELBO().differentiable_loss(model, guide, *args)
    loss.backward()
    for p in amortiser.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any())
    assert any(name.startswith("recognition_guide.amortiser") for name in pyro.get_param_store().keys())
    before = [p.detach().clone() for p in amortiser.parameters()]
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    for _ in range(3):
        assert math.isfinite(svi.step(*args))
    assert all(not torch.equal(a, p) for a, p in zip(before, amortiser.parameters()))


def test_amortiser_bad_output_width_and_non_gaussian_factors():
    r = GaussianRecognition(nn.Linear(3, 2 * D), D)
    x = torch.randn(B, 3)

    def model(x):
        f = r(x)
        with pyro.plate("data", B):
            z = pyro.sample("z", _normal_prior(torch.zeros(D), 1.0))
            observe("x", f, z)

    guide = RecognitionGuide(model, amortiser=nn.Linear(2 * D, 3))
    with pytest.raises(ValueError, match="amortiser"):
        poutine.trace(guide).get_trace(x)

    f = CategoricalFactor(torch.randn(B, 3).log_softmax(-1))

    def discrete():
        with pyro.plate("data", B):
            observe("x", f, pyro.sample("k", dist.Categorical(logits=torch.zeros(3))))

    with pytest.raises(ValueError, match="amortiser"):
        poutine.trace(RecognitionGuide(discrete, amortiser=nn.Linear(3, 3))).get_trace()


# --------------------------------------------------------------------------- Predictive and subsampling
def _single_view(N: int = B):
    r = GaussianRecognition(nn.Linear(3, 2 * D), D, name="pv")
    x = torch.randn(N, 3)

    def model(x, subsample_size=None):
        f = r(x)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", _normal_prior(torch.zeros(D), 1.0))
            observe("x", f, z, index=idx)

    return model, RecognitionGuide(model), x, r


@pytest.mark.parametrize("parallel, S, rtol", [(False, 500, 0.15), (True, 2000, 0.1)])
def test_predictive_returns_posterior_samples(parallel, S, rtol):
    model, guide, x, r = _single_view()
    predictive = pyro.infer.Predictive(model, guide=guide, num_samples=S, return_sites=["z"], parallel=parallel)
    with torch.no_grad():
        samples = predictive(x)["z"]
        f = r(x)
    assert samples.shape == (S, B, D)
    # q_n = f(. | x_n): sample means and standard deviations match the factors.
    se = f.scale / math.sqrt(S)
    assert bool(((samples.mean(0) - f.loc).abs() < 5 * se).all())
    torch.testing.assert_close(samples.std(0), f.scale, rtol=rtol, atol=0)


def test_subsampled_posterior_uses_the_factors_of_the_minibatch():
    """Whole-data-set support: the posterior of datum idx[b] is built from f(. | x[idx[b]])."""
    N = 12
    model, guide, x, r = _single_view(N)
    trace = poutine.trace(guide).get_trace(x, subsample_size=4)
    idx = trace.nodes["data"]["value"]
    q = trace.nodes["z"]["fn"]
    with torch.no_grad():
        f = r(x)
    assert idx.shape == (4,) and trace.nodes["z"]["value"].shape == (4, D)
    torch.testing.assert_close(q.base.loc, f.loc[idx])
    torch.testing.assert_close(q.base.scale, f.scale[idx])


def test_guide_trace_holds_only_the_latents():
    """The private model run does not leak: no likelihood or other model sites in the guide's trace."""
    model, guide, args, _ = _amortised_setup()
    trace = poutine.util.prune_subsample_sites(poutine.trace(guide).get_trace(*args))
    samples = [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    assert samples == ["z"]
    assert not trace.nodes["z"]["is_observed"]


# --------------------------------------------------------------------------- bad models and arguments
def test_untied_latent_raises_naming_the_site():
    f = GaussianFactor(torch.zeros(B, D), torch.ones(B, D))

    def model():
        with pyro.plate("data", B):
            z = pyro.sample("z", _normal_prior(torch.zeros(D), 1.0))
            pyro.sample("w_untied", dist.Normal(0.0, 1.0))
            observe("x", f, z)

    with pytest.raises(ValueError, match=r"\['w_untied'\]"):
        poutine.trace(RecognitionGuide(model)).get_trace()
    with pytest.raises(ValueError, match="w_untied"):
        RPM_ELBO().loss(model, RecognitionGuide(model))


def test_transformed_latent_raises():
    f = GaussianFactor(torch.zeros(B, D), torch.ones(B, D))

    def model():
        with pyro.plate("data", B):
            z = pyro.sample("z", _normal_prior(torch.zeros(D), 1.0))
            observe("x", f, 2 * z)

    with pytest.raises(ValueError, match="transformed"):
        poutine.trace(RecognitionGuide(model)).get_trace()


def test_constructor_checks():
    with pytest.raises(TypeError, match="model"):
        RecognitionGuide("not a model")
    with pytest.raises(ValueError, match="combine"):
        RecognitionGuide(lambda: None, combine="sum")
    with pytest.raises(TypeError, match="amortiser"):
        RecognitionGuide(lambda: None, amortiser=lambda t: t)


# --------------------------------------------------------------------------- conditional priors
def _markov_model(factors_by_step, a: float = 0.9):
    """z_0 ~ N(0, 1), z_t | z_{t-1} ~ N(a z_{t-1}, 1 - a^2); two views per step."""

    def model():
        with pyro.plate("data", B):
            z = pyro.sample("z_0", _normal_prior(torch.zeros(D, dtype=torch.float64), 1.0))
            for j, f in enumerate(factors_by_step[0]):
                observe(f"x_0_{j}", f, z)
            for t in range(1, len(factors_by_step)):
                z = pyro.sample(f"z_{t}", _normal_prior(a * z, math.sqrt(1 - a**2)))
                for j, f in enumerate(factors_by_step[t]):
                    observe(f"x_{t}_{j}", f, z)

    return model


def test_auto_falls_back_to_the_product_for_a_conditional_prior():
    r"""``combine="auto"`` uses :math:`p \prod_j f_j / p` only for a prior that depends on no other latent.

    In a Markov chain the first step's prior :math:`\mathcal N(0, 1)` is fixed, so step 0 gets Walker's
    combination; :math:`p(z_1 \mid z_0)` depends on :math:`z_0`, whose value in the guide's private model
    run is a placeholder, so step 1 gets the plain product.
    """
    steps = [_gaussian_views(2, seed=10), _gaussian_views(2, seed=11)]
    trace = poutine.trace(RecognitionGuide(_markov_model(steps))).get_trace()
    product = poutine.trace(RecognitionGuide(_markov_model(steps), combine="product")).get_trace()
    walker = _posterior(
        RecognitionGuide(_model_for(steps[0], _normal_prior(torch.zeros(D, dtype=torch.float64), 1.0)), combine="prior_product")
    )
    torch.testing.assert_close(trace.nodes["z_0"]["fn"].base.loc, walker.base.loc)
    torch.testing.assert_close(trace.nodes["z_1"]["fn"].base.loc, product.nodes["z_1"]["fn"].base.loc)
    torch.testing.assert_close(trace.nodes["z_1"]["fn"].base.scale, product.nodes["z_1"]["fn"].base.scale)
    assert not torch.allclose(trace.nodes["z_0"]["fn"].base.loc, product.nodes["z_0"]["fn"].base.loc)
    # the guide's values are not grad-tracking placeholders
    assert not trace.nodes["z_1"]["value"].requires_grad or trace.nodes["z_1"]["value"].grad_fn is not None


def test_auto_uses_a_prior_with_learned_parameters():
    """A prior whose parameters are learned (pyro.param), not other latents, still enters q."""
    factors = _gaussian_views(2, seed=12)

    def model():
        loc = pyro.param("prior_loc", PRIOR_LOC.clone())
        with pyro.plate("data", B):
            z = pyro.sample("z", _normal_prior(loc, PRIOR_SCALE))
            for j, f in enumerate(factors):
                observe(f"x{j}", f, z)

    q_auto = _posterior(RecognitionGuide(model))
    q_walker = _posterior(RecognitionGuide(_model_for(factors, _normal_prior(PRIOR_LOC, PRIOR_SCALE)), combine="prior_product"))
    torch.testing.assert_close(q_auto.base.loc, q_walker.base.loc)
