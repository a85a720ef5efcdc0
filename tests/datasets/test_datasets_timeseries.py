# SPDX-License-Identifier: Apache-2.0
"""Seeded time-series generators: shapes, determinism, and the statistics their definitions imply."""

import math

import pytest
import torch

from pyro_rpm.datasets.timeseries import bouncing_ball_poisson, linear_gaussian_ssm


def test_bouncing_ball_shapes_and_determinism():
    state = torch.random.get_rng_state()
    x, z = bouncing_ball_poisson(6, 30, 12, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    assert x.shape == (6, 30, 12) and z.shape == (6, 30, 1) and x.dtype == torch.float32
    x2, z2 = bouncing_ball_poisson(6, 30, 12, seed=3)
    assert torch.equal(x, x2) and torch.equal(z, z2)
    assert not torch.equal(bouncing_ball_poisson(6, 30, 12, seed=4)[0], x)
    assert bool((x >= 0).all()) and torch.equal(x, x.round())
    assert bouncing_ball_poisson(2, 3, 4, dtype=torch.float64)[0].dtype == torch.float64


def test_bouncing_ball_latent_is_a_cosine_at_step_pi_over_10():
    _, z = bouncing_ball_poisson(5, 40, 3, seed=0, dtype=torch.float64)
    z = z[..., 0]
    # cos(a + h) + cos(a - h) = 2 cos(h) cos(a): z_{t+1} + z_{t-1} = 2 cos(pi/10) z_t
    torch.testing.assert_close(z[:, 2:] + z[:, :-2], 2 * math.cos(math.pi / 10) * z[:, 1:-1])
    assert bool((z.abs() <= 1).all())


def test_bouncing_ball_counts_follow_the_tuning_curves():
    x, z = bouncing_ball_poisson(400, 50, 5, max_rate=10.0, width=0.6, seed=1, dtype=torch.float64)
    centres = torch.linspace(-1, 1, 5, dtype=torch.float64)
    rates = 10.0 * torch.exp(-((centres - z) ** 2) / 0.36)
    # Poisson: E[x - r] = 0 and Var[x] = E[r]; 20000 frames per neuron
    assert float((x - rates).mean(dim=(0, 1)).abs().max()) < 0.05
    torch.testing.assert_close(((x - rates) ** 2).mean(dim=(0, 1)), rates.mean(dim=(0, 1)), rtol=0.05, atol=0)


def test_linear_gaussian_ssm_statistics():
    views, z = linear_gaussian_ssm(2000, 20, num_views=3, latent_dim=2, obs_dim=4, emission_scale=0.3, seed=2)
    assert len(views) == 3 and all(v.shape == (2000, 20, 4) for v in views) and z.shape == (2000, 20, 2)
    z64 = z.double()
    # stationary unit marginals at every step
    cov = torch.einsum("ntk,ntl->tkl", z64, z64) / 2000
    torch.testing.assert_close(cov, torch.eye(2, dtype=torch.float64).expand(20, 2, 2), atol=0.1, rtol=0)
    # least squares of z_t on z_{t-1} recovers A = 0.95 R(pi/5)
    prev, nxt = z64[:, :-1].reshape(-1, 2), z64[:, 1:].reshape(-1, 2)
    A_hat = torch.linalg.lstsq(prev, nxt).solution.T
    c, s = math.cos(math.pi / 5), math.sin(math.pi / 5)
    A = 0.95 * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    torch.testing.assert_close(A_hat, A, atol=0.02, rtol=0)
    # each view is affine in z plus noise of standard deviation 0.3
    design = torch.cat([z64.reshape(-1, 2), torch.ones(2000 * 20, 1, dtype=torch.float64)], -1)
    for v in views:
        target = v.double().reshape(-1, 4)
        residual = target - design @ torch.linalg.lstsq(design, target).solution
        torch.testing.assert_close(residual.std(0), torch.full((4,), 0.3, dtype=torch.float64), atol=0.01, rtol=0)


def test_linear_gaussian_ssm_odd_dimension_and_determinism():
    views, z = linear_gaussian_ssm(3, 4, num_views=1, latent_dim=3, seed=5)
    views2, z2 = linear_gaussian_ssm(3, 4, num_views=1, latent_dim=3, seed=5)
    assert torch.equal(z, z2) and torch.equal(views[0], views2[0]) and z.shape == (3, 4, 3)


def test_validation():
    with pytest.raises(ValueError, match="num_sequences must be an int >= 1"):
        bouncing_ball_poisson(0)
    with pytest.raises(ValueError, match="width must be > 0"):
        bouncing_ball_poisson(2, width=0.0)
    with pytest.raises(TypeError, match="seed must be an int"):
        bouncing_ball_poisson(2, seed=1.5)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        bouncing_ball_poisson(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\)"):
        linear_gaussian_ssm(2, decay=1.0)
    with pytest.raises(ValueError, match="emission_scale must be >= 0"):
        linear_gaussian_ssm(2, emission_scale=-0.1)
    with pytest.raises(ValueError, match="num_views must be an int >= 1"):
        linear_gaussian_ssm(2, num_views=0)
