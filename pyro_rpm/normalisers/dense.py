# SPDX-License-Identifier: Apache-2.0
r"""Pairwise tables of log-densities between B latents and M support points.

The recognition-parameterised likelihood needs, for every latent :math:`z_b` and every support
point :math:`m`, the log-density :math:`\log f(z_b \mid x_m)`. For diagonal Gaussians this is a
quadratic form that expands into a single matrix product,

.. math::

    -\tfrac12 \sum_d \lambda_{md} (z_{bd} - \mu_{md})^2
    = \big[z_b^{2},\; z_b\big] \cdot \big[-\tfrac12 \lambda_m,\; \lambda_m \mu_m\big]
      - \tfrac12 \sum_d \lambda_{md} \mu_{md}^2 ,

so no :math:`B \times M \times D` intermediate is formed. Latents and means are first centred on
the mean of the support locations. The expansion still cancels: its rounding error is of order
:math:`\epsilon \sum_d \lambda_{md} (\tilde z_{bd}^2 + \tilde\mu_{md}^2)` (centred values), which
for narrow factors (small scales, e.g. a :class:`~pyro_rpm.DeltaFactor` with
:math:`\varepsilon = 10^{-3}`) dwarfs the quadratic form itself when :math:`z_b \approx \mu_m`. In
float32 the expansion is therefore accumulated in float64 (a single-precision ``epsilon`` of
:math:`6 \cdot 10^{-8}` times :math:`\lambda |z|^2 \sim 10^8` is several nats), together with the
precisions and the normalising constant, and the table is rounded once to the input dtype: within
one float32 rounding of the direct formula (``tests/cross_cutting/test_numerics.py``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["quadratic_pairwise", "gaussian_pairwise_log_prob"]


def quadratic_pairwise(z: torch.Tensor, loc: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`-\tfrac12 \sum_d \lambda_{md} (z_{\cdot d} - \mu_{md})^2` for every support point.

    :param torch.Tensor z: latents of shape ``(..., D)`` (any leading particle/plate dims).
    :param torch.Tensor loc: support locations :math:`\mu`, shape ``(M, D)``.
    :param torch.Tensor precision: :math:`\lambda`, shape ``(M, D)`` or ``(D,)`` (shared).
    :returns: a tensor of shape ``(..., M)``.
    """
    out_dtype = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), precision.dtype)
    return _expanded_quadratic(z, loc, precision, None, out_dtype)


def _expanded_quadratic(
    z: torch.Tensor, loc: torch.Tensor, precision: torch.Tensor, offset: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """:func:`quadratic_pairwise` plus a per-support-point ``offset`` (M,), accumulated before one rounding."""
    work_dtype = _accumulation_dtype(out_dtype, loc.device)
    z, loc, precision = z.to(work_dtype), loc.to(work_dtype), precision.to(work_dtype)
    centre = loc.detach().mean(0)
    zc = z - centre
    mc = loc - centre
    precision = precision.expand_as(mc)
    weights = torch.cat([-0.5 * precision, precision * mc], dim=-1)  # (M, 2D)
    features = torch.cat([zc * zc, zc], dim=-1)  # (..., 2D)
    bias = -0.5 * (precision * mc * mc).sum(-1)  # (M,)
    if offset is not None:
        bias = bias + offset.to(work_dtype)
    lead = features.shape[:-1]
    table = torch.addmm(bias, features.reshape(-1, features.shape[-1]), weights.transpose(0, 1))
    return table.reshape(*lead, loc.shape[0]).to(out_dtype)


def _accumulation_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """float64 for lower-precision floating inputs (where the device supports it), else ``dtype``."""
    if dtype == torch.float64 or not dtype.is_floating_point or device.type == "mps":
        return dtype
    return torch.float64


def gaussian_pairwise_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`\log \mathcal N(z \mid \mu_m, \operatorname{diag} s_m^2)` for every support point m.

    :param torch.Tensor z: latents of shape ``(..., D)``.
    :param torch.Tensor loc: support means, shape ``(M, D)``.
    :param torch.Tensor scale: support standard deviations, shape ``(M, D)`` or ``(D,)``.
    :returns: a tensor of shape ``(..., M)``.
    """
    out_dtype = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), scale.dtype)
    # Precision and normalising constant in the accumulation dtype too: computed in float32 they
    # would add their own roundings (relative 2^-24 each) to the table.
    scale = scale.to(_accumulation_dtype(out_dtype, loc.device)).expand(loc.shape)
    log_norm = -scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # (M,)
    return _expanded_quadratic(z, loc, scale.pow(-2), log_norm, out_dtype)
