# SPDX-License-Identifier: Apache-2.0
r"""Data-parallel training of RPMs with :mod:`torch.distributed` (DDP, gloo/NCCL, torchrun).

Each of W processes (ranks) holds B data points of the global minibatch of :math:`G = W B` points.
The in-batch support of the RPM likelihood should be the *global* minibatch, so every rank gathers
the recognition factors of all ranks (:func:`gather_factors`) and observes its own B points at
their positions ``rank * B + arange(B)`` in the gathered support (:func:`local_index`):

.. code-block:: python

    def model(x1, x2):                              # this rank's B points
        f1, f2 = gather_factors([r1(x1), r2(x2)])    # support: all W*B points, one all-gather
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            idx = local_index(x1.shape[0], device=x1.device)
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

With one process (or no process group) every helper is the identity and this is the canonical
single-process model.

**The gradient of the gather.** Write :math:`y = \operatorname{cat}_r(x_r)` for the gathered
tensor and :math:`L_k(y)` for the loss of rank k (its B terms, whose normalisers read all of y).
The training objective is :math:`L = \sum_k L_k`, the loss of the single-process run over the
concatenated global batch, so

.. math::

    \frac{\partial L}{\partial x_r} = \sum_{k=1}^{W} \Big[\frac{\partial L_k}{\partial y}\Big]_{\text{rows of rank } r}.

Rank r only knows :math:`\partial L_r / \partial y`, so the backward of :func:`all_gather_with_grad`
all-reduces (sums) the *whole* incoming gradient and returns this rank's rows. Two well-known wrong
variants:

* returning only the local rows, :math:`[\partial L_r/\partial y]_r` (``GatherLayer`` of
  lightly before PR #1531, issue #1528; SimCLR-style copies): it drops how the other ranks'
  normalisers depend on this rank's points, and the W-process gradient differs from the
  1-process one;
* taking the local rows first and then all-reducing them, :math:`\sum_k [\partial L_k/\partial y]_k`
  (fixed in cellarium-ml PR #184): it sums *different* rows of the ranks' gradients. Symmetric tests
  (the same data on every rank) cannot tell these apart from the correct rule.

**Convention for the parameter gradients.** After the local backward, the parameter gradients of
rank r sum over ranks to :math:`\nabla_\theta L`, the gradient of the single-process loss (Pyro's
convention: summed over the data) over the concatenated global batch. :func:`all_reduce_gradients`
and :class:`DistributedOptim` therefore **sum** the gradients across ranks (``average=False``).
:class:`torch.nn.parallel.DistributedDataParallel` *averages* them instead (it divides by W): to get
the same gradient under DDP, back-propagate ``world_size * loss`` (or accept :math:`\nabla L / W`,
which only rescales the learning rate of SGD and leaves Adam nearly unchanged).

**Randomness.** Each rank draws its own reparameterisation noise, so a W-process run is a valid
but different random realisation of the 1-process run. :class:`ShardedNoise` draws the noise of the
whole global batch from one seeded generator on every rank and keeps this rank's slice: the
W-process run then computes the same losses and gradients as the 1-process run (up to rounding).
:func:`rank_subsample` gives each rank a disjoint slice of one seeded global minibatch (manual
subsampling, as in Pyro's Horovod example: an automatic ``pyro.plate(subsample_size=...)`` would
draw the same points on every rank).

Launch with ``torchrun --nproc_per_node=W script.py``; :func:`init_from_env` starts the process
group from torchrun's environment (and does nothing in a plain ``python script.py`` run). See
``docs/distributed.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from torch import nn

from ._fit_data import epoch_permutation
from ._validation import check_tensor
from .factors import CategoricalFactor, Factor, GaussianFactor
from .guides import TiedPosterior
from .recognition import _CACHE

__all__ = [
    "DistributedOptim",
    "ShardedNoise",
    "all_gather_with_grad",
    "all_reduce_gradients",
    "broadcast_parameters",
    "gather_factors",
    "init_from_env",
    "local_index",
    "rank_and_world_size",
    "rank_subsample",
]


def rank_and_world_size(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``; ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def init_from_env(device: str | torch.device = "cpu", *, backend: str | None = None, timeout_s: float = 300.0):
    """Start the default process group from torchrun's environment; return ``(rank, world_size)``.

    Under ``torchrun`` (``WORLD_SIZE`` and ``RANK`` set) this calls
    :func:`torch.distributed.init_process_group` with ``init_method="env://"`` and ``backend``
    (default: ``"nccl"`` for a CUDA ``device`` when available, else ``"gloo"``); for CUDA it also
    selects the GPU ``LOCAL_RANK``. Without torchrun's variables it does nothing and returns
    ``(0, 1)``, so one script runs both ways. An already started group is left as it is.

    :param device: the training device (picks the backend).
    :param str backend: ``"gloo"``, ``"nccl"``, ... (overrides the default).
    :param float timeout_s: timeout of collectives, in seconds.
    """
    if dist.is_available() and dist.is_initialized():
        return rank_and_world_size()
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    device = torch.device(device)
    if backend is None:
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=float(timeout_s)))
    return rank_and_world_size()


# ---------------------------------------------------------------------- gather with gradient
class _AllGatherWithGrad(torch.autograd.Function):
    """``cat`` of every rank's tensor along dim 0; backward: all-reduce (sum), then this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        rank, world = rank_and_world_size(group)
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor, group=group)
        ctx.group, ctx.rank, ctx.rows = group, rank, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # dL/dx_r = sum_k [dL_k/dy]_(rows of r): sum the WHOLE gradient over ranks, then slice.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def all_gather_with_grad(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    r"""Concatenate ``tensor`` of every rank along dim 0, with the correct gradient.

    Forward: :math:`y = \operatorname{cat}(x_0, \dots, x_{W-1})` (rank r's rows are
    ``r * B : (r + 1) * B``). Backward: the incoming gradient is summed over ranks and this rank's
    rows are returned, :math:`\partial L/\partial x_r = \sum_k [\partial L_k/\partial y]_r` (see the
    module docstring for why, and for the wrong variants). Every rank must pass a tensor of the same
    shape, device and dtype, and every rank must call this (and back-propagate through it) in the
    same order. Without a process group, or with one process, it returns ``tensor`` itself.

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
    """The tensors that define a factor, each of shape ``(B, k)``."""
    if isinstance(factor, GaussianFactor):
        return [factor.loc, factor.scale]
    if isinstance(factor, CategoricalFactor):
        return [factor.logits]
    raise TypeError(f"gather_factors supports Gaussian, Delta and Categorical factors, got {type(factor).__name__}")


