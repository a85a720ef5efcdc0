# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by the package: every failure names the argument."""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_finite",
    "check_int",
    "check_positive",
    "check_positive_number",
    "check_same_device_and_dtype",
    "check_tensor",
]


def check_tensor(value: object, name: str) -> torch.Tensor:
    """Return ``value`` if it is a tensor, else raise :class:`TypeError` naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_finite(value: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`ValueError` naming ``name`` if ``value`` holds a NaN or an infinity."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(torch.isinf(value).sum())
        raise ValueError(
            f"{name} must be finite, but it contains {n_nan} NaN and {n_inf} infinite values "
            f"(shape {tuple(value.shape)})"
        )
    return value


def check_positive(value: torch.Tensor | float, name: str) -> None:
    """Raise :class:`ValueError` naming ``name`` unless every entry is finite and > 0."""
    tensor = torch.as_tensor(value)
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be finite and strictly positive, got min {tensor.min().item():.3g}")


def check_same_device_and_dtype(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """Raise :class:`ValueError` if two tensors live on different devices or have different float dtypes."""
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}; move both to one device")
    if a.is_floating_point() and b.is_floating_point() and a.dtype != b.dtype:
        raise ValueError(f"{a_name} has dtype {a.dtype} but {b_name} has dtype {b.dtype}; use one dtype")


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``, else raise :class:`ValueError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_positive_number(value: object, name: str) -> float:
    """Return ``float(value)`` for a finite real number > 0 (not a bool), else raise :class:`ValueError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
