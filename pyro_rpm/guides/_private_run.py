# SPDX-License-Identifier: Apache-2.0
r"""The private model run shared by the tied guides.

A tied guide reads the current recognition factors by running the model under
:class:`PrivateModelRun`: every latent site gets a placeholder value, nothing is sampled from the
global random streams, and no message leaks to the handlers outside (the run is invisible to the
ELBO's trace). :func:`sample_in_model_plates` then samples a guide site inside the same plates,
with the same subsample indices, as the model's site.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from .._validation import capturing

__all__ = ["PrivateModelRun", "placeholder", "sample_in_model_plates"]


def placeholder(fn: Any) -> torch.Tensor:
    """A value for a latent site during the private model run.

    Drawn without touching the global random streams, so that a guide call with the private run
    and one without it (a planned call) draw the same latents under one seed.
    """
    with torch.no_grad():
        if hasattr(fn, "placeholder"):
            return fn.placeholder()
        if capturing():
            value = _deterministic_placeholder(fn)
            if value is not None:
                return value
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return fn.sample()


def _deterministic_placeholder(fn: Any) -> torch.Tensor | None:
    """A value in the support of ``fn`` drawn from no random stream, or ``None`` when there is none at hand.

    Used under :func:`torch.compile`, which cannot trace :func:`torch.random.fork_rng`: the image of
    zero under ``biject_to(fn.support)`` for a continuous support, else the first value of
    ``enumerate_support``. (Eagerly the placeholder is a sample drawn under ``fork_rng``.)
    """
    try:
        transform = torch.distributions.biject_to(fn.support)
        shape = fn.batch_shape + fn.event_shape
        unconstrained = torch.zeros(transform.inverse_shape(shape), dtype=_float_dtype(fn), device=_device(fn))
        return transform(unconstrained)
    except NotImplementedError:
        pass
    if getattr(fn, "has_enumerate_support", False):
        return fn.enumerate_support(expand=True)[0]
    return None


def _tensors(fn: Any) -> list[torch.Tensor]:
    """The tensors a distribution holds, looking through wrappers (``Independent``, ``MaskedDistribution``)."""
    while True:
        tensors = [v for v in vars(fn).values() if isinstance(v, torch.Tensor)]
        base = getattr(fn, "base_dist", None)
        if tensors or base is None:
            return tensors
        fn = base


def _float_dtype(fn: Any) -> torch.dtype:
    tensors = [v for v in _tensors(fn) if v.is_floating_point()]
    return tensors[0].dtype if tensors else torch.get_default_dtype()


def _device(fn: Any) -> torch.device:
    tensors = _tensors(fn)
    return tensors[0].device if tensors else torch.device("cpu")


class PrivateModelRun(Messenger):
    """Runs the model privately: latent sites get placeholder values, nothing leaks outwards.

    :param bool track_dependence: make float placeholders grad-tracking leaves, so that a later
        site's parameters can be checked for dependence on them (a conditional prior).

    After the run, :attr:`sites` maps site names to copies of their messages and
    :attr:`subsamples` maps plate names to their subsample indices. Two sample sites of one name
    raise a :class:`ValueError`.
    """

    def __init__(self, track_dependence: bool = False) -> None:
        super().__init__()
        self.track_dependence = track_dependence
        self.sites: OrderedDict[str, dict] = OrderedDict()
        self.subsamples: dict[str, torch.Tensor] = {}

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        fn = msg["fn"]
        if isinstance(fn, _Subsample):
            if msg["value"] is None:
                msg["value"] = fn.sample()
            self.subsamples[msg["name"]] = msg["value"]
        elif msg["name"] in self.sites:
            # Pyro's trace refuses duplicate names, but this run stops every message before any
            # trace sees it, and would silently keep the last site of the name only.
            raise ValueError(
                f"the model has two sample sites named '{msg['name']}' (e.g. two observe('{msg['name']}', ...) "
                "calls claiming one view); give every site its own name"
            )
        elif not msg["is_observed"] and msg["value"] is None:
            value = placeholder(fn)
            if self.track_dependence and value.is_floating_point():
                value = value.detach().requires_grad_()
            msg["value"] = value
        msg["stop"] = True
        msg["done"] = True

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample" and not isinstance(msg["fn"], _Subsample):
            self.sites[msg["name"]] = dict(msg)


def sample_in_model_plates(
    name: str, posterior: Any, run: PrivateModelRun, plates: dict[str, pyro.plate]
) -> torch.Tensor:
    """Sample guide site ``name`` from ``posterior`` inside the plates of the model's site.

    Plates are created once per guide call (cached in ``plates``) with the model's sizes,
    subsample indices and dims; plates opened outside the model (e.g. for vectorised particles)
    are left to the caller.
    """
    site = run.sites[name]
    with contextlib.ExitStack() as stack:
        for frame in site["cond_indep_stack"]:
            if frame.name not in run.subsamples:
                continue  # a plate opened outside the model (e.g. vectorised particles)
            if frame.name not in plates:
                plates[frame.name] = pyro.plate(
                    frame.name,
                    frame.full_size if frame.full_size is not None else frame.size,
                    subsample=run.subsamples[frame.name],
                    dim=frame.dim,
                )
            stack.enter_context(plates[frame.name])
        return pyro.sample(name, posterior, infer=dict(site["infer"]))
