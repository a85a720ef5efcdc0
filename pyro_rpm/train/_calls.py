# SPDX-License-Identifier: Apache-2.0
r"""How :func:`pyro_rpm.fit` calls the model and guide: the calling convention named by ``support=``.

* :class:`InBatchCalls` (``support="batch"``): ``model(*batch)`` on the minibatch; the loss per
  datum is the step's loss over B.
* :class:`WholeDataCalls` (``support="full"``): ``model(*data, subsample=idx)`` on the whole data set
  with the minibatch's indices; the loss per datum is the step's loss over N.

:func:`model_calls` is the one place that reads ``support=``. A convention is first chosen from the
arguments alone (it says how to load the data and which sizes it needs), then bound to the training
data with :meth:`bind`, which gives the calls of every step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..support.base import support_calling
from .data import FitData

__all__ = ["InBatchCalls", "WholeDataCalls", "accepts_subsample", "model_calls"]

Call = tuple[torch.Tensor, tuple, dict]  # (idx, args, kwargs) of one step


def accepts_subsample(model: Callable) -> bool:
    """Whether ``model`` takes a ``subsample`` keyword (or ``**kwargs``); ``True`` when that cannot be read."""
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "subsample" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def model_calls(support: Any, model: Callable) -> InBatchCalls | WholeDataCalls:
    """The calling convention that fit's ``support=`` names: ``"batch"``, ``"full"``, or a
    :class:`~pyro_rpm.Support` (instance or class) by its :attr:`~pyro_rpm.Support.calling`; raises on a
    bad ``support`` (or model)."""
    support = support_calling(support)
    if support == "full":
        if not accepts_subsample(model):
            raise ValueError("support='full' calls model(*data, subsample=idx): the model needs a 'subsample' keyword")
        return WholeDataCalls()
    return InBatchCalls()


@dataclass(frozen=True)
class InBatchCalls:
    """``support="batch"``: the model and guide are called on the minibatch, ``model(*batch)``."""

    name: ClassVar[str] = "batch"  #: recorded in checkpoints
    materialise: ClassVar[bool] = False  #: a generic dataset is loaded batch by batch
    min_batch_size: ClassVar[int] = 2  #: the in-batch support needs two points
    data: FitData | None = None
    device: torch.device | None = None
    batch_size: int = 0
    drop_last: Any = True

    @staticmethod
    def check_sizes(n: int, batch_size: int, drop_last: Any, val: FitData | None) -> None:
        """Raise unless every training batch and the validation data hold at least two points."""
        if n < 2 or (not drop_last and n % batch_size == 1):
            raise ValueError(
                "the in-batch support needs at least 2 points in every batch; change batch_size or drop_last"
            )
        if val is not None and val.n < 2:
            raise ValueError("validation needs at least 2 points (the in-batch support)")

    def bind(self, data: FitData, device: torch.device | None, batch_size: int, drop_last: Any) -> InBatchCalls:
        """This convention on the training ``data``, moved to ``device``, in batches of ``batch_size``."""
        return replace(self, data=data, device=device, batch_size=batch_size, drop_last=drop_last)

    def probe(self) -> tuple[tuple, dict]:
        """The arguments of the first ``batch_size`` points, to find the parameters a step touches."""
        return self.data.take(torch.arange(self.batch_size), self.device)

    def epoch(self, order: torch.Tensor, position: int, seed: int) -> Iterator[Call]:
        """The calls of the epoch visiting ``order``, from batch ``position`` on (``seed``: the loader's)."""
        batches = self.data.batches(order, self.batch_size, position, self.drop_last, self.device, seed=seed)
        return ((idx, args, kwargs) for idx, (args, kwargs) in batches)

    def per_datum(self, loss: float, idx: torch.Tensor) -> float:
        """The step's loss per datum: over the B points of the minibatch."""
        return loss / len(idx)

    def validation_loss(self, elbo: Any, model: Callable, guide: Callable, val: FitData) -> float:
        """The loss per datum on ``val``, in full batches of ``min(batch_size, val.n)`` points."""
        size = min(self.batch_size, val.n)
        total_loss, count = 0.0, 0
        for idx, (args, kwargs) in val.batches(torch.arange(val.n), size, 0, True, self.device):
            total_loss += elbo.loss(model, guide, *args, **kwargs)
            count += len(idx)
        return total_loss / count


@dataclass(frozen=True)
class WholeDataCalls:
    """``support="full"``: the model and guide see the whole data set, ``model(*data, subsample=idx)``."""

    name: ClassVar[str] = "full"  #: recorded in checkpoints
    materialise: ClassVar[bool] = True  #: a generic dataset is collated into tensors once
    min_batch_size: ClassVar[int] = 1
    data: FitData | None = None
    device: torch.device | None = None
    batch_size: int = 0
    drop_last: Any = True
    whole: tuple[tuple, dict] | None = None  #: the training data on ``device``

    @staticmethod
    def check_sizes(n: int, batch_size: int, drop_last: Any, val: FitData | None) -> None:
        """Any sizes will do: the plate covers all N points."""

    def bind(self, data: FitData, device: torch.device | None, batch_size: int, drop_last: Any) -> WholeDataCalls:
        """This convention on the training ``data``, moved to ``device`` once, in batches of ``batch_size``."""
        return replace(
            self, data=data, device=device, batch_size=batch_size, drop_last=drop_last, whole=data.whole(device)
        )

    def _call(self, idx: torch.Tensor) -> Call:
        """The call of a step on the points ``idx``: the whole data, ``subsample=idx`` on its device."""
        args, kwargs = self.whole
        where = next(iter([*args, *kwargs.values()])).device
        return idx, args, {**kwargs, "subsample": idx.to(where)}

    def probe(self) -> tuple[tuple, dict]:
        """The arguments of a step on the first ``batch_size`` points, to find the parameters it touches."""
        return self._call(torch.arange(self.batch_size))[1:]

    def epoch(self, order: torch.Tensor, position: int, seed: int) -> Iterator[Call]:
        """The calls of the epoch visiting ``order``, from batch ``position`` on (``seed`` is not needed)."""
        return (self._call(idx) for idx in self.data.chunks(order, self.batch_size, position, self.drop_last))

    def per_datum(self, loss: float, idx: torch.Tensor) -> float:
        """The step's loss per datum: over the N points (Pyro scales the minibatch by N/B)."""
        return loss / self.data.n

    def validation_loss(self, elbo: Any, model: Callable, guide: Callable, val: FitData) -> float:
        """The loss per datum on the whole of ``val`` (called without ``subsample``)."""
        args, kwargs = val.whole(self.device)
        return elbo.loss(model, guide, *args, **kwargs) / val.n
