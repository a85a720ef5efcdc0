# SPDX-License-Identifier: Apache-2.0
"""Concatenation of factors along the support dimension."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Factor
from .categorical import CategoricalFactor

__all__ = ['cat_factors']


def cat_factors(parts: Sequence[Factor]) -> Factor:
    r"""Concatenate factors of one kind along the support dimension: M = :math:`\sum_i M_i` points.

    Used to build a support set from pieces, e.g. ``[minibatch; memory bank]``
    (:mod:`pyro_rpm.support`). Gradients flow into every part that carries them.

    :param parts: factors of the same type (and, for :class:`DeltaFactor`, the same ``eps`` and
        ``sample_noise``), each with ``batch_shape == (M_i,)``, on one device and dtype.
    :raises TypeError: for non-factors or mixed types.
    :raises ValueError: for an empty list, mismatched event shapes, devices, dtypes or extra state.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("parts must hold at least one factor")
    first = parts[0]
    for i, part in enumerate(parts):
        if not isinstance(part, Factor) or type(part) is not type(first):
            raise TypeError(
                f"parts must be factors of one type; parts[0] is {type(first).__name__}, "
                f"parts[{i}] is {type(part).__name__}"
            )
        if len(part.batch_shape) != 1:
            raise ValueError(f"parts[{i}] must have batch_shape (M,), got {tuple(part.batch_shape)}")
        if part.event_shape != first.event_shape:
            raise ValueError(
                f"parts[{i}] has event shape {tuple(part.event_shape)} but parts[0] has {tuple(first.event_shape)}"
            )
    if isinstance(first, CategoricalFactor):
        tensors = [p.logits for p in parts]
        _check_tensors_match(tensors, "logits")
        return CategoricalFactor(torch.cat(tensors), validate_args=False)
    extra = {k: v for k, v in first.__dict__.items() if k in first._extra_state}
    for i, part in enumerate(parts):
        other = {k: v for k, v in part.__dict__.items() if k in part._extra_state}
        if other != extra:
            raise ValueError(f"parts[{i}] has settings {other} but parts[0] has {extra}")
    locs = [p.loc for p in parts]
    _check_tensors_match(locs, "loc")
    return first._rebuild(torch.cat(locs), torch.cat([p.scale for p in parts]))


def _check_tensors_match(tensors: list[torch.Tensor], what: str) -> None:
    for i, t in enumerate(tensors[1:], 1):
        if t.device != tensors[0].device or t.dtype != tensors[0].dtype:
            raise ValueError(
                f"parts[{i}].{what} is {t.dtype} on {t.device} but parts[0].{what} is "
                f"{tensors[0].dtype} on {tensors[0].device}; use one device and dtype"
            )
