# SPDX-License-Identifier: Apache-2.0
r"""Synthetic data: :func:`pyro_rpm.datasets.two_view_gaussian`.

:math:`z \sim \mathcal N(0, I_D)`, :math:`x_j = g_j(z) + \sigma\epsilon_j` with random, fixed,
view-specific maps :math:`g_j`. Checks shapes and dtypes, determinism under a seed, that the global
random state is untouched, that the views differ, that ``noise=0`` makes each view a deterministic
function of z, and that bad arguments raise.
"""

import math

import pytest
import torch

from pyro_rpm.datasets import two_view_gaussian
from pyro_rpm.datasets.synthetic import two_view_gaussian as direct


def test_exported_from_the_package():
    assert two_view_gaussian is direct


@pytest.mark.parametrize("n, latent_dim, obs_dim", [(1, 1, 1), (50, 2, 10), (33, 3, 7)])
def test_shapes_and_dtype(n, latent_dim, obs_dim):
    x1, x2, z = two_view_gaussian(n, latent_dim=latent_dim, obs_dim=obs_dim)
    assert x1.shape == (n, obs_dim) and x2.shape == (n, obs_dim) and z.shape == (n, latent_dim)
    assert x1.dtype == x2.dtype == z.dtype == torch.float32
    for t in (x1, x2, z):
        assert bool(torch.isfinite(t).all())
    x1, x2, z = two_view_gaussian(n, latent_dim=latent_dim, obs_dim=obs_dim, dtype=torch.float64)
    assert x1.dtype == x2.dtype == z.dtype == torch.float64


def test_defaults():
    x1, x2, z = two_view_gaussian(20)
    assert x1.shape == (20, 10) and z.shape == (20, 2)


def test_deterministic_under_a_seed_and_different_across_seeds():
    a = two_view_gaussian(40, seed=7)
    b = two_view_gaussian(40, seed=7)
    c = two_view_gaussian(40, seed=8)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    for u, v in zip(a, c):
        assert not torch.allclose(u, v)


def test_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    expected = torch.rand(5)
    torch.set_rng_state(state)
    two_view_gaussian(100, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_latent_is_standard_normal():
    """N = 20000: sample mean within 5 standard errors of 0 and sample covariance close to I."""
    n = 20000
    _, _, z = two_view_gaussian(n, latent_dim=3, seed=1, dtype=torch.float64)
    assert bool((z.mean(0).abs() < 5 / math.sqrt(n)).all())
    torch.testing.assert_close(torch.cov(z.T), torch.eye(3, dtype=torch.float64), atol=0.05, rtol=0)


def test_views_differ():
    x1, x2, _ = two_view_gaussian(200, noise=0.0, seed=2)
    assert not torch.allclose(x1, x2)
    # Not a trivial relabelling either: the two clean views are not even perfectly correlated per column.
    corr = torch.corrcoef(torch.cat([x1, x2], 1).T)[:10, 10:]
    assert bool((corr.abs() < 0.999).all())


def test_noise_zero_gives_deterministic_functions_of_z():
    r"""Under one seed, ``noise=0`` and ``noise=0.5`` share z and the clean views: the noisy views differ
    from the clean ones by :math:`\sigma\epsilon` with :math:`\epsilon` of mean 0 and unit variance. The
    clean views are continuous functions of z: nearest neighbours in z have nearby x (noisy ones do not)."""
    n = 500
    x1, x2, z = two_view_gaussian(n, noise=0.0, seed=4, dtype=torch.float64)
    # Same seed, same z: the clean part is shared and the noisy views differ by sigma * eps.
    y1, y2, z_noisy = two_view_gaussian(n, noise=0.5, seed=4, dtype=torch.float64)
    assert torch.equal(z, z_noisy)
    for clean, noisy in ((x1, y1), (x2, y2)):
        residual = (noisy - clean) / 0.5
        assert abs(residual.mean().item()) < 5 / math.sqrt(residual.numel())
        assert residual.std().item() == pytest.approx(1.0, abs=0.03)
    # x is a smooth deterministic function of z: nearest neighbours in z have nearby x.
    dist_z = torch.cdist(z, z) + torch.eye(n, dtype=torch.float64) * 1e9
    nn_idx = dist_z.argmin(1)
    close = dist_z.min(1).values < 0.02
    assert int(close.sum()) > 5
    gap = (x1[close] - x1[nn_idx[close]]).norm(dim=1)
    typical = (x1 - x1.mean(0)).norm(dim=1).mean()
    assert bool((gap < 0.1 * typical).all())
    # With noise the same pairs are not close in x.
    gap_noisy = (y1[close] - y1[nn_idx[close]]).norm(dim=1)
    assert bool((gap_noisy > gap).all())


def test_noise_zero_views_are_exact_functions_of_z_via_a_fixed_network():
    r"""Fit :math:`x_1 = W_2 \tanh(W_1 z + b)` exactly: with ``noise=0`` the hidden features
    :math:`\tanh(W_1 z + b)` span x, so x lies in a subspace of dimension <= hidden_dim; with
    ``hidden_dim < obs_dim`` the matrix of clean views has rank hidden_dim, a noisy one full rank."""
    x1, x2, _ = two_view_gaussian(300, obs_dim=10, hidden_dim=4, noise=0.0, seed=5, dtype=torch.float64)
    assert torch.linalg.matrix_rank(x1).item() == 4
    assert torch.linalg.matrix_rank(x2).item() == 4
    y1, _, _ = two_view_gaussian(300, obs_dim=10, hidden_dim=4, noise=0.1, seed=5, dtype=torch.float64)
    assert torch.linalg.matrix_rank(y1).item() == 10


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"n": 0}, ValueError, "n"),
        ({"n": -3}, ValueError, "n"),
        ({"n": 2.0}, ValueError, "n"),
        ({"n": True}, ValueError, "n"),
        ({"n": 5, "latent_dim": 0}, ValueError, "latent_dim"),
        ({"n": 5, "obs_dim": 0}, ValueError, "obs_dim"),
        ({"n": 5, "hidden_dim": 0}, ValueError, "hidden_dim"),
        ({"n": 5, "noise": -0.1}, ValueError, "noise"),
        ({"n": 5, "noise": float("nan")}, ValueError, "noise"),
        ({"n": 5, "noise": float("inf")}, ValueError, "noise"),
        ({"n": 5, "noise": "0.1"}, ValueError, "noise"),
        ({"n": 5, "seed": 1.5}, TypeError, "seed"),
        ({"n": 5, "seed": "0"}, TypeError, "seed"),
        ({"n": 5, "dtype": torch.int64}, TypeError, "dtype"),
        ({"n": 5, "dtype": "float32"}, TypeError, "dtype"),
    ],
)
def test_bad_arguments_raise(kwargs, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        two_view_gaussian(**kwargs)
