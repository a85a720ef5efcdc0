# SPDX-License-Identifier: Apache-2.0
"""GaussianProcessPrior and its kernels: densities, conjugate posteriors, sparse form, validation, gradients.

References are independent: pyro.contrib.gp kernels and closed-form kernel formulas, scipy's
multivariate normal, and the product of Gaussians computed by hand in float64 with explicit inverses.
"""

import math

import numpy as np
import pyro
import pyro.contrib.gp.kernels as gp_kernels
import pytest
import torch
from scipy.stats import multivariate_normal

from pyro_rpm.priors.gp import GaussianProcessPrior, GaussianProcessSequence, KernelSmoothedMean, check_times
from pyro_rpm.priors.kernels import KERNELS, RBF, Matern12, Matern32, Matern52, make_kernel

D64 = torch.float64


def _times(T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.rand(T, generator=g, dtype=D64) * 6).values


def _prior(kernel="matern32", mean=True, D=2, **kwargs):
    mean_fn = None
    if mean:
        mean_fn = KernelSmoothedMean(torch.linspace(0, 6, 5, dtype=D64), D)
        with torch.no_grad():
            mean_fn.weight.normal_()
    return GaussianProcessPrior(D, kernel, lengthscale=torch.tensor([0.7, 1.9])[:D], mean=mean_fn, **kwargs)


def _dense_prior(prior, t):
    """(mean (T, D), covariance (D, T, T)) written from the kernel formula and the mean function."""
    K = prior.kernel(t).detach() + prior.jitter * torch.eye(len(t), dtype=D64)
    m = prior.mean(t).detach() if prior.mean is not None else torch.zeros(len(t), prior.latent_dim, dtype=D64)
    return m, K


def _hand_posterior(m, K, h, lam):
    """Posterior of N(m, K) times exp(h z - lam z^2 / 2), per dimension, with explicit inverses."""
    P = torch.linalg.inv(K) + torch.diag(lam)
    S = torch.linalg.inv(P)
    return S @ (torch.linalg.solve(K, m) + h), S


# ---------------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (RBF, gp_kernels.RBF),
        (Matern12, gp_kernels.Exponential),
        (Matern32, gp_kernels.Matern32),
        (Matern52, gp_kernels.Matern52),
    ],
)
def test_kernels_match_pyro_contrib_gp(ours, theirs):
    t1, t2 = _times(6, 1), _times(4, 2)
    ell, sigma = torch.tensor([0.5, 2.0], dtype=D64), torch.tensor([1.3, 0.4], dtype=D64)
    k = ours(2, lengthscale=ell, scale=sigma).to(D64)(t1, t2)
    assert k.shape == (2, 6, 4)
    for d in range(2):
        pyro.clear_param_store()  # PyroModule kernels keep their parameters in the global store
        ref = theirs(1, variance=sigma[d] ** 2, lengthscale=ell[d])(t1[:, None], t2[:, None])
        torch.testing.assert_close(k[d], ref.detach(), rtol=1e-6, atol=1e-9)  # float32-stored parameters


def test_kernel_closed_forms_by_hand():
    t = torch.tensor([0.0, 0.3, 1.1], dtype=D64)
    r = (t[:, None] - t[None, :]).abs().numpy() / 0.8
    expected = {
        "rbf": np.exp(-0.5 * r**2),
        "matern12": np.exp(-r),
        "matern32": (1 + math.sqrt(3) * r) * np.exp(-math.sqrt(3) * r),
        "matern52": (1 + math.sqrt(5) * r + 5 * r**2 / 3) * np.exp(-math.sqrt(5) * r),
    }
    for name, value in expected.items():
        k = make_kernel(name, 1, lengthscale=0.8).to(D64)(t)[0]
        np.testing.assert_allclose(k.detach().numpy(), value, rtol=1e-6)
        assert torch.allclose(k.diagonal(), torch.ones(3, dtype=D64))  # scale fixed at 1 by default
    assert set(KERNELS) == {"rbf", "matern12", "matern32", "matern52"}


def test_kernel_parameters_and_constraints():
    k = RBF(3, lengthscale=2.0)
    assert [n for n, _ in k.named_parameters()] == ["unconstrained_lengthscale"]  # scale fixed by default
    torch.testing.assert_close(k.lengthscale, torch.full((3,), 2.0))
    torch.testing.assert_close(k.scale, torch.ones(3))
    k2 = RBF(2, learn_scale=True, learn_lengthscale=False)
    assert [n for n, _ in k2.named_parameters()] == ["unconstrained_scale"]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, -2.0])])
