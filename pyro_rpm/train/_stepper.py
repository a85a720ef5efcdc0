# SPDX-License-Identifier: Apache-2.0
r"""Optimiser routes of :func:`pyro_rpm.fit`.

Two routes take one step on a minibatch:

* **SVI** (:class:`pyro.infer.SVI`): ``optim`` is a name (``"adam"``, ...; a
  :class:`~pyro_rpm.train.optim.MultiTensorOptim` over the torch optimiser of that name) or any
  :class:`pyro.optim.PyroOptim` (including :mod:`pyro.optim.lr_scheduler` wrappers).
* **torch** (the route of PyTorch Lightning and DDP): ``optim`` is a :class:`torch.optim.Optimizer`
  subclass, a factory ``params -> Optimizer`` or an optimiser instance. Each step computes
  ``elbo.differentiable_loss(model, guide, *batch)``, calls ``backward()`` and ``optimizer.step()``.
  The parameters are those of Pyro's parameter store that a first trace of model and guide touches,
  in the order of their names.

A learning-rate scheduler factory ``optimizer -> scheduler`` applies to the torch optimiser of
either route (for SVI with a named optimiser or a :class:`~pyro_rpm.train.optim.MultiTensorOptim`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import SVI
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler

from .._validation import check_number
from .optim import MultiTensorOptim

__all__ = ["OPTIMIZERS", "Stepper", "make_stepper"]

#: Names accepted by ``fit(optim=...)`` and the torch optimisers they stand for.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
DEFAULT_LR = 1e-3


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class Stepper:
    """One optimisation step on a minibatch, by either route (see the module docstring)."""

    def __init__(
        self,
        model,
        guide,
        elbo,
        *,
        route: str,
        optim: Any = None,
        factory: Callable | None = None,
        scheduler_factory: Callable | None = None,
    ) -> None:
        self.model, self.guide, self.elbo = model, guide, elbo
        self.route = route
        self.optim = optim  # PyroOptim (svi) or torch Optimizer (torch; None until setup with a factory)
        self.factory = factory
        self.scheduler_factory = scheduler_factory
        self.scheduler: Any = None
        self.params: list[torch.Tensor] = []
        self.svi = SVI(model, guide, optim, elbo) if route == "svi" else None

    @property
    def kind(self) -> str:
        """The optimiser-state kind a checkpoint of this stepper holds."""
        if self.route == "torch":
            return "torch"
        return "multi_tensor" if isinstance(self.optim, MultiTensorOptim) else "pyro"

    def setup(self, params: dict[str, torch.Tensor]) -> None:
        """Create the optimiser (and scheduler) over ``params`` (name-sorted store tensors)."""
        self.params = list(params.values())
        for p in self.params:
            p.grad = None
        if self.route == "torch" and self.optim is None:
            optimizer = self.factory(self.params)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"optim: the factory must return a torch.optim.Optimizer, got {type(optimizer).__name__}"
                )
            self.optim = optimizer
        if isinstance(self.optim, MultiTensorOptim) and self.optim.optimizer is None:
            self.optim(self.params)  # no gradients yet: creates the torch optimiser, steps nothing
        if self.scheduler_factory is not None:
            inner = self.optim.optimizer if isinstance(self.optim, MultiTensorOptim) else self.optim
            self.scheduler = self.scheduler_factory(inner)
            if not (hasattr(self.scheduler, "step") and hasattr(self.scheduler, "state_dict")):
                raise TypeError(
                    f"lr_scheduler must return a torch learning-rate scheduler, got {type(self.scheduler).__name__}"
                )

    def step(self, args: tuple, kwargs: dict) -> float:
        """One optimisation step; returns the loss (summed over the minibatch, Pyro's convention)."""
        if self.svi is not None:
            return float(self.svi.step(*args, **kwargs))
        loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise ValueError("the ELBO's differentiable_loss does not depend on any parameter; nothing to train")
        loss.backward()
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        return loss.item()

    def lr(self) -> float:
        """The learning rate of the first parameter group (NaN when not known)."""
        inner = self.optim
        if isinstance(inner, MultiTensorOptim):
            inner = inner.optimizer
        elif isinstance(inner, PyroOptim):
            first = next(iter(inner.optim_objs.values()), None)
            inner = getattr(first, "optimizer", first)
        if isinstance(inner, torch.optim.Optimizer) and inner.param_groups:
            return float(inner.param_groups[0].get("lr", math.nan))
        return math.nan

    @property
    def plateau(self) -> bool:
        """Whether the scheduler reduces the learning rate on a plateau of the validation loss."""
        if self.scheduler is not None:
            return _is_plateau(self.scheduler)
        if isinstance(self.optim, PyroLRScheduler):
            constructor = self.optim.pt_scheduler_constructor
            return isinstance(constructor, type) and issubclass(constructor, torch.optim.lr_scheduler.ReduceLROnPlateau)
        return False

    @property
    def has_scheduler(self) -> bool:
        return self.scheduler is not None or isinstance(self.optim, PyroLRScheduler)

    def scheduler_step(self, metric: float | None = None) -> None:
        """Advance the scheduler (with the validation ``metric`` for a plateau scheduler)."""
        target = self.scheduler if self.scheduler is not None else self.optim
        if self.plateau:
            target.step(metric)
        else:
            target.step()


def make_stepper(
    model, guide, elbo, optim: Any, lr: float | None, optim_args: dict | None, lr_scheduler: Callable | None
) -> Stepper:
    """Resolve ``fit``'s ``optim``/``lr``/``optim_args``/``lr_scheduler`` into a :class:`Stepper`."""
    if lr is not None:
        check_number(lr, "lr", greater_than=0, expected="a finite positive float")
    if optim_args is not None and not isinstance(optim_args, dict):
        raise TypeError(f"optim_args must be a dict of optimiser arguments, got {type(optim_args).__name__}")
    if lr_scheduler is not None and not callable(lr_scheduler):
        raise TypeError(
            "lr_scheduler must be a callable optimizer -> torch scheduler (e.g. functools.partial("
            f"torch.optim.lr_scheduler.StepLR, step_size=10)), got {type(lr_scheduler).__name__}"
        )
    args = {"lr": DEFAULT_LR if lr is None else float(lr), **(optim_args or {})}
    configured = lr is not None or optim_args is not None
    if optim is None:
        optim = "adam"
    if isinstance(optim, str):
        if optim.lower() not in OPTIMIZERS:
            raise ValueError(f"optim must be one of {sorted(OPTIMIZERS)} (or an optimiser object), got {optim!r}")
        return Stepper(
            model,
            guide,
            elbo,
            route="svi",
            optim=MultiTensorOptim(OPTIMIZERS[optim.lower()], args),
            scheduler_factory=lr_scheduler,
        )
    if isinstance(optim, PyroOptim):
        if configured:
            raise ValueError(
                "lr= and optim_args= apply to a named optimiser or a torch optimiser class; "
                f"the {type(optim).__name__} given as optim= already holds its arguments"
            )
        if lr_scheduler is not None and not isinstance(optim, MultiTensorOptim):
            raise ValueError(
                "lr_scheduler= needs a named optimiser, a MultiTensorOptim or a torch optimiser; for "
                "other pyro.optim optimisers pass a pyro.optim.lr_scheduler wrapper as optim="
            )
        return Stepper(model, guide, elbo, route="svi", optim=optim, scheduler_factory=lr_scheduler)
    if isinstance(optim, torch.optim.Optimizer):
        if configured:
            raise ValueError("lr= and optim_args= cannot change an optimiser instance given as optim=")
        return Stepper(model, guide, elbo, route="torch", optim=optim, scheduler_factory=lr_scheduler)
    if isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer):
        cls = optim
        return Stepper(
            model,
            guide,
            elbo,
            route="torch",
            factory=lambda params: cls(params, **args),
            scheduler_factory=lr_scheduler,
        )
    if callable(optim) and not isinstance(optim, type):
        if str(getattr(optim, "__module__", "")).startswith("pyro.optim"):
            raise TypeError(
                f"optim: {getattr(optim, '__name__', optim)!r} is a pyro.optim constructor; pass an "
                "instance such as pyro.optim.Adam({'lr': 1e-3})"
            )
        if configured:
            raise ValueError("lr= and optim_args= do not apply to an optimiser factory given as optim=")
        return Stepper(model, guide, elbo, route="torch", factory=optim, scheduler_factory=lr_scheduler)
    raise TypeError(
        "optim must be a name (" + ", ".join(sorted(OPTIMIZERS)) + "), a pyro.optim.PyroOptim, a "
        f"torch.optim.Optimizer class or instance, or a factory params -> Optimizer; got {type(optim).__name__}"
    )
