# SPDX-License-Identifier: Apache-2.0
r"""Latents far from every support point: the exact Gaussian log-likelihood without cancellation.

For diagonal Gaussian factors (including :class:`~pyro_rpm.DeltaFactor`) the logits of the
likelihood are

.. math::

    \ell_m(z) = -\tfrac12 \sum_d \lambda_{md} (z_d - \mu_{md})^2 - \sum_d \log s_{md} + \text{const},
    \qquad \lambda = s^{-2},

and :math:`\log p(x = x_n \mid z) = \ell_n - \log\sum_m e^{\ell_m}`. The usual path computes the two
terms separately; each is of size :math:`Q = \tfrac12\sum_d \lambda_d (z_d - \mu_d)^2` and carries a
rounding error of about :math:`\epsilon Q`, while their difference (what the user asks for) can be
far smaller. With :math:`|z| \sim 10^{20}` the error swamps the answer: float64 returned 0.0 or even
positive log-probabilities, float32 (whose terms overflow) NaN.

**Range bound.** :func:`gaussian_latent_range` bounds, by one reduction of each tensor and one host
synchronisation,

.. math::

    \hat Q = \frac D2 \Big(\frac{\max_{b,d}|z_{bd} - c_d| + \max_{m,d}|\mu_{md} - c_d|}{\min_{m,d} s_{md}}\Big)^2
    \;\ge\; \max_{b,m} \tfrac12 \sum_d \lambda_{md}(z_{bd} - \mu_{md})^2,

with :math:`c` the mean of the support locations. While :math:`\hat Q \le 1/\epsilon_w`
(:func:`far_latent_threshold`; :math:`\epsilon_w` the machine epsilon of the working dtype, float64 for
float32 and float64 inputs, so :math:`2^{52} \approx 4.5\cdot 10^{15}`) the usual path keeps the accuracy
documented in ``docs/guarantees.md`` §2. Beyond it :func:`far_latent_log_prob` computes the answer from
the *differences* of the logits, in which the large terms cancel analytically:

* **shared scale** (one :math:`s_d` for every support point): the quadratic :math:`-\tfrac12\sum_d
  \lambda_d \tilde z_d^2` is common to all logits and drops out of the softmax exactly, leaving the
  linear scores :math:`g_m = \sum_d \lambda_d \tilde\mu_{md} (\tilde z_d - \tilde\mu_{md}/2)`
  (:math:`\tilde z = z - c`, :math:`\tilde \mu = \mu - c`), whose log-softmax is computed by
  :func:`pyro_rpm.normalisers.score_logsumexp` (every backend, no ``B x M`` table);
* **per-point scales**: :math:`\Delta_{bm} = \ell_m - \ell_{n_b} = \sum_d [-(\lambda_{md} - \lambda_{nd})\tilde z_d^2/2
  + (\lambda_{md}\tilde\mu_{md} - \lambda_{nd}\tilde\mu_{nd})\tilde z_d - (\lambda_{md}\tilde\mu_{md}^2 -
  \lambda_{nd}\tilde\mu_{nd}^2)/2] - \sum_d(\log s_{md} - \log s_{nd})` pairs each support point with
  the observed one before the latent enters, and :math:`\log p = -\log\sum_m e^{\Delta_{bm}}`. It holds
  ``B x M x D`` intermediates, so it is refused above :data:`FAR_LATENT_MAX_ELEMENTS` elements.

Both are accumulated in float64 (the working dtype) and rounded once. Their error is that of the
differences: :math:`\epsilon_w` relative to the size of the terms of :math:`\Delta`, i.e. the effect of
rounding the inputs themselves. A :class:`ValueError` naming the latent says when the exact answer
cannot be given: it is not representable in the output dtype (e.g. :math:`-10^{49}` in float32), a
difference overflows the working dtype, or the per-point path is too large.
"""

from __future__ import annotations

import torch

from .._validation import check_tensor
from ..normalisers import score_logsumexp
from ..normalisers.dense import _accumulation_dtype, clamped_logsumexp

__all__ = [
    "FAR_LATENT_MAX_ELEMENTS",
    "far_latent_log_prob",
    "far_latent_log_softmax",
    "far_latent_threshold",
    "gaussian_latent_range",
    "shared_scale_row",
]

#: Largest ``B * M * D`` that the per-point-scale exact path (:func:`far_latent_log_prob`) accepts.
FAR_LATENT_MAX_ELEMENTS = 2**24


def shared_scale_row(scale: torch.Tensor) -> torch.Tensor | None:
    """The ``(D,)`` scale when an ``(M, D)`` scale is one row shared by all support points (stride 0), else ``None``."""
    if scale.dim() == 2 and scale.shape[0] > 0 and scale.stride(0) == 0:
        return scale[0]
    if scale.dim() == 1:
        return scale
    return None