def test_non_positive_lengthscale_raises(bad):
    with pytest.raises(ValueError, match="lengthscale must be finite and strictly positive"):
        GaussianProcessPrior(2, "rbf", lengthscale=bad)


def test_kernel_validation():
    with pytest.raises(ValueError, match="kernel must be one of"):
        GaussianProcessPrior(2, "periodic")
    with pytest.raises(ValueError, match=r"lengthscale must be a scalar or have shape \(2,\)"):
        RBF(2, lengthscale=torch.ones(3))
    with pytest.raises(ValueError, match="scale must be finite and strictly positive"):
        RBF(2, scale=0.0)
    with pytest.raises(ValueError, match="kernel has latent_dim 3"):
        GaussianProcessPrior(2, RBF(3))
    with pytest.raises(TypeError, match="times must be floating point"):
        RBF(1)(torch.arange(3))


# ---------------------------------------------------------------------------------------------- times
def test_times_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        check_times(torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        check_times(torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="times must be finite"):
        check_times(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        check_times(torch.arange(3))
    with pytest.raises(TypeError, match="times must be a torch.Tensor"):
        check_times([0.0, 1.0])
    with pytest.raises(ValueError, match="must be >= 1"):
        check_times(0)
    torch.testing.assert_close(check_times(4), torch.arange(4.0))
    prior = GaussianProcessPrior(1)
    with pytest.raises(ValueError, match="strictly increasing"):
        prior.distribution(torch.tensor([3.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------------- densities
@pytest.mark.parametrize("kernel", ["rbf", "matern12", "matern32", "matern52"])
def test_dense_log_prob_matches_scipy(kernel):
    t = _times()
    prior = _prior(kernel).to(D64)
    p = prior.distribution(t)
    assert p.batch_shape == () and p.event_shape == (7, 2)
    m, K = _dense_prior(prior, t)
    z = torch.randn(3, 7, 2, dtype=D64)
    expected = sum(multivariate_normal(m[:, d].numpy(), K[d].numpy()).logpdf(z[:, :, d].numpy()) for d in range(2))
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(p.mean.detach(), m)
    torch.testing.assert_close(p.variance.detach(), K.diagonal(dim1=-2, dim2=-1).T)


def test_sparse_log_prob_matches_scipy_fitc_covariance():
    t, u = _times(9), torch.tensor([0.5, 2.0, 3.5, 5.5], dtype=D64)
    prior = _prior("rbf", inducing_times=u).to(D64)
    p = prior.distribution(t)
    m, _ = _dense_prior(prior, t)
    z = torch.randn(4, 9, 2, dtype=D64)
    for d in range(2):
        # FITC covariance by hand: Q_tt + diag(k_tt - q_tt + jitter), Q_tt = K_tu K_uu^-1 K_ut
        Kuu = prior.kernel(u)[d].detach() + prior.jitter * torch.eye(4, dtype=D64)
        Ktu = prior.kernel(t, u)[d].detach()
        Qtt = Ktu @ torch.linalg.solve(Kuu, Ktu.T)
        cov = Qtt + torch.diag(1.0 - Qtt.diagonal() + prior.jitter)
        expected = multivariate_normal(m[:, d].numpy(), cov.numpy()).logpdf(z[:, :, d].numpy())
        got = p.base.log_prob(z[:, :, d].unsqueeze(-2).expand(4, 2, 9))[:, d]
        np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-8)
    # the FITC prior keeps the exact marginals N(m, 1 + jitter)
    torch.testing.assert_close(p.variance.detach(), torch.full((9, 2), 1 + prior.jitter, dtype=D64))


def test_sample_moments_match_prior():
    t = _times(5)
    prior = _prior("matern52").to(D64)
    p = prior.distribution(t)
    m, K = _dense_prior(prior, t)
    z = p.rsample((40000,))
    assert z.shape == (40000, 5, 2)
    torch.testing.assert_close(z.mean(0), m, atol=0.03, rtol=0)
    for d in range(2):
        cov = torch.cov(z[:, :, d].T)
        torch.testing.assert_close(cov, K[d], atol=0.04, rtol=0)


def test_marginal_natural_params_unit_scale():
    t = _times()
    prior = _prior("rbf", mean=True).to(D64)
    p = prior.distribution(t)
    eta, lam = p.marginal_natural_params()
    m, _ = _dense_prior(prior, t)
    torch.testing.assert_close(lam.detach(), torch.full((7, 2), 1 / (1 + prior.jitter), dtype=D64))
    torch.testing.assert_close(eta.detach(), m * lam.detach())


# ---------------------------------------------------------------------------------------------- posteriors
@pytest.mark.parametrize("kernel", ["rbf", "matern12", "matern52"])
def test_dense_posterior_matches_hand_algebra(kernel):
    t = _times()
    prior = _prior(kernel).to(D64)
    p = prior.distribution(t)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 7, 2, generator=g, dtype=D64)
    lam = torch.rand(3, 7, 2, generator=g, dtype=D64) * 3
    lam[0, 2] = 0.0  # a step without observation
    q = p.posterior(h, lam)
    assert isinstance(q, GaussianProcessSequence) and q.batch_shape == (3,) and q.event_shape == (7, 2)
    m, K = _dense_prior(prior, t)
    z = q.rsample((5,)).detach()
    per_dimension = q.base.log_prob(z.transpose(-1, -2)).detach()  # (5, 3, 2)
    torch.testing.assert_close(q.log_prob(z), per_dimension.sum(-1))
    for n in range(3):
        for d in range(2):
            mu, S = _hand_posterior(m[:, d], K[d], h[n, :, d], lam[n, :, d])
            torch.testing.assert_close(q.mean[n, :, d].detach(), mu, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(q.base.covariance_matrix[n, d].detach(), S, rtol=1e-8, atol=1e-9)
            expected = multivariate_normal(mu.numpy(), S.numpy()).logpdf(z[:, n, :, d].numpy())
            np.testing.assert_allclose(per_dimension[:, n, d], expected, rtol=1e-8, atol=1e-6)


def test_sparse_posterior_matches_hand_algebra():
    t, u = _times(9), torch.tensor([0.5, 2.0, 3.5, 5.5], dtype=D64)
    prior = _prior("matern32", inducing_times=u).to(D64)
    p = prior.distribution(t)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(2, 9, 2, generator=g, dtype=D64)
    lam = torch.rand(2, 9, 2, generator=g, dtype=D64) * 2
    q = p.posterior(h, lam)
    m = p.mean.detach()
    for n in range(2):
        for d in range(2):
            cov = p.base.covariance_matrix[d].detach()  # the FITC prior covariance (checked against scipy above)
            mu, S = _hand_posterior(m[:, d], cov, h[n, :, d], lam[n, :, d])
            torch.testing.assert_close(q.mean[n, :, d].detach(), mu, rtol=1e-8, atol=1e-9)
            torch.testing.assert_close(q.base.covariance_matrix[n, d].detach(), S, rtol=1e-7, atol=1e-9)


def test_sparse_with_inducing_at_all_times_equals_dense():
    t = _times(8)
    dense = _prior("rbf").to(D64)
    sparse = _prior("rbf", inducing_times=t).to(D64)
    sparse.mean = dense.mean
    p_dense, p_sparse = dense.distribution(t), sparse.distribution(t)
    torch.testing.assert_close(p_sparse.base.covariance_matrix, p_dense.base.covariance_matrix, atol=3e-6, rtol=0)
    h, lam = torch.randn(3, 8, 2, dtype=D64), torch.rand(3, 8, 2, dtype=D64) * 4
    q_dense, q_sparse = p_dense.posterior(h, lam), p_sparse.posterior(h, lam)
    torch.testing.assert_close(q_sparse.mean, q_dense.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(q_sparse.base.covariance_matrix, q_dense.base.covariance_matrix, atol=1e-5, rtol=0)


def test_posterior_sample_moments():
    t = _times(4)
    p = _prior("rbf").to(D64).distribution(t)
    q = p.posterior(torch.randn(4, 2, dtype=D64), torch.rand(4, 2, dtype=D64))
    z = q.rsample((40000,))
    torch.testing.assert_close(z.mean(0), q.mean.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), q.variance.detach(), atol=0.02, rtol=0)


def test_float32_posterior_is_accurate():
    """The QR construction keeps the float32 posterior close to float64 with an RBF kernel."""
    t = torch.arange(30, dtype=D64)
    prior64 = GaussianProcessPrior(1, "rbf", lengthscale=4.0, jitter=1e-4).to(D64)
    h, lam = torch.randn(30, 1, dtype=D64), torch.rand(30, 1, dtype=D64) * 5
    q64 = prior64.distribution(t).posterior(h, lam)
    prior32 = GaussianProcessPrior(1, "rbf", lengthscale=4.0, jitter=1e-4)
    q32 = prior32.distribution(t.float()).posterior(h.float(), lam.float())
    torch.testing.assert_close(q32.mean.double(), q64.mean, atol=1e-3, rtol=0)
    z = q64.rsample((3,))
    torch.testing.assert_close(q32.log_prob(z.float()).double(), q64.log_prob(z), atol=0.05, rtol=1e-3)


def test_posterior_validation():
    p = _prior("rbf").to(D64).distribution(_times())
    good = torch.zeros(7, 2, dtype=D64)
    with pytest.raises(ValueError, match=r"eta1 must have shape \(\.\.\., T, D\)"):
        p.posterior(torch.zeros(6, 2, dtype=D64), good)
    with pytest.raises(ValueError, match="must be >= 0"):
        p.posterior(good, -torch.ones(7, 2, dtype=D64))
    with pytest.raises(ValueError, match="precision has dtype torch.float32"):
        p.posterior(good, good.float())
    with pytest.raises(ValueError, match="eta1 must be finite"):
        p.posterior(torch.full((7, 2), float("nan"), dtype=D64), good)
    with pytest.raises(ValueError, match="value must end with the event shape"):
        p.log_prob(torch.zeros(2, 7, dtype=D64))


def test_constructor_validation():
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        GaussianProcessPrior(0)
    with pytest.raises(ValueError, match="jitter must be finite and strictly positive"):
        GaussianProcessPrior(1, jitter=0.0)
    with pytest.raises(ValueError, match="inducing_times must be distinct"):
        GaussianProcessPrior(1, inducing_times=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="inducing_times must be a 1-D float tensor"):
        GaussianProcessPrior(1, inducing_times=torch.zeros(2, 2))
    with pytest.raises(TypeError, match="mean must be a callable"):
        GaussianProcessPrior(1, mean=3.0)
    bad_mean = GaussianProcessPrior(2, mean=lambda t: torch.zeros(t.shape[-1], 3))
    with pytest.raises(ValueError, match=r"mean must map times of shape \(\.\.\., T\) to \(\.\.\., T, D\)"):
        bad_mean.distribution(torch.arange(4.0))
    with pytest.raises(ValueError, match="give either scale_tril, or cov_factor and cov_diag"):
        GaussianProcessSequence(torch.zeros(2, 3))


def test_not_positive_definite_raises_clearly():
    prior = GaussianProcessPrior(1, "rbf", lengthscale=1e4, jitter=1e-12)
    with pytest.raises(ValueError, match="kernel matrix K \\+ jitter I is not positive definite in torch.float32"):
        prior.distribution(torch.arange(50.0))


# ---------------------------------------------------------------------------------------------- program and gradients
def test_prior_is_a_pyro_program():
    prior = GaussianProcessPrior(2, "matern32", lengthscale=2.0, name="gp_test")
    t = torch.arange(6.0)
    with pyro.poutine.trace() as tr:
        with pyro.plate("sequences", 4):
            z = prior("z", t)
    assert z.shape == (4, 6, 2)
    site = tr.trace.nodes["z"]
    assert site["fn"].batch_shape == (4,) and site["fn"].event_shape == (6, 2)
    assert "gp_test$$$kernel.unconstrained_lengthscale" in pyro.get_param_store()
    torch.testing.assert_close(site["fn"].log_prob(z), prior.distribution(t).log_prob(z))


def test_per_sequence_times():
    prior = GaussianProcessPrior(1, "rbf", lengthscale=1.0).to(D64)
    times = torch.stack([torch.arange(5, dtype=D64), torch.arange(5, dtype=D64) * 2])
    p = prior.distribution(times)
    assert p.batch_shape == (2,)
    z = torch.randn(2, 5, 1, dtype=D64)
    single = torch.stack([prior.distribution(times[i]).log_prob(z[i]) for i in range(2)])
    torch.testing.assert_close(p.log_prob(z), single)


def test_gradients_reach_lengthscale_mean_and_inducing_times():
    t = _times(6).float()
    mean = KernelSmoothedMean(torch.linspace(0, 6, 4), 2)
    prior = GaussianProcessPrior(
        2, "rbf", lengthscale=1.0, mean=mean, inducing_times=t[::2].clone(), learn_inducing=True
    )
    p = prior.distribution(t)
    q = p.posterior(torch.randn(3, 6, 2), torch.rand(3, 6, 2))
    z = q.rsample()
    (p.log_prob(z).sum() - q.log_prob(z).sum()).backward()
    for name, param in prior.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    assert {n for n, _ in prior.named_parameters()} == {
        "inducing_times",
        "kernel.unconstrained_lengthscale",
        "mean.weight",
    }
