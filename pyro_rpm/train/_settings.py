# SPDX-License-Identifier: Apache-2.0
r"""The first steps of :func:`pyro_rpm.fit`: its arguments checked into :class:`Settings`, its data
checked into :class:`Inputs`. Both raise before any state (random streams, parameter store) changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_optional_int, resolve_device
from ._calls import InBatchCalls, WholeDataCalls, model_calls
from ._setup import check_arguments, check_callables, positive_int
from .data import FitData
from .results import EarlyStopping

__all__ = ["Inputs", "Settings", "prepare_data", "resolve"]


@dataclass(frozen=True)
class Settings:
    """fit's arguments, checked, with their defaults filled in (everything but the data and optimiser)."""

    model: Callable
    guide: Callable
    elbo: Any
    validation_elbo: Any
    calls: InBatchCalls | WholeDataCalls  #: the calling convention named by ``support=``
    steps: int | None
    epochs: int | None
    early_stopping: EarlyStopping | None
    callbacks: tuple[Callable, ...]
    device: torch.device | None
    seed: int | None
    scheduler_interval: str
    validate_every: int | None
    checkpoint: str | os.PathLike | None
    checkpoint_every: int | None
    resume: bool | str
    drop_last: Any
    progress: bool
    collapse_check: int | None = None


@dataclass(frozen=True)
class Inputs:
    """The checked training and validation data, the batch size and the length of the run."""

    train: FitData
    val: FitData | None
    n: int  #: training points N
    batch_size: int  #: B
    per_epoch: int  #: steps per epoch
    total: int  #: steps of the whole run (counting those before a resume)


def resolve(
    model, guide, *, elbo, validation_elbo, support, steps, epochs, seed, scheduler_interval, validate_every,
    early_stopping, has_validation, callbacks, checkpoint, checkpoint_every, resume, device, drop_last, progress,
    collapse_check=None,
) -> Settings:  # fmt: skip
    """Check fit's arguments (in the order fit always has) and fill in the defaults."""
    elbo, validation_elbo = check_callables(model=model, guide=guide, elbo=elbo, validation_elbo=validation_elbo)
    calls = model_calls(support, model)
    early_stopping, callbacks = check_arguments(
        steps=steps, epochs=epochs, seed=seed, scheduler_interval=scheduler_interval, validate_every=validate_every,
        early_stopping=early_stopping, has_validation=has_validation, callbacks=callbacks, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume,
    )  # fmt: skip
    return Settings(
        model=model, guide=guide, elbo=elbo, validation_elbo=validation_elbo, calls=calls, steps=steps,
        epochs=epochs, early_stopping=early_stopping, callbacks=tuple(callbacks), device=resolve_device(device),
        seed=seed, scheduler_interval=scheduler_interval, validate_every=validate_every, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, drop_last=drop_last, progress=progress,
        collapse_check=check_optional_int(collapse_check, "collapse_check"),
    )  # fmt: skip


def prepare_data(settings: Settings, data: Any, validation: Any, batch_size: Any, loader_kwargs: Any) -> Inputs:
    """Check the data sets and the batch size; count the steps per epoch and of the whole run."""
    calls, drop_last = settings.calls, settings.drop_last
    train = FitData(data, "data", materialise=calls.materialise, loader_kwargs=loader_kwargs)
    val = (
        None
        if validation is None
        else FitData(validation, "validation", materialise=calls.materialise, loader_kwargs=loader_kwargs)
    )
    n = train.n
    size = n if batch_size is None else positive_int(batch_size, "batch_size", minimum=calls.min_batch_size)
    if size > n:
        raise ValueError(f"batch_size={size} exceeds the number of data points ({n})")
    calls.check_sizes(n, size, drop_last, val)
    per_epoch = train.num_batches(size, drop_last)
    total = settings.steps if settings.steps is not None else settings.epochs * per_epoch
    return Inputs(train, val, n, size, per_epoch, total)
