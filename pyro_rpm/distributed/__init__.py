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

from .gather import all_gather_with_grad, gather_factors, local_index
from .group import init_from_env, rank_and_world_size
from .optim import DistributedOptim, all_reduce_gradients, broadcast_parameters
from .sampling import ShardedNoise, rank_subsample

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
