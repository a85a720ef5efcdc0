# SPDX-License-Identifier: Apache-2.0
r"""Training: :func:`fit` (the loop), its results, checkpoints with exact resume, and fused optimisers."""

from .checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .fit import fit
from .optim import FusedAdam, FusedAdamW, FusedSGD, MultiTensorOptim
from .restarts import RestartsResult, fit_restarts
from .results import EarlyStopping, FitResult, StepInfo

__all__ = [
    "Checkpoint",
    "EarlyStopping",
    "FitResult",
    "FusedAdam",
    "FusedAdamW",
    "FusedSGD",
    "MultiTensorOptim",
    "RestartsResult",
    "StepInfo",
    "fit",
    "fit_restarts",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
