# SPDX-License-Identifier: Apache-2.0
"""What :func:`~pyro_rpm.train.fit` returns and takes: :class:`FitResult`, :class:`StepInfo`,
:class:`EarlyStopping`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._validation import check_int

__all__ = ['EarlyStopping', 'FitResult', 'StepInfo']


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience`` validations.

    :param int patience: validations without improvement before stopping.
    :param float min_delta: the improvement (in nats per datum) that counts.
    :param bool restore_best: on stopping, restore the parameters of the best validation.
    """

    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        check_int(self.patience, "patience", expected="a positive int")
        if not isinstance(self.min_delta, (int, float)) or not math.isfinite(self.min_delta) or self.min_delta < 0:
            raise ValueError(f"min_delta must be a finite float >= 0, got {self.min_delta!r}")


@dataclass
class FitResult:
    """The history of :func:`fit` (over the whole run, including the part before a resume).

    Losses are per datum (nats): the step's loss over B (in-batch support) or N (whole-data-set support).
    """

    losses: list[float] = field(default_factory=list)  #: training loss of every step
    lrs: list[float] = field(default_factory=list)  #: learning rate used at every step
    val_steps: list[int] = field(default_factory=list)  #: steps after which the validation ran
    val_losses: list[float] = field(default_factory=list)  #: validation loss per datum
    epoch_ends: list[int] = field(default_factory=list)  #: steps that completed an epoch
    step: int = 0  #: steps done
    epoch: int = 0  #: epochs completed
    stop_reason: str = "steps"  #: "steps", "early_stopping" or "callback"
    best_step: int | None = None  #: step of the best validation loss
    best_val_loss: float | None = None
    seconds: float = 0.0  #: wall time of this call
    resumed_from: int | None = None  #: step of the checkpoint this call resumed from

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason == "early_stopping"

    @property
    def final_loss(self) -> float:
        """Mean loss per datum over the last ``min(100, steps)`` steps."""
        tail = self.losses[-100:]
        return sum(tail) / len(tail) if tail else math.nan


@dataclass(frozen=True)
class StepInfo:
    """What a callback receives after every step. A callback returning ``True`` stops the run."""

    step: int
    epoch: int
    loss: float
    lr: float
    epoch_end: bool
    val_loss: float | None
    result: FitResult
