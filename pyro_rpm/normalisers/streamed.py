# SPDX-License-Identifier: Apache-2.0
r"""Streamed row-logsumexp :math:`L_b = \log \sum_m \exp(q_b \cdot k_m)` with a recomputing backward.

:class:`ChunkedLogSumExp` walks the support set in chunks of C points. For each chunk it builds
the key features :math:`k_m` from the support parameters (a :class:`~.features.FeatureMap`),
asks a *kernel* for the chunk's row-logsumexp :math:`\ell_b` and softmax-weighted key mean
:math:`o_b = \sum_m p_{bm} k_m`, and merges them online (Milakov & Gimelshein's "online softmax"):

.. math::

    L \leftarrow \operatorname{logaddexp}(L, \ell), \qquad
    o \leftarrow o\, e^{L_{\rm old} - L} + o_{\rm chunk}\, e^{\ell - L}.

Only :math:`q`, the inputs, :math:`L` and :math:`o` (``B x K``) are kept for the backward pass.
With upstream gradient :math:`g_b` and :math:`p_{bm} = \exp(q_b\cdot k_m - L_b)`,

.. math::

    \frac{\partial}{\partial q_b} = g_b\, o_b, \qquad
    \frac{\partial}{\partial k_m} = \sum_b g_b\, p_{bm}\, q_b ,

the second recomputed chunk by chunk and pushed through the feature map's chain rule, so memory is
:math:`O(B \cdot C + N \cdot D)` and no ``B x N`` table ever exists. :class:`StreamedKernel` is the
portable pure-torch kernel (two GEMMs and one ``exp`` per pair and pass); the fused kernels of
:mod:`.fused` implement the same interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from .features import FeatureMap

__all__ = ["ChunkedLogSumExp", "StreamedKernel", "chunked_logsumexp", "flush_denormals", "merge_online"]

#: floor of shifted scores before ``exp`` (``exp`` of larger negative arguments takes a slow
#: underflow path, about 6x slower); the clamped terms weigh at most N e^-600 (N e^-80) in total.
_EXP_FLOOR = {torch.float64: -600.0, torch.float32: -80.0}


def _denormals_flushed() -> bool:
    """Whether this thread flushes denormals (a float64 denormal times one reads as zero)."""
    return bool(torch.tensor(1e-310, dtype=torch.float64) * 1.0 == 0)


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """Flush denormals to zero on the CPU for the duration of the block, then restore the previous mode.

    Softmax weights far below the row maximum underflow to denormals, and GEMMs on denormals are
    many times slower on x86 (measured: the fused float64 pass 1.4x slower on the benchmark
    problem). Flushing them changes nothing at working precision: they weigh :math:`< 10^{-300}`
    (float64) or :math:`< 10^{-37}` (float32) relative to the largest term.
    """
    if device.type != "cpu" or _denormals_flushed() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def merge_online(
    lse: torch.Tensor | None, out: torch.Tensor | None, lse_c: torch.Tensor, out_c: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Merge a chunk's row-logsumexp ``lse_c`` and softmax-weighted mean ``out_c`` into the running
    ``lse``, ``out`` (``None`` before the first chunk; ``out`` may be ``None`` throughout):
    :math:`L \leftarrow \operatorname{logaddexp}(L, \ell)`,
    :math:`o \leftarrow o\, e^{L_{\rm old} - L} + o_{\rm chunk}\, e^{\ell - L}`."""
    if lse is None:
        return lse_c, out_c
    merged = torch.logaddexp(lse, lse_c)
    if out is not None and out_c is not None:
        out = out.mul_((lse - merged).exp_().unsqueeze(-1))
        out.add_(out_c * (lse_c - merged).exp_().unsqueeze(-1))
    return merged, out


