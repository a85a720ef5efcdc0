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
the mean of the support locations, which keeps the cancellation error of the expansion small in
float32.
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
    centre = loc.detach().mean(0)
    zc = z - centre
    mc = loc - centre
    precision = precision.expand_as(mc)
    weights = torch.cat([-0.5 * precision, precision * mc], dim=-1)  # (M, 2D)
    features = torch.cat([zc * zc, zc], dim=-1)  # (..., 2D)
    bias = -0.5 * (precision * mc * mc).sum(-1)  # (M,)
    lead = features.shape[:-1]
    table = torch.addmm(bias, features.reshape(-1, features.shape[-1]), weights.transpose(0, 1))
    return table.reshape(*lead, loc.shape[0])


def gaussian_pairwise_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`\log \mathcal N(z \mid \mu_m, \operatorname{diag} s_m^2)` for every support point m.

    :param torch.Tensor z: latents of shape ``(..., D)``.
    :param torch.Tensor loc: support means, shape ``(M, D)``.
    :param torch.Tensor scale: support standard deviations, shape ``(M, D)`` or ``(D,)``.
    :returns: a tensor of shape ``(..., M)``.
    """
    scale = scale.expand_as(loc)
    log_norm = -scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # (M,)
    return quadratic_pairwise(z, loc, scale.pow(-2)) + log_norm
