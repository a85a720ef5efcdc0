# SPDX-License-Identifier: Apache-2.0
"""LinearGaussianStateSpacePrior and GaussianMarkovChain: densities, exact posteriors, stability, validation.

The reference is the chain written as one dense Gaussian over the flattened trajectory: its
block-tridiagonal precision assembled block by block in float64, inverted explicitly, and scored with
scipy's multivariate normal.
"""

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import multivariate_normal

from pyro_rpm.priors.gaussian_sequence import DenseGaussianTrajectory
from pyro_rpm.priors.state_space import GaussianMarkovChain, LinearGaussianStateSpacePrior

D64 = torch.float64


def _prior(stationary=True, stable=True, D=2, seed=0):
    prior = LinearGaussianStateSpacePrior(D, stationary=stationary, stable=stable, init_decay=0.7).to(D64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.weight.add_(torch.randn(D, D, generator=g, dtype=D64))
        if not stationary:
            prior.noise_offdiag.add_(torch.randn(D, D, generator=g, dtype=D64) * 0.3)
    return prior


def _dense(prior, T):
    """(precision, covariance) of the flattened trajectory, assembled block by block."""
    D = prior.latent_dim
    A = prior.transition_matrix.detach()
    Q_inv = torch.linalg.inv(prior.noise_covariance.detach())
    P = torch.zeros(T * D, T * D, dtype=D64)
    P[:D, :D] += torch.eye(D, dtype=D64)  # z_1 ~ N(0, I)
    for t in range(1, T):
        i, j = slice(t * D, (t + 1) * D), slice((t - 1) * D, t * D)
        P[i, i] += Q_inv
        P[j, j] += A.T @ Q_inv @ A
        P[i, j] -= Q_inv @ A
        P[j, i] -= A.T @ Q_inv
    return P, torch.linalg.inv(P)


def _pseudo(B, T, D, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g, dtype=D64)
    lam = torch.rand(B, T, D, generator=g, dtype=D64) * 2
    lam[0, min(1, T - 1)] = 0.0  # a step without observation
    return h, lam


def _hand_posterior(P, h, lam):
    """Mean and covariance of N(0, P^-1) times exp(h.z - z.diag(lam).z / 2), by explicit inverses."""
    Pq = P + torch.diag_embed(lam.flatten(-2))
    S = torch.linalg.inv(Pq)
    return (S @ h.flatten(-2).unsqueeze(-1)).squeeze(-1), S


# ---------------------------------------------------------------------------------------------- the prior
@pytest.mark.parametrize("stationary", [True, False])
def test_log_prob_matches_dense_gaussian(stationary):
    T = 5
    prior = _prior(stationary=stationary)
    p = prior.distribution(T)
    assert isinstance(p, GaussianMarkovChain) and p.event_shape == (T, 2)
    _, cov = _dense(prior, T)
    z = torch.randn(4, T, 2, dtype=D64)
    expected = multivariate_normal(np.zeros(T * 2), cov.numpy()).logpdf(z.flatten(-2).numpy())
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(
        p.marginal_covariance.detach(), torch.stack([cov[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] for t in range(T)])
    )


def test_natural_params_are_the_block_tridiagonal_precision():
    prior = _prior(stationary=False)
    p = prior.distribution(6)
    eta, omega = p.natural_params()
    P, _ = _dense(prior, 6)
    torch.testing.assert_close(omega.detach(), P)
    torch.testing.assert_close(eta.detach(), torch.zeros(12, dtype=D64))


def test_stationary_prior_has_unit_marginals_and_stable_transition():
    for seed in range(5):
        prior = _prior(seed=seed)
        with torch.no_grad():
            prior.weight.mul_(5.0)  # large weights: singular values close to, but below, 1
        A = prior.transition_matrix.detach()
        assert bool((torch.linalg.svdvals(A) < 1).all())
        torch.testing.assert_close(prior.noise_covariance.detach(), torch.eye(2, dtype=D64) - A @ A.T)
        assert bool((torch.linalg.eigvalsh(prior.noise_covariance.detach()) > 0).all())
        _, cov = _dense(prior, 6)
        torch.testing.assert_close(cov.diagonal(), torch.ones(12, dtype=D64))
        for t in range(6):
            torch.testing.assert_close(cov[2 * t : 2 * t + 2, 2 * t : 2 * t + 2], torch.eye(2, dtype=D64))
        eta0, lam0 = prior.distribution(6).marginal_natural_params()
        torch.testing.assert_close(lam0, torch.ones(6, 2, dtype=D64))
        torch.testing.assert_close(eta0, torch.zeros(6, 2, dtype=D64))


def test_stable_transition_construction_matches_definition():
    """A = W L^{-T} with L L^T = I + W^T W, and Q = (I + W W^T)^{-1} (Woodbury)."""
    prior = _prior()
    W = prior.weight.detach()
    eye = torch.eye(2, dtype=D64)
    L = torch.linalg.cholesky(eye + W.T @ W)
    torch.testing.assert_close(prior.transition_matrix.detach(), W @ torch.linalg.inv(L).T)
    torch.testing.assert_close(prior.noise_covariance.detach(), torch.linalg.inv(eye + W @ W.T))
    s = torch.linalg.svdvals(W)
    torch.testing.assert_close(torch.linalg.svdvals(prior.transition_matrix.detach()), s / (1 + s * s).sqrt())


def test_non_stationary_options():
    prior = LinearGaussianStateSpacePrior(2, stationary=False, stable=False, init_decay=1.5).to(D64)
    torch.testing.assert_close(prior.transition_matrix.detach(), 1.5 * torch.eye(2, dtype=D64))
    torch.testing.assert_close(prior.noise_covariance.detach(), (1 + prior.jitter) * torch.eye(2, dtype=D64))
    with pytest.raises(ValueError, match="no known diagonal marginals"):
        prior.distribution(3).marginal_natural_params()
    fixed = LinearGaussianStateSpacePrior(2, learn=False)
    assert list(fixed.parameters()) == []


def test_sample_moments_match_marginals():
    prior = _prior(stationary=False)
    p = prior.distribution(4)
    z = p.rsample((40000,))
    _, cov = _dense(prior, 4)
    emp = torch.cov(z.flatten(-2).T)
    torch.testing.assert_close(emp, cov, atol=0.05 * float(cov.abs().max()), rtol=0)


def test_markov_program_matches_the_chain():
    prior = _prior()
    with pyro.poutine.trace() as tr:
        with pyro.plate("sequences", 3):
            z = prior("z", 5, markov=True)
    assert z.shape == (3, 5, 2)
    assert [n for n in tr.trace.nodes if n.startswith("z_")] == [f"z_{t}" for t in range(5)]
    log_joint = sum(tr.trace.nodes[f"z_{t}"]["fn"].log_prob(z[:, t]) for t in range(5))
    torch.testing.assert_close(log_joint, prior.distribution(5).log_prob(z))
    with pyro.poutine.trace() as tr2:
        with pyro.plate("sequences", 3):
            z2 = prior("w", 5)
    assert tr2.trace.nodes["w"]["fn"].batch_shape == (3,) and z2.shape == (3, 5, 2)


# ---------------------------------------------------------------------------------------------- posteriors
@pytest.mark.parametrize("method", ["kalman", "dense"])
@pytest.mark.parametrize("stationary", [True, False])
def test_posterior_matches_dense_algebra(method, stationary):
    T = 6
    prior = _prior(stationary=stationary)
    prior.posterior_method = method
    p = prior.distribution(T)
    h, lam = _pseudo(3, T, 2)
    q = p.posterior(h, lam)
    assert isinstance(q, GaussianMarkovChain if method == "kalman" else DenseGaussianTrajectory)
    assert q.batch_shape == (3,) and q.event_shape == (T, 2)
    P, _ = _dense(prior, T)
    mu, S = _hand_posterior(P, h, lam)
    torch.testing.assert_close(q.mean.detach().flatten(-2), mu)
    z = q.rsample((4,)).detach()
    for n in range(3):
        expected = multivariate_normal(mu[n].numpy(), S[n].numpy()).logpdf(z[:, n].flatten(-2).numpy())
        np.testing.assert_allclose(q.log_prob(z)[:, n].detach().numpy(), expected, rtol=1e-10)
    variance = torch.stack([S[:, 2 * t : 2 * t + 2, 2 * t : 2 * t + 2].diagonal(dim1=-2, dim2=-1) for t in range(T)], 1)
    torch.testing.assert_close(q.variance.detach(), variance)


def test_kalman_smoother_equals_dense_block_solve_for_longer_chains():
    prior = _prior()
    p = prior.distribution(40)
    h, lam = _pseudo(2, 40, 2, seed=5)
    p.posterior_method = "kalman"
    q_kalman = p.posterior(h, lam)
    p.posterior_method = "dense"
    q_dense = p.posterior(h, lam)
    torch.testing.assert_close(q_kalman.mean, q_dense.mean)
    torch.testing.assert_close(q_kalman.variance, q_dense.variance)
    z = q_dense.rsample((3,))
    torch.testing.assert_close(q_kalman.log_prob(z), q_dense.log_prob(z))


@pytest.mark.parametrize("method", ["kalman", "dense"])
def test_posterior_sample_moments(method):
    prior = _prior()
    prior.posterior_method = method
    q = prior.distribution(4).posterior(*_pseudo(1, 4, 2))
    z = q.rsample((40000,))
    torch.testing.assert_close(z.mean(0), q.mean.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), q.variance.detach(), atol=0.02, rtol=0)


