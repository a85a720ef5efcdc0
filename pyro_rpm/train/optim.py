# SPDX-License-Identifier: Apache-2.0
r"""Pyro optimisers that step every parameter with one multi-tensor torch optimiser.

:class:`pyro.optim.PyroOptim` keeps one torch optimiser per parameter tensor, so a step over a
small network costs one Python-level optimiser call per tensor. :class:`MultiTensorOptim` is a
drop-in :class:`~pyro.optim.PyroOptim` for :class:`pyro.infer.SVI` that keeps a single torch
optimiser over all parameters it has seen, which is what a hand-written torch training loop does.
Adam and AdamW use torch's fused kernel (``fused=True``) unless ``fused`` or ``foreach`` is given:
torch does not pick it by default, and on the CPU its default is a per-tensor loop.

Example::

    >>> from pyro_rpm.train.optim import FusedAdam
    >>> optim = FusedAdam({"lr": 1e-3})
    >>> # svi = pyro.infer.SVI(model, guide, optim, RPM_ELBO())
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["MultiTensorOptim", "FusedAdam", "FusedAdamW", "FusedSGD"]


class MultiTensorOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` with one torch optimiser for all parameters.

    :param optim_constructor: a :class:`torch.optim.Optimizer` class, e.g. ``torch.optim.Adam``.
    :param dict optim_args: keyword arguments of the optimiser (one set for all parameters).
    :param float clip_norm: optional global gradient-norm clipping (over all parameters together).

    After each step the gradients of the stepped parameters are released (set to ``None``, as
    ``optimizer.zero_grad(set_to_none=True)`` does), so :class:`pyro.infer.SVI`'s zeroing of the
    gradients allocates nothing and the next backward pass writes them instead of adding into zeros.

    Parameters first seen after the first step join as a new parameter group. The state
    (:meth:`get_state` / :meth:`set_state`, used by :class:`pyro.infer.SVI` checkpoints) is keyed by
    parameter-store names, so it survives a restart.
    """

    def __init__(
        self,
        optim_constructor: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
        optim_args: dict[str, Any],
        *,
        clip_norm: float | None = None,
    ) -> None:
        if not isinstance(optim_args, dict):
            raise TypeError(f"optim_args must be a dict, got {type(optim_args).__name__}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        super().__init__(optim_constructor, optim_args)
        self.clip_norm = clip_norm
        self.optimizer: torch.optim.Optimizer | None = None
        self._seen: dict[torch.Tensor, None] = {}

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        params = list(params)
        new = [p for p in params if p not in self._seen]
        if new:
            # SVI passes a set (ordered by object ids): sort by name for a reproducible order.
            store = pyro.get_param_store()
            new.sort(key=lambda p: store.param_name(p) or "")
            for p in new:
                self._seen[p] = None
            if self.optimizer is None:
                self.optimizer = self.pt_optim_constructor(new, **self._kernel_args(new))
            else:
                self.optimizer.add_param_group({"params": new})
            self._consume_waiting_state()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.optimizer.step(*args, **kwargs)
        for p in params:  # torch's zero_grad(set_to_none=True): SVI's zeroing then allocates nothing
            p.grad = None

    def _kernel_args(self, params: list[torch.Tensor]) -> dict[str, Any]:
        """The optimiser arguments, with ``fused=True`` where the optimiser has a fused kernel for
        these parameters and the user chose neither ``fused`` nor ``foreach``.

        Without it torch's Adam on the CPU falls back to its per-tensor loop (measured here, one
        thread, 12 tensors of 256 x 256 and 256: 804 us per step, ``foreach`` 713 us, ``fused`` 258 us).
        """
        args = dict(self.pt_optim_args)
        fusable = self.pt_optim_constructor in (torch.optim.Adam, torch.optim.AdamW)
        if not fusable or "fused" in args or "foreach" in args or args.get("differentiable", False):
            return args
        if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
            args["fused"] = True
        return args

    def _names(self) -> list[str]:
        store = pyro.get_param_store()
        return [store.param_name(p) for group in self.optimizer.param_groups for p in group["params"]]

    def get_state(self) -> dict:
        """Optimiser state keyed by parameter names (for :meth:`set_state` and checkpoints)."""
        if self.optimizer is None:
            return {}
        return {"names": self._names(), "optimizer": self.optimizer.state_dict()}

    def set_state(self, state_dict: dict) -> None:
        """Restore a state from :meth:`get_state`; applied once the same parameters are seen."""
        self._state_waiting_to_be_consumed = dict(state_dict)
        if self.optimizer is not None:
            self._consume_waiting_state()

    def _consume_waiting_state(self) -> None:
        """Apply a waiting state once every parameter it names is registered (matched by name)."""
        state = self._state_waiting_to_be_consumed
        if not state or "names" not in state:
            return
        names = self._names()
        if set(names) != set(state["names"]):
            return  # wait until the same parameters are registered
        saved = state["optimizer"]
        saved_groups = {}  # saved flat index -> its param group (hyperparameters)
        for group in saved["param_groups"]:
            for index in group["params"]:
                saved_groups[index] = group
        flat_index = [index for group in saved["param_groups"] for index in group["params"]]
        by_name = dict(zip(state["names"], flat_index))
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                index = by_name[pyro.get_param_store().param_name(param)]
                group.update({k: v for k, v in saved_groups[index].items() if k != "params"})
                entry = saved["state"].get(index)
                if entry is not None:
                    self.optimizer.state[param] = {
                        k: v.to(param.device) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in entry.items()
                    }
        self._state_waiting_to_be_consumed = {}


def FusedAdam(optim_args: dict[str, Any], *, clip_norm: float | None = None) -> MultiTensorOptim:
    """:class:`torch.optim.Adam` over all parameters at once (see :class:`MultiTensorOptim`)."""
    return MultiTensorOptim(torch.optim.Adam, optim_args, clip_norm=clip_norm)


def FusedAdamW(optim_args: dict[str, Any], *, clip_norm: float | None = None) -> MultiTensorOptim:
    """:class:`torch.optim.AdamW` over all parameters at once (see :class:`MultiTensorOptim`)."""
    return MultiTensorOptim(torch.optim.AdamW, optim_args, clip_norm=clip_norm)


def FusedSGD(optim_args: dict[str, Any], *, clip_norm: float | None = None) -> MultiTensorOptim:
    """:class:`torch.optim.SGD` over all parameters at once (see :class:`MultiTensorOptim`)."""
    return MultiTensorOptim(torch.optim.SGD, optim_args, clip_norm=clip_norm)
