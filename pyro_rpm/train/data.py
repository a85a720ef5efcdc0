# SPDX-License-Identifier: Apache-2.0
r"""Data handling of :func:`pyro_rpm.fit`: checked inputs, seeded epochs and minibatches.

The order of epoch ``e`` is a permutation drawn from a private generator seeded with
``(seed, e)`` (:class:`numpy.random.SeedSequence`), so a run resumed at (epoch, position) sees
exactly the minibatches the uninterrupted run would have seen, without storing loader state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data.dataloader import default_collate

from .._validation import check_tensor

__all__ = ["FitData", "epoch_permutation", "epoch_seed"]

Batch = tuple[tuple, dict]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed for ``epoch``, derived from ``(seed, epoch)`` by :class:`numpy.random.SeedSequence`."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the data points in ``epoch``: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


def _as_structure(item: Any, name: str) -> Batch:
    """Split a (collated) item into positional and keyword tensors: tensor, tuple/list or dict."""
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, Sequence) and not isinstance(item, str):
        return tuple(item), {}
    raise TypeError(
        f"{name}: items must be tensors, tuples/lists of tensors or dicts of tensors, got {type(item).__name__}"
    )


def _move(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


class FitData:
    """A checked data set: tensors (indexed directly) or a map-style :class:`~torch.utils.data.Dataset`.

    :param data: a tensor, a tuple/list of tensors with one leading size, a dict of such tensors,
        a :class:`~torch.utils.data.TensorDataset` or a map-style dataset whose items are tensors,
        tuples of tensors or dicts of tensors.
    :param str name: the argument's name, for error messages.
    :param bool materialise: collate a generic dataset into tensors once (whole-data-set support).
    :param dict loader_kwargs: extra :class:`~torch.utils.data.DataLoader` arguments for a generic dataset.
    """

    def __init__(self, data: Any, name: str, *, materialise: bool = False, loader_kwargs: dict | None = None) -> None:
        self.name = name
        if loader_kwargs is not None and not isinstance(loader_kwargs, Mapping):
            raise TypeError(f"loader_kwargs must be a dict, got {type(loader_kwargs).__name__}")
        self.loader_kwargs = dict(loader_kwargs or {})
        taken = sorted(
            set(self.loader_kwargs) & {"batch_size", "shuffle", "sampler", "batch_sampler", "drop_last", "generator"}
        )
        if taken:
            raise ValueError(f"loader_kwargs: fit sets {taken} itself (use fit's batch_size=, drop_last=, seed=)")
        self.dataset: Dataset | None = None
        if isinstance(data, DataLoader):
            raise TypeError(
                f"{name} must be a Dataset or tensors, not a DataLoader: pass {name}=loader.dataset and "
                "batch_size=...; fit builds its own seeded loader so that a resumed run sees the same batches"
            )
        if isinstance(data, IterableDataset):
            raise TypeError(
                f"{name} must be a map-style Dataset (with __len__ and __getitem__), got an IterableDataset"
            )
        if isinstance(data, TensorDataset):
            data = tuple(data.tensors)
        if isinstance(data, torch.Tensor) or (
            isinstance(data, (tuple, list, Mapping)) and not isinstance(data, Dataset)
        ):
            self.args, self.kwargs = self._check_tensors(data)
        elif isinstance(data, Dataset):
            if not hasattr(data, "__len__"):
                raise TypeError(f"{name} must be a map-style Dataset with __len__, got {type(data).__name__}")
            self.n = len(data)
            if self.n == 0:
                raise ValueError(f"{name} is empty (a data set of 0 points)")
            if materialise:
                self.args, self.kwargs = self._check_tensors(default_collate([data[i] for i in range(self.n)]))
            else:
                self.dataset = data
                _as_structure(data[0], name)
        else:
            raise TypeError(
                f"{name} must be a torch.Tensor, a tuple/list/dict of tensors or a torch.utils.data.Dataset, "
                f"got {type(data).__name__}"
            )

    def _check_tensors(self, data: Any) -> Batch:
        args, kwargs = _as_structure(data, self.name)
        tensors = list(args) + list(kwargs.values())
        if not tensors:
            raise ValueError(f"{self.name} holds no tensors")
        for i, t in enumerate(tensors):
            check_tensor(t, f"{self.name}[{i}]")
            if t.dim() == 0:
                raise ValueError(f"{self.name}[{i}] must have a leading data dimension, got a 0-d tensor")
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) > 1:
            raise ValueError(
                f"the tensors of {self.name} must share their leading size, got sizes {[t.shape[0] for t in tensors]}"
            )
        self.n = sizes.pop()
        if self.n == 0:
            raise ValueError(f"{self.name} is empty (a data set of 0 points)")
        return tuple(args), dict(kwargs)

    @property
    def is_tensors(self) -> bool:
        return self.dataset is None

    # ------------------------------------------------------------------------------- access
    def take(self, idx: torch.Tensor, device: torch.device | None = None) -> Batch:
        """The minibatch of the points ``idx`` (moved to ``device``)."""
        if self.is_tensors:
            args = tuple(t[idx.to(t.device)] for t in self.args)
            kwargs = {k: t[idx.to(t.device)] for k, t in self.kwargs.items()}
        else:
            args, kwargs = _as_structure(default_collate([self.dataset[int(i)] for i in idx]), self.name)
        return _move(args, device), _move(kwargs, device)

    def whole(self, device: torch.device | None = None) -> Batch:
        """All data points as tensors (whole-data-set support, validation)."""
        return _move(self.args, device), _move(self.kwargs, device)

    @staticmethod
    def chunks(order: torch.Tensor, batch_size: int, start: int, drop_last: bool) -> list[torch.Tensor]:
        """The index batches ``start, start + 1, ...`` of ``order``."""
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        return [order[i : i + batch_size] for i in range(start * batch_size, stop, batch_size)]

    def batches(
        self,
        order: torch.Tensor,
        batch_size: int,
        start: int,
        drop_last: bool,
        device: torch.device | None,
        seed: int = 0,
    ) -> Iterator[tuple[torch.Tensor, Batch]]:
        """Yield ``(idx, (args, kwargs))`` for the batches ``start, start + 1, ...`` of ``order``.

        A generic dataset goes through a :class:`~torch.utils.data.DataLoader` with a private
        generator (seeded with ``seed``), so the global random streams are left untouched.
        """
        chunks = self.chunks(order, batch_size, start, drop_last)
        if self.is_tensors:
            for idx in chunks:
                yield idx, self.take(idx, device)
            return
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            self.dataset, batch_sampler=[c.tolist() for c in chunks], generator=generator, **self.loader_kwargs
        )
        for idx, item in zip(chunks, loader):
            args, kwargs = _as_structure(item, self.name)
            yield idx, (_move(args, device), _move(kwargs, device))

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        return self.n // batch_size if drop_last else -(-self.n // batch_size)
