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
import torch
from pyro.poutine.messenger import Messenger
from torch import nn

__all__ = [
    "LatentNames",
    "ScopedVar",
    "latent_site_name",
    "observed_latent",
    "param_store_rollback",
    "recognition_cache",
    "record_recognition_calls",
    "register_module",
    "rpm_infer",
]


class ScopedVar:
    """A :class:`~contextvars.ContextVar` that :func:`torch.compile` can read.

    Eagerly it is the context variable (``get``, ``set``, ``reset``). Dynamo cannot trace
    ``ContextVar.get`` (a graph break), so while :func:`torch.compiler.is_compiling` ``get`` returns
    the value most recently set or reset in this process instead, which is the same value unless
    another thread or task is inside its own scope at that moment.
    """

    def __init__(self, name: str, default: object = None) -> None:
        self._var: ContextVar = ContextVar(name, default=default)
        self._latest = default

    def get(self):
        if torch.compiler.is_compiling():
            return self._latest
        return self._var.get()

    def set(self, value: object):
        previous, self._latest = self._latest, value
        if torch.compiler.is_compiling():
            return _CompiledToken(previous)
        return self._var.set(value)

    def reset(self, token) -> None:
        if isinstance(token, _CompiledToken):
            self._latest = token.previous
            return
        self._var.reset(token)
        self._latest = self._var.get()


class _CompiledToken:
    """The token of a :meth:`ScopedVar.set` made while compiling: the value to restore."""

    def __init__(self, previous: object) -> None:
        self.previous = previous


_CACHE: ScopedVar = ScopedVar("pyro_rpm_recognition_cache", default=None)


_CALLS: ScopedVar = ScopedVar("pyro_rpm_recognition_calls", default=None)


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
    """``pyro.module(name, module, update_module_params=True)``, done once per :func:`recognition_cache` scope.

    The module's parameters live in Pyro's parameter store: a value the store holds under the
    module's name (e.g. after ``pyro.get_param_store().load(path)``) replaces the module's own, as
    the store promises, instead of being trained while the module keeps computing with stale
    weights. Pyro's :class:`~pyro.infer.SVI` collects parameters from the ``param`` messages of one
    step; one registration per step suffices, and skipping the repeats saves a message per parameter.
    """
    cache = _CACHE.get()
    if cache is None:
        pyro.module(name, module, update_module_params=True)
        return
    registered = cache.setdefault("registered", set())
    if module not in registered:  # modules hash by identity (torch.compile cannot guard on id() here)
        pyro.module(name, module, update_module_params=True)
        registered.add(module)


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


_LATENT_NAMES: ScopedVar = ScopedVar("pyro_rpm_latent_names", default=None)


class LatentNames(Messenger):
    r"""Records the name of every latent sample site by its value, so that :func:`~pyro_rpm.observe`
    can write *which* latent a likelihood site observes into the site's ``infer`` dict.

    The model-to-ELBO contract: an ``observe`` site carries ``infer["rpm"] = {"latent": name,
    "factors": factors}``; :class:`~pyro_rpm.RecognitionGuide`, :class:`~pyro_rpm.ConjugateGaussianGuide`
    and :class:`~pyro_rpm.RPM_ELBO` read the latent's *name* from there. They run the model inside
    this messenger (innermost, so it sees the value every other handler settled on, including
    replayed and placeholder values). Outside it (e.g. a plain Pyro handler), ``"latent"`` is
    ``None``: the site is an ordinary observed categorical.
    """

    def __init__(self) -> None:
        super().__init__()
        self._names: dict[int, tuple[str, object]] = {}
        self._token = None

    def __enter__(self):
        self._token = _LATENT_NAMES.set(self)
        return super().__enter__()

    def __exit__(self, *args):
        _LATENT_NAMES.reset(self._token)
        return super().__exit__(*args)

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and isinstance(msg["value"], torch.Tensor):
            # the value is kept alive with its name, so that its id is not reused within the run
            self._names[id(msg["value"])] = (msg["name"], msg["value"])


def latent_site_name(value: object) -> str | None:
    """The name of the latent sample site whose value is ``value`` in the current model run, or ``None``."""
    names = _LATENT_NAMES.get()
    if names is None:
        return None
    entry = names._names.get(id(value))
    return None if entry is None or entry[1] is not value else entry[0]


def rpm_infer(latent: object, factors: object) -> dict:
    """The ``infer`` dict of a likelihood site that observes ``latent`` through ``factors`` (:class:`LatentNames`)."""
    return {"rpm": {"latent": latent_site_name(latent), "factors": factors}}


def observed_latent(site: dict) -> str | None:
    """The latent site name a likelihood site observes (its ``infer["rpm"]["latent"]``), or ``None``."""
    return site.get("infer", {}).get("rpm", {}).get("latent")
