# SPDX-License-Identifier: Apache-2.0
r"""Float64 refinement of the Gaussian normaliser: the support points that matter, by the difference form.

The backends of :mod:`pyro_rpm.normalisers` score a pair by the expanded dot product
:math:`q_b\cdot k_m` of :mod:`.features`, whose rounding error is bounded by
:math:`E_{bm} = \gamma_K \sum_i |q_{bi} k_{mi}|` (:math:`K = 2D + 1`; Higham, §3.1). With
:math:`Q_i = \max_b |q_{bi}|`, :math:`E_m = \gamma_K \sum_i Q_i |k_{mi}| \ge E_{bm}` for every
row. For narrow factors and widely spread means this is far above float64 resolution (scale
:math:`10^{-3}`, means spread over 300: :math:`E_m \sim 10^{-5}` nats), and the gradients cancel in
the same way. :func:`refined_logsumexp` therefore splits the support set, for float64 inputs:

* :math:`S`: the points with :math:`E_m >` :data:`REFINE_TOL` :math:`(1 + \max_b |\hat L_b|)`
  that can weigh more than :math:`e^{-40}/N` of some row
  (:math:`\max_b (\hat s_{bm} - \hat L_b) + E_m + 1 > -(40 + \log N)`, with :math:`\hat L` a
  forward pass of the backend, no autograd); their scores are computed by the difference form
  :math:`\sum_d [-\tfrac12 \lambda_{md} (z_{bd} - \mu_{md})^2 + \tfrac12\log\lambda_{md}] - \tfrac D2\log 2\pi`
  for every row, in chunks recomputed in the backward pass (``torch.utils.checkpoint``), so the
  values and gradients carry no cancellation;
* the others, by the backend: they are either scored precisely (:math:`E_m` small) or weigh at most
  :math:`e^{-39}/N` each (their errors reach the result with that weight);

and returns :math:`\operatorname{logaddexp}` of the two. Cost: one extra forward pass and one
chunked pass of column maxima, plus :math:`O(B |S| D)` for the refined points; nothing when no
point needs it (one :math:`O(N D)` bound).
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .dense import clamped_logsumexp
from .features import GaussianFeatures

__all__ = ["REFINE_MARGIN", "REFINE_TOL", "refined_logsumexp", "expansion_bound", "difference_logsumexp"]

#: support points whose rounding bound exceeds ``REFINE_TOL * (1 + max |L|)`` nats may be refined.
REFINE_TOL = 2.0**-40

#: points weighing less than ``exp(-REFINE_MARGIN) / N`` of every row are left to the backend.
REFINE_MARGIN = 40.0
_UNIT_ROUNDOFF_64 = 2.0**-53
_DIFF_CHUNK_ELEMENTS = 2**20


def expansion_bound(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, features: GaussianFeatures) -> torch.Tensor:
    r""":math:`E_m = \gamma_K \sum_i \max_b |q_{bi}|\, |k_{mi}|`, shape ``(N,)``: the rounding bound of every
    expanded score of support point m (module docstring)."""
    with torch.no_grad():
        keys = features.keys(a.detach(), b.detach())
        return (keys.abs() @ q.detach().abs().amax(0)) * (1.01 * (q.shape[1] + 1) * _UNIT_ROUNDOFF_64)


def _column_max(q: torch.Tensor, keys_of, num_support: int, lse: torch.Tensor) -> torch.Tensor:
    r""":math:`\max_b (q_b\cdot k_m - \hat L_b)` per support point, in chunks of columns."""
    chunk = max(1, _DIFF_CHUNK_ELEMENTS // max(1, q.shape[0]))
    out = []
    for start in range(0, num_support, chunk):
        stop = min(start + chunk, num_support)
        out.append(torch.addmm(-lse.unsqueeze(-1), q, keys_of(start, stop).T).amax(0))
    return torch.cat(out)


def _difference_chunk(z: torch.Tensor, loc: torch.Tensor, param: torch.Tensor, is_scale: bool) -> torch.Tensor:
    """Row-logsumexp of the difference-form log-densities of ``z`` (R, D) against ``loc`` (C, D)."""
    diff = z.unsqueeze(-2) - loc
    if is_scale:
        scaled = diff / param
        half_log_det = -param.log().sum(-1)
    else:
        scaled = diff * param.sqrt()
        half_log_det = 0.5 * param.log().sum(-1)
    table = -0.5 * (scaled * scaled).sum(-1) + half_log_det - 0.5 * z.shape[-1] * math.log(2 * math.pi)
    return clamped_logsumexp(table, -1)


def difference_logsumexp(z: torch.Tensor, loc: torch.Tensor, param: torch.Tensor, is_scale: bool) -> torch.Tensor:
    """Row-logsumexp over ``loc`` (C, D) by the difference form, in column chunks recomputed backwards."""
    rows, dim = z.shape
    chunk = max(1, _DIFF_CHUNK_ELEMENTS // max(1, rows * dim))
    shared = param.dim() == 1
    lse = None
    for start in range(0, loc.shape[0], chunk):
        stop = min(start + chunk, loc.shape[0])
        p = param if shared else param[start:stop]
        part = checkpoint(_difference_chunk, z, loc[start:stop], p, is_scale, use_reentrant=False)
        lse = part if lse is None else torch.logaddexp(lse, part)
    return lse


def refined_logsumexp(x: torch.Tensor, q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, features, run):
    """The Gaussian normaliser with the points of S (module docstring) computed by the difference form.

    ``x`` are the latents (R, D) in their dtype, ``q`` their query features, ``a``, ``b`` the support
    means and scales/precisions, ``run(a, b)`` the backend on a subset of the support set (with autograd).
    """
    num_support = a.shape[0]
    bound = expansion_bound(q, a, b, features)
    with torch.no_grad():
        coarse = float(bound.max())
    if coarse <= REFINE_TOL:
        return run(a, b)
    picked = True
    with torch.no_grad():
        lse_hat = run(a.detach(), b.detach())
        if coarse <= REFINE_TOL * (1.0 + float(lse_hat.abs().max())):
            picked = None
    if picked is None:
        return run(a, b)
    with torch.no_grad():
        shared = features.shared

        def keys_of(start, stop):
            return features.keys(a[start:stop].detach(), b.detach() if shared else b[start:stop].detach())

        col = _column_max(q.detach(), keys_of, num_support, lse_hat)
        tol = REFINE_TOL * (1.0 + lse_hat.abs().max())
        threshold = -(REFINE_MARGIN + math.log(num_support))
        refine = (bound > tol) & (col + bound + 1.0 > threshold)
    picked = refine.nonzero().squeeze(-1)
    if picked.numel() == 0:
        return run(a, b)
    rest = (~refine).nonzero().squeeze(-1)
    exact = difference_logsumexp(
        x.to(torch.float64), a.index_select(0, picked), b if shared else b.index_select(0, picked), features.is_scale
    )
    if rest.numel() == 0:
        return exact
    others = run(a.index_select(0, rest), b if shared else b.index_select(0, rest))
    return torch.logaddexp(others, exact)