class StreamedKernel:
    """Pure-torch chunk kernel: GEMM, max-shifted ``exp``, GEMM (any device and dtype)."""

    name = "streamed"

    def key_width(self, dim: int, backward: bool) -> tuple[int, bool]:
        """Width of the key buffer for ``dim`` features, and whether it carries a column of ones."""
        return dim, False

    def forward(self, q: torch.Tensor, k: torch.Tensor, need_out: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row-logsumexp of ``q @ k.T`` and (if ``need_out``) the softmax-weighted mean of ``k``."""
        scores = q @ k.T
        shift = scores.amax(-1, keepdim=True)
        weights = scores.sub_(shift).clamp_(min=_EXP_FLOOR.get(scores.dtype, -80.0)).exp_()
        total = weights.sum(-1)
        lse = shift.squeeze(-1) + total.log()
        out = (weights @ k).div_(total.unsqueeze(-1)) if need_out else None
        return lse, out

    def backward_state(self, q: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> tuple:
        """Per-call state of the backward pass (shared by all chunks)."""
        return q, (-lse).unsqueeze(-1), grad.unsqueeze(-1), q.T.contiguous()

    def backward(self, state: tuple, k: torch.Tensor) -> torch.Tensor:
        r""":math:`\partial/\partial k_m = \sum_b g_b p_{bm} q_b` for the chunk ``k``, shape ``(C, K)``."""
        q, neg_lse, grad, q_t = state
        weights = torch.addmm(neg_lse, q, k.T).clamp_(min=_EXP_FLOOR.get(q.dtype, -80.0)).exp_().mul_(grad)
        return (q_t @ weights).T


class ChunkedLogSumExp(torch.autograd.Function):
    """Autograd function of the streamed row-logsumexp (module docstring).

    Inputs: query features ``q`` (B, K), support parameters ``a`` (N, ...) and ``b`` (N, ...),
    ``(D,)`` when shared, or ``None``; then the feature map, the kernel and the chunk size.
    Double backward is not supported.
    """

    @staticmethod
    def forward(ctx, q, a, b, features: FeatureMap, kernel, chunk_size: int):  # type: ignore[override]
        """Row-logsumexp ``L`` of shape ``(B,)``; saves what the backward pass recomputes from."""
        with flush_denormals(q.device):
            lse, out = ChunkedLogSumExp._forward(q, a, b, features, kernel, chunk_size, ctx.needs_input_grad[0])
        ctx.features, ctx.kernel, ctx.chunk_size = features, kernel, chunk_size
        ctx.save_for_backward(q, a, b, lse, out)
        return lse

    @staticmethod
    def _forward(q, a, b, features: FeatureMap, kernel, chunk_size: int, need_out: bool):
        num_support, dim = a.shape[0], q.shape[1]
        width, ones = kernel.key_width(dim, backward=False)
        lse = out = None
        for start in range(0, num_support, chunk_size):
            stop = min(start + chunk_size, num_support)
            k, _ = features.chunk_keys(a[start:stop], features.param_chunk(b, start, stop), width, ones)
            lse, out = merge_online(lse, out, *kernel.forward(q, k, need_out))
        return lse, out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        """Gradients of the query features and of the support parameters (``None`` for the rest)."""
        q, a, b, lse, out = ctx.saved_tensors
        features, kernel, chunk_size = ctx.features, ctx.kernel, ctx.chunk_size
        grad_q = grad.unsqueeze(-1) * out if ctx.needs_input_grad[0] else None
        need_a, need_b = ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2]
        grad_a = grad_b = None
        if need_a or need_b:
            with flush_denormals(q.device):
                grad_a, grad_b = ChunkedLogSumExp._key_grads(
                    q, a, b, lse, grad, features, kernel, chunk_size, need_a, need_b
                )
        return grad_q, grad_a, grad_b, None, None, None

    @staticmethod
    def _key_grads(q, a, b, lse, grad, features: FeatureMap, kernel, chunk_size: int, need_a: bool, need_b: bool):
        """Gradients of the support parameters, one recomputed chunk at a time."""
        state = kernel.backward_state(q, lse, grad)
        width, ones = kernel.key_width(q.shape[1], backward=True)
        grad_a = torch.empty_like(a) if need_a else None
        grad_b = None
        if need_b:
            grad_b = torch.zeros(b.shape, dtype=q.dtype, device=b.device) if features.shared else torch.empty_like(b)
        for start in range(0, a.shape[0], chunk_size):
            stop = min(start + chunk_size, a.shape[0])
            k, key_state = features.chunk_keys(a[start:stop], features.param_chunk(b, start, stop), width, ones)
            da, db = features.key_grads(kernel.backward(state, k), key_state)
            if need_a:
                grad_a[start:stop] = da
            if need_b and features.shared:
                grad_b += db.sum(0)
            elif need_b:
                grad_b[start:stop] = db
        if need_b and features.shared:
            grad_b = grad_b.to(b.dtype)
        return grad_a, grad_b


def chunked_logsumexp(
    q: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, features: FeatureMap, kernel, chunk_size: int
) -> torch.Tensor:
    """Apply :class:`ChunkedLogSumExp`: ``LSE_m(q_b . k_m)`` of shape ``(B,)`` in ``q``'s dtype."""
    return ChunkedLogSumExp.apply(q, a, b, features, kernel, chunk_size)
