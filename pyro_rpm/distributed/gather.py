# SPDX-License-Identifier: Apache-2.0
r"""Gathering the support of all ranks, with the gradient of the single-process loss.

Rank r holds B points; the gathered support is :math:`y = \operatorname{cat}(x_0, \dots, x_{W-1})`
(rank r's rows at ``r * B : (r + 1) * B``, :func:`local_index`). With :math:`L = \sum_k L_k` the
loss of the single-process run over the concatenated global batch (:math:`L_k` the loss of rank
k, whose normalisers read all of y),

.. math::

    \frac{\partial L}{\partial x_r} = \sum_{k=1}^{W} \Big[\frac{\partial L_k}{\partial y}\Big]_{\text{rows of rank } r},

so the backward of :func:`all_gather_with_grad` all-reduces (sums) the *whole* incoming gradient
and returns this rank's rows (see :mod:`pyro_rpm.distributed` for the two well-known wrong
variants). :func:`gather_factors` gathers the tensors of recognition factors (means and scales,
or logits) in one such collective and rebuilds factors of the same types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from .._pyro import _CACHE
from .._validation import check_int, check_tensor
from ..recognition.base import Factor
from .group import rank_and_world_size

__all__ = ["all_gather_with_grad", "gather_factors", "local_index"]


class _AllGatherWithGrad(torch.autograd.Function):
    """``cat`` of every rank's tensor along dim 0; backward: all-reduce (sum), then this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        rank, world = rank_and_world_size(group)
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor, group=group)
        ctx.group, ctx.rank, ctx.rows = group, rank, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # dL/dx_r = sum_k [dL_k/dy]_(rows of r): sum the WHOLE gradient over ranks, then slice.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def all_gather_with_grad(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    r"""Concatenate ``tensor`` of every rank along dim 0, with the correct gradient.

    Forward: :math:`y = \operatorname{cat}(x_0, \dots, x_{W-1})` (rank r's rows are
    ``r * B : (r + 1) * B``). Backward: the incoming gradient is summed over ranks and this rank's
    rows are returned, :math:`\partial L/\partial x_r = \sum_k [\partial L_k/\partial y]_r` (see
    :mod:`pyro_rpm.distributed` for why, and for the wrong variants). Every rank must pass a tensor
    of the same shape, device and dtype, and every rank must call this (and back-propagate through
    it) in the same order. Without a process group, or with one process, it returns ``tensor`` itself.

    :param torch.Tensor tensor: this rank's rows, shape ``(B, ...)``.
    :param group: the process group (default: the default group).
    :returns: the gathered tensor, shape ``(W * B, ...)``.

    Example (one process: the identity)::

        >>> x = torch.randn(3, 2)
        >>> all_gather_with_grad(x) is x
        True
    """
    check_tensor(tensor, "tensor")
    if tensor.dim() < 1:
        raise ValueError(f"tensor must have a leading dimension to concatenate along, got shape {tuple(tensor.shape)}")
    _, world = rank_and_world_size(group)
    if world == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, group)


def _check_equal_sizes(rows: int, device: torch.device, group: Any) -> None:
    """Raise the same ValueError on every rank unless all ranks hold ``rows`` rows (gloo aborts otherwise)."""
    _, world = rank_and_world_size(group)
    size = torch.tensor([rows], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) != 1:
        raise ValueError(
            f"gather_factors: every rank must hold the same number of support points, got {sizes} "
            "(use equal per-rank batch sizes, e.g. drop the incomplete last batch)"
        )


def _parts(factor: Factor) -> list[torch.Tensor]:
    """The tensors that define a factor (:meth:`~pyro_rpm.Factor.tensors`), each flattened to ``(B, k)``."""
    return [t.reshape(t.shape[0], -1) for t in factor.tensors()]


def _rebuild(factor: Factor, parts: list[torch.Tensor]) -> Factor:
    """A factor of ``factor``'s family and settings (:meth:`~pyro_rpm.Factor.with_tensors`) from gathered parts."""
    shapes = [t.shape[1:] for t in factor.tensors()]
    return factor.with_tensors([p.reshape((p.shape[0],) + shape) for p, shape in zip(parts, shapes)])


