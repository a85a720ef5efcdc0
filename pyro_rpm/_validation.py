# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by the package: every failure names the argument.

**Value checks.** A check that reads a tensor's *values* (:func:`check_finite`, and the call sites that
ask :func:`value_checks_active`) copies a result to the host: a device synchronisation, and a graph
break under :func:`torch.compile`. Such checks run when all of these hold:

* the :func:`value_checks` mode is ``"always"`` (the default), or ``"once"`` and this
  (check, shape, dtype, device) structure has not yet passed;
* Pyro's validation is on (:func:`pyro.enable_validation`, on by default);
* the code is not being traced by :func:`torch.compile` (:func:`torch.compiler.is_compiling`) nor recorded
  into a graph by :class:`~pyro_rpm.JitRPM_ELBO` (:func:`capturing`): a compiled region holds no value
  checks; they run in eager calls only.

Checks of types, shapes, dtypes and devices read no values and always run (under :func:`torch.compile`
they run while tracing, i.e. once per structure, and the graph guards on that structure).

**Mixed precision.** Under :func:`torch.autocast` the user's network runs in low precision (bfloat16
or float16); the package keeps everything after it in full precision: :func:`full_precision_output`
casts a network's output back to the dtype the network computes in without autocast (its input's
floating dtype, else its parameters'), and :func:`full_precision_call` runs the factors, likelihoods,
normalisers and ELBO terms with autocast disabled, so they accumulate in float32 (or float64).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import torch
from pyro.infer.util import is_validation_enabled

__all__ = [
    "AUTOCAST_DEVICES",
    "VALUE_CHECKS",
    "capturing",
    "graph_capture",
    "mark_checked",
    "resolve_device",
    "structure",
    "value_checks",
    "value_checks_active",
    "check_choice",
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
    "full_precision_call",
    "full_precision_output",
]

_T = TypeVar("_T")
#: Device types whose autocast :func:`full_precision_call` switches off.
AUTOCAST_DEVICES = ("cpu", "cuda")


_CAPTURING = [0]  # depth of graph_capture() scopes


@contextlib.contextmanager
def graph_capture() -> Iterator[None]:
    """Mark the code run inside as being recorded into a graph (:class:`~pyro_rpm.JitRPM_ELBO` tracing).

    While it is open :func:`capturing` is true: value checks are skipped and the package takes the
    branches that read no tensor values (as under :func:`torch.compile`).
    """
    _CAPTURING[0] += 1
    try:
        yield
    finally:
        _CAPTURING[0] -= 1


def recording_graph() -> bool:
    """Whether the code runs inside a :func:`graph_capture` scope (a :class:`~pyro_rpm.JitRPM_ELBO`
    recording, which keeps the forward operations only: a custom :class:`torch.autograd.Function`'s
    own backward is not recorded, so code with a plain-operations alternative takes it)."""
    return _CAPTURING[0] > 0


def capturing() -> bool:
    """Whether the code runs under :func:`torch.compile` tracing or a :func:`graph_capture` scope.

    Code that would read a tensor's values to choose a branch (a host synchronisation, and an error while
    a graph is recorded) takes its value-free branch when this is true.
    """
    return _CAPTURING[0] > 0 or torch.compiler.is_compiling()


