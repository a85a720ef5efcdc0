# SPDX-License-Identifier: Apache-2.0
r"""Pairwise tables of log-densities between B latents and M support points, and the dense logsumexp.

The recognition-parameterised likelihood needs, for every latent :math:`z_b` and every support
point :math:`m`, the log-density :math:`\log f(z_b \mid x_m)`. For diagonal Gaussians this is a
quadratic form that expands into a single matrix product,

.. math::

    -\tfrac12 \sum_d \lambda_{md} (z_{bd} - \mu_{md})^2
    = \big[z_b^{2},\; z_b\big] \cdot \big[-\tfrac12 \lambda_m,\; \lambda_m \mu_m\big]
      - \tfrac12 \sum_d \lambda_{md} \mu_{md}^2 ,

so no :math:`B \times M \times D` intermediate is formed. Latents and means are first centred on
the mean of the support locations. The expansion still cancels: its rounding error is at most
:math:`E_{bm} = \gamma_K \sum_i |q_{bi} k_{mi}|` (:math:`K = 2D + 1` terms, :math:`\gamma_K
\approx K\epsilon`; Higham, *Accuracy and Stability*, §3.1), of order :math:`\epsilon \sum_d
\lambda_{md} (\tilde z_{bd}^2 + \tilde\mu_{md}^2)` (centred values), which for narrow factors
(small scales, e.g. a :class:`~pyro_rpm.DeltaFactor` with :math:`\varepsilon = 10^{-3}`) or
widely spread means dwarfs the quadratic form itself when :math:`z_b \approx \mu_m`.

* Float32 (and lower) inputs: the expansion is accumulated in float64, together with the
  precisions and the normalising constant, and the table is rounded once to the input dtype:
  within one float32 rounding of the direct formula (``tests/cross_cutting/test_numerics.py``).
* Float64 inputs: the entries whose bound :math:`E_{bm}` (one more GEMM, of absolute values)
  exceeds :data:`REFINE_TOL` :math:`\cdot (|T_{bm}| + 1)` are recomputed by the difference form
  :math:`-\tfrac12 \sum_d \lambda_{md} (z_{bd} - \mu_{md})^2`, values and gradients, so every entry
  is within about :math:`10^{-13} (|T_{bm}| + 1)` of the exact value at scales :math:`10^{-3}` to
  :math:`10` and spreads of the means up to 300 (``tests/normalisers/test_float64_reference.py``).
  The recomputation costs :math:`O(D)` memory per refined entry.

A scale shared by all support points (one ``(D,)`` vector, or a ``(M, D)`` view of it with stride
0) is cast to the accumulation dtype *once*, before it is expanded, so its gradient is summed over
the support points in the accumulation dtype and rounded once.

:func:`clamped_logsumexp` is the row-logsumexp of every dense table in the package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._validation import recording_graph

__all__ = [
    "REFINE_TOL",
    "LOGSUMEXP_FLOOR",
    "clamped_logsumexp",
    "quadratic_pairwise",
    "gaussian_pairwise_log_prob",
    "gaussian_dense_logsumexp",
]

#: float64 entries whose rounding bound exceeds ``REFINE_TOL * (|T| + 1)`` are recomputed exactly.
REFINE_TOL = 2.0**-46
#: :func:`clamped_logsumexp` floors shifted scores at minus this many nats, per dtype.
LOGSUMEXP_FLOOR = {torch.float64: 700.0, torch.float32: 80.0, torch.float16: 80.0, torch.bfloat16: 80.0}
_UNIT_ROUNDOFF_64 = 2.0**-53


def clamped_logsumexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Row-logsumexp :math:`\log\sum_i e^{x_i}` along ``dim``, with shifted scores floored before ``exp``.

    ``torch.logsumexp`` computes :math:`M + \log\sum_i e^{x_i - M}`; on the CPU, ``exp`` of an
    argument below about :math:`-88` (float32) or :math:`-708` (float64) takes the math library's
    slow underflow path (many times slower per element; issue 15 measured the effect on the training
    step that ``benchmarks/elbo_step.py`` times), which an RPM's scores reach within a few hundred training steps. Here
    :math:`x_i - M` is clamped at :math:`-F` with :math:`F` = :data:`LOGSUMEXP_FLOOR` (80 nats for
    float32, whose exp is still a normal number, 700 for float64), *before* ``exp``. A clamped term is replaced by :math:`e^{-F}`
    instead of something smaller, so the result exceeds the exact one by at most
    :math:`n e^{-F} / \sum_i e^{x_i - M} \le n e^{-F}` relative (:math:`e^{-80} \approx 1.8
    \cdot 10^{-35}` per term in float32, far below its resolution :math:`6\cdot 10^{-8}` for any
    :math:`n < 10^{27}`; float64 :math:`e^{-700} \approx 10^{-304}`), and the gradient (the softmax) changes by as little,
    in absolute terms. Rows whose maximum is :math:`\pm\infty` (or NaN) follow ``torch.logsumexp``.

    :param torch.Tensor x: scores (floating point).
    :param int dim: the dimension to reduce.
    :returns: ``x`` reduced along ``dim``.
    """
    if x.numel() == 0 or x.shape[dim] == 0:
        return torch.logsumexp(x, dim=dim)
    shift = x.detach().amax(dim=dim, keepdim=True)
    # A row whose maximum is -inf (an empty sum), +inf or NaN has that maximum as its logsumexp (as
    # torch.logsumexp gives): shifted by 0 instead, its clamped sum is finite (or +inf), and adding the
    # maximum back gives it. No host sync and no branch, so a recorded or compiled step stays short.
    safe = torch.nan_to_num(shift, nan=0.0, posinf=0.0, neginf=0.0)
    # The floor's gradient is zero at and below it: those terms' exact gradient (their softmax weight)
    # is at most e^-floor, so the gradient is as accurate as the value. ``threshold`` (y = x above the
    # floor, else the floor) instead of ``clamp``: the same values, and its backward is one fused
    # kernel where clamp's is a comparison and a select (``benchmarks/elbo_step.py``: the replayed
    # InfoNCE step at B = 256 from 1.12x to 1.03-1.07x plain torch, docs/performance.md).
    floor = -LOGSUMEXP_FLOOR.get(x.dtype, 80.0)
    shifted = F.threshold(x - safe, floor, floor)
    total = shifted.exp().sum(dim=dim)  # >= 1 in a finite row: the row maximum's term is e^0
    return total.log() + shift.squeeze(dim)


