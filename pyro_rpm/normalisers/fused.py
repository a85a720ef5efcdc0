# SPDX-License-Identifier: Apache-2.0
r"""Chunk kernels built on PyTorch's fused attention operators, behind feature detection.

A fused attention op with queries :math:`q_b`, keys :math:`k_m`, values :math:`v_m` and scale 1
returns :math:`o_b = \sum_m \operatorname{softmax}_m(q_b \cdot k_m)\, v_m` and the row-logsumexp
:math:`\ell_b = \log\sum_m e^{q_b\cdot k_m}` without forming the ``B x N`` table. The forward pass
of :class:`~.streamed.ChunkedLogSumExp` uses it with :math:`v = k`, which gives both :math:`\ell`
and :math:`o` (the query gradient is :math:`g_b o_b`). The key gradient
:math:`\sum_b g_b p_{bm} q_b` is a second, *swapped* attention pass: queries :math:`[k_m, 1]`,
keys :math:`[q_b, -L_b]`, values :math:`[g_b q_b, 0]`; its output times :math:`\exp` of its
logsumexp (:math:`\sum_b p_{bm}`) is the gradient. Head sizes are padded to a common width with
zero columns, which leave every dot product unchanged.

Operators (private ATen ops, so each is probed once per device type and dtype on a small random
case against a direct computation, and reported unavailable if the call fails or disagrees):

* CPU: ``aten::_scaled_dot_product_flash_attention_for_cpu`` (float32 and float64);
* CUDA: ``aten::_scaled_dot_product_efficient_attention`` (float32; not float64).

Half precision is never used: the expanded Gaussian form needs at least float32 (see
:mod:`pyro_rpm.normalisers`).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["FusedKernel", "fused_kernel", "fused_available"]

_CPU_OP = "_scaled_dot_product_flash_attention_for_cpu"
_CUDA_OP = "_scaled_dot_product_efficient_attention"
_SUPPORTED = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32,)}


class FusedKernel:
    """Chunk kernel of :class:`~.streamed.ChunkedLogSumExp` on a fused attention op.

    :param str device_type: ``"cpu"`` or ``"cuda"``.
    """

    name = "fused"

    def __init__(self, device_type: str) -> None:
        if device_type not in _SUPPORTED:
            raise ValueError(f"no fused attention kernel for device type {device_type!r}")
        self.device_type = device_type
        # efficient attention wants 8-aligned head sizes; the CPU kernel takes any width.
        self.align = 8 if device_type == "cuda" else 1

    def _width(self, k: int) -> int:
        return -(-k // self.align) * self.align

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-head attention with scale 1: output ``(L, E)`` and logsumexp ``(L,)``."""
        length = q.shape[0]
        q4, k4, v4 = (t.contiguous().view(1, 1, *t.shape) for t in (q, k, v))
        if self.device_type == "cpu":
            out, lse = getattr(torch.ops.aten, _CPU_OP)(q4, k4, v4, scale=1.0)
        else:
            out, lse = getattr(torch.ops.aten, _CUDA_OP)(q4, k4, v4, None, True, scale=1.0)[:2]
        return out.reshape(length, -1), lse.reshape(-1)[:length]

    def key_width(self, dim: int, backward: bool) -> tuple[int, bool]:
        """Key buffer width for ``dim`` features (plus a column of ones in the backward pass)."""
        return self._width(dim + backward), backward

    def _pad(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """Append zero columns to ``x`` up to ``width``."""
        if x.shape[1] == width:
            return x
        return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, need_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-logsumexp of ``q @ k.T`` and the softmax-weighted mean of ``k`` (always computed)."""
        out, lse = self._attend(self._pad(q, k.shape[1]), k, k)
        return lse, out[:, : q.shape[1]]

    def backward_state(self, q: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> tuple:
        width = self._width(q.shape[1] + 1)
        keys = self._pad(torch.cat([q, -lse.unsqueeze(-1)], dim=-1), width)
        values = self._pad(q * grad.unsqueeze(-1), width)
        return keys, values, q.shape[1]

    def key_logsumexp(self, state: tuple, k: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\sum_b e^{q_b\cdot k_m - L_b}` per key of ``k`` (the swapped pass's logsumexp alone)."""
        keys, values, _ = state
        return self._attend(k, keys, values)[1]

    def backward(self, state: tuple, k: torch.Tensor) -> torch.Tensor:
        """``k`` holds the key features, a column of ones and zero padding (:meth:`key_width`)."""
        keys, values, dim = state
        out, lse = self._attend(k, keys, values)
        return out[:, :dim] * lse.exp().unsqueeze(-1)


@functools.cache
def _probe(device: str, dtype: torch.dtype) -> bool:
    """Run both passes of :class:`FusedKernel` on a small random case and compare with direct formulas."""
    device_type = torch.device(device).type
    if dtype not in _SUPPORTED.get(device_type, ()):
        return False
    op = _CPU_OP if device_type == "cpu" else _CUDA_OP
    if not hasattr(torch.ops.aten, op):
        return False
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(37, 5, generator=gen, dtype=torch.float64)
    k = torch.randn(70, 5, generator=gen, dtype=torch.float64)
    grad = torch.rand(37, generator=gen, dtype=torch.float64) - 0.3
    scores = q @ k.T
    lse = scores.logsumexp(-1)
    probs = (scores - lse.unsqueeze(-1)).exp()
    kernel = FusedKernel(device_type)
    try:
        with torch.no_grad():
            args = [t.to(device=device, dtype=dtype) for t in (q, k, lse, grad)]
            q_d, k_d = args[0], args[1]
            lse_f, out_f = kernel.forward(q_d, kernel._pad(k_d, kernel.key_width(5, False)[0]), True)
            k_ones = kernel._pad(torch.cat([k_d, torch.ones_like(k_d[:, :1])], dim=-1), kernel.key_width(5, True)[0])
            dk_f = kernel.backward(kernel.backward_state(q_d, args[2], args[3]), k_ones)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    checks = [(lse_f, lse), (out_f, probs @ k), (dk_f, (probs * grad.unsqueeze(-1)).T @ q)]
    return all(torch.allclose(got.double().cpu(), want, rtol=tol, atol=tol) for got, want in checks)


def fused_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether a fused kernel works for this device and working dtype (probed once, then cached).

    :raises ValueError: if ``device`` is not a device; :raises TypeError: if ``dtype`` is not a torch dtype.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch.device or a device string, got {device!r}") from error
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(str(device), dtype)


def fused_kernel(device: torch.device | str) -> FusedKernel:
    """The fused kernel for ``device`` (check :func:`fused_available` first)."""
    return FusedKernel(torch.device(device).type)
