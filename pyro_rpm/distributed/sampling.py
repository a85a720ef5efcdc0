# SPDX-License-Identifier: Apache-2.0
r"""Randomness shared across ranks: disjoint minibatches and rank-invariant reparameterisation noise.

:func:`rank_subsample` cuts one seeded global minibatch of :math:`G = W B` points into the ranks'
disjoint slices (manual subsampling, as in Pyro's Horovod example: an automatic
``pyro.plate(subsample_size=...)`` would draw the same points on every rank).
:class:`ShardedNoise` draws the standard normal noise :math:`\epsilon` of the whole global batch
from one seeded generator on every rank and keeps this rank's slice, so the reparameterised
samples :math:`\mu + s \odot \epsilon` of the W-process run are those of the 1-process run.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from .._validation import check_int
from ..guides.tied import TiedPosterior
from ..recognition.base import Factor
from ..train.data import epoch_permutation
from .group import rank_and_world_size

__all__ = ["ShardedNoise", "rank_subsample"]


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
        check_int(value, name, minimum)
    check_int(seed, "seed", None)
    group_rank, group_world = rank_and_world_size(group)
    rank = group_rank if rank is None else rank
    world_size = group_world if world_size is None else world_size
    check_int(world_size, "world_size", expected="a positive int")
    check_int(rank, "rank", 0, below=world_size)
    global_batch = world_size * batch_size
    if global_batch > n:
        raise ValueError(f"world_size * batch_size = {global_batch} exceeds the number of data points n = {n}")
    epoch, position = divmod(step, n // global_batch)
    start = position * global_batch + rank * batch_size
    return epoch_permutation(seed, epoch, n)[start : start + batch_size]


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
        check_int(seed, "seed", None)
        self.plate = plate
        self.group = group
        self.generator = torch.Generator().manual_seed(seed)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate), None)
        fn = msg["fn"]
        base = fn.base if isinstance(fn, TiedPosterior) else fn
        if frame is None or not isinstance(base, Factor) or base.diagonal_gaussian() is None:
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
