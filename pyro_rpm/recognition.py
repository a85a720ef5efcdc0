# SPDX-License-Identifier: Apache-2.0
r"""Recognition networks :math:`f_j(z \mid x_j)` as lazy distributions.

Each recognition module wraps any user network and, given a batch of inputs of shape ``(M, ...)``,
returns a :class:`~pyro_rpm.factors.Factor` with ``batch_shape == (M,)`` (the pattern of zuko's
``LazyDistribution``). Calling the module inside a Pyro program registers its parameters with the
parameter store under ``name`` (as :func:`pyro.module` does), so :class:`pyro.infer.SVI` trains it.

Inside :func:`recognition_cache` (which :class:`~pyro_rpm.RPM_ELBO` opens around every particle)
a module called twice on the same input tensor returns the same factor object. This keeps the
guide and the model on one network evaluation, even with dropout or batch normalisation.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from contextvars import ContextVar

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_finite, check_positive, check_tensor
from .factors import CategoricalFactor, DeltaFactor, Factor, GaussianFactor

__all__ = [
    "Recognition",
    "GaussianRecognition",
    "DeltaRecognition",
    "CategoricalRecognition",
    "param_store_rollback",
    "recognition_cache",
    "register_module",
]

_CACHE: ContextVar[dict | None] = ContextVar("pyro_rpm_recognition_cache", default=None)
_COUNTER = itertools.count()
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


def _inverse_softplus(value: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(float(value)))))


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


class GaussianRecognition(Recognition):
    r"""Diagonal Gaussian recognition factor :math:`\mathcal N(z; \mu(x), \operatorname{diag} s(x)^2)`.

    The network's output is split into a mean and a pre-softplus scale (``2 * latent_dim``
    outputs), or holds the mean alone (``latent_dim`` outputs) when ``shared_scale=True``: one
    learned scale per dimension, shared by all data points.

    With ``prior_scale`` given, the factor takes the "prior + network" natural-parameter form of
    Walker et al., :math:`\eta = \eta_0 + g(x)`:

    .. math::

        \lambda(x) = \lambda_0 + \operatorname{softplus}(r(x)), \qquad
        \eta_1(x) = \lambda_0 \mu_0 + h(x),

    so the factor's precision never falls below the prior's and the tied posterior
    :math:`q \propto p \prod_j f_j / p` is always proper.

    :param torch.nn.Module net: network with ``2 * latent_dim`` (or ``latent_dim``) outputs.
    :param int latent_dim: dimension D of z.
    :param bool shared_scale: one scale per dimension shared by all data points.
    :param float init_scale: initial shared scale (``shared_scale=True``).
    :param float min_scale: floor added to every scale (keeps densities finite).
    :param prior_loc: :math:`\mu_0` for the natural-parameter form (default 0).
    :param prior_scale: :math:`s_0`; switches on the natural-parameter form.

    Example::

        >>> net = torch.nn.Linear(5, 4)
        >>> f = GaussianRecognition(net, latent_dim=2)
        >>> f(torch.randn(7, 5)).batch_shape
        torch.Size([7])
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        *,
        shared_scale: bool = False,
        init_scale: float = 1.0,
        min_scale: float = 1e-3,
        prior_loc: float | torch.Tensor | None = None,
        prior_scale: float | torch.Tensor | None = None,
        name: str | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(net, name=name, validate=validate)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        check_positive(init_scale, "init_scale")
        check_positive(min_scale, "min_scale")
        self.latent_dim = latent_dim
        self.shared_scale = bool(shared_scale)
        self.min_scale = float(min_scale)
        if self.shared_scale:
            raw = _inverse_softplus(max(init_scale - min_scale, 1e-6))
            self.raw_scale = nn.Parameter(torch.full((latent_dim,), raw))
        self.natural = prior_scale is not None
        if self.natural:
            check_positive(prior_scale, "prior_scale")
            loc0 = torch.zeros(latent_dim) + torch.as_tensor(0.0 if prior_loc is None else prior_loc)
            scale0 = torch.zeros(latent_dim) + torch.as_tensor(prior_scale)
            self.register_buffer("prior_precision", scale0.pow(-2).float())
            self.register_buffer("prior_eta1", (loc0 * scale0.pow(-2)).float())
        elif prior_loc is not None:
            raise ValueError("prior_loc needs prior_scale (the natural-parameter form)")

    def _output_size(self) -> int:
        return self.latent_dim if self.shared_scale else 2 * self.latent_dim

    def _factor(self, output: torch.Tensor) -> GaussianFactor:
        D = self.latent_dim
        if self.shared_scale:
            head, raw = output, self.raw_scale.to(output.dtype).expand_as(output)
        else:
            head, raw = output[..., :D], output[..., D:]
        positive = F.softplus(raw) + self.min_scale
        # Scales are positive by construction (softplus + min_scale > 0) and outputs were checked
        # finite, so the factor skips torch's argument validation on this hot path.
        if not self.natural:
            return GaussianFactor(head, positive, validate_args=False)
        prior_precision = self.prior_precision.to(output.dtype)
        precision = prior_precision + positive
        eta1 = self.prior_eta1.to(output.dtype) + head
        return GaussianFactor(eta1 / precision, precision.rsqrt(), validate_args=False)


class DeltaRecognition(Recognition):
    r"""Deterministic encoder :math:`z = e(x)`, smoothed by a fixed :math:`\varepsilon`-Gaussian.

    Returns a :class:`~pyro_rpm.factors.DeltaFactor` (Aitchison & Ganev, Appendix B): densities
    use :math:`\mathcal N(z; e(x), \varepsilon^2 I)`, samples are :math:`e(x)` itself unless
    ``sample_noise=True``. With a tied guide and a :class:`~pyro_rpm.ContrastivePrior` this is
    the setting in which the RPM ELBO equals InfoNCE.

    :param torch.nn.Module net: encoder with ``latent_dim`` outputs.
    :param int latent_dim: dimension D of z.
    :param float eps: smoothing scale :math:`\varepsilon > 0`.
    :param bool sample_noise: draw :math:`z \sim \mathcal N(e(x), \varepsilon^2 I)` instead.
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        *,
        eps: float = 1e-3,
        sample_noise: bool = False,
        name: str | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(net, name=name, validate=validate)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a float, got {type(eps).__name__}")
        check_positive(eps, "eps")
        self.latent_dim = latent_dim
        self.eps = float(eps)
        self.sample_noise = bool(sample_noise)

    def _output_size(self) -> int:
        return self.latent_dim

    def _factor(self, output: torch.Tensor) -> DeltaFactor:
        return DeltaFactor(output, self.eps, sample_noise=self.sample_noise, validate_args=False)


class CategoricalRecognition(Recognition):
    r"""Discrete recognition factor :math:`f(k \mid x) = \operatorname{softmax}_k(\text{net}(x))`.

    :param torch.nn.Module net: network with ``num_states`` outputs (logits).
    :param int num_states: number of states K (at least 2).
    """

    def __init__(self, net: nn.Module, num_states: int, *, name: str | None = None, validate: bool = True) -> None:
        super().__init__(net, name=name, validate=validate)
        if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 2:
            raise ValueError(f"num_states must be an int >= 2, got {num_states!r}")
        self.num_states = num_states

    def _output_size(self) -> int:
        return self.num_states

    def _factor(self, output: torch.Tensor) -> CategoricalFactor:
        return CategoricalFactor(output.log_softmax(-1), validate_args=False)
