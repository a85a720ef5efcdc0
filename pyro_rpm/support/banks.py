# SPDX-License-Identifier: Apache-2.0
"""Memory-bank supports: a MoCo-style queue and an indexed bank."""

from __future__ import annotations

import copy

import torch

from .._validation import check_int, check_number, check_tensor
from ..normalisers import Normaliser
from ..recognition.base import Factor, Recognition, cat_factors
from .base import Support, _check_data

__all__ = ['MemoryBankSupport', 'IndexedBankSupport']


class _BankSupport(Support):
    """Shared parts of the memory banks: the optional momentum (key) encoder and pending entries."""

    def __init__(self, recognition: Recognition, momentum: float | None, normaliser: Normaliser | str | None = None) -> None:
        super().__init__(recognition, normaliser=normaliser)
        if momentum is not None:
            momentum = check_number(momentum, "momentum", at_least=0, below=1, expected="None or a float in [0, 1)")
        self.momentum = momentum
        #: the momentum encoder (an EMA copy of ``recognition``, never trained directly), or ``None``.
        self.key_recognition: Recognition | None = None
        if momentum is not None:
            self.key_recognition = copy.deepcopy(recognition)
            self.key_recognition.requires_grad_(False)
        self._pending: tuple | None = None

    @torch.no_grad()
    def _momentum_step(self) -> None:
        r"""EMA of the parameters, :math:`\theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta`; buffers copied."""
        key, m = self.key_recognition, self.momentum
        for (name, p_k), p in zip(key.named_parameters(), self.recognition.parameters()):
            if p_k.shape != p.shape:
                raise ValueError(f"momentum encoder parameter '{name}' no longer matches the recognition module")
            p_k.data = p_k.data.to(device=p.device, dtype=p.dtype).mul_(m).add_(p.detach(), alpha=1 - m)
        for b_k, b in zip(key.buffers(), self.recognition.buffers()):
            b_k.data = b.detach().clone()
        key.train(self.recognition.training)

    def _entries(self, x: torch.Tensor, current: Factor) -> Factor:
        """New bank entries for inputs ``x``: the key encoder's factors, or the current (detached) ones."""
        if self.key_recognition is None:
            return current
        self._momentum_step()
        return self.key_recognition.encode_detached(x)

    def _check_compatible(self, batch: Factor, bank: Factor, name: str) -> None:
        if type(batch) is not type(bank) or batch.event_shape != bank.event_shape:
            raise ValueError(
                f"{name}: the recognition output is {type(batch).__name__} with event shape "
                f"{tuple(batch.event_shape)} but the memory bank holds {type(bank).__name__} with event shape "
                f"{tuple(bank.event_shape)}"
            )
        a, b = batch.tensors()[0], bank.tensors()[0]
        if a.device != b.device or a.dtype != b.dtype:
            raise ValueError(
                f"{name}: the recognition output is {a.dtype} on {a.device} but the memory bank is {b.dtype} on "
                f"{b.device}; call reset() after moving the module or the data"
            )


class MemoryBankSupport(_BankSupport):
    r"""A FIFO queue of K stale factors after the minibatch (MoCo): support ``[batch; queue]``.

    ``f = s(x_batch)`` returns factors over ``B + K'`` points (``K'`` the entries queued so far,
    at most ``size``): the minibatch first, with gradients, then the queue, detached. Observe with
    ``index=torch.arange(B)``. After each optimiser step call :meth:`update`, which appends the last
    minibatch's factors (or, with ``momentum``, those of the momentum encoder) and drops the oldest
    beyond ``size``. Constant :math:`\log(B + K')`; bias: module docstring.

    :param Recognition recognition: the recognition module.
    :param int size: queue length K >= 1.
    :param normaliser: the normaliser of the sites observed through it (a Normaliser or a backend name).
    :param float momentum: ``None`` (queue the minibatch's own factors) or m in [0, 1): queue the
        factors of a momentum encoder updated by :math:`\theta_k \leftarrow m\theta_k + (1-m)\theta`
        in :meth:`update`.
    """

    def __init__(
        self, recognition: Recognition, size: int, *, momentum: float | None = None, normaliser: Normaliser | str | None = None
    ) -> None:
        check_int(size, "size", expected="a positive int")
        super().__init__(recognition, momentum, normaliser)
        self.size = size
        self._bank: Factor | None = None
        self._version = 0

    @property
    def bank(self) -> Factor | None:
        """The queued factors, oldest first (detached), or ``None`` before the first :meth:`update`."""
        return self._bank

    def __len__(self) -> int:
        return 0 if self._bank is None else self._bank.num_support

    def __call__(self, x: torch.Tensor) -> Factor:
        batch = self.recognition(x)
        self._pending = (x, batch.detach())
        if self._bank is None:
            return self.attach(batch)
        self._check_compatible(batch, self._bank, "x")
        key = (id(batch), self._version)
        return self.cached(key, lambda: self.attach(cat_factors([batch, self._bank])), batch)

    def update(self) -> int:
        """Queue the entries of the last minibatch; returns how many were added (0 if none pending)."""
        if self._pending is None:
            return 0
        x, current = self._pending
        self._pending = None
        entries = self._entries(x, current)
        if self._bank is not None:
            self._check_compatible(entries, self._bank, "x")
            entries = cat_factors([self._bank, entries])
        keep = min(self.size, entries.num_support)
        self._bank = entries.with_tensors([t[-keep:].clone() for t in entries.tensors()])
        self._version += 1
        return current.num_support

    def reset(self) -> None:
        """Empty the queue."""
        self._bank, self._pending = None, None
        self._version += 1


