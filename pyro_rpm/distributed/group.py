# SPDX-License-Identifier: Apache-2.0
"""The process group: this process's rank and the world size, and starting the group under torchrun.

Every helper of :mod:`pyro_rpm.distributed` asks :func:`rank_and_world_size` for ``(rank, W)``;
without a process group it answers ``(0, 1)`` and the helpers reduce to the identity, so one
script runs under ``torchrun --nproc_per_node=W`` and as a plain ``python script.py``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "rank_and_world_size"]


def rank_and_world_size(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``; ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def init_from_env(
    device: str | torch.device = "cpu", *, backend: str | None = None, timeout_s: float = 300.0
) -> tuple[int, int]:
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
