# SPDX-License-Identifier: Apache-2.0
r"""Serialisable state for :mod:`pyro_rpm.train.checkpoint`: constraints, random streams, optimisers.

Everything here becomes plain tensors, numbers, strings, lists, tuples and dicts, which
:func:`torch.load` reads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyro
import pyro.distributions.constraints as pyro_constraints
import torch
import torch.distributions.constraints as torch_constraints
from pyro.optim import PyroOptim

from .optim import MultiTensorOptim

__all__ = [
    "check_optimizer_state",
    "constraint_from_spec",
    "constraint_spec",
    "load_optimizer_state",
    "optimizer_state",
    "rng_state",
    "same_spec",
    "set_rng_state",
]


# ----------------------------------------------------------------------------- constraints
def _singletons() -> dict[str, Any]:
    """The constraint objects that torch and Pyro export by name (``real``, ``positive``, ``simplex``, ...)."""
    found: dict[str, Any] = {}
    for module in (torch_constraints, pyro_constraints):
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            if isinstance(obj, torch_constraints.Constraint) and not name.startswith("_"):
                found.setdefault(name, obj)
    return found


_SINGLETONS = _singletons()
_PARAMETRISED = {
    "greater_than": (torch_constraints.greater_than, ("lower_bound",)),
    "greater_than_eq": (torch_constraints.greater_than_eq, ("lower_bound",)),
    "less_than": (torch_constraints.less_than, ("upper_bound",)),
    "interval": (torch_constraints.interval, ("lower_bound", "upper_bound")),
    "half_open_interval": (torch_constraints.half_open_interval, ("lower_bound", "upper_bound")),
}


def constraint_spec(constraint: Any, name: str) -> dict:
    """A weights_only-safe description of a constraint (inverse of :func:`constraint_from_spec`)."""
    for key, obj in _SINGLETONS.items():
        if constraint is obj:
            return {"name": key}
    if isinstance(constraint, torch_constraints.independent):
        return {
            "name": "independent",
            "base": constraint_spec(constraint.base_constraint, name),
            "reinterpreted_batch_ndims": int(constraint.reinterpreted_batch_ndims),
        }
    for key, (cls, attrs) in _PARAMETRISED.items():
        if type(constraint) is cls:
            spec = {"name": key}
            for attr in attrs:
                bound = getattr(constraint, attr)
                spec[attr] = bound.detach().cpu().clone() if isinstance(bound, torch.Tensor) else float(bound)
            return spec
    raise ValueError(f"cannot save the constraint {constraint!r} of parameter '{name}' in a checkpoint")


def constraint_from_spec(spec: Any, name: str) -> Any:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"malformed constraint of parameter '{name}': {spec!r}")
    key = spec["name"]
    if key in _SINGLETONS:
        return _SINGLETONS[key]
    if key == "independent":
        base = constraint_from_spec(spec.get("base"), name)
        return torch_constraints.independent(base, int(spec["reinterpreted_batch_ndims"]))
    if key in _PARAMETRISED:
        cls, attrs = _PARAMETRISED[key]
        return cls(*(spec[attr] for attr in attrs))
    raise ValueError(f"unknown constraint {key!r} of parameter '{name}'")


def same_spec(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_spec(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu())
    return a == b


# ----------------------------------------------------------------------------- random streams
def rng_state() -> dict:
    """The states of torch (CPU, and every CUDA device once CUDA is initialised), :mod:`random`, NumPy."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states of :func:`rng_state` (CUDA states only when CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- optimiser state
def _param_names(params: list[torch.Tensor]) -> list[str | None]:
    store = pyro.get_param_store()
    return [store.param_name(p) for p in params]


def _flat_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(optim: Any, scheduler: Any = None) -> dict | None:
    """The state of ``optim`` (and a torch LR ``scheduler``), with parameters named as in the store."""
    if optim is None:
        state = None
    elif isinstance(optim, MultiTensorOptim):
        inner = optim.optimizer
        state = {
            "kind": "multi_tensor",
            "names": _param_names(_flat_params(inner)) if inner else [],
            "state_dict": inner.state_dict() if inner else None,
        }
    elif isinstance(optim, PyroOptim):
        state = {"kind": "pyro", "state": optim.get_state()}
    elif isinstance(optim, torch.optim.Optimizer):
        state = {"kind": "torch", "names": _param_names(_flat_params(optim)), "state_dict": optim.state_dict()}
    else:
        raise TypeError(f"optim must be a pyro.optim.PyroOptim or a torch.optim.Optimizer, got {type(optim).__name__}")
    if scheduler is not None:
        if state is None:
            raise ValueError("scheduler= needs the optimiser it schedules (optim=)")
        state["scheduler"] = scheduler.state_dict()
    return state


