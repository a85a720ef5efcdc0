# SPDX-License-Identifier: Apache-2.0
r"""Plans that let :class:`~pyro_rpm.RecognitionGuide` skip its private model run.

Tracing the model inside the guide costs one extra model execution per step. When the model's
structure allows it, the guide records a *plan* on its first call: for every tied latent, which
recognition modules produce its factors and which model argument each one reads. Later calls
then evaluate those modules directly (inside :func:`~pyro_rpm.recognition_cache` the model
reuses the same factor objects). A plan is made only in the simple, common case (in-batch support,
no subsampling, no prior needed to combine the factors), is used only under
:class:`~pyro_rpm.RPM_ELBO`, and is verified against the model trace at every step: on any
mismatch the ELBO redoes the step with the full model run and the guide stops planning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from .._pyro import ScopedVar
from .._validation import capturing
from ..likelihood.recognition import RecognitionLikelihood

__all__ = ["LatentPlan", "PlanMismatch", "locate", "make_plan", "planning", "planning_enabled", "verify_plan"]

_PLANNING: ScopedVar = ScopedVar("pyro_rpm_guide_planning", default=False)


class PlanMismatch(RuntimeError):
    """Raised by :class:`~pyro_rpm.RPM_ELBO` when the model trace contradicts a guide's plan."""


@contextlib.contextmanager
def planning() -> Iterator[None]:
    """Allow guides to use their plans (RPM_ELBO verifies them)."""
    token = _PLANNING.set(True)
    try:
        yield
    finally:
        _PLANNING.reset(token)


def planning_enabled() -> bool:
    return _PLANNING.get()


class LatentPlan(NamedTuple):
    """How to build one latent's tied posterior without running the model."""

    name: str
    lik_names: tuple[str, ...]
    sources: tuple[tuple[nn.Module, tuple[str, Any]], ...]
    plate_name: str
    plate_dim: int | None
    infer: dict


def _locator(x: torch.Tensor, args: tuple, kwargs: dict) -> tuple[str, Any] | None:
    for i, arg in enumerate(args):
        if arg is x:
            return ("args", i)
    for key, arg in kwargs.items():
        if arg is x:
            return ("kwargs", key)
    return None


def locate(args: tuple, kwargs: dict, locator: tuple[str, Any]) -> Any:
    kind, where = locator
    if kind == "args":
        return args[where] if where < len(args) else None
    return kwargs.get(where)


def _is_arange(value: torch.Tensor, size: int) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.dim() == 1
        and value.shape[0] == size
        and not value.is_floating_point()
        and bool(torch.equal(value, torch.arange(size, device=value.device)))
    )


def _observes_batch(site: dict, size: int) -> bool:
    """Whether a likelihood site observes its support in order (value ``arange(size)``, the in-batch support).

    Eagerly the value is compared. :func:`torch.compile` cannot branch on values, so in a compiled region
    the site must carry ``infer["rpm"]["in_batch"]`` (written by :func:`~pyro_rpm.observe` when it
    made the default index itself); other sites count as not in order (the plan is then not used).
    """
    if not capturing():
        return _is_arange(site["value"], size)
    value = site["value"]
    return (
        bool(site.get("infer", {}).get("rpm", {}).get("in_batch", False))
        and isinstance(value, torch.Tensor)
        and value.dim() == 1
        and value.shape[0] == size
    )


def make_plan(
    sites: dict[str, dict],
    subsamples: dict[str, torch.Tensor],
    links: dict[str, list[str]],
    calls: dict[int, tuple[nn.Module, torch.Tensor]],
    args: tuple,
    kwargs: dict,
    prior_free: bool,
) -> list[LatentPlan] | None:
    """Return a plan for every tied latent, or ``None`` when the model is outside the simple case.

    :param bool prior_free: whether the guide combines factors without the prior (one view per
        latent, ``combine="product"``, categorical factors or an amortiser).
    """
    if not prior_free:
        return None
    plans = []
    for latent, lik_names in links.items():
        site = sites[latent]
        frames = [f for f in site["cond_indep_stack"] if f.name in subsamples]
        if len(frames) != 1:
            return None
        frame = frames[0]
        if frame.full_size is not None and frame.full_size != frame.size:
            return None
        sources = []
        for lik in lik_names:
            fn = sites[lik]["fn"]
            call = calls.get(id(fn.factors))
            if call is None or fn.num_support != frame.size or not _observes_batch(sites[lik], fn.num_support):
                return None
            module, x = call
            where = _locator(x, args, kwargs)
            if where is None:
                return None
            sources.append((module, where))
        plans.append(LatentPlan(latent, tuple(lik_names), tuple(sources), frame.name, frame.dim, dict(site["infer"])))
    return plans


def verify_plan(posterior: Any, model_trace: Any) -> None:
    """Check that a planned tied posterior used the model's own factors at the in-batch indices.

    The posterior's ``planned`` attribute is ``(guide, {likelihood site: factors})`` when the guide
    built it from its plan (``None`` otherwise: nothing to check). :class:`~pyro_rpm.RPM_ELBO` calls
    this for every tied guide site after tracing the model.

    :raises PlanMismatch: carrying the guide, when the model trace contradicts the plan (the ELBO then
        calls ``guide.disable_plan()`` and redoes the step with the full model run).
    """
    if getattr(posterior, "planned", None) is None:
        return
    guide, factors = posterior.planned
    for lik, planned in factors.items():
        site = model_trace.nodes.get(lik)
        fn = None if site is None else site["fn"]
        if (
            not isinstance(fn, RecognitionLikelihood)
            or fn.factors is not planned
            or not _observes_batch(site, fn.num_support)
        ):
            raise PlanMismatch(guide)