def gather_factors(
    factors: Factor | Sequence[Factor], group: Any = None, *, check_sizes: bool = True
) -> Factor | Sequence[Factor]:
    r"""The factors of every rank's support points, with gradients to every rank (see :mod:`pyro_rpm.distributed`).

    Returns factors of the same types over the :math:`W B` support points of all ranks; rank r's
    points sit at ``r * B : (r + 1) * B`` (:func:`local_index`). Pass all views at once,
    ``f1, f2 = gather_factors([r1(x1), r2(x2)])``: their tensors (means and scales of Gaussian and
    :class:`~pyro_rpm.DeltaFactor` factors, logits of categorical ones) travel in **one**
    all-gather, and their gradients in one all-reduce. Collectives of small tensors cost a latency
    each, so this matters for small batches. Inside :func:`~pyro_rpm.recognition_cache` (which
    :class:`~pyro_rpm.RPM_ELBO` opens every step) the same factors are gathered once, so the
    guide's private model run and the model share the collective.

    :param factors: a factor with ``batch_shape == (B,)`` (this rank's points), or a list/tuple of
        them (the same B, dtype and device).
    :param group: the process group (default: the default group).
    :param bool check_sizes: first check (one small collective) that every rank holds B points and
        raise a :class:`ValueError` on every rank otherwise (a mismatched gather aborts gloo).
        ``False`` saves that collective when the sizes are known to agree.
    :returns: the gathered factor, or a list/tuple of them (the input itself with one process).
    """
    single = isinstance(factors, Factor)
    items = [factors] if single else factors
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(
            "factors must be a pyro_rpm Factor (the output of a recognition module) or a non-empty list/tuple of "
            f"them, got {type(factors).__name__}"
        )
    for factor in items:
        if not isinstance(factor, Factor):
            raise TypeError(
                f"factors must be pyro_rpm Factors (the output of a recognition module), got {type(factor).__name__}"
            )
        if len(factor.batch_shape) != 1:
            raise ValueError(
                f"factors must have batch_shape (B,) over this rank's points, got {tuple(factor.batch_shape)}"
            )
    parts = [_parts(factor) for factor in items]
    flat = [t for ts in parts for t in ts]
    if len({t.shape[0] for t in flat}) != 1 or len({(t.device, t.dtype) for t in flat}) != 1:
        raise ValueError("gather_factors: the factors must have the same number of points, device and dtype")
    _, world = rank_and_world_size(group)
    if world == 1:
        return factors
    cache = _CACHE.get()
    key = ("gather_factors", tuple(id(f) for f in items), id(group))
    if cache is not None and key in cache:
        return cache[key][1]
    if check_sizes:
        _check_equal_sizes(flat[0].shape[0], flat[0].device, group)
    widths = [t.shape[-1] for t in flat]
    gathered_flat = all_gather_with_grad(torch.cat(flat, dim=-1), group).split(widths, dim=-1)
    gathered, offset = [], 0
    for factor, ts in zip(items, parts):
        gathered.append(_rebuild(factor, list(gathered_flat[offset : offset + len(ts)])))
        offset += len(ts)
    result = gathered[0] if single else type(items)(gathered)
    if cache is not None:
        cache[key] = (items, result)  # keep the inputs alive so their ids are not reused in this scope
    return result


def local_index(size: int, *, group: Any = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Positions of this rank's ``size`` points in the gathered support: ``rank * size + arange(size)``.

    Example (one process)::

        >>> local_index(4)
        tensor([0, 1, 2, 3])
    """
    check_int(size, "size", expected="a positive int")
    rank, _ = rank_and_world_size(group)
    return torch.arange(rank * size, (rank + 1) * size, device=device)