def check_optimizer_state(state: Any, optim: Any, scheduler: Any, available: Any = ()) -> None:
    """Raise if ``state`` cannot be loaded into ``optim`` (checked before anything is changed).

    ``available`` names parameters that will be in the store by then (besides those already there).
    """
    if optim is None:
        return
    if state is None:
        raise ValueError("the checkpoint holds no optimiser state, but optim= was given")
    kind = state.get("kind")
    expected = (
        "multi_tensor"
        if isinstance(optim, MultiTensorOptim)
        else "pyro"
        if isinstance(optim, PyroOptim)
        else "torch"
        if isinstance(optim, torch.optim.Optimizer)
        else None
    )
    if expected is None:
        raise TypeError(f"optim must be a pyro.optim.PyroOptim or a torch.optim.Optimizer, got {type(optim).__name__}")
    if kind != expected:
        raise ValueError(
            f"the checkpoint holds a {kind!r} optimiser state, but optim is a {expected!r} optimiser "
            f"({type(optim).__name__})"
        )
    inner = optim.optimizer if kind == "multi_tensor" else optim if kind == "torch" else None
    if kind == "multi_tensor" and inner is None and state["state_dict"] is not None:
        missing = [n for n in state["names"] if n not in pyro.get_param_store() and n not in available]
        if missing:
            raise ValueError(f"the optimiser state refers to parameters {missing} that are not in the parameter store")
    if inner is not None and state["state_dict"] is not None:
        current, saved = _param_names(_flat_params(inner)), list(state["names"])
        if sorted(map(str, current)) != sorted(map(str, saved)):
            raise ValueError(f"the checkpoint's optimiser state covers parameters {saved}, but optim holds {current}")
        if current != saved and (len(inner.param_groups) != 1 or len(state["state_dict"]["param_groups"]) != 1):
            raise ValueError("the optimiser holds its parameters in another order than the checkpoint")
    if scheduler is not None and "scheduler" not in state:
        raise ValueError("the checkpoint holds no learning-rate scheduler state, but scheduler= was given")


def _reorder(state_dict: dict, saved: list, current: list) -> dict:
    """Re-index a one-group torch state dict from the saved parameter order to the current one."""
    if saved == current:
        return state_dict
    position = {name: i for i, name in enumerate(saved)}
    state = {
        new: state_dict["state"][position[name]]
        for new, name in enumerate(current)
        if position[name] in state_dict["state"]
    }
    group = dict(state_dict["param_groups"][0], params=list(range(len(current))))
    return {"state": state, "param_groups": [group]}


def _prime(optim: MultiTensorOptim, names: list) -> None:
    """Create a MultiTensorOptim's torch optimiser over the stored parameters ``names``, stepping nothing.

    (Its own ``set_state`` waits for the parameters in the saved order, which SVI, passing a set,
    does not guarantee.)
    """
    params = dict(pyro.get_param_store().named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"the optimiser state refers to parameters {missing} that are not in the parameter store")
    tensors = [params[n] for n in names]
    grads = [p.grad for p in tensors]
    try:
        for p in tensors:
            p.grad = None
        optim(tensors)
    finally:
        for p, g in zip(tensors, grads):
            p.grad = g


def load_optimizer_state(state: dict | None, optim: Any, scheduler: Any = None) -> None:
    """Load a state of :func:`optimizer_state` into ``optim`` (and ``scheduler``)."""
    check_optimizer_state(state, optim, scheduler)
    if optim is None:
        return
    kind = state["kind"]
    if kind == "pyro":
        optim.set_state(state["state"])
    elif state["state_dict"] is not None:
        if kind == "multi_tensor" and optim.optimizer is None:
            _prime(optim, list(state["names"]))
        inner = optim.optimizer if kind == "multi_tensor" else optim
        inner.load_state_dict(_reorder(state["state_dict"], list(state["names"]), _param_names(_flat_params(inner))))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
