# SPDX-License-Identifier: Apache-2.0
r"""Checkpoints of Pyro's parameter store, the optimiser and the random streams.

A checkpoint is one :func:`torch.save` file that :func:`torch.load` reads with
``weights_only=True`` (no arbitrary unpickling). It holds

* ``params``: the *unconstrained* tensors of the parameter store and, per parameter, its
  constraint as a plain description (``{"name": "positive"}``, ``{"name": "interval",
  "lower_bound": 0.0, "upper_bound": 1.0}``): constraint objects cannot be unpickled safely;
* ``fingerprint``: parameter names and shapes, to refuse a checkpoint of another model;
* ``optim``: the optimiser state (a :class:`pyro.optim.PyroOptim`, a
  :class:`~pyro_rpm.train.optim.MultiTensorOptim` or a :class:`torch.optim.Optimizer`, keyed by
  parameter names) and the state of a torch learning-rate scheduler;
* ``rng``: the states of torch (CPU and initialised CUDA devices), Python's :mod:`random` and NumPy;
* ``step``, ``extra`` (any tensors, numbers, strings, lists, tuples and dicts) and a format version.

Files are written atomically (a temporary file, read back with ``weights_only=True``, then
:func:`os.replace`). :func:`load_checkpoint` checks everything before it changes anything: a
missing file, a corrupted file or a checkpoint of another model raises, and the parameter store,
the optimiser and the random streams are left as they were.

Example::

    >>> import tempfile, os
    >>> _ = pyro.param("w", torch.ones(3))
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> _ = save_checkpoint(path, step=10)
    >>> _ = pyro.param("w").data.zero_()
    >>> load_checkpoint(path).step, pyro.param("w").tolist()
    (10, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

from .._validation import check_int
from ._state import (
    check_optimizer_state,
    constraint_from_spec,
    constraint_spec,
    load_optimizer_state,
    optimizer_state,
    rng_state,
    same_spec,
    set_rng_state,
)

__all__ = ["Checkpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "pyro_rpm.train.checkpoint"
VERSION = 1


# ----------------------------------------------------------------------------- save
def _reason(error: BaseException) -> str:
    """The informative line of a torch.load error (the unpickler's complaint when there is one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line:
            return line
    return lines[0] if lines else type(error).__name__


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    step: int,
    optim: Any = None,
    scheduler: Any = None,
    extra: dict | None = None,
    names: list[str] | None = None,
) -> str:
    """Write the parameter store (or the parameters ``names``), optimiser state and RNG states.

    :param path: file to write (its folder is created); replaced atomically.
    :param int step: the step counter to store (a non-negative int).
    :param optim: a :class:`pyro.optim.PyroOptim` or a :class:`torch.optim.Optimizer` (or None).
    :param scheduler: a torch learning-rate scheduler of ``optim`` (or None).
    :param dict extra: anything :func:`torch.load` accepts with ``weights_only=True``.
    :param names: parameter-store names to save (default: all of them).
    :returns: the path written.
    :raises ValueError: when the contents would not load with ``weights_only=True``.
    """
    path = _check_path(path)
    check_int(step, "step", 0, expected="a non-negative int")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    store = pyro.get_param_store()
    params = dict(store.named_parameters())
    if names is None:
        names = list(params)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"names: parameters {missing} are not in Pyro's parameter store")
    constraints = store.get_state()["constraints"]
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "params": {n: params[n].detach().clone() for n in names},
        "constraints": {n: constraint_spec(constraints[n], n) for n in names},
        "fingerprint": {n: list(params[n].shape) for n in names},
        "optim": optimizer_state(optim, scheduler),
        "rng": rng_state(),
        "extra": extra if extra is not None else {},
        "torch_version": str(torch.__version__),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                "the checkpoint would not load with torch.load(weights_only=True); extra= (and the optimiser "
                f"state) may hold only tensors, numbers, strings, lists, tuples and dicts ({_reason(error)})"
            ) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------- load
