# SPDX-License-Identifier: Apache-2.0
r"""Screened exact row-logsumexp: float32 finds the support points that matter, float64 computes them.

In an RPM the recognition factors are usually narrow compared with the spread of the data, so
each latent :math:`z_b` has appreciable weight :math:`p_{bm} = e^{s_{bm} - L_b}` on a few support
points only: on the benchmark problem of ``benchmarks/normaliser.py`` (N = 1e5), 0.07 % of the
pairs lie within 40 nats of their row's logsumexp :math:`L_b`. The exact float64 passes cost about
2.4 times the float32 ones on the CPU, and float32 alone is inexact for narrow factors
(:mod:`pyro_rpm.normalisers`). :class:`ScreenedLogSumExp` therefore

1. runs the fused kernel in float32 over all N points: approximate :math:`\hat L_b`;
2. runs the swapped float32 pass: :math:`\hat r_m = \log \sum_b e^{\hat s_{bm} - \hat L_b}`,
   an approximate upper bound on the weight of point m in any row;
3. computes the exact float64 logsumexp :math:`L^S_b` over the points :math:`S` whose bound can
   exceed the margin, and certifies that every other point is negligible (below). Gradients use the
   same set: the backward pass recomputes only the points of S.

Certificate. A float32 dot product of float64 features (rounded to float32) of length K has error
at most :math:`\gamma_{K+2} \sum_i |q_{bi} k_{mi}|`, :math:`\gamma_n \approx n u`,
:math:`u = 2^{-24}` (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1), whatever the
summation order. With :math:`Q_i = \max_b |q_{bi}|`, :math:`A_m = \sum_i |k_{mi}| Q_i` and a safety
factor of 4,

.. math::

    \epsilon_m = 4 (K + 3)\, u\, (A_m + \max_b |\hat L_b|) + 10^{-3}
    \;\ge\; \max_b |\hat s_{bm} - s_{bm}| + \text{rounding of } \hat r_m ,

and since the kernel's logsumexp is at least its largest term, :math:`s_{bm} - \hat L_b \le \hat
r_m + \epsilon_m = U_m` for every row b. :math:`L^S_b \le L_b` (a sum over fewer positive terms),
so with :math:`\Delta = \max_b (\hat L_b - L^S_b)`,

.. math::

    s_{bm} - L_b \;\le\; U_m + \Delta \quad\text{for all } b .

Every point outside S satisfies :math:`U_m + \Delta \le -T` with :math:`T = 40 + \log N`
(:data:`SCREEN_MARGIN`), so the dropped points weigh at most :math:`N e^{-T} = e^{-40} \approx 4
\cdot 10^{-18}` of each row's total: the value is exact to float64 rounding, and so are the
gradients up to that relative weight. :math:`\Delta` is only known once :math:`L^S` is, so S starts
from a guess and grows until the certificate holds.

Cost and fallbacks. Steps 1-2 cost about 0.4 of one exact float64 pass (forward + backward) over
all N; step 3 and the backward pass scale with :math:`|S|`. When more than half of the points are
needed, all of them are computed exactly: wide problems are recognised before step 1 by a float64
probe of :data:`PROBE_SIZE` points against the largest density peak (:func:`_surely_dense`; about
1.05 times the fused backend's time then), the remaining cases after step 2 (about 1.2-1.4 times).
If float32 overflows (features above about :math:`10^{38}`), the exact computation runs on everything.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .features import FeatureMap
from .streamed import ChunkedLogSumExp, flush_denormals, merge_online

__all__ = ["SCREEN_MARGIN", "DENSE_FRACTION", "PROBE_SIZE", "ScreenedLogSumExp", "screened_logsumexp"]

#: dropped support points weigh at most ``exp(-SCREEN_MARGIN)`` of each row's total, all together.
SCREEN_MARGIN = 40.0
#: once more than this fraction of the support set is needed, all of it is computed exactly.
DENSE_FRACTION = 0.5
_UNIT_ROUNDOFF = 2.0**-24
_SAFETY = 4.0
_SLACK = 1e-3
#: evenly spaced support points (at most N/16) whose bounds decide whether screening pays (:func:`screen`).
PROBE_SIZE = 4096
#: initial guess of :math:`\Delta` (nats) for the first selection.
_DELTA_GUESS = 1.0


def _gather(b: torch.Tensor | None, index: torch.Tensor, features: FeatureMap) -> torch.Tensor | None:
    """Rows ``index`` of the second support parameter (all of it when shared or absent)."""
    if b is None or features.shared:
        return b
    return b.index_select(0, index)


def _threshold(num_support: int) -> float:
    """:math:`-T`: a point is dropped when :math:`U_m + \\Delta \\le -T`."""
    return -(SCREEN_MARGIN + math.log(num_support))


def _probe_index(num_support: int, device: torch.device) -> torch.Tensor:
    """Evenly spaced probe points: :data:`PROBE_SIZE`, and at most a sixteenth of the support."""
    size = max(1, min(PROBE_SIZE, num_support // 16))
    return torch.arange(0, num_support, max(1, num_support // size), device=device)


def _surely_dense(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, features: FeatureMap) -> bool:
    r"""Whether more than :data:`DENSE_FRACTION` of a probe of support points certainly matter, in float64
    and before any float32 pass.

    With :math:`C = \max_m \max_z s(z, m)` (:meth:`~.features.FeatureMap.max_score`),
    :math:`L_b \le \log N + C`, so a point with :math:`\max_b s_{bm} > C - \text{SCREEN_MARGIN}`
    has :math:`s_{bm} - L_b > -T` and would be kept; the test never calls a sparse problem dense.
    """
    num_support = a.shape[0]
    peak = features.max_score(a, b)
    if peak is None or not math.isfinite(peak):
        return False
    probe = _probe_index(num_support, a.device)
    keys = features.keys(a.detach().index_select(0, probe), _gather(None if b is None else b.detach(), probe, features))
    best = (q.detach() @ keys.T).amax(0)
    return float((best > peak - SCREEN_MARGIN).double().mean()) > DENSE_FRACTION


def screen(
    q: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, features: FeatureMap, kernel, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    r"""The float32 passes: upper bounds :math:`U_m \ge \max_b (s_{bm} - \hat L_b)` for every support
    point and :math:`\hat L` (both in ``q``'s dtype), or ``None`` when screening cannot pay: a probe
    of :data:`PROBE_SIZE` evenly spaced points finds more than :data:`DENSE_FRACTION` of them needed,
    first certainly (:func:`_surely_dense`, before any float32 work) and then by the float32
    bounds, or float32 overflowed.

    ``kernel`` is a float32 fused kernel (:class:`~.fused.FusedKernel`); ``q`` the float64 query features.
    """
    num_support, dim = a.shape[0], q.shape[1]
    if _surely_dense(q, a, b, features):
        return None
    width, ones = kernel.key_width(dim, backward=True)
    q = q.detach()
    q_abs = q.abs().amax(0)
    q32 = q.to(torch.float32)
    keys32 = torch.empty(num_support, width, dtype=torch.float32, device=q.device)
    magnitude = torch.empty(num_support, dtype=q.dtype, device=q.device)
    lse_hat = None
    for start in range(0, num_support, chunk_size):
        stop = min(start + chunk_size, num_support)
        param = features.param_chunk(b, start, stop)
        k, _ = features.chunk_keys(a[start:stop].detach(), None if param is None else param.detach(), width, ones)
        keys32[start:stop] = k
        torch.mv(k[:, :dim].abs_(), q_abs, out=magnitude[start:stop])  # k is not read again
        lse_hat, _ = merge_online(lse_hat, None, kernel.forward(q32, keys32[start:stop], False)[0].to(q.dtype), None)
    lse32 = lse_hat.to(torch.float32)
    lse_hat = lse32.to(q.dtype)  # the shift the swapped pass uses
    if not bool(torch.isfinite(lse_hat).all()):
        return None
    eps = magnitude.add_(lse_hat.abs().max()).mul_(_SAFETY * (width + 2) * _UNIT_ROUNDOFF).add_(_SLACK)
    state = kernel.backward_state(q32, lse32, torch.ones_like(lse32))
    probe = _probe_index(num_support, q.device)
    probe_upper = kernel.key_logsumexp(state, keys32[probe]).to(q.dtype) + eps[probe]
    if float((probe_upper + _DELTA_GUESS > _threshold(num_support)).double().mean()) > DENSE_FRACTION:
        return None
    resp = torch.cat(
        [kernel.key_logsumexp(state, keys32[start : start + chunk_size]) for start in range(0, num_support, chunk_size)]
    )
    upper = eps.add_(resp)
    if not bool(torch.isfinite(upper).all()):
        return None
    return upper, lse_hat


def _screened_forward(
    q, a, b, features: FeatureMap, exact_kernel, screen_kernel, chunk_size: int, screen_chunk_size: int, need_out: bool
):
    """Exact ``(lse, out)`` over the certified support subset, and its indices (``None``: all points)."""
    num_support = a.shape[0]
    screened = screen(q, a, b, features, screen_kernel, screen_chunk_size)
    if screened is None:
        return (*ChunkedLogSumExp._forward(q, a, b, features, exact_kernel, chunk_size, need_out), None)
    upper, lse_hat = screened
    threshold = _threshold(num_support)
    included = torch.zeros(num_support, dtype=torch.bool, device=a.device)
    wanted = upper + _DELTA_GUESS > threshold
    lse = out = None
    while True:
        new = wanted & ~included
        if int(included.sum()) + int(new.sum()) > DENSE_FRACTION * num_support or lse is None and not new.any():
            new = ~included
        index = new.nonzero().squeeze(-1)
        sub = ChunkedLogSumExp._forward(
            q, a.index_select(0, index), _gather(b, index, features), features, exact_kernel, chunk_size, need_out
        )
        lse, out = merge_online(lse, out, *sub)
        included |= new
        if bool(included.all()):
            return lse, out, None
        delta = (lse_hat - lse).max()
        wanted = (upper + delta > threshold) & ~included
        if not bool(wanted.any()):
            return lse, out, included.nonzero().squeeze(-1)


class ScreenedLogSumExp(torch.autograd.Function):
    """Autograd function of the screened exact row-logsumexp (module docstring).

    Inputs as :class:`~.streamed.ChunkedLogSumExp`, with two kernels, the exact one (float64) and
    the float32 fused screening kernel, and two chunk sizes, one for each. Double backward is not
    supported.
    """

    @staticmethod
    def forward(
        ctx, q, a, b, features: FeatureMap, exact_kernel, screen_kernel, chunk_size: int, screen_chunk_size: int
    ):  # type: ignore[override]
        """Row-logsumexp ``L`` of shape ``(B,)``; saves what the backward pass recomputes from."""
        with flush_denormals(q.device):
            lse, out, keep = _screened_forward(
                q, a, b, features, exact_kernel, screen_kernel, chunk_size, screen_chunk_size, ctx.needs_input_grad[0]
            )
        ctx.features, ctx.kernel, ctx.chunk_size = features, exact_kernel, chunk_size
        ctx.save_for_backward(q, a, b, lse, out, keep)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        """Gradients of the query features and of the support parameters (``None`` for the rest)."""
        q, a, b, lse, out, keep = ctx.saved_tensors
        features = ctx.features
        grad_q = grad.unsqueeze(-1) * out if ctx.needs_input_grad[0] else None
        need_a, need_b = ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2]
        grad_a = grad_b = None
        if need_a or need_b:
            a_kept = a if keep is None else a.index_select(0, keep)
            b_kept = b if keep is None else _gather(b, keep, features)
            with flush_denormals(q.device):
                grad_a, grad_b = ChunkedLogSumExp._key_grads(
                    q, a_kept, b_kept, lse, grad, features, ctx.kernel, ctx.chunk_size, need_a, need_b
                )
            if keep is not None and need_a:
                grad_a = a.new_zeros(a.shape).index_copy_(0, keep, grad_a)
            if keep is not None and need_b and not features.shared:
                grad_b = b.new_zeros(b.shape).index_copy_(0, keep, grad_b)
        return grad_q, grad_a, grad_b, None, None, None, None, None


def screened_logsumexp(
    q: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None,
    features: FeatureMap,
    exact_kernel,
    screen_kernel,
    chunk_size: int,
    screen_chunk_size: int | None = None,
) -> torch.Tensor:
    """Apply :class:`ScreenedLogSumExp`: ``LSE_m(q_b . k_m)`` of shape ``(B,)`` in ``q``'s dtype.

    ``chunk_size`` is for the exact kernel, ``screen_chunk_size`` (default: the same) for the float32 passes.
    """
    screen_chunk_size = screen_chunk_size or chunk_size
    return ScreenedLogSumExp.apply(q, a, b, features, exact_kernel, screen_kernel, chunk_size, screen_chunk_size)
