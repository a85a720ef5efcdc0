# SPDX-License-Identifier: Apache-2.0
r"""Restarts: train several independently initialised fits and keep the one with the lowest loss.

Mixture and HMM priors have merged-cluster optima (two clusters sharing one component, another
split in two) that a single fit falls into often; the loss tells them apart. :func:`fit_restarts`
builds a fresh model and guide per restart (only the caller knows how its networks and priors are
initialised), trains each with :func:`~pyro_rpm.fit`, and keeps the restart with the lowest
*held-in* loss: the validation loss when ``validation=`` is given, otherwise the mean training loss
per datum over the last ``tail`` fraction of steps (:attr:`FitResult.final_loss` over that window).

Example::

    def build(seed):
        torch.manual_seed(seed)
        r = GaussianRecognition(nn.Linear(5, 4), 2, name="r")
        mixture = MixturePrior(3, 2, loc=torch.randn(3, 2), name="mix")
        ...
        return model, RecognitionGuide(model)

    runs = fit_restarts(build, data, restarts=4, steps=2000, batch_size=256, seed=0)
    model, guide = runs.model, runs.guide           # the best restart, its parameters in the store
    runs.held_in_losses, runs.best
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro

from .._validation import check_int, check_number
from .fit import fit
from .results import FitResult

__all__ = ["RestartsResult", "fit_restarts"]


@dataclass
class RestartsResult:
    """What :func:`fit_restarts` returns: the best restart's model, guide and result, and every loss."""

    model: Callable
    guide: Callable
    best: int  #: index of the kept restart
    results: list[FitResult] = field(default_factory=list)  #: every restart's history
    held_in_losses: list[float] = field(default_factory=list)  #: the losses compared

    @property
    def result(self) -> FitResult:
        """The kept restart's :class:`FitResult`."""
        return self.results[self.best]


def _held_in(result: FitResult, tail: float) -> float:
    if result.val_losses:
        return result.val_losses[-1]
    window = result.losses[-max(1, math.ceil(tail * len(result.losses))) :]
    return sum(window) / len(window)


def fit_restarts(
    build: Callable[[int], tuple[Callable, Callable]],
    data: Any,
    *,
    restarts: int,
    seed: int = 0,
    tail: float = 0.1,
    **fit_kwargs: Any,
) -> RestartsResult:
    r"""Train ``restarts`` fits from ``build(seed + r)`` and keep the lowest held-in loss (module docstring).

    :param build: ``seed -> (model, guide)``, creating fresh networks and priors (seed torch inside).
    :param data: the training data, as for :func:`~pyro_rpm.fit`.
    :param int restarts: number of independent fits (at least 1).
    :param int seed: restart r uses ``build(seed + r)`` and ``fit(seed=seed + r)``.
    :param float tail: fraction of the last steps whose mean training loss is compared (without
        ``validation=``).
    :param fit_kwargs: every other argument of :func:`~pyro_rpm.fit` (``steps``, ``batch_size``,
        ``lr``, ``validation``, ...); not ``checkpoint`` (each restart would overwrite it).
    :returns: a :class:`RestartsResult`; the parameter store holds the kept restart's parameters.
    """
    restarts = check_int(restarts, "restarts", integral=True)
    check_int(seed, "seed", None, integral=True)
    tail = check_number(tail, "tail", greater_than=0.0)
    if tail > 1:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    if not callable(build):
        raise TypeError(f"build must be callable (seed -> (model, guide)), got {type(build).__name__}")
    for name in ("seed", "checkpoint", "resume"):
        if name in fit_kwargs:
            raise ValueError(f"fit_restarts sets fit's {name!r} itself; do not pass it")
    store = pyro.get_param_store()
    kept: tuple[float, int, Callable, Callable, dict] | None = None
    results, losses = [], []
    for r in range(restarts):
        store.clear()
        model, guide = build(seed + r)
        result = fit(model, guide, data, seed=seed + r, **fit_kwargs)
        loss = _held_in(result, tail)
        results.append(result)
        losses.append(loss)
        if kept is None or loss < kept[0]:
            state = store.get_state()  # copies of its dicts: clear() would empty the store's own
            kept = (loss, r, model, guide, {key: dict(value) for key, value in state.items()})
    assert kept is not None
    store.clear()
    store.set_state(kept[4])
    return RestartsResult(model=kept[2], guide=kept[3], best=kept[1], results=results, held_in_losses=losses)