@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read: the step counter, ``extra`` and the parameter shapes."""

    path: str
    step: int
    extra: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)
    version: int = VERSION
    payload: dict = field(default_factory=dict, repr=False)


def read_checkpoint(path: str | os.PathLike, map_location: Any = None) -> Checkpoint:
    """Read and validate a checkpoint file without changing any state."""
    path = _check_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated/garbled files, unsafe pickles, ...
        raise ValueError(
            f"'{path}' is not a pyro_rpm checkpoint: torch.load(weights_only=True) failed ({_reason(error)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a pyro_rpm checkpoint (no '{FORMAT}' format marker)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"checkpoint '{path}' has format version {version!r}; this pyro_rpm reads versions <= {VERSION}"
        )
    keys = ("step", "params", "constraints", "fingerprint", "optim", "rng", "extra")
    if any(k not in payload for k in keys) or not isinstance(payload["params"], dict):
        raise ValueError(
            f"'{path}' is not a pyro_rpm checkpoint (missing entries {[k for k in keys if k not in payload]})"
        )
    for name, value in payload["params"].items():
        if not isinstance(value, torch.Tensor) or list(value.shape) != list(payload["fingerprint"].get(name, [-1])):
            raise ValueError(f"'{path}' is not a valid pyro_rpm checkpoint: parameter '{name}' is corrupted")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"checkpoint '{path}': parameter '{name}' holds NaN or infinite values")
        constraint_from_spec(payload["constraints"].get(name), name)
    return Checkpoint(path, int(payload["step"]), payload["extra"], payload["fingerprint"], version, payload)


def check_fingerprint(checkpoint: Checkpoint, expected: dict[str, Any], *, what: str = "the model") -> None:
    """Raise :class:`ValueError` listing every name/shape difference between a checkpoint and ``expected``."""
    saved = {n: list(s) for n, s in checkpoint.fingerprint.items()}
    expected = {n: list(s) for n, s in expected.items()}
    problems = (
        [f"missing from the checkpoint: {sorted(set(expected) - set(saved))}"] if set(expected) - set(saved) else []
    )
    if set(saved) - set(expected):
        problems.append(f"not in {what}: {sorted(set(saved) - set(expected))}")
    shapes = [
        f"'{n}' {saved[n]} in the checkpoint vs {expected[n]}"
        for n in sorted(set(saved) & set(expected))
        if saved[n] != expected[n]
    ]
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes))
    if problems:
        raise ValueError(f"checkpoint '{checkpoint.path}' is from another model: " + " | ".join(problems))


def apply_checkpoint(
    checkpoint: Checkpoint, *, optim: Any = None, scheduler: Any = None, restore_rng: bool = True
) -> None:
    """Load a checked checkpoint into the store (in place), ``optim``, ``scheduler`` and the RNGs."""
    payload = checkpoint.payload
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    constraints = store.get_state()["constraints"]
    for name in payload["params"]:
        if name in current:
            try:
                spec = constraint_spec(constraints[name], name)
            except ValueError:
                continue
            if not same_spec(spec, payload["constraints"][name]):
                raise ValueError(
                    f"checkpoint '{checkpoint.path}': parameter '{name}' has constraint "
                    f"{payload['constraints'][name]['name']!r}, the store has {spec['name']!r}"
                )
    check_optimizer_state(payload["optim"], optim, scheduler, available=payload["params"])
    new = {}
    with torch.no_grad():
        for name, value in payload["params"].items():
            if name in current:
                current[name].copy_(value.to(device=current[name].device, dtype=current[name].dtype))
            else:
                new[name] = value.detach().clone().requires_grad_(value.is_floating_point())
    if new:
        store.set_state(
            {"params": new, "constraints": {n: constraint_from_spec(payload["constraints"][n], n) for n in new}}
        )
    load_optimizer_state(payload["optim"], optim, scheduler)
    if restore_rng:
        set_rng_state(payload["rng"])


def load_checkpoint(
    path: str | os.PathLike,
    *,
    map_location: Any = None,
    optim: Any = None,
    scheduler: Any = None,
    strict: bool = True,
    restore_rng: bool = True,
) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and restore the saved state.

    Parameters already in Pyro's parameter store are overwritten *in place* (modules and optimisers
    that hold them see the new values); the others are added to the store. Run the model once
    before loading (as :func:`pyro_rpm.fit` does) so that ``pyro.module`` has registered the
    networks' own tensors: a stored value that is not a module's tensor is ignored by the module.

    :param path: the checkpoint file.
    :param map_location: as in :func:`torch.load` (e.g. ``"cpu"`` for a checkpoint saved on a GPU).
    :param optim: optimiser whose state to restore (the same kind as the one saved).
    :param scheduler: torch learning-rate scheduler whose state to restore.
    :param bool strict: when the store is not empty, its names and shapes must be the checkpoint's.
    :param bool restore_rng: restore the torch/random/NumPy random streams.
    :returns: a :class:`Checkpoint` with ``step`` and ``extra``.
    :raises FileNotFoundError: for a missing file.
    :raises ValueError: for a corrupted file, a checkpoint of another model or an incompatible
        optimiser; nothing is changed then.
    """
    checkpoint = read_checkpoint(path, map_location)
    store = pyro.get_param_store()
    if len(store):
        current = {n: list(p.shape) for n, p in store.named_parameters()}
        if strict:
            check_fingerprint(checkpoint, current, what="Pyro's parameter store")
        else:
            check_fingerprint(
                checkpoint,
                {n: s for n, s in current.items() if n in checkpoint.fingerprint}
                | {n: s for n, s in checkpoint.fingerprint.items() if n not in current},
            )
    apply_checkpoint(checkpoint, optim=optim, scheduler=scheduler, restore_rng=restore_rng)
    return checkpoint
