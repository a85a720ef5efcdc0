# SPDX-License-Identifier: Apache-2.0
r"""The PyTorch Lightning module of an RPM: :class:`RPMModuleBase`, built into ``RPMModule`` on first use.

``pyro_rpm.lightning.RPMModule`` is ``RPMModuleBase`` mixed into :class:`lightning.pytorch.LightningModule`.
The class is created the first time it is asked for (:func:`rpm_module_class`), so that importing
:mod:`pyro_rpm` or :mod:`pyro_rpm.lightning` never imports Lightning (whose import changes warning
filters and environment variables); without Lightning installed, asking for it raises an
:class:`ImportError` that says ``pip install pyro-rpm[lightning]``.

**Who owns the parameters.** Pyro keeps parameters in its global parameter store; Lightning
checkpoints, moves (``.to(device)``) and all-reduces (DDP) the parameters of the module's
``state_dict``. At construction the module runs the loss once on ``example_batch`` in a private
parameter store (the global store and the random streams are left as they were) and finds

* the :class:`~pyro_rpm.Recognition` modules that produced factors: they become submodules,
  ``self.recognitions[name]`` (their parameters *and* buffers are in the ``state_dict``);
* every other parameter the step touches (``pyro.param`` sites, other ``pyro.module`` s): they
  become ``self.pyro_params`` (an :class:`~torch.nn.ParameterDict`, keys with ``.`` written ``/``),
  holding Pyro's *unconstrained* tensors.

The store and the module then hold the **same** tensor objects (shared, not copied), and before
every step the module writes them into the store under their Pyro names again, so the store cannot
drift from what Lightning trains, checkpoints and restores, also in a spawned process (DDP) that
starts with an empty store. A parameter the global store already holds under the name of a
recognition module's parameter, but as another tensor (left over from an earlier model), is refused
with a :class:`ValueError` (``pyro.module`` would silently replace the module's weights with it), as
:func:`pyro_rpm.fit` refuses it.

**Multi-device.** Under DDP every rank computes the loss of its own batch; the gradients of the
module's parameters are averaged by DDP as for any Lightning module. The in-batch support of each
rank is then its local batch (B points, constant :math:`\log B`); for a support over the global
batch, gather the factors in the model with :func:`pyro_rpm.distributed.gather_factors`. Tensors
that the model creates (prior constants) must follow the data's device (``x.new_zeros(D)``).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.util
import torch
from pyro import poutine
from torch import nn

from .._pyro import record_recognition_calls
from ..infer.elbo import RPM_ELBO
from .objective import SupportConstant, recording_model

__all__ = ["INSTALL_HINT", "RPMModuleBase", "import_lightning", "rpm_module_class"]

#: What the :class:`ImportError` says when Lightning is missing.
INSTALL_HINT = (
    "pyro_rpm.lightning needs PyTorch Lightning, which is not installed: pip install pyro-rpm[lightning] "
    "(or pip install lightning)"
)
_DIVIDER = "$$$"  # pyro.module's separator between a module's name and its parameters' names


def import_lightning() -> types.ModuleType:
    """:mod:`lightning.pytorch`, or an :class:`ImportError` with :data:`INSTALL_HINT`."""
    try:
        import lightning.pytorch as pl
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return pl


def _as_call(batch: Any, name: str) -> tuple[tuple, dict]:
    """The ``(args, kwargs)`` of ``model(*args, **kwargs)`` for a batch: a tensor, a tuple/list or a dict."""
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    raise TypeError(
        f"{name} must be a tensor, a tuple/list of model arguments or a dict of keyword arguments, "
        f"got {type(batch).__name__}"
    )


def _batch_size(args: tuple, kwargs: dict, name: str) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"{name} holds no tensor with a leading batch dimension; pass num_data=")


def _key(name: str) -> str:
    return name.replace(".", "/")


def _probe(model: Callable, guide: Callable, elbo: Any, args: tuple, kwargs: dict) -> tuple[list, dict, dict]:
    """Recognition modules, parameters (by Pyro name) and constraints of one loss, in a private store."""
    store, saved = pyro.get_param_store(), pyro.util.get_rng_state()
    try:
        with store.scope():
            with record_recognition_calls() as calls, poutine.trace(param_only=True) as capture, torch.no_grad():
                elbo.loss(model, guide, *args, **kwargs)
            tensors = dict(store.named_parameters())
            constraints = dict(store.get_state()["constraints"])
    finally:
        pyro.util.set_rng_state(saved)
    names = [n for n, site in capture.trace.nodes.items() if site["type"] == "param" and n in tensors]
    modules, seen = [], set()
    for module, _ in calls.values():
        if id(module) not in seen:
            seen.add(id(module))
            modules.append(module)
    return modules, {n: tensors[n] for n in names}, {n: constraints[n] for n in names}


class RPMModuleBase:
    r"""A Lightning module that trains a Pyro model and guide with :class:`~pyro_rpm.RPM_ELBO`.

    Use it as ``pyro_rpm.lightning.RPMModule`` (this class mixed into
    :class:`lightning.pytorch.LightningModule`). Each training step is
    ``elbo.differentiable_loss(model, guide, *batch)`` divided by the number of data points
    (per datum, as :func:`pyro_rpm.fit` reports it); the optimiser steps on that value. It logs

    * ``loss``: the loss per datum :math:`-\mathcal L / n` (nats);
    * ``loss_constant_free``: the same without the support-size constants,
      :math:`(-\mathcal L - C)/n` with :math:`C = \sum_s \sum_n E_s \log M_s`
      (:mod:`pyro_rpm.lightning.objective`; :math:`J \log B` per datum for J views on the in-batch
      support), comparable across batch and support sizes;

    and ``val_loss`` / ``val_loss_constant_free`` in validation, through Lightning's ``self.log``
    (so through any logger: CSV, TensorBoard, ...). A batch is a tensor (``model(x)``), a tuple or
    list (``model(*batch)``, as a :class:`~torch.utils.data.TensorDataset` yields) or a dict
    (``model(**batch)``).

    Checkpoints: the recognition modules and the other parameters are in the ``state_dict``, so
    ``trainer.save_checkpoint(path)`` / ``trainer.fit(module, ckpt_path=path)`` and
    ``RPMModule.load_from_checkpoint(path, model=..., guide=..., example_batch=...)`` restore them
    (the model and guide are code, rebuilt by the caller, not pickled into the checkpoint).

    :param callable model: the Pyro model, called as ``model(*args, **kwargs)`` of a batch.
    :param callable guide: the guide (e.g. :class:`~pyro_rpm.RecognitionGuide`).
    :param example_batch: one batch, run once (without gradients, in a private parameter store, on a
        copy of the random streams) to find the parameters.
    :param elbo: the loss (default :class:`~pyro_rpm.RPM_ELBO` ``()``); any :class:`pyro.infer.ELBO`.
    :param float lr: learning rate passed to ``optimizer``.
    :param optimizer: a factory ``optimizer(params, lr=lr, **optimizer_kwargs)`` of a
        :class:`torch.optim.Optimizer` (default :class:`torch.optim.Adam`).
    :param dict optimizer_kwargs: more keyword arguments of ``optimizer``.
    :param int num_data: divisor of the loss per datum (default: the leading size of the batch's
        first tensor, right for the in-batch support; pass N for a model whose plate subsamples N).
    :raises TypeError: for a model, guide or optimiser that is not callable, an ``elbo`` that is
        not a :class:`pyro.infer.ELBO`, or a batch of another type.
    :raises ValueError: for a bad ``lr`` or ``num_data``, an example batch on which model and guide
        touch no parameter, or a stale store entry (see the module docstring). Pyro's parameter
        store is unchanged when construction fails.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        example_batch: Any,
        *,
        elbo: pyro.infer.ELBO | None = None,
        lr: float = 1e-3,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        optimizer_kwargs: dict | None = None,
        num_data: int | None = None,
    ) -> None:
        super().__init__()
        for value, name in ((model, "model"), (guide, "guide")):
            if not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        elbo = RPM_ELBO() if elbo is None else elbo
        if not isinstance(elbo, pyro.infer.ELBO):
            raise TypeError(f"elbo must be a pyro.infer.ELBO (e.g. pyro_rpm.RPM_ELBO()), got {type(elbo).__name__}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite positive float, got {lr!r}")
        optimizer = torch.optim.Adam if optimizer is None else optimizer
        if not callable(optimizer):
            raise TypeError(f"optimizer must be a callable returning a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
            raise TypeError(f"optimizer_kwargs must be a dict, got {type(optimizer_kwargs).__name__}")
        if num_data is not None and (isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1):
            raise ValueError(f"num_data must be a positive int or None, got {num_data!r}")
        args, kwargs = _as_call(example_batch, "example_batch")
        self._programs = (model, guide)  # a tuple: not registered as submodules (the guide may be an nn.Module)
        self.elbo = elbo
        self.lr = float(lr)
        self._rpm_optimizer = (optimizer, dict(optimizer_kwargs or {}))
        self.num_data = num_data
        modules, tensors, constraints = _probe(model, guide, elbo, args, kwargs)
        if not tensors:
            raise ValueError("model and guide touch no parameter on example_batch: there is nothing to train")
        self._adopt(modules, tensors, constraints)

    # ------------------------------------------------------------------ parameters
    def _adopt(self, modules: list, tensors: dict, constraints: dict) -> None:
        store = pyro.get_param_store()
        current = dict(store.named_parameters())
        owned: dict[str, nn.Module] = {}
        for module in modules:
            for pname, param in module.named_parameters():
                full = f"{module.name}{_DIVIDER}{pname}"
                if full in tensors:
                    if full in current and current[full] is not param:
                        raise ValueError(
                            f"Pyro's parameter store holds a parameter '{full}' that is not the tensor of the module "
                            "using that name (left over from an earlier model?); pyro.module would keep the stored "
                            "value and the module would not be trained. Call pyro.clear_param_store() first, or give "
                            "the module another name"
                        )
                    owned[full] = module
        keys = [_key(module.name) for module in modules if any(owned.get(n) is module for n in owned)]
        free = [n for n in tensors if n not in owned]
        for label, names in (("recognition module", keys), ("parameter", [_key(n) for n in free])):
            if len(set(names)) != len(names):
                raise ValueError(f"two {label}s share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}")
        recognitions, pyro_params, names = {}, {}, {}
        for module in modules:
            if any(owned.get(n) is module for n in owned):
                recognitions[_key(module.name)] = module
        for name in free:
            tensor = current.get(name, tensors[name])  # a value already in the store wins, as in pyro.param
            pyro_params[_key(name)] = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach())
            names[_key(name)] = name
        self.recognitions = nn.ModuleDict(recognitions)
        self.pyro_params = nn.ParameterDict(pyro_params)
        self._rpm_names = names
        self._rpm_constraints = constraints
        self.bind_param_store()

    def named_pyro_params(self) -> dict[str, torch.Tensor]:
        """The module's parameters by their names in Pyro's store (unconstrained tensors, shared with the store)."""
        params: dict[str, torch.Tensor] = {}
        for module in self.recognitions.values():
            for pname, param in module.named_parameters():
                full = f"{module.name}{_DIVIDER}{pname}"
                if full in self._rpm_constraints:
                    params[full] = param
        for key, param in self.pyro_params.items():
            params[self._rpm_names[key]] = param
        return params

    def bind_param_store(self) -> None:
        """Write the module's parameters into Pyro's store under their names (the same tensor objects).

        Called before every step; call it yourself before running the model or guide outside the
        Trainer (e.g. after :meth:`load_from_checkpoint` in a process whose store holds other values).
        """
        params = self.named_pyro_params()
        pyro.get_param_store().set_state(
            {"params": params, "constraints": {name: self._rpm_constraints[name] for name in params}}
        )

    # ------------------------------------------------------------------ steps
    def _loss(self, batch: Any, prefix: str) -> torch.Tensor:
        model, guide = self._programs
        args, kwargs = _as_call(batch, "batch")
        n = self.num_data if self.num_data is not None else _batch_size(args, kwargs, "batch")
        self.bind_param_store()
        recorder = SupportConstant()
        loss = self.elbo.differentiable_loss(recording_model(model, recorder), guide, *args, **kwargs) / n
        constant = recorder.total / max(1, getattr(self.elbo, "num_particles", 1)) / n
        options = {"on_step": prefix == "", "on_epoch": True, "batch_size": n, "sync_dist": True}
        self.log(f"{prefix}loss", loss.detach(), prog_bar=True, **options)
        self.log(f"{prefix}loss_constant_free", loss.detach() - constant, **options)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The loss per datum of ``batch`` (logged as ``loss`` and ``loss_constant_free``)."""
        return self._loss(batch, "")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The loss per datum of a validation batch (logged as ``val_loss``, ``val_loss_constant_free``)."""
        return self._loss(batch, "val_")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """``optimizer(self.parameters(), lr=lr, **optimizer_kwargs)``."""
        factory, kwargs = self._rpm_optimizer
        return factory(self.parameters(), lr=self.lr, **kwargs)


_CLASS: list[type] = []


def rpm_module_class() -> type:
    """``RPMModule``: :class:`RPMModuleBase` mixed into :class:`lightning.pytorch.LightningModule` (built once).

    :raises ImportError: when Lightning is not installed (:data:`INSTALL_HINT`).
    """
    if not _CLASS:
        pl = import_lightning()
        namespace = {"__module__": "pyro_rpm.lightning", "__qualname__": "RPMModule", "__doc__": RPMModuleBase.__doc__}
        _CLASS.append(types.new_class("RPMModule", (RPMModuleBase, pl.LightningModule), exec_body=lambda ns: ns.update(namespace)))
    return _CLASS[0]
