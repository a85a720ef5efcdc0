# SPDX-License-Identifier: Apache-2.0
"""The contracts of the recognition concept: a :class:`Factor` over a support set, and the
:class:`Recognition` module that turns a network's output into one.
"""

from __future__ import annotations

import itertools
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

from .._pyro import _CACHE, _CALLS, param_store_rollback, register_module
from .._validation import check_finite, check_tensor, full_precision_call, full_precision_output
from ..normalisers import BACKENDS, DENSE_MAX_PAIRS, Normaliser
from .encoding import EncoderMixin

__all__ = ["POOLINGS", "Factor", "Recognition", "cat_factors", "check_frame_factors", "use_dense"]


def use_dense(backend: str, num_pairs: int) -> bool:
    """Whether ``backend`` asks for the dense ``(..., M)`` table for ``num_pairs`` (latent, support) pairs.

    ``"dense"`` always; ``"auto"`` up to ``pyro_rpm.normalisers.DENSE_MAX_PAIRS`` pairs.

    :raises ValueError: for a name outside ``pyro_rpm.normalisers.BACKENDS``.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend == "dense" or (backend == "auto" and num_pairs <= DENSE_MAX_PAIRS)


class Factor(TorchDistribution):
    r"""The contract of a recognition family: factors :math:`f(z \mid x_m)` over M support points.

    A factor is a :class:`~pyro.distributions.TorchDistribution` with ``batch_shape == (M,)`` (one
    distribution per support point) whose parameters are a few tensors with a leading support
    dimension. Everything the rest of the package needs from a family is here; a new family
    subclasses :class:`Factor` in one file and implements the four abstract members.

    **Abstract** (every family):

    * :meth:`tensors`, :meth:`with_tensors`: the parameter tensors ``(M, ...)``, and a factor of the
      same family and settings built from new ones. :meth:`index`, :meth:`detach`, :meth:`to`,
      :meth:`cat` and gathering across processes (:func:`pyro_rpm.distributed.gather_factors`)
      follow from these two;
    * :meth:`log_prob`: :math:`\log f(z \mid x_m)` for latents broadcasting against ``batch_shape``;
    * :meth:`pairwise_log_prob`: the table :math:`\log f(z_b \mid x_m)`, shape ``(..., M)``.

    **Overridable** (defaults that are right for every family, and hooks with a closed form):

    * :meth:`pairwise_logsumexp`: the normaliser :math:`\log\sum_m f(z_b \mid x_m)`; the default is
      the dense table, families override it with an exact kernel of :mod:`pyro_rpm.normalisers`;
    * :meth:`combine`: the normalised product :math:`q \propto \prod_j f_j` (optionally with a
      diagonal Gaussian prior, :math:`q \propto p \prod_j f_j / p`) where it has a closed form;
    * :meth:`diagonal_gaussian`: ``(loc, scale)`` when the factor *is* a diagonal Gaussian (closed
      forms of couplings, the interior estimator, amortised guides), else ``None``;
    * :meth:`settings`: the non-tensor state that factors must share to be concatenated.

    :attr:`tensor_names` names the tensors (error messages); :attr:`is_point_mass` says whether
    :meth:`rsample` returns a location exactly (a deterministic encoder); :attr:`normaliser` is the
    support set's choice of normaliser backend (:class:`~pyro_rpm.normalisers.Normaliser`).

    A family that a tied guide samples from also needs what any Pyro distribution used in a guide
    needs: ``rsample`` (or ``sample``), ``support``, ``arg_constraints``, ``mean`` and ``expand``.
    ``tests/recognition/test_contract.py`` checks a family against this contract with one table entry.
    """

    #: True when :meth:`rsample` returns the factor's location exactly (a deterministic encoder).
    is_point_mass: bool = False
    #: Names of the tensors returned by :meth:`tensors`, in order (for error messages).
    tensor_names: tuple[str, ...] = ()
    #: Whether :meth:`combine` of several factors uses the latent's prior (a guide must then read it).
    combine_uses_prior: bool = False
    #: How likelihood sites and priors compute this support set's normaliser unless told otherwise
    #: (a :class:`~pyro_rpm.Support` attaches its own, :meth:`with_normaliser`).
    normaliser: Normaliser = Normaliser()

    # ------------------------------------------------------------------ abstract
    @abstractmethod
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The parameter tensors of the factors, each with the support dimension first, ``(M, ...)``."""

    @abstractmethod
    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> Factor:
        """Factors of this family and :meth:`settings` with new parameter tensors (same order as :meth:`tensors`)."""

    @abstractmethod
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log f(z \mid x_m)`, broadcasting ``value`` against ``batch_shape``."""

    @abstractmethod
    def pairwise_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""Table :math:`\log f(z_b \mid x_m)` of latents ``z`` (shape ``(..., *event_shape)``) against
        all M support points, shape ``(..., M)``."""

    # ------------------------------------------------------------------ derived from the tensors
    def settings(self) -> dict[str, Any]:
        """Non-tensor state (e.g. a :class:`~pyro_rpm.DeltaFactor`'s ``eps``); :meth:`cat` requires it equal."""
        return {}

    @property
    def num_support(self) -> int:
        """Number of support points M (the leftmost batch dimension)."""
        return self.batch_shape[0]

    @property
    def device(self) -> torch.device:
        """Device of the parameter tensors."""
        return self.tensors()[0].device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the parameter tensors."""
        return self.tensors()[0].dtype

    def with_normaliser(self, normaliser: Normaliser | str | None) -> Factor:
        """The same factors (sharing their tensors and autograd graph) with another :attr:`normaliser`."""
        normaliser = Normaliser.coerce(normaliser)
        if normaliser == self.normaliser:
            return self
        new = self.with_tensors(self.tensors())
        new.normaliser = normaliser
        return new

    def index(self, idx: torch.Tensor) -> Factor:
        """Factors of the support points ``idx`` (indexing the leftmost batch dimension)."""
        return self.with_tensors([t[idx] for t in self.tensors()])

    def detach(self) -> Factor:
        """The same factors cut from the autograd graph (e.g. memory-bank entries)."""
        return self.with_tensors([t.detach() for t in self.tensors()])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Factor:
        """The same factors with their tensors on ``device`` and (floating tensors) in ``dtype``."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        return self.with_tensors(
            [t.to(device=device, dtype=dtype if t.is_floating_point() else None) for t in self.tensors()]
        )

    @classmethod
    def cat(cls, parts: Sequence[Factor]) -> Factor:
        r"""Concatenate factors of one family along the support dimension: :math:`M = \sum_i M_i` points.

        Used to build a support set from pieces, e.g. ``[minibatch; memory bank]``
        (:mod:`pyro_rpm.support`). Gradients flow into every part that carries them.

        :param parts: factors of the same type and :meth:`settings`, each with ``batch_shape == (M_i,)``,
            on one device and dtype.
        :raises TypeError: for non-factors or mixed types.
        :raises ValueError: for an empty list, mismatched event shapes, devices, dtypes or settings.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("parts must hold at least one factor")
        first = parts[0]
        for i, part in enumerate(parts):
            if not isinstance(part, Factor) or type(part) is not type(first):
                raise TypeError(
                    f"parts must be factors of one type; parts[0] is {type(first).__name__}, "
                    f"parts[{i}] is {type(part).__name__}"
                )
            if len(part.batch_shape) != 1:
                raise ValueError(f"parts[{i}] must have batch_shape (M,), got {tuple(part.batch_shape)}")
            if part.event_shape != first.event_shape:
                raise ValueError(
                    f"parts[{i}] has event shape {tuple(part.event_shape)} but parts[0] has {tuple(first.event_shape)}"
                )
            if part.settings() != first.settings():
                raise ValueError(f"parts[{i}] has settings {part.settings()} but parts[0] has {first.settings()}")
        columns = list(zip(*(part.tensors() for part in parts)))
        names = first.tensor_names or tuple(f"tensors()[{k}]" for k in range(len(columns)))
        for name, column in zip(names, columns):
            for i, t in enumerate(column[1:], 1):
                if t.device != column[0].device or t.dtype != column[0].dtype:
                    raise ValueError(
                        f"parts[{i}].{name} is {t.dtype} on {t.device} but parts[0].{name} is "
                        f"{column[0].dtype} on {column[0].device}; use one device and dtype"
                    )
        return first.with_tensors([torch.cat(column) for column in columns])

    # ------------------------------------------------------------------ hooks with closed forms
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
        use_dense(backend, 0)  # validates the name
        return torch.logsumexp(self.pairwise_log_prob(z), dim=-1)

    @classmethod
    def combine(
        cls, factors: Sequence[Factor], prior: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[TorchDistribution, Callable[[torch.Tensor], torch.Tensor]] | None:
        r"""The normalised product of several factors of this family over one latent, in closed form.

        Returns ``(q, residual)`` with :math:`q \propto \prod_j f_j` (or, with a diagonal Gaussian
        ``prior = (loc, scale)`` when :attr:`combine_uses_prior`, :math:`q \propto p\prod_j f_j / p`)
        and ``residual(z)`` :math:`= \log q(z) - \sum_j \log f_j(z)` exactly; ``None`` when the family
        has no closed form (the guide then says so). The factors are each indexed at the observed
        points already (matching batch shapes).
        """
        return None

    def diagonal_gaussian(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        r"""``(loc, scale)`` when :math:`f(z \mid x_m) = \mathcal N(z; \mu_m, \operatorname{diag} s_m^2)`, else ``None``."""
        return None

    def embedding(self) -> torch.Tensor:
        r"""A point summary of each factor, shape ``(M, E)`` (:meth:`Recognition.transform`).

        The default is :attr:`mean`, :math:`\mathbb E_f[z]`; a family whose mean is not the
        natural embedding overrides it (the mean direction of a von Mises-Fisher factor, the state
        probabilities of a categorical one).
        """
        return self.mean


_COUNTER = itertools.count()


class Recognition(EncoderMixin, nn.Module, metaclass=ABCMeta):
    """The contract of a recognition module: ``forward(x)`` runs ``net`` and turns its output into a :class:`Factor`.

    A family implements :attr:`output_size` (the width the network must output) and :meth:`head`
    (network output to factor). The base class checks inputs and outputs, registers the
    parameters with Pyro's store (as :func:`pyro.module` does), shares one evaluation per input
    within :func:`~pyro_rpm.recognition_cache`, and encodes support points without autograd for
    memory banks (:meth:`encode_detached`). The encoder API of a trained module (``encode``,
    ``transform``, ``save``, ``load``) comes from :class:`~pyro_rpm.recognition.encoding.EncoderMixin`.

    :param torch.nn.Module net: the user's network, mapping ``(M, ...)`` inputs to ``(M, H)``.
    :param str name: name under which the parameters enter Pyro's parameter store
        (default: the class name and a counter; pass one for stable checkpoints).
    :param bool validate: check inputs and network outputs for NaN/Inf (a clear
        :class:`ValueError` instead of a silent NaN loss); value checks follow
        :func:`pyro_rpm.value_checks` (skipped inside :func:`torch.compile`).

    **Mixed precision.** Under :func:`torch.autocast` the network runs in low precision, and its
    output is cast back to the dtype the network computes in without autocast (the input's floating
    dtype, else the network's parameters'): :meth:`head`, the factors and everything downstream run
    with autocast disabled in that dtype (float32 for a float32 network).
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
        """Turn a device/dtype/width clash between inputs and the network into a clear ValueError/TypeError."""
        floating = [(n, p) for n, p in self.named_parameters() if p.is_floating_point()]
        if not x.is_floating_point() and floating and "dtype" in str(error):
            raise TypeError(
                f"inputs to recognition '{self.name}' have dtype {x.dtype} but its network computes in "
                f"{floating[0][1].dtype}; convert the data (e.g. x.float())"
            ) from error
        if "shapes cannot be multiplied" in str(error) or "size mismatch" in str(error):
            raise ValueError(
                f"inputs to recognition '{self.name}' of shape {tuple(x.shape)} do not fit its network ({error}); "
                "check the network's input width against the data"
            ) from error
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

    @property
    @abstractmethod
    def output_size(self) -> int:
        """Width of the last dimension the network must output."""

    @abstractmethod
    def head(self, output: torch.Tensor) -> Factor:
        """The factors of a network output of shape ``(M, output_size)``."""

    def encode_detached(self, x: torch.Tensor) -> Factor:
        """``self(x)`` without registering parameters or recording autograd (e.g. for bank entries)."""
        with torch.no_grad():
            return self._head_in_full_precision(self.net(x), x).detach()

    def _head_in_full_precision(self, output: torch.Tensor, x: torch.Tensor) -> Factor:
        """:meth:`head` of a network output cast to the network's full-precision dtype, autocast disabled.

        The dtype is ``x``'s when ``x`` is floating, else that of the first floating parameter (else
        torch's default dtype); a bfloat16/float16 output of a network run under :func:`torch.autocast`
        is cast up to it, so the factors are in full precision.
        """
        return full_precision_call(self.head, full_precision_output(output, self._full_dtype(x)))

    def _full_dtype(self, x: torch.Tensor) -> torch.dtype:
        if x.is_floating_point():
            return x.dtype
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.get_default_dtype())

    def forward(self, x: torch.Tensor) -> Factor:
        cache = _CACHE.get()
        # One entry per module, keyed by the input tensor itself (tensors hash by identity), which
        # torch.compile can trace (it can read neither id() of a traced tensor nor its version).
        entries = None if cache is None else cache.setdefault(self, {})
        if entries is not None and x in entries:
            version, factor = entries[x]
            # eagerly, the version counter guards against in-place edits of x within the scope
            if torch.compiler.is_compiling() or version == getattr(x, "_version", 0):
                self._log_call(factor, x)
                return factor
        check_tensor(x, f"inputs to recognition '{self.name}'")
        if x.dim() >= 1 and x.shape[0] == 0:
            raise ValueError(
                f"inputs to recognition '{self.name}' are an empty batch (shape {tuple(x.shape)}); an RPM needs "
                "at least 2 data points per call (the support set); check the data loader or the batch indices"
            )
        # Meta tensors (shape-only, e.g. a simulated second device) hold no values to check.
        if self.validate and x.device.type != "meta":
            check_finite(x, f"inputs to recognition '{self.name}'")
        # A call that fails (bad network output) removes what it registered from Pyro's store.
        with param_store_rollback():
            register_module(self.name, self)
            output = self._network_output(x)
            factor = full_precision_call(self.head, output)
        if entries is not None:
            entries[x] = (0 if torch.compiler.is_compiling() else getattr(x, "_version", 0), factor)
        self._log_call(factor, x)
        return factor

    def _network_output(self, x: torch.Tensor) -> torch.Tensor:
        """``self.net(x)``, checked for its width and (with ``validate``) finite values."""
        try:
            output = self.net(x)
        except RuntimeError as error:
            self._explain_mismatch(x, error)
            raise
        expected = self.output_size
        if not isinstance(output, torch.Tensor) or output.dim() < 1 or output.shape[-1] != expected:
            got = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"the network of recognition '{self.name}' must output a last dimension of size {expected}, got {got}"
            )
        output = full_precision_output(output, self._full_dtype(x))  # a bfloat16/float16 output under autocast
        # Meta tensors (shape-only, e.g. a simulated second device) hold no values to check.
        if self.validate and output.device.type != "meta":
            check_finite(output, f"network output of recognition '{self.name}'")
        return output

    def _log_call(self, factor: Factor, x: torch.Tensor) -> None:
        calls = _CALLS.get()
        if calls is not None:
            calls[id(factor)] = (self, x)


def cat_factors(parts: Sequence[Factor]) -> Factor:
    r"""Concatenate factors of one family along the support dimension (:meth:`Factor.cat`).

    :raises TypeError: when ``parts[0]`` is not a :class:`Factor` (or for mixed types).
    """
    parts = list(parts)
    if parts and not isinstance(parts[0], Factor):
        raise TypeError(f"parts must be factors of one type; parts[0] is {type(parts[0]).__name__}")
    return Factor.cat(parts)


#: How the support of step t of a sequence is pooled: the N frames at t (``"data"``) or all N*T frames (``"ergodic"``).
POOLINGS = ("data", "ergodic")


def check_frame_factors(factors: object) -> Factor:
    """Return ``factors`` if it is a :class:`~pyro_rpm.recognition.base.Factor` over the N*T frames of N sequences
    (batch shape ``(N*T,)``), else raise :class:`TypeError`/:class:`ValueError` naming ``factors``."""
    if not isinstance(factors, Factor):
        raise TypeError(
            f"factors must be a pyro_rpm Factor (recognition(x.flatten(0, 1))), got {type(factors).__name__}"
        )
    if len(factors.batch_shape) != 1:
        raise ValueError(
            f"factors must have batch_shape (N*T,) (frames in sequence-major order), got {tuple(factors.batch_shape)}"
        )
    return factors