def full_precision_call(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` with :func:`torch.autocast` disabled on every device type where it is on.

    Outside autocast it is ``fn(*args, **kwargs)`` with no context entered (nothing for
    :func:`torch.compile` to trace).
    """
    for device_type in AUTOCAST_DEVICES:
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return full_precision_call(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def full_precision_output(output: torch.Tensor, reference: torch.Tensor | torch.dtype) -> torch.Tensor:
    """``output`` cast up to the floating dtype of ``reference`` when it has fewer bits (e.g. bfloat16 -> float32).

    A network run under :func:`torch.autocast` returns bfloat16/float16; its factors are built in the
    dtype it computes in without autocast. ``output`` of as many bits or more, or not floating, is
    returned as it is.
    """
    dtype = reference if isinstance(reference, torch.dtype) else reference.dtype
    if (
        isinstance(output, torch.Tensor)
        and output.is_floating_point()
        and dtype.is_floating_point
        and torch.finfo(output.dtype).bits < torch.finfo(dtype).bits
    ):
        return output.to(dtype)
    return output


def check_tensor(value: object, name: str) -> torch.Tensor:
    """Return ``value`` if it is a tensor, else raise :class:`TypeError` naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


#: The modes of :func:`value_checks`.
VALUE_CHECKS = ("always", "once", "off")
_MODE = ["always"]
_PASSED: set[Hashable] = set()  # structures whose value checks passed (mode "once")
_MAX_PASSED = 65536


class value_checks:
    r"""Set how often the package checks tensor *values* (NaN/Inf, signs); also a context manager.

    * ``"always"`` (default): every eager call checks;
    * ``"once"``: a check runs until it has passed once for a structure (the check's name with the
      tensor's shape, dtype and device), then no more for that structure: validation once per
      structure, not per step;
    * ``"off"``: no value checks (as ``pyro.enable_validation(False)``, which is honoured too).

    Inside :func:`torch.compile` value checks never run (they would synchronise and break the graph);
    checks of types, shapes, dtypes and devices always run. ``value_checks("off")`` sets the mode
    until it is set again; ``with value_checks("once"): ...`` restores the previous mode on exit.
    Setting a mode forgets the structures that passed.

    :param str mode: one of :data:`VALUE_CHECKS`.
    :raises ValueError: for another mode.

    Example::

        >>> r = GaussianRecognition(nn.Linear(3, 4), 2, name="doc_value_checks")
        >>> with pyro_rpm.value_checks("off"):
        ...     f = r(torch.full((5, 3), float("nan")))  # not checked: the factor holds NaN
        >>> bool(f.loc.isnan().any()), pyro_rpm.value_checks.mode()
        (True, 'always')
    """

    def __init__(self, mode: str) -> None:
        if not isinstance(mode, str) or mode not in VALUE_CHECKS:
            raise ValueError(f"mode must be one of {VALUE_CHECKS}, got {mode!r}")
        self.previous = _MODE[0]
        _MODE[0] = mode
        _PASSED.clear()

    def __enter__(self) -> value_checks:
        return self

    def __exit__(self, *exc: object) -> None:
        _MODE[0] = self.previous
        _PASSED.clear()

    @staticmethod
    def mode() -> str:
        """The current mode."""
        return _MODE[0]


def value_checks_active(key: Hashable | None = None) -> bool:
    """Whether a check of tensor values runs now (see :func:`value_checks`).

    :param key: the structure checked (mode ``"once"`` skips a key that passed, :func:`mark_checked`);
        ``None``: a check without a structure, run whenever value checks are on.
    """
    if _MODE[0] == "off" or not is_validation_enabled() or capturing():
        return False
    return _MODE[0] != "once" or key is None or key not in _PASSED


def mark_checked(key: Hashable | None) -> None:
    """Record that the value check of structure ``key`` passed (used by mode ``"once"``)."""
    if key is not None and _MODE[0] == "once" and len(_PASSED) < _MAX_PASSED:
        _PASSED.add(key)


def structure(name: str, value: torch.Tensor) -> tuple:
    """The structure key of a check: its name and the tensor's shape, dtype and device."""
    return (name, tuple(value.shape), value.dtype, value.device)


def check_finite(value: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`ValueError` naming ``name`` if ``value`` holds a NaN or an infinity.

    A value check: skipped when :func:`value_checks_active` says so (mode ``"off"``, Pyro's validation
    off, inside :func:`torch.compile`, or mode ``"once"`` and this structure passed already).
    """
    if not value.is_floating_point() or value.device.type == "meta":
        return value
    key = structure(name, value)
    if not value_checks_active(key):
        return value
    # One reduction first: a finite sum means every entry is finite (a NaN or an infinity makes the sum
    # NaN or infinite); only a sum that is not (such an entry, or an overflow) pays the entry-wise test.
    if not bool(torch.isfinite(value.detach().sum())) and not bool(torch.isfinite(value).all()):
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(torch.isinf(value).sum())
        raise ValueError(
            f"{name} must be finite, but it contains {n_nan} NaN and {n_inf} infinite values "
            f"(shape {tuple(value.shape)})"
        )
    mark_checked(key)
    return value


def check_positive(value: torch.Tensor | float, name: str) -> None:
    """Raise :class:`ValueError` naming ``name`` unless every entry is finite and > 0."""
    tensor = torch.as_tensor(value)
    if tensor.numel() and tensor.dtype != torch.bool and not tensor.is_complex():
        low, high = torch.aminmax(tensor.detach())  # one pass; NaN propagates into both
        if bool(low > 0) and bool(torch.isfinite(high)):
            return
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be finite and strictly positive, got min {tensor.min().item():.3g}")


def check_same_device_and_dtype(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """Raise :class:`ValueError` if two tensors live on different devices or have different float dtypes."""
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}; move both to one device")
    if a.is_floating_point() and b.is_floating_point() and a.dtype != b.dtype:
        raise ValueError(f"{a_name} has dtype {a.dtype} but {b_name} has dtype {b.dtype}; use one dtype")


def check_choice(value: _T, name: str, choices: tuple[object, ...]) -> _T:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ValueError`
    ``"{name} must be one of {choices}, got {value!r}"``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


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
