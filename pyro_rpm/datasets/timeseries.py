# SPDX-License-Identifier: Apache-2.0
r"""Synthetic time series with known latent trajectories (seeded, no downloads).

* :func:`bouncing_ball_poisson`: the Poisson "bouncing ball" of Walker et al. (RP-GPFA): a 1-D
  latent :math:`z_n(t) = \cos(\theta_n + t\pi/10)`, :math:`\theta_n \sim U[0, 2\pi)`, seen through D
  Poisson neurons with Gaussian tuning curves
  :math:`r_d(t) = \rho \exp(-(c_d - z_n(t))^2 / w^2)`, :math:`c_d` evenly spaced in [-1, 1].
* :func:`linear_gaussian_ssm`: multi-view linear-Gaussian state-space data (the
  ``generate_linear_data`` recipe of Hromadka et al.): :math:`A = 0.95\,R(\pi/5)` (block-diagonal
  2-D rotations), :math:`Q = I - AA^\top`, :math:`z_1 \sim \mathcal N(0, I)` (so every
  :math:`z_t \sim \mathcal N(0, I)`), and views :math:`x_{jt} = C_j z_t + d_j + \sigma\epsilon`
  with :math:`C_j, d_j \sim \mathcal N(0, 1)`.

Both return tensors laid out ``(N, T, ...)`` (sequences, steps, features) and the true latents
``(N, T, K)``, and leave the global random state untouched.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_int as _positive_int
from .._validation import check_int_type, check_number

__all__ = ["bouncing_ball_poisson", "linear_gaussian_ssm"]


def _finite_float(value: object, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    check_number(value, name, expected="a finite float")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _check_seed_dtype(seed: object, dtype: object) -> None:
    check_int_type(seed, "seed")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")


def bouncing_ball_poisson(
    num_sequences: int = 20,
    num_steps: int = 50,
    num_neurons: int = 20,
    *,
    max_rate: float = 10.0,
    width: float = 0.6,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Poisson spike counts of a ball bouncing between -1 and 1 (see the module docstring).

    :param int num_sequences: N.
    :param int num_steps: T (steps t = 1..T).
    :param int num_neurons: D Poisson neurons, tuning centres ``linspace(-1, 1, D)``.
    :param float max_rate: :math:`\rho`, the peak rate (default 10).
    :param float width: :math:`w`, the tuning width (default 0.6).
    :param int seed: seed of a private generator.
    :param torch.dtype dtype: dtype of the returned tensors.
    :returns: ``(counts, z)`` of shapes ``(N, T, D)`` and ``(N, T, 1)``.

    >>> x, z = bouncing_ball_poisson(3, 5, 4)
    >>> tuple(x.shape), tuple(z.shape)
    ((3, 5, 4), (3, 5, 1))
    """
    _positive_int(num_sequences, "num_sequences")
    _positive_int(num_steps, "num_steps")
    _positive_int(num_neurons, "num_neurons")
    _finite_float(max_rate, "max_rate", positive=True)
    _finite_float(width, "width", positive=True)
    _check_seed_dtype(seed, dtype)
    gen = torch.Generator().manual_seed(seed)
    theta = 2 * math.pi * torch.rand(num_sequences, 1, generator=gen, dtype=torch.float64)
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    z = torch.cos(theta + t * math.pi / 10)  # (N, T)
    centres = torch.linspace(-1, 1, num_neurons, dtype=torch.float64)
    rates = max_rate * torch.exp(-((centres - z.unsqueeze(-1)) ** 2) / width**2)
    counts = torch.poisson(rates, generator=gen)
    return counts.to(dtype), z.unsqueeze(-1).to(dtype)


def _rotation_blocks(latent_dim: int, angle: float) -> torch.Tensor:
    """Block-diagonal matrix of 2-D rotations by ``angle`` (a trailing 1 for odd dimensions)."""
    R = torch.eye(latent_dim, dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    for i in range(0, latent_dim - 1, 2):
        R[i, i], R[i, i + 1], R[i + 1, i], R[i + 1, i + 1] = c, -s, s, c
    return R


def linear_gaussian_ssm(
    num_sequences: int = 100,
    num_steps: int = 50,
    *,
    num_views: int = 2,
    latent_dim: int = 2,
    obs_dim: int = 10,
    decay: float = 0.95,
    angle: float = math.pi / 5,
    emission_scale: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    r"""Several linear-Gaussian views of a stationary linear dynamical system (see the module docstring).

    :param int num_sequences: N.
    :param int num_steps: T.
    :param int num_views: J.
    :param int latent_dim: K.
    :param int obs_dim: dimension of each view.
    :param float decay: the spectral radius of A (default 0.95), in [0, 1).
    :param float angle: the rotation angle of A per step (default :math:`\pi/5`).
    :param float emission_scale: :math:`\sigma`, the emission noise standard deviation (>= 0).
    :param int seed: seed of a private generator.
    :param torch.dtype dtype: dtype of the returned tensors.
    :returns: ``(views, z)``: a tuple of J tensors ``(N, T, obs_dim)`` and the latents ``(N, T, K)``.

    >>> views, z = linear_gaussian_ssm(4, 6, num_views=3)
    >>> len(views), tuple(views[0].shape), tuple(z.shape)
    (3, (4, 6, 10), (4, 6, 2))
    """
    _positive_int(num_sequences, "num_sequences")
    _positive_int(num_steps, "num_steps")
    _positive_int(num_views, "num_views")
    _positive_int(latent_dim, "latent_dim")
    _positive_int(obs_dim, "obs_dim")
    decay = _finite_float(decay, "decay", nonnegative=True)
    if decay >= 1:
        raise ValueError(f"decay must lie in [0, 1) (a stable system), got {decay!r}")
    angle = _finite_float(angle, "angle")
    emission_scale = _finite_float(emission_scale, "emission_scale", nonnegative=True)
    _check_seed_dtype(seed, dtype)
    gen = torch.Generator().manual_seed(seed)
    K = latent_dim
    A = decay * _rotation_blocks(K, angle)
    Q = torch.eye(K, dtype=torch.float64) - A @ A.T
    L_Q = torch.linalg.cholesky(Q)
    z = torch.empty(num_sequences, num_steps, K, dtype=torch.float64)
    z[:, 0] = torch.randn(num_sequences, K, generator=gen, dtype=torch.float64)
    for t in range(1, num_steps):
        noise = torch.randn(num_sequences, K, generator=gen, dtype=torch.float64) @ L_Q.T
        z[:, t] = z[:, t - 1] @ A.T + noise
    views = []
    for _ in range(num_views):
        C = torch.randn(obs_dim, K, generator=gen, dtype=torch.float64)
        d = torch.randn(obs_dim, generator=gen, dtype=torch.float64)
        eps = torch.randn(num_sequences, num_steps, obs_dim, generator=gen, dtype=torch.float64)
        views.append((z @ C.T + d + emission_scale * eps).to(dtype))
    return tuple(views), z.to(dtype)