def _rebuild(factor: Factor, parts: list[torch.Tensor]) -> Factor:
    """A factor of ``factor``'s type (and extra state, e.g. a DeltaFactor's eps) from gathered parts."""
    if isinstance(factor, CategoricalFactor):
        return CategoricalFactor(parts[0], validate_args=False)
    gathered = type(factor).__new__(type(factor))
    gathered.__dict__.update({k: v for k, v in factor.__dict__.items() if k in factor._extra_state})
    GaussianFactor.__init__(gathered, parts[0], parts[1], validate_args=False)
    gathered._validate_args = factor._validate_args
    return gathered


def gather_factors(factors: Factor | Sequence[Factor], group: Any = None, *, check_sizes: bool = True):
    r"""The factors of every rank's support points, with gradients to every rank (see the module docstring).

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
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    rank, _ = rank_and_world_size(group)
    return torch.arange(rank * size, (rank + 1) * size, device=device)


# ---------------------------------------------------------------------- subsampling
def rank_subsample(
    n: int,
    batch_size: int,
    seed: int,
    step: int,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    group: Any = None,
) -> torch.Tensor:
    """This rank's minibatch indices at ``step``: a disjoint slice of one seeded global minibatch.

    The global minibatch has ``G = world_size * batch_size`` points. Epoch ``e = step // (n // G)``
    visits the points in the permutation fixed by ``(seed, e)`` (the permutation
    :func:`pyro_rpm.fit` uses; the last ``n % G`` points of each epoch are dropped); step ``s`` of
    the epoch takes the global batch ``perm[s*G : (s+1)*G]`` and rank r its rows
    ``r*batch_size : (r+1)*batch_size``. The ranks' indices concatenated in rank order are the
    global batch, so a 1-process run with batch ``G`` (``world_size=1``) sees the same points.

    :param int n: number of data points N.
    :param int batch_size: points per rank B.
    :param int seed: seed shared by all ranks.
    :param int step: the optimisation step (0, 1, ...).
    :param int rank: this rank (default: from ``group``).
    :param int world_size: number of ranks (default: from ``group``).
    :returns: a ``LongTensor`` of ``batch_size`` indices into ``range(n)``.

    Example::

        >>> a = rank_subsample(10, 2, seed=0, step=0, rank=0, world_size=2)
        >>> b = rank_subsample(10, 2, seed=0, step=0, rank=1, world_size=2)
        >>> bool((torch.cat([a, b]) == rank_subsample(10, 4, seed=0, step=0, rank=0, world_size=1)).all())
        True
    """
    for name, value, minimum in (("n", n, 1), ("batch_size", batch_size, 1), ("step", step, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    group_rank, group_world = rank_and_world_size(group)
    rank = group_rank if rank is None else rank
    world_size = group_world if world_size is None else world_size
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    global_batch = world_size * batch_size
    if global_batch > n:
        raise ValueError(f"world_size * batch_size = {global_batch} exceeds the number of data points n = {n}")
    epoch, position = divmod(step, n // global_batch)
    start = position * global_batch + rank * batch_size
    return epoch_permutation(seed, epoch, n)[start : start + batch_size]


# ---------------------------------------------------------------------- gradients and parameters
def _flat_groups(tensors: list[torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _as_parameter_list(parameters: Iterable[torch.Tensor] | nn.Module, name: str) -> list[torch.Tensor]:
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
    single-process loss over the concatenated global batch (see the module docstring). The
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
    :class:`~pyro_rpm.optim.MultiTensorOptim`. Start all ranks from the same parameters (same
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


# ---------------------------------------------------------------------- noise
class ShardedNoise(Messenger):
    r"""Rank-invariant reparameterisation noise: draw the global batch's noise, keep this rank's slice.

    Inside this handler, a reparameterised Gaussian sample site (a
    :class:`~pyro_rpm.TiedPosterior` or factor with a Gaussian base, e.g. the tied guide's latent)
    inside the plate named ``plate`` gets the value :math:`\mu + s \odot \epsilon`, where
    :math:`\epsilon` is rank r's slice (rows ``r*B : (r+1)*B`` along the plate's dimension) of a
    standard normal tensor of the *global* shape, drawn from a private generator seeded with
    ``seed``. All ranks draw the same global tensor, so the W-process run uses exactly the noise of
    the 1-process run over the concatenated batch (the same ``seed``), and its losses and gradients
    agree with it up to rounding. Point masses (:class:`~pyro_rpm.DeltaFactor`) keep their exact
    value; other sites (discrete, not reparameterised, outside the plate, already given a value by
    ``replay`` or an observation) are left to Pyro. The global random streams are not touched.

    Use one instance for the whole run (its generator advances with every draw)::

        noise = ShardedNoise("data", seed=0)
        for step in range(steps):
            with noise:
                loss = elbo.differentiable_loss(model, guide, x1[idx], x2[idx])

    :param str plate: name of the data plate whose size is this rank's batch B.
    :param int seed: seed of the generator (the same on every rank).
    :param group: the process group (default: the default group).
    """

    def __init__(self, plate: str = "data", seed: int = 0, group: Any = None) -> None:
        super().__init__()
        if not isinstance(plate, str):
            raise TypeError(f"plate must be a str, got {type(plate).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.plate = plate
        self.group = group
        self.generator = torch.Generator().manual_seed(seed)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate), None)
        fn = msg["fn"]
        base = fn.base if isinstance(fn, TiedPosterior) else fn
        if frame is None or not isinstance(base, GaussianFactor):
            return
        if base.is_point_mass:
            msg["value"] = fn.rsample()
            return
        shape = list(fn.shape())
        axis = len(shape) + frame.dim - len(fn.event_shape)
        rank, world = rank_and_world_size(self.group)
        rows = shape[axis]
        shape[axis] = world * rows
        eps = torch.randn(shape, generator=self.generator, dtype=base.loc.dtype)
        eps = eps.narrow(axis, rank * rows, rows).to(base.loc.device)
        msg["value"] = base.loc + base.scale * eps
