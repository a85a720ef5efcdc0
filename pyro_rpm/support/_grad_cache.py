# SPDX-License-Identifier: Apache-2.0
r"""Chunked network evaluation with GradCache-style recomputation (Gao et al. 2021, ``luyug/GradCache``).

:func:`chunked_encode` returns ``net(data)`` for a whole data set of N points while keeping the
network's activation memory at one chunk:

1. **forward**: the chunks are encoded one after another without autograd; only the outputs
   (N x H) and the random-number state before each chunk are kept;
2. the loss is computed from the outputs by ordinary autograd, which delivers the *cached
   gradient* :math:`G = \partial\,\text{loss} / \partial\,\text{outputs}` (N x H) to this function;
3. **backward**: each chunk is re-encoded with autograd (under its recorded random state, so
   dropout draws the same masks), and :math:`\partial/\partial\theta = \sum_{\rm chunks}
   (\partial\,\text{out}_c / \partial\theta)^\top G_c` is accumulated by a vector-Jacobian product.

The gradient is that of ``net(data)`` evaluated chunk by chunk, exactly; it equals the gradient of
one full-batch call whenever the network treats the points of a batch independently (true for
MLPs, convolutions and dropout; not for batch normalisation in training mode, whose statistics are
per chunk, and whose running averages are updated twice per step). Cost: one extra forward pass
of the network over the data. Memory: O(chunk x activations + N x H) instead of O(N x activations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.autograd.function import once_differentiable

__all__ = ["chunked_encode"]


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replay_rng(state: tuple | None, device: torch.device) -> Iterator[None]:
    """Run the block under a recorded random state, then restore the caller's state."""
    if state is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


class _ChunkedEncode(torch.autograd.Function):
    """``net(data)`` chunk by chunk; gradients for ``params`` (and ``data``) by recomputation."""

    @staticmethod
    def forward(ctx, data, net, chunk_size: int, preserve_rng: bool, *params):  # type: ignore[override]
        states, outputs = [], []
        for start in range(0, data.shape[0], chunk_size):
            states.append(_rng_state(data.device) if preserve_rng else None)
            outputs.append(net(data[start : start + chunk_size]))
        ctx.net, ctx.chunk_size, ctx.states = net, chunk_size, states
        ctx.save_for_backward(data, *params)
        return torch.cat(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        data, *params = ctx.saved_tensors
        need_params = ctx.needs_input_grad[4:]
        need_data = ctx.needs_input_grad[0]
        wanted = [p for p, need in zip(params, need_params) if need]
        grads: list[torch.Tensor | None] = [None] * len(wanted)
        grad_data = torch.zeros_like(data) if need_data else None
        for i, start in enumerate(range(0, data.shape[0], ctx.chunk_size)):
            stop = min(start + ctx.chunk_size, data.shape[0])
            chunk = data[start:stop].detach().requires_grad_(need_data)
            with torch.enable_grad(), _replay_rng(ctx.states[i], data.device):
                out = ctx.net(chunk)
            inputs = wanted + ([chunk] if need_data else [])
            if not inputs:
                break
            pieces = torch.autograd.grad(out, inputs, grad_output[start:stop], allow_unused=True)
            for j, piece in enumerate(pieces[: len(wanted)]):
                if piece is not None:
                    grads[j] = piece if grads[j] is None else grads[j] + piece
            if need_data and pieces[-1] is not None:
                grad_data[start:stop] = pieces[-1]
        it = iter(grads)
        param_grads = [next(it) if need else None for need in need_params]
        return (grad_data, None, None, None, *param_grads)


def chunked_encode(
    net: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor,
    chunk_size: int,
    params: tuple[torch.Tensor, ...],
    *,
    preserve_rng_state: bool = True,
) -> torch.Tensor:
    """``net(data)`` of shape ``(N, ...)``, evaluated in chunks of ``chunk_size`` rows (module docstring).

    :param net: the network (a module or callable) applied to row chunks of ``data``.
    :param torch.Tensor data: inputs, shape ``(N, ...)``.
    :param int chunk_size: rows per chunk.
    :param params: the tensors to differentiate (the network's trainable parameters).
    :param bool preserve_rng_state: record the random state per chunk and replay it in the
        backward pass (needed for dropout; costs a copy of the generator state per chunk).
    """
    return _ChunkedEncode.apply(data, net, chunk_size, preserve_rng_state, *params)
