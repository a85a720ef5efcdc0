# SPDX-License-Identifier: Apache-2.0
"""The contracts of the recognition concept: a :class:`Factor` over a support set, and the
:class:`Recognition` module that turns a network's output into one.
"""

from __future__ import annotations

import itertools

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

from .._pyro import _CACHE, _CALLS, param_store_rollback, register_module
from .._validation import check_finite, check_tensor
from ..normalisers import BACKENDS, DENSE_MAX_PAIRS

__all__ = ['Factor', 'use_dense', 'Recognition']


def use_dense(backend: str, num_pairs: int) -> bool:
    """Whether ``backend`` asks for the dense ``(..., M)`` table for ``num_pairs`` (latent, support) pairs.

    ``"dense"`` always; ``"auto"`` up to ``pyro_rpm.normalisers.DENSE_MAX_PAIRS`` pairs.

    :raises ValueError: for a name outside ``pyro_rpm.normalisers.BACKENDS``.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend == "dense" or (backend == "auto" and num_pairs <= DENSE_MAX_PAIRS)


class Factor(TorchDistribution):
    """Marker base class of recognition factors (see the module docstring)."""

    #: True when :meth:`rsample` returns the factor's location exactly (a deterministic encoder).
    is_point_mass: bool = False

    def pairwise_log_prob(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def index(self, idx: torch.Tensor) -> Factor:  # pragma: no cover - abstract
        raise NotImplementedError

    def detach(self) -> Factor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pairwise_logsumexp(
        self, z: torch.Tensor, *, backend: str = "auto", chunk_size: int | None = None
    ) -> torch.Tensor:
        r""":math:`\log \sum_m f(z \mid x_m)`, the row-logsumexp of :meth:`pairwise_log_prob`.

        :param torch.Tensor z: latents, shape ``(..., *event_shape)``.
        :param str backend: ``"auto"``, ``"dense"``, ``"streamed"``, ``"fused"`` or ``"screened"``
            (:func:`pyro_rpm.normalisers.resolve_backend`); the base class always uses the dense table.
        :param int chunk_size: support points per chunk (streamed/fused backends).
        :returns: a tensor of shape ``z.shape[:-len(event_shape)]``.
        """
        return torch.logsumexp(self.pairwise_log_prob(z), dim=-1)

    @property
    def num_support(self) -> int:
        """Number of support points M (the leftmost batch dimension)."""
        return self.batch_shape[0]


_COUNTER = itertools.count()


class Recognition(nn.Module):
    """Base class: ``forward(x)`` runs ``net`` and turns its output into a :class:`Factor`.

    :param torch.nn.Module net: the user's network, mapping ``(M, ...)`` inputs to ``(M, H)``.
    :param str name: name under which the parameters enter Pyro's parameter store
        (default: the class name and a counter; pass one for stable checkpoints).
    :param bool validate: check inputs and network outputs for NaN/Inf (a clear
        :class:`ValueError` instead of a silent NaN loss).
    """

    def __init__(self, net: nn.Module, *, name: str | None = None, validate: bool = True) -> None:
        super().__init__()
        if not isinstance(net, nn.Module) and not callable(net):
            raise TypeError(f"net must be a torch.nn.Module or callable, got {type(net).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.net = net
        self.name = name if name is not None else f"{type(self).__name__.lower()}_{next(_COUNTER)}"
        self.validate = bool(validate)

    def _explain_mismatch(self, x: torch.Tensor, error: RuntimeError) -> None:
        """Turn a device/dtype clash between inputs and parameters into a clear ValueError."""
        for pname, param in self.named_parameters():
            if param.device != x.device:
                raise ValueError(
                    f"inputs to recognition '{self.name}' are on {x.device} but its parameter '{pname}' is on "
                    f"{param.device}; move the module or the data (module.to(device))"
                ) from error
            if x.is_floating_point() and param.dtype != x.dtype:
                raise ValueError(
                    f"inputs to recognition '{self.name}' have dtype {x.dtype} but its parameter '{pname}' has "
                    f"dtype {param.dtype}; convert one of them"
                ) from error

    def _output_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _factor(self, output: torch.Tensor) -> Factor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Factor:
        cache = _CACHE.get()
        key = (id(self), id(x), getattr(x, "_version", 0))
        if cache is not None and key in cache:
            factor = cache[key][1]
            self._log_call(factor, x)
            return factor
        check_tensor(x, f"inputs to recognition '{self.name}'")
        # Meta tensors (shape-only, e.g. a simulated second device) hold no values to check.
        if self.validate and x.device.type != "meta":
            check_finite(x, f"inputs to recognition '{self.name}'")
        # A call that fails (bad network output) removes what it registered from Pyro's store.
        with param_store_rollback():
            register_module(self.name, self)
            output = self._network_output(x)
            factor = self._factor(output)
        if cache is not None:
            cache[key] = (x, factor)
        self._log_call(factor, x)
        return factor

    def _network_output(self, x: torch.Tensor) -> torch.Tensor:
        """``self.net(x)``, checked for its width and (with ``validate``) finite values."""
        try:
            output = self.net(x)
        except RuntimeError as error:
            self._explain_mismatch(x, error)
            raise
        expected = self._output_size()
        if not isinstance(output, torch.Tensor) or output.dim() < 1 or output.shape[-1] != expected:
            got = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"the network of recognition '{self.name}' must output a last dimension of size {expected}, got {got}"
            )
        # Meta tensors (shape-only, e.g. a simulated second device) hold no values to check.
        if self.validate and output.device.type != "meta":
            check_finite(output, f"network output of recognition '{self.name}'")
        return output

    def _log_call(self, factor: Factor, x: torch.Tensor) -> None:
        calls = _CALLS.get()
        if calls is not None:
            calls[id(factor)] = (self, x)
