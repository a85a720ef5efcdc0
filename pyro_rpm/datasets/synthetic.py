# SPDX-License-Identifier: Apache-2.0
r"""Synthetic multi-view data with known latents.

:func:`two_view_gaussian` draws :math:`z^{(n)} \sim \mathcal N(0, I_D)` and two views

.. math::

    x_j^{(n)} = g_j(z^{(n)}) + \sigma \epsilon_j^{(n)}, \qquad
    g_j(z) = W_{j2} \tanh(W_{j1} z + b_j), \qquad j = 1, 2,

with random, fixed, view-specific weights (so each view is a different noisy nonlinear function of
the same latent) and independent Gaussian noise :math:`\epsilon_j \sim \mathcal N(0, I)`.
"""

from __future__ import annotations

import torch

from .._validation import check_int, check_int_type, check_number

__all__ = ["two_view_gaussian"]


def two_view_gaussian(
    n: int,
    latent_dim: int = 2,
    obs_dim: int = 10,
    noise: float = 0.1,
    seed: int = 0,
    hidden_dim: int = 16,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Two noisy nonlinear views of a Gaussian latent.

    :param int n: number of data points :math:`N`.
    :param int latent_dim: latent dimension :math:`D`.
    :param int obs_dim: dimension of each view.
    :param float noise: observation noise standard deviation :math:`\sigma \ge 0`.
    :param int seed: seed of a private generator (the global RNG is untouched).
    :param int hidden_dim: width of the random one-hidden-layer maps :math:`g_j`.
    :param torch.dtype dtype: floating dtype of the returned tensors.
    :returns: ``(x1, x2, z)`` of shapes ``(n, obs_dim)``, ``(n, obs_dim)``, ``(n, latent_dim)``.

    >>> x1, x2, z = two_view_gaussian(100, seed=1)
    >>> tuple(x1.shape), tuple(x2.shape), tuple(z.shape)
    ((100, 10), (100, 10), (100, 2))
    >>> torch.equal(two_view_gaussian(5, seed=3)[0], two_view_gaussian(5, seed=3)[0])
    True
    """
    for value, name in ((n, "n"), (latent_dim, "latent_dim"), (obs_dim, "obs_dim"), (hidden_dim, "hidden_dim")):
        check_int(value, name, expected="a positive int")
    check_number(noise, "noise", at_least=0, expected="a finite float >= 0")
    check_int_type(seed, "seed")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen, dtype=torch.float64)
    views = []
    for _ in range(2):
        w1 = torch.randn(latent_dim, hidden_dim, generator=gen, dtype=torch.float64) * 1.5 / latent_dim**0.5
        b1 = torch.randn(hidden_dim, generator=gen, dtype=torch.float64) * 0.5
        w2 = torch.randn(hidden_dim, obs_dim, generator=gen, dtype=torch.float64) / hidden_dim**0.5
        clean = torch.tanh(z @ w1 + b1) @ w2
        views.append(clean + noise * torch.randn(n, obs_dim, generator=gen, dtype=torch.float64))
    return views[0].to(dtype), views[1].to(dtype), z.to(dtype)
