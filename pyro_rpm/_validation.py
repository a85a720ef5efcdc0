# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by the package: every failure names the argument."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "resolve_device",
    "check_finite",
    "check_float_type",
    "check_int",
    "check_int_type",
    "check_number",
    "check_optional_int",
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


def _int_range(minimum: int | None, below: int | None) -> str:
    if below is not None:
        return f"an int in [{minimum}, {below})" if minimum is not None else f"an int < {below}"
    return f"an int >= {minimum}" if minimum is not None else "an int"


def check_int(
    value: object,
    name: str,
    minimum: int | None = 1,
    *,
    below: int | None = None,
    integral: bool = False,
    expected: str | None = None,
) -> int:
    """Return ``value`` if it is an int (not a bool) with ``minimum <= value < below``.

    ``minimum=None`` / ``below=None`` drop that bound. ``integral=True`` also accepts any
    :class:`numbers.Integral` (e.g. numpy ints) and returns ``int(value)``. Otherwise raise
    :class:`ValueError` ``"{name} must be {expected}, got {value!r}"``, where ``expected`` defaults to
    ``"an int >= {minimum}"`` (or ``"an int in [{minimum}, {below})"``, or ``"an int"``).
    """
    types = numbers.Integral if integral else int
    if (
        isinstance(value, bool)
        or not isinstance(value, types)
        or (minimum is not None and value < minimum)
        or (below is not None and value >= below)
    ):
        raise ValueError(f"{name} must be {expected or _int_range(minimum, below)}, got {value!r}")
    return int(value) if integral else value


def check_optional_int(value: object, name: str, minimum: int = 1, *, expected: str | None = None) -> int | None:
    """Return ``value`` if it is ``None`` or an int (not a bool) ``>= minimum``.

    Else raise :class:`ValueError` ``"{name} must be {expected}, got {value!r}"``, where ``expected``
    defaults to ``"an int >= {minimum} or None"``.
    """
    if value is None:
        return None
    return check_int(value, name, minimum, expected=expected or f"an int >= {minimum} or None")


def check_int_type(value: object, name: str) -> int:
    """Return ``value`` if it is an int (not a bool), else raise :class:`TypeError` naming ``name``.

    For arguments of any value where only the type matters, such as random seeds.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def check_float_type(value: object, name: str, *, tensor: bool = False) -> float | torch.Tensor:
    """Return ``value`` if it is an int or a float (not a bool), or with ``tensor=True`` a tensor.

    Else raise :class:`TypeError` ``"{name} must be a float[ or a tensor], got {type}"``. Only the type is
    checked; pair it with :func:`check_positive` or :func:`check_number` for the value.
    """
    types: tuple[type, ...] = (int, float, torch.Tensor) if tensor else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        what = "a float or a tensor" if tensor else "a float"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def _number_range(greater_than: float | None, at_least: float | None, below: float | None) -> str:
    bounds = [f"> {greater_than}"] if greater_than is not None else []
    bounds += [f">= {at_least}"] if at_least is not None else []
    bounds += [f"< {below}"] if below is not None else []
    return " ".join(["a finite number", " and ".join(bounds)]) if bounds else "a finite number"


def check_number(
    value: object,
    name: str,
    *,
    greater_than: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    expected: str | None = None,
) -> float:
    """Return ``float(value)`` for a finite int or float (not a bool) within the given bounds.

    ``greater_than``, ``at_least`` and ``below`` are optional bounds (``value > greater_than``,
    ``value >= at_least``, ``value < below``). Otherwise raise :class:`ValueError`
    ``"{name} must be {expected}, got {value!r}"``, where ``expected`` defaults to a description
    of the bounds such as ``"a finite number >= 0"``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (greater_than is not None and not value > greater_than)
        or (at_least is not None and not value >= at_least)
        or (below is not None and not value < below)
    ):
        raise ValueError(f"{name} must be {expected or _number_range(greater_than, at_least, below)}, got {value!r}")
    return float(value)


def check_positive_number(value: object, name: str) -> float:
    """Return ``float(value)`` for a finite real number > 0 (not a bool), else raise :class:`ValueError`."""
    return check_number(value, name, greater_than=0)


def resolve_device(device: object) -> torch.device | None:
    """``torch.device(device)`` (``None`` stays ``None``), or a :class:`ValueError` naming ``device``
    for a bad name or an unavailable CUDA device."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must name a torch device (e.g. 'cpu', 'cuda'), got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return device