def test_single_step_and_no_observations():
    prior = _prior()
    p1 = prior.distribution(1)
    h, lam = _pseudo(2, 1, 2)
    for method in ["kalman", "dense"]:
        p1.posterior_method = method
        q = p1.posterior(h, lam)
        precision = 1 + lam[:, 0]  # N(0, I) times the pseudo-observation, per dimension
        torch.testing.assert_close(q.mean[:, 0].detach(), h[:, 0] / precision)
        torch.testing.assert_close(q.variance[:, 0].detach(), 1 / precision)
    p = prior.distribution(5)
    q = p.posterior(torch.zeros(5, 2, dtype=D64), torch.zeros(5, 2, dtype=D64))  # no information: the prior
    z = p.rsample((3,))
    torch.testing.assert_close(q.log_prob(z), p.log_prob(z))


def test_posterior_validation():
    p = _prior().distribution(4)
    good = torch.zeros(4, 2, dtype=D64)
    with pytest.raises(ValueError, match="must be >= 0"):
        p.posterior(good, good - 1)
    with pytest.raises(ValueError, match=r"precision must have shape \(\.\.\., T, D\)"):
        p.posterior(good, torch.zeros(4, 3, dtype=D64))
    q = p.posterior(good, good + 1)
    if isinstance(q, GaussianMarkovChain):
        with pytest.raises(ValueError, match="needs a forward chain"):
            q.posterior(good, good)
    p.posterior_method = "kalman"
    with pytest.raises(ValueError, match="needs a forward chain"):
        p.posterior(good, good + 1).posterior(good, good)
    with pytest.raises(ValueError, match="value must end with the event shape"):
        p.log_prob(torch.zeros(3, 2, dtype=D64))


