# SPDX-License-Identifier: Apache-2.0
r"""The mixing of the identifiability benchmarks: :class:`InvertibleMLP`, a frozen invertible MLP.

:math:`g(z) = W_L\, \sigma(W_{L-1} \cdots \sigma(W_1 z))` with leaky-ReLU :math:`\sigma` (slope
:math:`\alpha`, 0.2 by default), no biases and well-conditioned square weights, as in Zimmermann
et al. (2021). Its inverse :math:`g^{-1}(x) = W_1^{-1} \sigma^{-1}(\cdots \sigma^{-1}(W_L^{-1} x))`
is exact, and the condition number of its Jacobian is at most
:math:`\alpha^{-(L-1)} \prod_l \operatorname{cond}(W_l)` everywhere. Re-exported by
:mod:`pyro_rpm.datasets.identifiability`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_int as _positive_int
from .._validation import check_int_type, check_tensor

__all__ = ["InvertibleMLP"]


class InvertibleMLP(nn.Module):
    r"""Frozen invertible MLP :math:`g(z) = W_L\, \sigma(W_{L-1} \cdots \sigma(W_1 z))` (Zimmermann et al., §1.1).

    :math:`\sigma` is the leaky ReLU with slope :math:`\alpha` (0.2), not applied after the last layer;
    there are no biases. Each :math:`W_l \in \mathbb R^{d \times d}` has entries
    :math:`\mathcal U(-1, 1)` and unit-norm columns. Zimmermann et al. rejection-sample each
    :math:`W_l` until its condition number is at most the smallest of a pool of 25 000 such matrices;
    here the ``n_layers`` best-conditioned matrices of a pool of ``pool_size`` draws are taken (the
    same target, about 4 for :math:`d = 10`, at a bounded cost), in a random order.

    The inverse is exact: :math:`g^{-1}(x) = W_1^{-1} \sigma^{-1}(\cdots \sigma^{-1}(W_L^{-1} x))`, and
    the Jacobian :math:`W_L D_{L-1} W_{L-1} \cdots D_1 W_1` (:math:`D_l` diagonal with entries 1 or
    :math:`\alpha`) has condition number at most :math:`\alpha^{-(L-1)} \prod_l \operatorname{cond}(W_l)`.

    :param int dim: latent (and observation) dimension :math:`d \ge 2`.
    :param int n_layers: number of linear layers :math:`L`.
    :param float negative_slope: :math:`\alpha \in (0, 1]`.
    :param int pool_size: number of random matrices to choose from (at least ``n_layers``).
    :param int seed: seed of the private generator.
    """

    def __init__(
        self, dim: int, n_layers: int = 3, *, negative_slope: float = 0.2, pool_size: int = 25_000, seed: int = 0
    ) -> None:
        super().__init__()
        _positive_int(dim, "dim", 2)
        _positive_int(n_layers, "n_layers")
        _positive_int(pool_size, "pool_size", n_layers)
        if (
            isinstance(negative_slope, bool)
            or not isinstance(negative_slope, (int, float))
            or not 0 < negative_slope <= 1
        ):
            raise ValueError(f"negative_slope must lie in (0, 1], got {negative_slope!r}")
        check_int_type(seed, "seed")
        gen = torch.Generator().manual_seed(seed)
        chunk = 5000
        best = torch.empty(0, dim, dim, dtype=torch.float64)
        best_cond = torch.empty(0, dtype=torch.float64)
        for start in range(0, pool_size, chunk):
            m = min(chunk, pool_size - start)
            w = 2 * torch.rand(m, dim, dim, generator=gen, dtype=torch.float64) - 1
            w = w / w.norm(dim=-2, keepdim=True)  # unit-norm columns
            cond = torch.linalg.cond(w)
            best = torch.cat([best, w])
            best_cond = torch.cat([best_cond, cond])
            keep = best_cond.argsort()[:n_layers]
            best, best_cond = best[keep], best_cond[keep]
        threshold = float(best_cond.max())
        order = torch.randperm(n_layers, generator=gen)
        chosen = [best[i] for i in order.tolist()]
        conds = [float(best_cond[i]) for i in order.tolist()]
        self.dim = dim
        self.n_layers = n_layers
        self.negative_slope = float(negative_slope)
        self.register_buffer("weights", torch.stack(chosen))  # (L, d, d), float64
        #: Condition number of each weight matrix (in layer order).
        self.condition_numbers: list[float] = conds
        #: Largest condition number among the chosen matrices (the pool's ``n_layers``-th smallest).
        self.cond_threshold: float = threshold

    def _check(self, z: torch.Tensor, name: str) -> torch.Tensor:
        check_tensor(z, name)
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"{name} must have a last dimension of size {self.dim}, got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {z.dtype}")
        return z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`x = g(z)` for ``z`` of shape ``(..., dim)``, in the dtype and on the device of ``z``."""
        z = self._check(z, "z")
        w = self.weights.to(z.device, z.dtype)
        h = z
        for layer in range(self.n_layers):
            h = h @ w[layer].T
            if layer < self.n_layers - 1:
                h = torch.nn.functional.leaky_relu(h, self.negative_slope)
        return h

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`z = g^{-1}(x)` (exact, by solving each linear layer)."""
        x = self._check(x, "x")
        w = self.weights.to(x.device, x.dtype)
        h = x
        for layer in reversed(range(self.n_layers)):
            if layer < self.n_layers - 1:
                h = torch.where(h >= 0, h, h / self.negative_slope)
            h = torch.linalg.solve(w[layer], h.unsqueeze(-1)).squeeze(-1)
        return h

    def jacobian_condition_bound(self) -> float:
        r""":math:`\alpha^{-(L-1)} \prod_l \operatorname{cond}(W_l)`, an upper bound on the condition
        number of the Jacobian of :math:`g` at every point."""
        return math.prod(self.condition_numbers) / self.negative_slope ** (self.n_layers - 1)

    def extra_repr(self) -> str:
        conds = ", ".join(f"{c:.2f}" for c in self.condition_numbers)
        return f"dim={self.dim}, n_layers={self.n_layers}, negative_slope={self.negative_slope}, cond=[{conds}]"