class IndexedBankSupport(_BankSupport):
    r"""A bank of N stale factors indexed by data point (lemniscate): support = the whole data set.

    ``f = s(idx)`` returns factors of all N points in data order: the bank, with the rows ``idx``
    replaced by the current factors of ``data[idx]`` (with gradients). Observe with
    ``index=idx``. :meth:`update` writes the last minibatch's factors (or the momentum encoder's)
    into their rows. The bank is filled on first use by encoding the data set in chunks without
    autograd. Constant :math:`\log N`; bias: module docstring.

    :param Recognition recognition: the recognition module.
    :param torch.Tensor data: the whole data set, shape ``(N, ...)``.
    :param float momentum: ``None`` or m in [0, 1) for a momentum encoder (as in :class:`MemoryBankSupport`).
    :param int chunk_size: points per network call when (re)filling the bank.
    :param normaliser: the normaliser of the sites observed through it (a Normaliser or a backend name).
    """

    calling = "full"

    def __init__(
        self,
        recognition: Recognition,
        data: torch.Tensor,
        *,
        momentum: float | None = None,
        chunk_size: int = 4096,
        normaliser: Normaliser | str | None = None,
    ) -> None:
        super().__init__(recognition, momentum, normaliser)
        _check_data(data)
        check_int(chunk_size, "chunk_size", expected="a positive int")
        self.data = data
        self.chunk_size = chunk_size
        self._bank: Factor | None = None
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._version = 0

    @property
    def num_data(self) -> int:
        return self.data.shape[0]

    @property
    def bank(self) -> Factor | None:
        """The stored factors of all N points (detached), or ``None`` before first use."""
        return self._bank

    def refresh(self) -> None:
        """Re-encode the whole data set into the bank (chunked, without autograd)."""
        r = self.key_recognition if self.key_recognition is not None else self.recognition
        parts = [r.encode_detached(self.data[i : i + self.chunk_size]) for i in range(0, self.num_data, self.chunk_size)]
        bank = cat_factors(parts)
        self._bank = bank.with_tensors([t.contiguous().clone() for t in bank.tensors()])
        self._version += 1

    def _check_index(self, idx: torch.Tensor) -> torch.Tensor:
        check_tensor(idx, "idx")
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.dim() != 1:
            raise ValueError(f"idx must be a 1-D integer tensor of data indices, got {idx.dtype} {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_data):
            raise ValueError(f"idx must lie in [0, {self.num_data}), got range [{int(idx.min())}, {int(idx.max())}]")
        return idx.to(self.data.device)

    def _batch_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """``data[idx]``, the same tensor object for equal indices (so the recognition cache hits)."""
        if self._inputs is not None and torch.equal(self._inputs[0], idx):
            return self._inputs[1]
        x = self.data[idx]
        self._inputs = (idx.clone(), x)
        return x

    def __call__(self, idx: torch.Tensor) -> Factor:
        idx = self._check_index(idx)
        if self._bank is None:
            self.refresh()
        x = self._batch_inputs(idx)
        batch = self.recognition(x)
        self._check_compatible(batch, self._bank, "idx")
        self._pending = (x, idx, batch.detach())

        def build() -> Factor:
            tensors = [
                bank_t.index_put((idx,), batch_t.expand(idx.shape + bank_t.shape[1:]))
                for bank_t, batch_t in zip(self._bank.tensors(), batch.tensors())
            ]
            return self.attach(batch.with_tensors(tensors))

        return self.cached((id(batch), self._version), build, batch)

    def update(self) -> int:
        """Write the last minibatch's entries into their rows; returns how many (0 if none pending)."""
        if self._pending is None:
            return 0
        x, idx, current = self._pending
        self._pending = None
        entries = self._entries(x, current)
        self._check_compatible(entries, self._bank, "idx")
        for bank_t, new_t in zip(self._bank.tensors(), entries.tensors()):
            bank_t.index_copy_(0, idx, new_t.expand(idx.shape + bank_t.shape[1:]))
        self._version += 1
        return idx.numel()