def test_constructor_validation():
    with pytest.raises(ValueError, match="stationary=True needs stable=True"):
        LinearGaussianStateSpacePrior(2, stable=False)
    with pytest.raises(ValueError, match=r"init_decay must lie in \[0, 1\)"):
        LinearGaussianStateSpacePrior(2, init_decay=1.0)
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        LinearGaussianStateSpacePrior(0)
    with pytest.raises(ValueError, match="posterior_method must be one of"):
        LinearGaussianStateSpacePrior(2, posterior_method="exact")
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        LinearGaussianStateSpacePrior(2).distribution(0)
    with pytest.raises(ValueError, match="noise_scale must be finite and strictly positive"):
        LinearGaussianStateSpacePrior(2, stationary=False, noise_scale=-1.0)
    with pytest.raises(ValueError, match=r"trans_matrix must have shape \(\.\.\., T-1, D, D\)"):
        GaussianMarkovChain(torch.zeros(2), torch.eye(2), torch.zeros(2, 2), torch.zeros(1, 2), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("method", ["kalman", "dense"])
def test_gradients_reach_transition_and_noise(method):
    prior = LinearGaussianStateSpacePrior(2, stationary=False, init_decay=0.5, posterior_method=method)
    p = prior.distribution(5)
    h = torch.randn(3, 5, 2, requires_grad=True)
    q = p.posterior(h, torch.rand(3, 5, 2))
    z = q.rsample()
    (p.log_prob(z).sum() - q.log_prob(z).sum()).backward()
    for name, param in prior.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    assert h.grad is not None and bool(h.grad.abs().sum() > 0)
