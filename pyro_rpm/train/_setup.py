# SPDX-License-Identifier: Apache-2.0
r"""Set-up of :func:`pyro_rpm.fit`: argument checks and the parameters a step touches.

:func:`probe_params` runs one loss evaluation of model and guide in a private parameter store
(:meth:`pyro.params.param_store.ParamStoreDict.scope`) on a copy of the random streams, so it
finds the parameters' names, shapes and tensors without changing any state. Only then, once a
checkpoint has been checked against them, :func:`register_params` adds them to the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from ._state import rng_state, set_rng_state

__all__ = ["as_compiled", "check_arguments", "check_callables", "positive_int", "probe_params", "register_params"]


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def probe_params(model, guide, elbo, args: tuple, kwargs: dict) -> tuple[dict, dict]:
    """The parameters (unconstrained tensors) and constraints a step touches, found in a private store."""
    store, saved = pyro.get_param_store(), rng_state()
    try:
        with store.scope():
            with poutine.trace(param_only=True) as capture:
                elbo.loss(model, guide, *args, **kwargs)
            tensors = dict(store.named_parameters())
            constraints = store.get_state()["constraints"]
            names = [n for n, site in capture.trace.nodes.items() if site["type"] == "param" and n in tensors]
            return {n: tensors[n] for n in names}, {n: constraints[n] for n in names}
    finally:
        set_rng_state(saved)


def register_params(tensors: dict, constraints: dict) -> dict[str, torch.Tensor]:
    """Add the probed parameters to the store (as the first SVI step would) and return them by name."""
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    for name, tensor in tensors.items():
        if isinstance(tensor, nn.Parameter) and name in current and current[name] is not tensor:
            raise ValueError(
                f"Pyro's parameter store holds a parameter '{name}' that is not the tensor of the module using that "
                "name (left over from an earlier model?); pyro.module would keep the stored value and the module "
                "would not be trained. Call pyro.clear_param_store() before fit, or give the module another name"
            )
    new = {n: t for n, t in tensors.items() if n not in current}
    store.set_state({"params": new, "constraints": {n: constraints[n] for n in new}})
    current = dict(store.named_parameters())
    return {n: current[n] for n in sorted(tensors)}


def check_callables(*, model, guide, elbo, validation_elbo) -> tuple[Any, Any]:
    """Check :func:`pyro_rpm.fit`'s model, guide and losses; return ``(elbo, validation_elbo)`` with defaults."""
    from ..infer.elbo import RPM_ELBO

    for value, name in ((model, "model"), (guide, "guide")):
        if not callable(value):
            raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    elbo = RPM_ELBO() if elbo is None else elbo
    validation_elbo = elbo if validation_elbo is None else validation_elbo
    for value, name in ((elbo, "elbo"), (validation_elbo, "validation_elbo")):
        if not isinstance(value, pyro.infer.ELBO):
            raise TypeError(f"{name} must be a pyro.infer.ELBO (e.g. pyro_rpm.RPM_ELBO()), got {type(value).__name__}")
    return elbo, validation_elbo


def check_arguments(
    *,
    steps,
    epochs,
    seed,
    scheduler_interval,
    validate_every,
    early_stopping,
    has_validation,
    callbacks,
    checkpoint,
    checkpoint_every,
    resume,
) -> tuple[Any, list]:
    """Check :func:`pyro_rpm.fit`'s scalar arguments; return ``(early_stopping, callbacks)``."""
    from .results import EarlyStopping

    if (steps is None) == (epochs is None):
        raise ValueError("pass exactly one of steps= and epochs=")
    if steps is not None:
        positive_int(steps, "steps")
    if epochs is not None:
        positive_int(epochs, "epochs")
    if seed is not None:
        positive_int(seed, "seed", minimum=0)
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if validate_every is not None:
        positive_int(validate_every, "validate_every")
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(patience=early_stopping)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(
            f"early_stopping must be an EarlyStopping or an int patience, got {type(early_stopping).__name__}"
        )
    if early_stopping is not None and not has_validation:
        raise ValueError("early_stopping needs validation= data")
    if not isinstance(callbacks, Iterable) or isinstance(callbacks, (str, bytes)):
        raise TypeError(f"callbacks must be an iterable of callables, got {type(callbacks).__name__}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}] must be callable, got {type(cb).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}")
    if checkpoint_every is not None:
        positive_int(checkpoint_every, "checkpoint_every")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume needs checkpoint= (the file to resume from)")
    return early_stopping, callbacks


def as_compiled(elbo: Any, compile: bool | str = True) -> Any:
    """The :class:`JitRPM_ELBO` with the settings of ``elbo`` (``None``: the defaults), for ``fit(compile=...)``.

    :param elbo: ``None``, an :class:`~pyro_rpm.RPM_ELBO` or a :class:`JitRPM_ELBO` (returned as it is).
    :param compile: ``True`` (backend ``"fx"``) or a backend name of :data:`BACKENDS`.
    :raises ValueError: for another ELBO (only RPM_ELBO steps can be recorded) or backend.
    """
    from ..infer.compiled import BACKENDS, JitRPM_ELBO
    from ..infer.elbo import RPM_ELBO

    backend = "fx" if compile is True else compile
    if backend not in BACKENDS:
        raise ValueError(f"compile must be True, False or one of {BACKENDS}, got {compile!r}")
    if isinstance(elbo, JitRPM_ELBO):
        return elbo
    if elbo is None:
        return JitRPM_ELBO(backend=backend)
    if type(elbo) is not RPM_ELBO:
        raise ValueError(
            f"compile= records RPM_ELBO steps; the elbo given is a {type(elbo).__name__} (pass compile=False, "
            "or an RPM_ELBO / JitRPM_ELBO)"
        )
    return JitRPM_ELBO(
        elbo.num_particles,
        elbo.max_plate_nesting,
        elbo.vectorize_particles,
        estimator=elbo.estimator,
        reference=elbo.reference,
        backend=backend,
        retain_graph=elbo.retain_graph,
        strict_enumeration_warning=elbo.strict_enumeration_warning,
        ignore_jit_warnings=elbo.ignore_jit_warnings,
        jit_options=elbo.jit_options,
    )
