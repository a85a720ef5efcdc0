# SPDX-License-Identifier: Apache-2.0
"""The diagonal Gaussian family: :class:`GaussianFactor` and :class:`GaussianRecognition`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn
from torch.distributions import Distribution, Normal
from torch.distributions.utils import broadcast_all

from .._validation import (
    check_finite,
    check_int,
    check_positive,
    check_same_device_and_dtype,
    check_tensor,
    value_checks_active,
)
from ..normalisers import gaussian_logsumexp
from ..normalisers.dense import gaussian_dense_logsumexp, gaussian_pairwise_log_prob
from .base import Factor, Recognition, use_dense

__all__ = ['GaussianFactor', 'gaussian_log_partition', 'GaussianRecognition']


def gaussian_log_partition(eta1: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    r"""Log-partition :math:`A(\eta_1, \lambda) = \eta_1^2 / (2\lambda) - \tfrac12\log\lambda + \tfrac12\log 2\pi`.

    For a one-dimensional density :math:`\exp(\eta_1 z - \lambda z^2/2 - A)`, elementwise.
    """
    return 0.5 * eta1 * eta1 / precision - 0.5 * precision.log() + 0.5 * math.log(2 * math.pi)


class GaussianFactor(Factor):
    r"""Diagonal Gaussian factor :math:`f(z \mid x_m) = \mathcal N(z; \mu_m, \operatorname{diag} s_m^2)`.

    :param torch.Tensor loc: means, shape ``batch_shape + (D,)``.
    :param torch.Tensor scale: standard deviations, broadcastable to ``loc``.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.independent(constraints.positive, 1)}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, *, validate_args: bool | None = None) -> None:
        check_tensor(loc, "loc")
        if loc.dim() < 1:
            raise ValueError(
                f"loc must have at least one dimension (the latent dimension), got shape {tuple(loc.shape)}"
            )
        if isinstance(scale, torch.Tensor):
            check_same_device_and_dtype(loc, "loc", scale, "scale")
        try:
            self.loc, self.scale = broadcast_all(loc, scale)
        except (RuntimeError, ValueError) as error:
            shape = tuple(scale.shape) if isinstance(scale, torch.Tensor) else type(scale).__name__
            raise ValueError(f"scale of shape {shape} does not broadcast to loc of shape {tuple(loc.shape)}") from error
        validate = Distribution._validate_args if validate_args is None else bool(validate_args)
        if validate and self.loc.device.type != "meta":  # meta tensors hold no values to check
            check_finite(self.loc, "loc")
            _check_scale(self.scale)
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale = self.scale.expand(batch_shape + self.event_shape)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k in self._extra_state})
        super(GaussianFactor, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    _extra_state: tuple[str, ...] = ()

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2)

    @property
    def precision(self) -> torch.Tensor:
        r""":math:`\lambda = s^{-2}`."""
        return self.scale.pow(-2)

    @property
    def natural_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Natural parameters :math:`(\eta_1, \lambda) = (\mu / s^2, 1 / s^2)` per dimension."""
        precision = self.precision
        return self.loc * precision, precision

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        var = self.scale.pow(2)
        log_density = -((value - self.loc) ** 2) / (2 * var) - self.scale.log() - 0.5 * math.log(2 * math.pi)
        return log_density.sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.scale.log()).sum(-1)

    def pairwise_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Table of :math:`\\log f(z \\mid x_m)`, shape ``z.shape[:-1] + (M,)``."""
        return gaussian_pairwise_log_prob(z, self.loc, self.scale)

    def pairwise_logsumexp(
        self, z: torch.Tensor, *, backend: str = "auto", chunk_size: int | None = None
    ) -> torch.Tensor:
        r""":math:`\log \sum_m \mathcal N(z; \mu_m, \operatorname{diag} s_m^2)` without the ``(..., M)`` table.

        ``backend="dense"`` (and ``"auto"`` for at most ``2**16`` latent-support pairs) is the
        logsumexp of the table of :meth:`pairwise_log_prob`, kept in the accumulation dtype and rounded
        once (:func:`pyro_rpm.normalisers.dense.gaussian_dense_logsumexp`); otherwise :func:`pyro_rpm.normalisers.gaussian_logsumexp`
        streams the support set with exact gradients and :math:`O(B \cdot \text{chunk} + M D)` memory.
        A scale shared by all support points (stride 0 along the support dimension, e.g.
        ``shared_scale=True`` or a :class:`DeltaFactor`) is passed as one ``(D,)`` vector.
        """
        rows = z.numel() // z.shape[-1] if z.dim() and z.shape[-1] else 1
        if use_dense(backend, rows * self.num_support):
            return gaussian_dense_logsumexp(z, self.loc, self.scale)
        scale = self.scale
        if scale.dim() == 2 and scale.stride(0) == 0:
            scale = scale[0]
        return gaussian_logsumexp(z, self.loc, scale, backend=backend, chunk_size=chunk_size)

    tensor_names = ("loc", "scale")
    combine_uses_prior = True

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(M, D)``."""
        return self.loc, self.scale

    def settings(self) -> dict:
        return {k: self.__dict__[k] for k in self._extra_state if k in self.__dict__}

    def with_tensors(self, tensors) -> GaussianFactor:
        """A factor of this type and settings (e.g. a DeltaFactor's ``eps``) with new ``(loc, scale)``."""
        loc, scale = tensors
        new = type(self).__new__(type(self))
        new.__dict__.update(self.settings())
        GaussianFactor.__init__(new, loc, scale, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def diagonal_gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, self.scale

    @classmethod
    def combine(cls, factors, prior=None):
        r"""Product of diagonal Gaussians in natural parameters, optionally :math:`p \prod_j f_j / p`.

        With :math:`J` factors and a diagonal Gaussian prior :math:`(\mu_0, s_0)`:
        :math:`\eta_q = \sum_j \eta_j - (J-1)\eta_0`, :math:`\lambda_q = \sum_j \lambda_j - (J-1)\lambda_0`,
        and the residual :math:`\log q - \sum_j \log f_j = -\log Z + (1-J)\log p(z)` with
        :math:`\log Z = \sum_d [A(\eta_q, \lambda_q) - \sum_j A(\eta_j, \lambda_j) + (J-1) A(\eta_0, \lambda_0)]`.

        :raises ValueError: when the combined precision is not positive (a value check,
            :func:`pyro_rpm.value_checks`).
        """
        gaussians = [f.diagonal_gaussian() for f in factors]
        if any(g is None for g in gaussians):
            return None
        naturals = [(loc * scale.pow(-2), scale.pow(-2)) for loc, scale in gaussians]
        J = len(factors)
        eta1 = sum(n[0] for n in naturals)
        precision = sum(n[1] for n in naturals)
        log_parts = sum(gaussian_log_partition(*n) for n in naturals)
        prior_dist = None
        if prior is not None:
            p_loc, p_scale = prior
            p_prec = p_scale.pow(-2)
            eta1 = eta1 - (J - 1) * p_loc * p_prec
            precision = precision - (J - 1) * p_prec
            log_parts = log_parts - (J - 1) * gaussian_log_partition(p_loc * p_prec, p_prec)
            prior_dist = Normal(p_loc, p_scale)
        if value_checks_active() and not bool((precision > 0).all()):  # a host sync: skipped under compile
            raise ValueError(
                "the combined posterior precision sum_j lambda_j - (J-1) lambda_prior is not "
                "positive; use GaussianRecognition(prior_scale=...) so factors are 'prior + network', or "
                "RecognitionGuide(combine='product')"
            )
        log_z = (gaussian_log_partition(eta1, precision) - log_parts).sum(-1)

        def residual(value: torch.Tensor) -> torch.Tensor:
            r = -log_z
            if prior_dist is not None:
                r = r + (1 - J) * prior_dist.log_prob(value).sum(-1)
            return r

        return GaussianFactor.from_natural(eta1, precision), residual

    @classmethod
    def from_natural(cls, eta1: torch.Tensor, precision: torch.Tensor) -> GaussianFactor:
        r"""Build a factor from natural parameters :math:`(\eta_1, \lambda)`."""
        return GaussianFactor(eta1 / precision, precision.rsqrt())


def _check_scale(scale: torch.Tensor) -> None:
    """Raise :class:`ValueError` unless every scale is finite and strictly positive (torch's own check lets inf pass).

    A value check: skipped where :func:`~pyro_rpm._validation.value_checks_active` says so (inside
    ``torch.compile``, mode ``"off"``, Pyro's validation off).
    """
    if not value_checks_active():
        return
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bool(bad.any()):
        raise ValueError(
            f"scale must be finite and strictly positive, got {int(bad.sum())} invalid values "
            f"(first: {scale[bad][0].item():.3g}) in a tensor of shape {tuple(scale.shape)}"
        )


def _inverse_softplus(value: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(float(value)))))


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
        check_int(latent_dim, "latent_dim", expected="a positive int")
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

    @property
    def output_size(self) -> int:
        return self.latent_dim if self.shared_scale else 2 * self.latent_dim

    def head(self, output: torch.Tensor) -> GaussianFactor:
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
