# SPDX-License-Identifier: Apache-2.0
r"""Gradients and parameters across ranks: summing gradients, broadcasting parameters, the optimiser.

After the local backward, the parameter gradients :math:`g_r` of rank r sum over ranks to
:math:`\nabla_\theta L = \sum_r g_r`, the gradient of the single-process loss (Pyro's convention:
summed over the data) over the concatenated global batch. :func:`all_reduce_gradients` and
:class:`DistributedOptim` therefore **sum** the gradients across ranks (``average=False``);
:class:`torch.nn.parallel.DistributedDataParallel` *averages* them, :math:`\nabla_\theta L / W`.
Each collective moves one flat buffer per device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim
from torch import nn

from .._validation import check_tensor
from .group import rank_and_world_size

__all__ = ["DistributedOptim", "all_reduce_gradients", "broadcast_parameters"]


def _flat_groups(tensors: list[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``tensors`` grouped by ``(device, dtype)``: one flat buffer (one collective) per group."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _as_parameter_list(parameters: Iterable[torch.Tensor] | nn.Module, name: str) -> list[torch.Tensor]:
    """The tensors of a module, one tensor or an iterable of tensors, as a list (TypeError otherwise)."""
    if isinstance(parameters, nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError as error:
        raise TypeError(
            f"{name} must be an nn.Module or an iterable of tensors, got {type(parameters).__name__}"
        ) from error
    for p in params:
        check_tensor(p, f"every entry of {name}")
    return params


def all_reduce_gradients(
    parameters: Iterable[torch.Tensor] | nn.Module, *, group: Any = None, average: bool = False
) -> None:
    r"""Sum (or average) the ``.grad`` of ``parameters`` over ranks, in place.

    With the default ``average=False`` every rank ends with :math:`\sum_r g_r`, the gradient of the
    single-process loss over the concatenated global batch (see :mod:`pyro_rpm.distributed`). The
    gradients are flattened into one buffer per device and dtype, so one collective moves them all.
    Every rank must pass the same parameters **in the same order** (sort Pyro's parameters by
    name; :class:`DistributedOptim` does). A parameter without a gradient counts as zero and
    receives the reduced gradient. No-op with one process.

    :param parameters: an ``nn.Module`` or an iterable of tensors.
    :param group: the process group (default: the default group).
    :param bool average: divide by the world size (DDP's convention) instead of summing.
    """
    params = _as_parameter_list(parameters, "parameters")
    _, world = rank_and_world_size(group)
    if world == 1 or not params:
        return
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise TypeError("all_reduce_gradients does not support sparse gradients")
    for indices in _flat_groups(params).values():
        chosen = [params[i] for i in indices]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in chosen]
        ).contiguous()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if average:
            flat /= world
        offset = 0
        for p in chosen:
            piece = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is None:
                p.grad = piece.clone()
            else:
                p.grad.copy_(piece)


@torch.no_grad()
def broadcast_parameters(parameters: Iterable[torch.Tensor] | nn.Module, *, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s values of ``parameters`` to every rank, in place (as DDP does at start).

    Use it once before training with :class:`DistributedOptim`, so all ranks start equal. Every rank
    must pass the same parameters in the same order. No-op with one process.

    :param parameters: an ``nn.Module`` or an iterable of tensors.
    :param int src: the rank whose values win (a global rank).
    :param group: the process group (default: the default group).
    """
    params = _as_parameter_list(parameters, "parameters")
    _, world = rank_and_world_size(group)
    if world == 1 or not params:
        return
    for indices in _flat_groups(params).values():
        chosen = [params[i] for i in indices]
        flat = torch.cat([p.detach().reshape(-1) for p in chosen]).contiguous()
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        for p in chosen:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


class DistributedOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` that all-reduces the gradients before the wrapped optimiser steps.

    The bridge between :class:`pyro.infer.SVI` (and Pyro's parameter store) and data parallelism,
    in the role of Pyro's ``HorovodOptimizer``: ``SVI(model, guide, DistributedOptim(optim), elbo)``.
    Each step sorts the parameters by their parameter-store names (so every rank reduces them in
    the same order), sums their gradients over ranks with :func:`all_reduce_gradients` (one
    collective) and calls the wrapped optimiser. Works with any ``PyroOptim``, including
    :class:`~pyro_rpm.train.optim.MultiTensorOptim`. Start all ranks from the same parameters (same
    seed, or :func:`broadcast_parameters`).

    :param PyroOptim optim: the optimiser to wrap, e.g. ``pyro.optim.Adam({"lr": 1e-3})``.
    :param group: the process group (default: the default group).
    :param bool average: average instead of sum (see :func:`all_reduce_gradients`).

    Example::

        >>> optim = DistributedOptim(pyro.optim.Adam({"lr": 1e-3}))
        >>> # svi = pyro.infer.SVI(model, guide, optim, RPM_ELBO())
    """

    def __init__(self, optim: PyroOptim, *, group: Any = None, average: bool = False) -> None:
        if not isinstance(optim, PyroOptim):
            raise TypeError(f"optim must be a pyro.optim.PyroOptim, got {type(optim).__name__}")
        # The wrapped optimiser keeps all state; PyroOptim.__init__ is deliberately not called.
        self.optim = optim
        self.group = group
        self.average = bool(average)

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        store = pyro.get_param_store()
        params = list(params)
        names = [store.param_name(p) for p in params]
        if any(name is None for name in names):
            raise ValueError("DistributedOptim: every parameter must be in Pyro's parameter store (to order them)")
        order = sorted(range(len(params)), key=names.__getitem__)
        params = [params[i] for i in order]
        all_reduce_gradients(params, group=self.group, average=self.average)
        self.optim(params, *args, **kwargs)

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Step a wrapped learning-rate scheduler (``pyro.optim.lr_scheduler``)."""
        self.optim.step(*args, **kwargs)

    def get_state(self) -> dict:
        return self.optim.get_state()

    def set_state(self, state_dict: dict) -> None:
        self.optim.set_state(state_dict)

    def save(self, filename: str) -> None:
        self.optim.save(filename)

    def load(self, filename: str, map_location: Any = None) -> None:
        self.optim.load(filename, map_location=map_location)

    def __getattr__(self, name: str) -> Any:
        if name == "optim":  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.optim, name)
