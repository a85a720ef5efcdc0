# SPDX-License-Identifier: Apache-2.0
"""Pyro plumbing shared by the recognition modules, priors, guides and ELBO.

* :func:`recognition_cache`: one network evaluation per (module, input) within a scope;
* :func:`record_recognition_calls`: log which module produced which factor (guide plans);
* :func:`register_module`: ``pyro.module`` once per scope;
* :func:`param_store_rollback`: a failing call leaves Pyro's parameter store as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import pyro
from torch import nn

__all__ = ['param_store_rollback', 'recognition_cache', 'register_module']


_CACHE: ContextVar[dict | None] = ContextVar("pyro_rpm_recognition_cache", default=None)


_CALLS: ContextVar[dict | None] = ContextVar("pyro_rpm_recognition_calls", default=None)


@contextlib.contextmanager
def recognition_cache() -> Iterator[dict]:
    """Within this context, ``module(x)`` is evaluated once per (module, input tensor) pair."""
    token = _CACHE.set({})
    try:
        yield _CACHE.get()
    finally:
        _CACHE.reset(token)


@contextlib.contextmanager
def record_recognition_calls() -> Iterator[dict]:
    """Within this context, every factor a recognition module returns is logged as
    ``{id(factor): (module, inputs)}`` (used by :class:`~pyro_rpm.RecognitionGuide` to plan)."""
    token = _CALLS.set({})
    try:
        yield _CALLS.get()
    finally:
        _CALLS.reset(token)


def register_module(name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)``, done once per :func:`recognition_cache` scope.

    Pyro's :class:`~pyro.infer.SVI` collects parameters from the ``param`` messages of one step;
    one registration per step suffices, and skipping the repeats saves a message per parameter.
    """
    cache = _CACHE.get()
    if cache is None:
        pyro.module(name, module)
        return
    registered = cache.setdefault("registered", set())
    if id(module) not in registered:
        pyro.module(name, module)
        registered.add(id(module))


@contextlib.contextmanager
def param_store_rollback() -> Iterator[None]:
    """On an exception inside this context, remove the parameters it added to Pyro's parameter store.

    A model, guide or loss that fails (bad input found after some modules were registered) then
    leaves the store as it was: no half-registered names that a later ``pyro.module`` of another
    module would silently pick up. Values of parameters that existed before are not touched here
    (nothing is written to them before a loss is computed).
    """
    store = pyro.get_param_store()
    before = len(store)
    try:
        yield
    except BaseException:
        names = list(store.keys())
        if len(names) > before:  # new names are appended: the store is an insertion-ordered dict
            for name in names[before:]:
                del store[name]
        raise
