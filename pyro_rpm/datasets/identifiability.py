# SPDX-License-Identifier: Apache-2.0
r"""Positive pairs with known latents for the identifiability benchmarks of contrastive learning.

The data-generating processes of Zimmermann et al. (2021, "Contrastive learning inverts the data
generating process") and Rusak et al. (2024, "InfoNCE: identifying the gap between theory and
practice"). A positive pair is :math:`(z, \tilde z)` with :math:`z \sim p(z)` and
:math:`\tilde z \sim p(\tilde z \mid z)`; both are observed through one fixed invertible mixing
:math:`x = g(z)`, :math:`\tilde x = g(\tilde z)`:

* :func:`sphere_vmf_pairs`: :math:`z` uniform on the unit sphere :math:`S^{d-1}`,
  :math:`\tilde z \sim \mathrm{vMF}(z, \kappa)` (:func:`von_mises_fisher`, exact sampling);
* :func:`box_laplace_pairs`: :math:`z` uniform in the box :math:`[a, b]^d`, each coordinate
  :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)` truncated to :math:`[a, b]`
  (:func:`truncated_laplace`);
* :func:`anisotropic_sphere_pairs`: :math:`z` uniform on :math:`S^{d-1}`,
  :math:`\tilde z = y / \lVert y \rVert` with :math:`y = z + \epsilon`,
  :math:`\epsilon \sim \mathcal N(0, \Lambda^{-1})` for a diagonal precision :math:`\Lambda`, redrawn
  while :math:`|1 - \lVert y \rVert| \ge t` (:func:`anisotropic_sphere`);
* :class:`InvertibleMLP`: :math:`g(z) = W_L \sigma(\cdots \sigma(W_1 z))` with leaky-ReLU
  :math:`\sigma` (slope 0.2), no biases and well-conditioned square weights.

Every sampler draws from a private :class:`torch.Generator` (the global RNG is untouched), in
float64 on the CPU, and returns the true latents next to the observations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# The samplers and the mixing live in private modules; this module builds the pairs and re-exports them.
from ._identifiability_latents import (
    _generator,
    anisotropic_sphere,
    bimodal_precision,
    truncated_laplace,
    uniform_box,
    uniform_sphere,
    von_mises_fisher,
)
from ._identifiability_mixing import InvertibleMLP

__all__ = [
    "InvertibleMLP",
    "anisotropic_sphere",
    "anisotropic_sphere_pairs",
    "bimodal_precision",
    "box_laplace_pairs",
    "sphere_vmf_pairs",
    "truncated_laplace",
    "uniform_box",
    "uniform_sphere",
    "von_mises_fisher",
]


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


# -------------------------------------------------------------------------------------------- pairs
def _mix(
    z1: torch.Tensor, z2: torch.Tensor, mixing: nn.Module | None, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = _check_dtype(dtype)
    if mixing is None:
        mixing = InvertibleMLP(z1.shape[-1], seed=seed)
    elif not isinstance(mixing, nn.Module) and not callable(mixing):
        raise TypeError(f"mixing must be an nn.Module or callable, got {type(mixing).__name__}")
    with torch.no_grad():
        x1, x2 = mixing(z1), mixing(z2)
    return x1.to(dtype), x2.to(dtype), z1.to(dtype), z2.to(dtype)


def sphere_vmf_pairs(
    n: int,
    dim: int = 10,
    kappa: float = 10.0,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    mixing: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Zimmermann et al.'s sphere benchmark: :math:`z \sim \mathcal U(S^{d-1})`,
    :math:`\tilde z \sim \mathrm{vMF}(z, \kappa)`, :math:`x = g(z)`, :math:`\tilde x = g(\tilde z)`.

    :param int n: number of pairs.
    :param int dim: latent dimension :math:`d`.
    :param float kappa: vMF concentration.
    :param int seed: seeds the sampler (when ``generator`` is None) and the mixing (when ``mixing`` is None).
    :param torch.Generator generator: CPU generator for the latents (e.g. one stream over training steps).
    :param mixing: the map :math:`g` (default :class:`InvertibleMLP` ``(dim, seed=seed)``).
    :param torch.dtype dtype: dtype of the returned tensors.
    :returns: ``(x1, x2, z1, z2)``, each of shape ``(n, dim)``.

    >>> x1, x2, z1, z2 = sphere_vmf_pairs(4, dim=3, seed=1)
    >>> tuple(x1.shape), bool(torch.allclose(z2.norm(dim=-1), torch.ones(4)))
    ((4, 3), True)
    """
    gen = _generator(generator, seed)
    z1 = uniform_sphere(n, dim, generator=gen)
    z2 = von_mises_fisher(z1, kappa, generator=gen)
    return _mix(z1, z2, mixing, seed, dtype)


def box_laplace_pairs(
    n: int,
    dim: int = 10,
    scale: float = 0.05,
    low: float = 0.0,
    high: float = 1.0,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    mixing: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Zimmermann et al.'s box benchmark: :math:`z \sim \mathcal U([a, b]^d)`, each
    :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)` truncated to :math:`[a, b]`, then :math:`x = g(z)`.

    Parameters as in :func:`sphere_vmf_pairs`; ``scale`` is :math:`\lambda`, ``low``/``high`` the box.

    :returns: ``(x1, x2, z1, z2)``, each of shape ``(n, dim)``.
    """
    gen = _generator(generator, seed)
    z1 = uniform_box(n, dim, low, high, generator=gen)
    z2 = truncated_laplace(z1, scale, low, high, generator=gen)
    return _mix(z1, z2, mixing, seed, dtype)


def anisotropic_sphere_pairs(
    n: int,
    precision: torch.Tensor | Sequence[float] | None = None,
    threshold: float = 0.1,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    mixing: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Rusak et al.'s anisotropic benchmark: :math:`z \sim \mathcal U(S^{d-1})`,
    :math:`\tilde z` from :func:`anisotropic_sphere` with diagonal precision :math:`\Lambda`
    (default :func:`bimodal_precision`: five latents at 25, five at 5), then :math:`x = g(z)`.

    :returns: ``(x1, x2, z1, z2)``, each of shape ``(n, d)`` with ``d = len(precision)``.
    """
    prec = bimodal_precision() if precision is None else torch.as_tensor(precision, dtype=torch.float64)
    if prec.dim() != 1 or prec.shape[0] < 2:
        raise ValueError(f"precision must be a vector of length >= 2, got shape {tuple(prec.shape)}")
    gen = _generator(generator, seed)
    z1 = uniform_sphere(n, prec.shape[0], generator=gen)
    z2 = anisotropic_sphere(z1, prec, threshold, generator=gen)
    return _mix(z1, z2, mixing, seed, dtype)