def quadratic_pairwise(z: torch.Tensor, loc: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`-\tfrac12 \sum_d \lambda_{md} (z_{\cdot d} - \mu_{md})^2` for every support point.

    :param torch.Tensor z: latents of shape ``(..., D)`` (any leading particle/plate dims).
    :param torch.Tensor loc: support locations :math:`\mu`, shape ``(M, D)``.
    :param torch.Tensor precision: :math:`\lambda`, shape ``(M, D)`` or ``(D,)`` (shared).
    :returns: a tensor of shape ``(..., M)``.
    """
    out_dtype = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), precision.dtype)
    work_dtype = _accumulation_dtype(out_dtype, loc.device)
    return _expanded_quadratic(z, loc, _shared_row(precision).to(work_dtype), None, out_dtype, out_dtype == torch.float64)


def _shared_row(x: torch.Tensor) -> torch.Tensor:
    """``x[0]`` when ``x`` is a ``(M, D)`` view of one ``(D,)`` vector (stride 0), else ``x``."""
    return x[0] if x.dim() == 2 and x.shape[0] > 0 and x.stride(0) == 0 else x


def _expanded_quadratic(
    z: torch.Tensor,
    loc: torch.Tensor,
    precision: torch.Tensor,
    offset: torch.Tensor | None,
    out_dtype: torch.dtype,
    refine: bool,
) -> torch.Tensor:
    """:func:`quadratic_pairwise` plus a per-support-point ``offset`` (M,), accumulated before one rounding
    to ``out_dtype``; ``refine``: recompute the imprecise entries (:func:`_refine`).

    ``precision`` (and ``offset``) are in the accumulation dtype already.
    """
    work_dtype = precision.dtype
    z, loc = z.to(work_dtype), loc.to(work_dtype)
    centre = loc.detach().mean(0)
    zc = z - centre
    mc = loc - centre
    precision = precision.expand_as(mc)
    weights = torch.cat([-0.5 * precision, precision * mc], dim=-1)  # (M, 2D)
    features = torch.cat([zc * zc, zc], dim=-1)  # (..., 2D)
    bias = -0.5 * (precision * mc * mc).sum(-1)  # (M,)
    if offset is not None:
        bias = bias + offset
    lead = features.shape[:-1]
    flat = features.reshape(-1, features.shape[-1])
    table = torch.addmm(bias, flat, weights.transpose(0, 1))
    if refine and table.numel():
        table = _refine(table, flat, weights, bias, z.reshape(-1, z.shape[-1]), loc, precision, offset)
    return table.reshape(*lead, loc.shape[0]).to(out_dtype)


def _refine(table, features, weights, bias, z, loc, precision, offset) -> torch.Tensor:
    r"""Recompute by the difference form the float64 entries whose rounding bound :math:`E_{bm}`
    exceeds :data:`REFINE_TOL` :math:`(|T_{bm}| + 1)` (module docstring); differentiable."""
    with torch.no_grad():
        terms = features.shape[-1] + 1
        # out of place: a recorded step without in-place operations can be simplified (infer/_graph.py)
        bound = torch.addmm(bias.abs(), features.abs(), weights.abs().transpose(0, 1)) * (1.01 * terms * _UNIT_ROUNDOFF_64)
        rows, cols = (bound > REFINE_TOL * (table.abs() + 1)).nonzero(as_tuple=True)
    if rows.numel() == 0 and not recording_graph():  # a recorded step keeps the pass: its replays select their own
        return table
    diff = z.index_select(0, rows) - loc.index_select(0, cols)
    exact = -0.5 * (precision.index_select(0, cols) * diff * diff).sum(-1)
    if offset is not None:
        exact = exact + offset.index_select(0, cols)
    return table.index_put((rows, cols), exact)


def _accumulation_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """float64 for lower-precision floating inputs (where the device supports it), else ``dtype``."""
    if dtype == torch.float64 or not dtype.is_floating_point or device.type == "mps":
        return dtype
    return torch.float64


def gaussian_pairwise_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`\log \mathcal N(z \mid \mu_m, \operatorname{diag} s_m^2)` for every support point m.

    :param torch.Tensor z: latents of shape ``(..., D)``.
    :param torch.Tensor loc: support means, shape ``(M, D)``.
    :param torch.Tensor scale: support standard deviations, shape ``(M, D)`` or ``(D,)`` (or an
        ``(M, D)`` stride-0 view of a ``(D,)`` vector: treated as shared).
    :returns: a tensor of shape ``(..., M)``.
    """
    out_dtype = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), scale.dtype)
    # One cast of the scale (before any expansion), shared by the precision and the normalising
    # constant: computed in float32 they would add their own roundings (relative 2^-24 each) to the
    # table, and a cast after the expansion would round each support point's gradient to float32
    # before the (cancelling) sum over the support.
    return _gaussian_table(z, loc, scale, out_dtype, out_dtype)


def _gaussian_table(z, loc, scale, out_dtype: torch.dtype, table_dtype: torch.dtype) -> torch.Tensor:
    """The Gaussian log-density table in ``table_dtype`` (the output or the accumulation dtype)."""
    scale = _shared_row(scale).to(_accumulation_dtype(out_dtype, loc.device))
    log_norm = (-scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)).expand(loc.shape[:1])  # (M,)
    return _expanded_quadratic(z, loc, scale.pow(-2), log_norm, table_dtype, out_dtype == torch.float64)


def gaussian_dense_logsumexp(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`\log\sum_m \mathcal N(z \mid \mu_m, \operatorname{diag} s_m^2)` from the dense table.

    The table and its :func:`clamped_logsumexp` stay in the accumulation dtype (float64 for float32
    inputs) and the result is rounded once, so the gradients (softmax-weighted sums that cancel,
    e.g. in a shared scale) are not built from float32 weights. Arguments as
    :func:`gaussian_pairwise_log_prob`; returns shape ``z.shape[:-1]``.
    """
    out_dtype = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), scale.dtype)
    work = _accumulation_dtype(out_dtype, loc.device)
    return clamped_logsumexp(_gaussian_table(z, loc, scale, out_dtype, work), -1).to(out_dtype)
