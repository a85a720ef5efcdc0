# SPDX-License-Identifier: Apache-2.0
"""TrajectoryLikelihood, observe_trajectories and ConjugateGaussianGuide.

References: per-frame categorical likelihoods written with explicit loops; conjugate posteriors as
products of Gaussians computed by hand in float64 (explicit inverses); the normaliser of the tied
posterior from the Gaussian integral in closed form; the ELBO of one draw summed by hand.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import RPM_ELBO, CategoricalFactor, GaussianFactor, GaussianRecognition
from pyro_rpm.guides.conjugate import ConjugateGaussianGuide
from pyro_rpm.likelihood.trajectory import TrajectoryLikelihood, observe_trajectories
from pyro_rpm.priors.gp import GaussianProcessPrior
from pyro_rpm.priors.state_space import LinearGaussianStateSpacePrior

D64 = torch.float64
N, T, D, OBS = 4, 5, 2, 3


def _data(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * T, OBS, generator=g, dtype=D64), torch.randn(n * T, OBS, generator=g, dtype=D64)


def _recognitions(natural=True):
    torch.manual_seed(0)
    kwargs = {"prior_scale": 1.0} if natural else {}
    return [GaussianRecognition(nn.Linear(OBS, 2 * D).double(), D, name=f"r{j}", **kwargs) for j in range(2)]


def _gp():
    return GaussianProcessPrior(D, "matern32", lengthscale=1.5, name="gp").to(D64)


def _make_model(prior, recognitions, pooling="data", subsample=None):
    times = torch.arange(T, dtype=D64)

    def model(x1, x2):
        fs = [r(x) for r, x in zip(recognitions, (x1, x2))]
        n = x1.shape[0] // T
        with pyro.plate("sequences", n, subsample_size=subsample) as idx:
            z = prior("z", T) if isinstance(prior, LinearGaussianStateSpacePrior) else prior("z", times)
            for j, f in enumerate(fs):
                observe_trajectories(f"x{j}", f, z, pooling=pooling, sequences=idx if subsample else None)

    return model


def _frame_params(recognitions, xs):
    """(eta, precision) of every frame and view, shape (J, N, T, D)."""
    etas, precs = [], []
    for r, x in zip(recognitions, xs):
        f = r(x)
        prec = f.scale.pow(-2).detach().reshape(-1, T, D)
        etas.append(f.loc.detach().reshape(-1, T, D) * prec)
        precs.append(prec)
    return torch.stack(etas), torch.stack(precs)


def _hand_gp_posterior(K, h, lam):
    """Per sequence and dimension: N(0, K) times exp(h z - lam z^2 / 2); returns means (N, T, D), covs (N, D, T, T)."""
    means, covs = torch.zeros_like(h), torch.zeros(h.shape[0], D, T, T, dtype=D64)
    for n in range(h.shape[0]):
        for d in range(D):
            S = torch.linalg.inv(torch.linalg.inv(K[d]) + torch.diag(lam[n, :, d]))
            means[n, :, d] = S @ h[n, :, d]
            covs[n, d] = S
    return means, covs


# ---------------------------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("pooling", ["data", "ergodic"])
def test_trajectory_likelihood_matches_loops(pooling):
    g = torch.Generator().manual_seed(1)
    f = GaussianFactor(
        torch.randn(N * T, D, generator=g, dtype=D64), torch.rand(N * T, D, generator=g, dtype=D64) + 0.3
    )
    z = torch.randn(2, N, T, D, generator=g, dtype=D64)  # a particle dimension in front
    lik = TrajectoryLikelihood(f, z, pooling)
    assert lik.batch_shape == (2, N) and lik.event_shape == (T,)
    value = torch.arange(N).unsqueeze(-1).expand(N, T) if pooling == "data" else torch.arange(N * T).reshape(N, T)
    expected = torch.zeros(2, N, dtype=D64)
    for s in range(2):
        for n in range(N):
            for t in range(T):
                support = [m * T + t for m in range(N)] if pooling == "data" else list(range(N * T))
                logs = torch.stack([dist.Normal(f.loc[k], f.scale[k]).log_prob(z[s, n, t]).sum() for k in support])
                expected[s, n] += dist.Normal(f.loc[n * T + t], f.scale[n * T + t]).log_prob(z[s, n, t]).sum()
                expected[s, n] -= torch.logsumexp(logs, 0)
    torch.testing.assert_close(lik.log_prob(value), expected)
    assert lik.logits.shape == (2, N, T, N if pooling == "data" else N * T)


def test_trajectory_likelihood_categorical_factors():
    g = torch.Generator().manual_seed(2)
    f = CategoricalFactor(torch.randn(N * T, 3, generator=g).log_softmax(-1))
    z = torch.randint(3, (N, T), generator=g)
    for pooling in ["data", "ergodic"]:
        lik = TrajectoryLikelihood(f, z, pooling)
        value = torch.arange(N).unsqueeze(-1).expand(N, T) if pooling == "data" else torch.arange(N * T).reshape(N, T)
        expected = torch.zeros(N)
        for n in range(N):
            for t in range(T):
                support = [m * T + t for m in range(N)] if pooling == "data" else list(range(N * T))
                logits = f.logits[support, z[n, t]]
                expected[n] += f.logits[n * T + t, z[n, t]] - torch.logsumexp(logits, 0)
        torch.testing.assert_close(lik.log_prob(value), expected)
        observed = lik.observed_factors(value)
        assert isinstance(observed, CategoricalFactor) and observed.batch_shape == (N, T)
        torch.testing.assert_close(observed.logits[1, 2], f.logits[1 * T + 2])


def test_observe_trajectories_values_and_subsample():
    f = GaussianFactor(torch.randn(N * T, D), torch.ones(N * T, D))
    with pyro.poutine.trace() as tr:
        z = torch.zeros(N, T, D)
        observe_trajectories("a", f, z, pooling="data")
        observe_trajectories("b", f, z, pooling="ergodic")
        observe_trajectories("c", f, torch.zeros(2, T, D), pooling="ergodic", sequences=torch.tensor([3, 1]))
    torch.testing.assert_close(tr.trace.nodes["a"]["value"], torch.arange(N).unsqueeze(-1).expand(N, T))
    torch.testing.assert_close(tr.trace.nodes["b"]["value"], torch.arange(N * T).reshape(N, T))
    torch.testing.assert_close(tr.trace.nodes["c"]["value"], torch.tensor([[15, 16, 17, 18, 19], [5, 6, 7, 8, 9]]))
    observed = tr.trace.nodes["c"]["fn"].observed_factors(tr.trace.nodes["c"]["value"])
    torch.testing.assert_close(observed.loc, f.loc.reshape(N, T, D)[[3, 1]])


def test_likelihood_validation():
    f = GaussianFactor(torch.randn(N * T, D), torch.ones(N * T, D))
    with pytest.raises(ValueError, match="not a multiple of the trajectories' T=3"):
        TrajectoryLikelihood(GaussianFactor(torch.randn(10, D), torch.ones(10, D)), torch.zeros(2, 3, D))
    with pytest.raises(ValueError, match="pooling='data' needs at least 2 sequences"):
        TrajectoryLikelihood(GaussianFactor(torch.randn(T, D), torch.ones(T, D)), torch.zeros(1, T, D), "data")
    with pytest.raises(ValueError, match="pooling must be one of"):
        TrajectoryLikelihood(f, torch.zeros(N, T, D), "time")
    with pytest.raises(ValueError, match="latent must have shape batch"):
        TrajectoryLikelihood(f, torch.zeros(N, T, D + 1))
    with pytest.raises(TypeError, match="factors must be a pyro_rpm Factor"):
        TrajectoryLikelihood(dist.Normal(0, 1), torch.zeros(N, T, D))
    with pytest.raises(ValueError, match="latent has dtype torch.float64"):
        TrajectoryLikelihood(f, torch.zeros(N, T, D, dtype=D64))
    with pytest.raises(ValueError, match="latent must be finite"):
        TrajectoryLikelihood(f, torch.full((N, T, D), float("nan")))
    with pytest.raises(ValueError, match="pass sequences="):
        observe_trajectories("x", f, torch.zeros(2, T, D))
    with pytest.raises(ValueError, match=r"sequences must lie in \[0, 4\)"):
        observe_trajectories("x", f, torch.zeros(2, T, D), sequences=torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="sequences must be a 1-D integer tensor"):
        observe_trajectories("x", f, torch.zeros(2, T, D), sequences=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="sequences has length 3 but the latent has 2"):
        observe_trajectories("x", f, torch.zeros(2, T, D), sequences=torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------- the guide's posterior
@pytest.mark.parametrize("reference", ["marginal", "none"])
def test_gp_guide_posterior_matches_hand_product(reference):
    gp, recs = _gp(), _recognitions()
    x1, x2 = _data()
    guide = ConjugateGaussianGuide(_make_model(gp, recs), reference=reference)
    q = guide.posteriors(x1, x2)["z"]
    eta, prec = _frame_params(recs, (x1, x2))
    K = gp.kernel(torch.arange(T, dtype=D64)).detach() + gp.jitter * torch.eye(T, dtype=D64)
    lam0 = 1 / (1 + gp.jitter)  # the prior marginal precision (unit scale, zero mean)
    h = eta.sum(0)
    lam = prec.sum(0) - (2 * lam0 if reference == "marginal" else 0.0)
    mean, cov = _hand_gp_posterior(K, h, lam)
    torch.testing.assert_close(q.mean.detach(), mean)
    torch.testing.assert_close(q.base.covariance_matrix.detach(), cov)


def test_state_space_guide_posterior_matches_hand_product():
    prior = LinearGaussianStateSpacePrior(D, init_decay=0.6, name="ss").to(D64)
    with torch.no_grad():
        prior.weight.add_(torch.tensor([[0.0, 0.5], [-0.5, 0.0]], dtype=D64))
    recs = _recognitions()
    x1, x2 = _data()
    q = ConjugateGaussianGuide(_make_model(prior, recs)).posteriors(x1, x2)["z"]
    eta, prec = _frame_params(recs, (x1, x2))
    _, omega = prior.distribution(T).natural_params()
    h = eta.sum(0).flatten(-2)
    lam = (prec.sum(0) - 2.0).flatten(-2)  # stationary prior: unit marginals
    for n in range(N):
        S = torch.linalg.inv(omega.detach() + torch.diag(lam[n]))
        torch.testing.assert_close(q.mean[n].detach().flatten(), S @ h[n])


def test_static_limit_is_walkers_tied_posterior():
    """With K = I (no temporal correlation) every frame gets q = N(0,1) * prod_j f_j / N(0,1)."""
    gp = GaussianProcessPrior(D, "matern12", lengthscale=1e-3, learn_lengthscale=False, name="gp").to(D64)
    recs = _recognitions()
    x1, x2 = _data()
    q = ConjugateGaussianGuide(_make_model(gp, recs)).posteriors(x1, x2)["z"]
    eta, prec = _frame_params(recs, (x1, x2))
    eta_q = 0.0 + (eta - 0.0).sum(0)  # eta_p + sum_j (eta_j - eta_p), eta_p = 0
    lam_q = 1.0 + (prec - 1.0).sum(0)  # lam_p + sum_j (lam_j - lam_p), lam_p = 1
    torch.testing.assert_close(q.mean.detach(), eta_q / lam_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.variance.detach(), 1 / lam_q, rtol=1e-5, atol=1e-6)


def test_negative_pseudo_precision_is_clipped():
    gp, recs = _gp(), _recognitions(natural=False)  # plain factors: precision may fall below the prior's
    x1, x2 = _data()
    q = ConjugateGaussianGuide(_make_model(gp, recs)).posteriors(x1, x2)["z"]
    eta, prec = _frame_params(recs, (x1, x2))
    lam = prec.sum(0) - 2 / (1 + gp.jitter)
    assert bool((lam < 0).any())
    K = gp.kernel(torch.arange(T, dtype=D64)).detach() + gp.jitter * torch.eye(T, dtype=D64)
    mean, _ = _hand_gp_posterior(K, eta.sum(0), lam.clamp(min=0))
    torch.testing.assert_close(q.mean.detach(), mean)


# ---------------------------------------------------------------------------------------------- the ELBO
def test_tied_identity_log_normaliser_in_closed_form():
    """log p(Z) + sum log f - log q(Z) = sum_jt log p_t(z_t) + log Z_q at every draw."""
    gp, recs = _gp(), _recognitions()
    x1, x2 = _data()
    q = ConjugateGaussianGuide(_make_model(gp, recs)).posteriors(x1, x2)["z"]
    p = gp.distribution(torch.arange(T, dtype=D64))
    z = q.rsample((6,)).detach()
    fs = [r(x) for r, x in zip(recs, (x1, x2))]
    log_f = sum(dist.Normal(f.loc.reshape(N, T, D), f.scale.reshape(N, T, D)).log_prob(z).sum((-1, -2)) for f in fs)
    var0 = 1 + gp.jitter
    log_pt = 2 * dist.Normal(torch.zeros((), dtype=D64), math.sqrt(var0)).log_prob(z).sum((-1, -2))
    lhs = (p.log_prob(z) + log_f - q.log_prob(z) - log_pt).detach()
    # log Z_q = log int N(z; 0, K) prod_t G_t(z_t) dz with G_t = prod_j f_jt / p_t = exp(a_t + h_t z - lam_t z^2 / 2)
    K = gp.kernel(torch.arange(T, dtype=D64)).detach() + gp.jitter * torch.eye(T, dtype=D64)
    log_z = torch.zeros(N, dtype=D64)
    for n in range(N):
        for d in range(D):
            mus = torch.stack([f.loc.reshape(N, T, D)[n, :, d] for f in fs]).detach()
            vs = torch.stack([f.scale.reshape(N, T, D)[n, :, d] ** 2 for f in fs]).detach()
            a = (-0.5 * torch.log(2 * math.pi * vs) - mus**2 / (2 * vs)).sum() + 2 * T * 0.5 * math.log(
                2 * math.pi * var0
            )
            h = (mus / vs).sum(0)
            lam = (1 / vs).sum(0) - 2 / var0
            S = torch.linalg.inv(torch.linalg.inv(K[d]) + torch.diag(lam))
            log_z[n] += a - 0.5 * torch.logdet(torch.eye(T, dtype=D64) + K[d] @ torch.diag(lam)) + 0.5 * h @ S @ h
    torch.testing.assert_close(lhs, log_z.expand(6, N), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("pooling", ["data", "ergodic"])
def test_rpm_elbo_matches_trace_elbo_and_hand_sum(pooling):
    gp, recs = _gp(), _recognitions()
    x1, x2 = _data()
    model = _make_model(gp, recs, pooling)
    guide = ConjugateGaussianGuide(model)
    pyro.set_rng_seed(7)
    rpm = RPM_ELBO().loss(model, guide, x1, x2)
    pyro.set_rng_seed(7)
    plain = pyro.infer.Trace_ELBO().loss(model, guide, x1, x2)
    assert rpm == pytest.approx(plain, rel=1e-12)
    pyro.set_rng_seed(7)  # the interior estimator applies to RecognitionLikelihood sites only
    assert RPM_ELBO(estimator="interior").loss(model, guide, x1, x2) == pytest.approx(plain, rel=1e-12)
    # the same draw, summed by hand
    pyro.set_rng_seed(7)
    z = pyro.poutine.trace(guide).get_trace(x1, x2).nodes["z"]["value"].detach()
    q = guide.posteriors(x1, x2)["z"]
    p = gp.distribution(torch.arange(T, dtype=D64))
    elbo = (p.log_prob(z) - q.log_prob(z)).sum()
    for r, x in zip(recs, (x1, x2)):
        f = r(x)
        loc, scale = f.loc.reshape(N, T, D), f.scale.reshape(N, T, D)
        for n in range(N):
            for t in range(T):
                support = (
                    [(m, t) for m in range(N)] if pooling == "data" else [(m, s) for m in range(N) for s in range(T)]
                )
                logs = torch.stack([dist.Normal(loc[m, s], scale[m, s]).log_prob(z[n, t]).sum() for m, s in support])
                elbo = elbo + dist.Normal(loc[n, t], scale[n, t]).log_prob(z[n, t]).sum() - torch.logsumexp(logs, 0)
    assert rpm == pytest.approx(-float(elbo.detach()), rel=1e-10)


@pytest.mark.parametrize("kind", ["gp", "sparse_gp", "state_space"])
def test_gradients_reach_networks_and_prior(kind):
    if kind == "state_space":
        prior = LinearGaussianStateSpacePrior(D, init_decay=0.5, name="ss").to(D64)
    else:
        inducing = torch.tensor([0.0, 2.0, 4.0], dtype=D64) if kind == "sparse_gp" else None
        prior = GaussianProcessPrior(D, "rbf", lengthscale=2.0, inducing_times=inducing, name="gp").to(D64)
    recs = _recognitions()
    model = _make_model(prior, recs, "ergodic")
    loss = RPM_ELBO().differentiable_loss(model, ConjugateGaussianGuide(model), *_data())
    loss.backward()
    for module in (prior, *recs):
        for name, param in module.named_parameters():
            assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_svi_trains_with_both_elbos():
    gp, recs = _gp(), _recognitions()
    x1, x2 = _data()
    model = _make_model(gp, recs, "ergodic")
    guide = ConjugateGaussianGuide(model)
    for elbo in (RPM_ELBO(), pyro.infer.Trace_ELBO()):
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        losses = [svi.step(x1, x2) for _ in range(3)]
        assert all(math.isfinite(v) for v in losses)
    params = set(pyro.get_param_store().keys())
    assert {"gp$$$kernel.unconstrained_lengthscale", "r0$$$net.weight", "r1$$$net.weight"} <= params


def test_subsampled_plate_uses_the_models_indices():
    gp, recs = _gp(), _recognitions()
    x1, x2 = _data()
    full = ConjugateGaussianGuide(_make_model(gp, recs)).posteriors(x1, x2)["z"]
    model = _make_model(gp, recs, subsample=2)
    guide = ConjugateGaussianGuide(model)
    trace = pyro.poutine.trace(guide).get_trace(x1, x2)
    idx = trace.nodes["sequences"]["value"]
    assert idx.shape == (2,)
    torch.testing.assert_close(trace.nodes["z"]["fn"].mean, full.mean[idx])
    loss = RPM_ELBO().loss(model, guide, x1, x2)
    assert math.isfinite(loss)


def test_vectorised_particles():
    gp, recs = _gp(), _recognitions()
    model = _make_model(gp, recs, "data")
    guide = ConjugateGaussianGuide(model)
    elbo = RPM_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide, *_data())
    assert loss.shape == () and math.isfinite(float(loss.detach()))
    with pyro.plate("particles", 5, dim=-2):
        z = guide(*_data())["z"]
    assert z.shape == (5, N, T, D)


# ---------------------------------------------------------------------------------------------- errors
def test_guide_errors():
    recs = _recognitions()
    x1, x2 = _data()
    with pytest.raises(ValueError, match="reference must be one of"):
        ConjugateGaussianGuide(lambda: None, reference="prior")
    with pytest.raises(TypeError, match="model must be callable"):
        ConjugateGaussianGuide(3)
    with pytest.raises(TypeError, match="sites must be a list of site names"):
        ConjugateGaussianGuide(lambda: None, sites="z")

    def normal_prior(x1, x2):
        f = recs[0](x1)
        with pyro.plate("sequences", N):
            z = pyro.sample("z", dist.Normal(torch.zeros(T, D, dtype=D64), 1.0).to_event(2))
            observe_trajectories("x", f, z)

    with pytest.raises(ValueError, match="latent site 'z' has prior Independent"):
        ConjugateGaussianGuide(normal_prior)(x1, x2)

    gp = _gp()

    def unobserved(x1, x2):
        with pyro.plate("sequences", N):
            gp("z", torch.arange(T, dtype=D64))

    with pytest.raises(ValueError, match="latent site 'z' is not observed through any TrajectoryLikelihood"):
        ConjugateGaussianGuide(unobserved)(x1, x2)
    with pytest.raises(ValueError, match=r"sites \['w'\] are not latent sample sites"):
        ConjugateGaussianGuide(_make_model(gp, recs), sites=["w"])(x1, x2)

    float32_recs = [GaussianRecognition(nn.Linear(OBS, 2 * D), D, prior_scale=1.0, name=f"s{j}") for j in range(2)]
    with pytest.raises(ValueError, match="latent has dtype torch.float64 but factors has dtype torch.float32"):
        ConjugateGaussianGuide(_make_model(gp, float32_recs))(x1.float(), x2.float())

    stationary_only = LinearGaussianStateSpacePrior(D, stationary=False, name="free").to(D64)
    with pytest.raises(ValueError, match="no known diagonal marginals"):
        ConjugateGaussianGuide(_make_model(stationary_only, recs))(x1, x2)
    q = ConjugateGaussianGuide(_make_model(stationary_only, recs), reference="none").posteriors(x1, x2)["z"]
    assert q.batch_shape == (N,)