def far_latent_threshold(dtype: torch.dtype, device: torch.device) -> float:
    r"""The largest range bound :math:`\hat Q` (module docstring) handled by the usual path: :math:`1/\epsilon_w`.

    :math:`\epsilon_w` is the machine epsilon of the working dtype (float64 for float32 and float64
    inputs; the input dtype on MPS): :math:`2^{52}` in float64.
    """
    return 1.0 / torch.finfo(_accumulation_dtype(dtype, device)).eps


def gaussian_latent_range(latent: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> tuple[float, float]:
    r"""The bound :math:`\hat Q \ge \max_{b,m} \tfrac12\sum_d \lambda_{md}(z_{bd} - \mu_{md})^2` (module docstring).

    One reduction of each tensor and one host synchronisation; computed in float64, so it does
    not overflow for float32 inputs.

    :param torch.Tensor latent: latents, shape ``(..., D)``.
    :param torch.Tensor loc: support locations, shape ``(M, D)``.
    :param torch.Tensor scale: support scales, ``(M, D)`` or ``(D,)``.
    :returns: ``(Q, extent)``: :math:`\hat Q` as a Python float (``inf`` beyond the float64 range) and
        :math:`\max_{b,d}|z_{bd} - c_d|`, the latent's distance from the support's centre (for messages).
    """
    with torch.no_grad():
        loc64 = loc.detach().to(torch.float64)
        centre = loc64.mean(0)
        stats = torch.stack(
            [
                (latent.detach().to(torch.float64) - centre).abs().amax(),
                (loc64 - centre).abs().amax(),
                scale.detach().to(torch.float64).amin(),
            ]
        )
        latent_extent, loc_extent, min_scale = stats.tolist()
    ratio = (latent_extent + loc_extent) / min_scale
    bound = 0.5 * loc.shape[-1] * ratio * ratio if ratio < 1e150 else float("inf")
    return bound, latent_extent


def far_latent_log_prob(
    latent: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    index: torch.Tensor,
    *,
    name: str = "latent",
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r""":math:`\log p(x = x_{n} \mid z)` of diagonal Gaussian factors from the differences of the logits (module docstring).

    :param torch.Tensor latent: latents, shape ``batch_shape + (D,)``.
    :param torch.Tensor loc: support locations :math:`\mu`, shape ``(M, D)``.
    :param torch.Tensor scale: support scales, ``(M, D)`` (a stride-0 view of one row counts as shared) or ``(D,)``.
    :param torch.Tensor index: observed support indices, broadcasting against ``batch_shape``.
    :param str name: how the latent is named in errors.
    :param str backend: normaliser backend of the shared-scale path (:func:`pyro_rpm.normalisers.score_logsumexp`).
    :param int chunk_size: its chunk size.
    :returns: the log-probabilities, shape ``broadcast(index, batch_shape)``, in the latent's dtype.
    :raises ValueError: naming ``name`` when the exact answer cannot be given (module docstring).
    """
    out_dtype = latent.dtype
    work = _accumulation_dtype(out_dtype, latent.device)
    shape = torch.broadcast_shapes(index.shape, latent.shape[:-1])
    dim = latent.shape[-1]
    z = latent.to(work).expand(shape + (dim,)).reshape(-1, dim)
    n = index.expand(shape).reshape(-1)
    mu = loc.to(work)
    centre = mu.detach().mean(0)
    z_c, mu_c = z - centre, mu - centre
    shared = shared_scale_row(scale)
    if shared is not None:
        precision = shared.to(work).pow(-2)  # (D,)
        keys = precision * mu_c  # (M, D)
        bias = -0.5 * (keys * mu_c).sum(-1)  # (M,)
        observed = (z_c * keys[n]).sum(-1) + bias[n]
        log_prob = observed - score_logsumexp(z_c, keys, bias, backend=backend, chunk_size=chunk_size)
    else:
        elements = z.shape[0] * mu.shape[0] * dim
        if elements > FAR_LATENT_MAX_ELEMENTS:
            raise ValueError(
                f"{name} lies so far from the support points (see below) that its exact log-likelihood needs "
                f"per-pair differences, {elements} elements here, above the limit {FAR_LATENT_MAX_ELEMENTS}; "
                "rescale the latent, share the scale across support points, or use a smaller support set"
            )
        scale_w = scale.to(work).expand_as(mu)
        precision = scale_w.pow(-2)  # (M, D)
        quad = -0.5 * precision  # coefficient of z~^2
        lin = precision * mu_c  # coefficient of z~
        const = -0.5 * (lin * mu_c).sum(-1) - scale_w.log().sum(-1)  # (M,)
        delta = (
            ((quad.unsqueeze(0) - quad[n].unsqueeze(1)) * (z_c * z_c).unsqueeze(1)).sum(-1)
            + ((lin.unsqueeze(0) - lin[n].unsqueeze(1)) * z_c.unsqueeze(1)).sum(-1)
            + (const.unsqueeze(0) - const[n].unsqueeze(1))
        )  # (R, M)
        log_prob = -clamped_logsumexp(delta, -1)
    check_representable(log_prob, out_dtype, name)
    return log_prob.to(out_dtype).reshape(shape)


def far_latent_log_softmax(latent: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, *, name: str = "latent"):
    r"""The whole table :math:`\log p(x = x_m \mid z_b)`, shape ``batch_shape + (M,)``, in the working dtype.

    The same differences as :func:`far_latent_log_prob` (module docstring), for every support point:
    with a shared scale the linear scores :math:`g_m`, else :math:`\ell_m - \ell_k` (paired with the
    row's largest logit k); their log-softmax is accurate to :math:`\epsilon_w` relative to the size of the
    terms of :math:`\Delta` (module docstring) where each logit alone is not. It is what
    :meth:`~pyro_rpm.likelihood.recognition.RecognitionLikelihood.sample` draws from for far latents.

    :raises TypeError: for non-tensor or non-floating-point inputs; :raises ValueError: for shapes
        that do not match, and naming ``name`` above :data:`FAR_LATENT_MAX_ELEMENTS` elements (``B x M x D``,
        or ``B x M`` with a shared scale).
    """
    for value, arg in ((latent, "latent"), (loc, "loc"), (scale, "scale")):
        if not check_tensor(value, arg).is_floating_point():
            raise TypeError(f"{arg} must be a floating-point tensor, got dtype {value.dtype}")
    if (
        latent.dim() < 1
        or loc.dim() != 2
        or latent.shape[-1] != loc.shape[1]
        or scale.shape not in (loc.shape, loc.shape[1:])
    ):
        raise ValueError(
            f"need latent (..., D), loc (M, D) and scale (M, D) or (D,); got {tuple(latent.shape)}, "
            f"{tuple(loc.shape)}, {tuple(scale.shape)}"
        )
    work = _accumulation_dtype(latent.dtype, latent.device)
    dim, num_support = latent.shape[-1], loc.shape[0]
    z = latent.to(work).reshape(-1, dim)
    mu = loc.to(work)
    centre = mu.detach().mean(0)
    z_c, mu_c = z - centre, mu - centre
    shared = shared_scale_row(scale)
    elements = z.shape[0] * num_support * (1 if shared is not None else dim)
    if elements > FAR_LATENT_MAX_ELEMENTS:
        raise ValueError(
            f"{name} lies so far from the support points that an exact table of its likelihood needs "
            f"{elements} elements, above the limit {FAR_LATENT_MAX_ELEMENTS}; rescale the latent or use a smaller support set"
        )
    if shared is not None:
        precision = shared.to(work).pow(-2)
        keys = precision * mu_c
        delta = z_c @ keys.T - 0.5 * (keys * mu_c).sum(-1)  # (R, M): the logits less a common term per row
    else:
        scale_w = scale.to(work).expand_as(mu)
        quad, lin = -0.5 * scale_w.pow(-2), scale_w.pow(-2) * mu_c
        const = -0.5 * (lin * mu_c).sum(-1) - scale_w.log().sum(-1)

        def paired(ref: torch.Tensor) -> torch.Tensor:  # (R, M): l_m - l_ref(b), coefficients paired first
            return (
                ((quad.unsqueeze(0) - quad[ref].unsqueeze(1)) * (z_c * z_c).unsqueeze(1)).sum(-1)
                + ((lin.unsqueeze(0) - lin[ref].unsqueeze(1)) * z_c.unsqueeze(1)).sum(-1)
                + (const.unsqueeze(0) - const[ref].unsqueeze(1))
            )

        # Paired with each row's largest logit, so the log-softmax subtracts an exact 0.
        delta = paired(paired(torch.zeros(z.shape[0], dtype=torch.long, device=z.device)).argmax(-1))
    if not bool(torch.isfinite(delta).all()):
        raise ValueError(f"{name} lies so far from the support points that the logits' differences overflow {work}")
    return torch.log_softmax(delta, -1).reshape(latent.shape[:-1] + (num_support,))


def check_representable(log_prob: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """Raise :class:`ValueError` naming ``name`` unless every ``log_prob`` is finite and within ``dtype``'s range."""
    limit = torch.finfo(dtype).max
    bad = ~(log_prob.detach().abs() <= limit)
    if bool(bad.any()):
        worst = float(log_prob.detach()[bad].nan_to_num(nan=float("inf")).abs().max())
        hint = "rescale the latent" if dtype == torch.float64 else "rescale the latent or use float64"
        raise ValueError(
            f"{name} lies so far from the support points that its exact log-likelihood, of magnitude "
            f"{worst:.3g}, is beyond the range of {dtype} (largest {limit:.3g}); {hint}"
        )
