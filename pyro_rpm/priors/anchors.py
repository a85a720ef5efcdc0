# SPDX-License-Identifier: Apache-2.0
"""Anchors of a contrastive prior too far from the support for a coupling of differences to resolve (issue 14, item 7)."""

from __future__ import annotations

import torch

from .._validation import mark_checked, structure, value_checks_active
from .couplings import Coupling

__all__ = ["check_anchor_resolves_support"]


def check_anchor_resolves_support(anchor: torch.Tensor, support: torch.Tensor, coupling: Coupling) -> None:
    r"""Raise :class:`ValueError` naming the anchor when :math:`z - z'` cannot resolve the support points.

    With :math:`c` the mean of the support points :math:`z'_m`, :math:`A = \max|z - c|` (the anchor's
    offset) and :math:`S = \max|z'_m - c|` (the support's spread), a coupling of differences
    (:attr:`Coupling.compares_differences`) computes :math:`z - z'_m` with a rounding error of about
    :math:`\epsilon A`; once :math:`\epsilon A > S` it rounds to the same number for every support point
    and :math:`g` is blind to them (before: NaN in float32, uniform or wrong probabilities in float64 at
    :math:`A = 10^{20}`). One reduction of each tensor and one host synchronisation; a value check
    (:func:`pyro_rpm.value_checks`). A support of identical points (:math:`S = 0`) is not checked.
    """
    if not coupling.compares_differences or not anchor.is_floating_point() or anchor.device.type == "meta":
        return
    key = structure("anchor-range", anchor)
    if not value_checks_active(key):
        return
    with torch.no_grad():
        support64 = support.detach().reshape(-1, support.shape[-1]).to(torch.float64)
        centre = support64.mean(0)
        offset, spread = torch.stack(
            [(anchor.detach().to(torch.float64) - centre).abs().amax(), (support64 - centre).abs().amax()]
        ).tolist()
    eps = torch.finfo(anchor.dtype).eps
    if spread > 0 and eps * offset > spread:
        raise ValueError(
            f"anchor lies {offset:.3g} from the support's centre, beyond what {anchor.dtype} resolves against the "
            f"support's spread {spread:.3g} (offset * eps must stay below the spread, i.e. offset < {spread / eps:.3g}): "
            f"anchor - z' rounds to the same value for every support point, so {type(coupling).__name__} cannot "
            "tell them apart; rescale the latents (or use float64)"
        )
    mark_checked(key)
