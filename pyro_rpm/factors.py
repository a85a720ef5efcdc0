# SPDX-License-Identifier: Apache-2.0
r"""Recognition factor distributions :math:`f(z \mid x_m)` over a support set of M points.

A recognition network returns one of these, with ``batch_shape == (M,)``. Beyond the usual
:class:`~pyro.distributions.TorchDistribution` interface each factor offers

* :meth:`pairwise_log_prob`: the table :math:`\log f(z_b \mid x_m)` for any latents ``z`` of
  shape ``(..., *event_shape)`` against all M support points, shape ``(..., M)``;
* :meth:`pairwise_logsumexp`: the normaliser :math:`\log\sum_m f(z_b \mid x_m)` of that table
  without materialising it for large supports (:mod:`pyro_rpm.normalisers`);
* :meth:`index`: the factors of a subset of support points, e.g. those of an observed minibatch;
* :meth:`detach`: the same factors cut from the autograd graph (e.g. memory-bank entries).

:func:`cat_factors` concatenates factors of one kind along the support dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import Distribution
from torch.distributions.utils import broadcast_all

from ._validation import check_finite, check_positive, check_same_device_and_dtype, check_tensor
from .normalisers import BACKENDS, DENSE_MAX_PAIRS, gaussian_logsumexp
from .pairwise import gaussian_pairwise_log_prob

__all__ = [
    "Factor",
    "GaussianFactor",
    "DeltaFactor",
    "CategoricalFactor",
    "cat_factors",
    "gaussian_log_partition",
    "use_dense",
]


def gaussian_log_partition(eta1: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    r"""Log-partition :math:`A(\eta_1, \lambda) = \eta_1^2 / (2\lambda) - \tfrac12\log\lambda + \tfrac12\log 2\pi`.

    For a one-dimensional density :math:`\exp(\eta_1 z - \lambda z^2/2 - A)`, elementwise.
    """
    return 0.5 * eta1 * eta1 / precision - 0.5 * precision.log() + 0.5 * math.log(2 * math.pi)


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

        ``backend="dense"`` (and ``"auto"`` for at most ``2**16`` latent-support pairs) is
        ``logsumexp(pairwise_log_prob(z))``; otherwise :func:`pyro_rpm.normalisers.gaussian_logsumexp`
        streams the support set with exact gradients and :math:`O(B \cdot \text{chunk} + M D)` memory.
        A scale shared by all support points (stride 0 along the support dimension, e.g.
        ``shared_scale=True`` or a :class:`DeltaFactor`) is passed as one ``(D,)`` vector.
        """
        rows = z.numel() // z.shape[-1] if z.dim() and z.shape[-1] else 1
        if use_dense(backend, rows * self.num_support):
            return torch.logsumexp(self.pairwise_log_prob(z), dim=-1)
        scale = self.scale
        if scale.dim() == 2 and scale.stride(0) == 0:
            scale = scale[0]
        return gaussian_logsumexp(z, self.loc, scale, backend=backend, chunk_size=chunk_size)

    def _rebuild(self, loc: torch.Tensor, scale: torch.Tensor) -> GaussianFactor:
        """A factor of this type and extra state (e.g. a DeltaFactor's ``eps``) with new parameters."""
        new = type(self).__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k in self._extra_state})
        GaussianFactor.__init__(new, loc, scale, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def index(self, idx: torch.Tensor) -> GaussianFactor:
        """Factors of the support points ``idx`` (indexing the leftmost batch dimension)."""
        return self._rebuild(self.loc[idx], self.scale[idx])

    def detach(self) -> GaussianFactor:
        """The same factors with ``loc`` and ``scale`` detached from the autograd graph."""
        return self._rebuild(self.loc.detach(), self.scale.detach())

    @classmethod
    def from_natural(cls, eta1: torch.Tensor, precision: torch.Tensor) -> GaussianFactor:
        r"""Build a factor from natural parameters :math:`(\eta_1, \lambda)`."""
        return GaussianFactor(eta1 / precision, precision.rsqrt())


def _check_scale(scale: torch.Tensor) -> None:
    """Raise :class:`ValueError` unless every scale is finite and strictly positive (torch's own check lets inf pass)."""
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bool(bad.any()):
        raise ValueError(
            f"scale must be finite and strictly positive, got {int(bad.sum())} invalid values "
            f"(first: {scale[bad][0].item():.3g}) in a tensor of shape {tuple(scale.shape)}"
        )


class DeltaFactor(GaussianFactor):
    r"""A deterministic encoder :math:`\delta(z - e(x_m))`, smoothed by a fixed :math:`\varepsilon`-Gaussian.

    Following Aitchison & Ganev (Appendix B), densities and KL divergences are those of
    :math:`\mathcal N(z; e(x_m), \varepsilon^2 I)`, so every term of the ELBO exists. By default
    :meth:`rsample` returns :math:`e(x_m)` itself (the limit :math:`\varepsilon \to 0` of the tied
    posterior, as in the InfoNCE setting); with ``sample_noise=True`` it draws from the smoothed
    Gaussian instead.

    :param torch.Tensor loc: encoder outputs :math:`e(x_m)`, shape ``batch_shape + (D,)``.
    :param float eps: smoothing standard deviation :math:`\varepsilon > 0`.
    :param bool sample_noise: draw from the :math:`\varepsilon`-Gaussian instead of returning ``loc``.
    """

    _extra_state = ("eps", "sample_noise", "is_point_mass")

    def __init__(
        self,
        loc: torch.Tensor,
        eps: float = 1e-3,
        *,
        sample_noise: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        check_tensor(loc, "loc")
        if isinstance(eps, torch.Tensor):
            eps = float(eps)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a float, got {type(eps).__name__}")
        check_positive(eps, "eps")
        self.eps = float(eps)
        self.sample_noise = bool(sample_noise)
        self.is_point_mass = not self.sample_noise
        super().__init__(loc, loc.new_tensor(self.eps).expand(loc.shape), validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if self.sample_noise:
            return super().rsample(sample_shape)
        return self.loc.expand(self._extended_shape(sample_shape))


class CategoricalFactor(Factor, dist.Categorical):
    r"""Discrete factor :math:`f(k \mid x_m)` over K states.

    :param torch.Tensor logits: unnormalised log-probabilities, shape ``batch_shape + (K,)``.
    """

    def __init__(self, logits: torch.Tensor, *, validate_args: bool | None = None) -> None:
        dist.Categorical.__init__(self, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalFactor, _instance)
        return dist.Categorical.expand(self, batch_shape, _instance=new)

    @property
    def num_states(self) -> int:
        """Number of discrete states K."""
        return self._num_events

    def pairwise_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Table of :math:`\\log f(k \\mid x_m)` for integer states ``z``, shape ``z.shape + (M,)``."""
        return self.logits.transpose(0, 1)[z.long()]

    def pairwise_logsumexp(
        self, z: torch.Tensor, *, backend: str = "auto", chunk_size: int | None = None
    ) -> torch.Tensor:
        r""":math:`\log\sum_m f(k \mid x_m)` for integer states ``z``, shape ``z.shape``.

        The sum depends on the state only, so beyond the dense threshold it is computed once per
        state, :math:`\operatorname{logsumexp}_m \text{logits}_{mk}` (cost :math:`O(MK)`), and
        gathered at ``z``: exact, without the ``z.shape + (M,)`` table. ``chunk_size`` is unused.
        """
        if use_dense(backend, z.numel() * self.num_support):
            return torch.logsumexp(self.pairwise_log_prob(z), dim=-1)
        return torch.logsumexp(self.logits, dim=0)[z.long()]

    def index(self, idx: torch.Tensor) -> CategoricalFactor:
        """Factors of the support points ``idx``."""
        return CategoricalFactor(self.logits[idx], validate_args=False)

    def detach(self) -> CategoricalFactor:
        """The same factors with detached logits."""
        return CategoricalFactor(self.logits.detach(), validate_args=False)


def cat_factors(parts: Sequence[Factor]) -> Factor:
    r"""Concatenate factors of one kind along the support dimension: M = :math:`\sum_i M_i` points.

    Used to build a support set from pieces, e.g. ``[minibatch; memory bank]``
    (:mod:`pyro_rpm.support`). Gradients flow into every part that carries them.

    :param parts: factors of the same type (and, for :class:`DeltaFactor`, the same ``eps`` and
        ``sample_noise``), each with ``batch_shape == (M_i,)``, on one device and dtype.
    :raises TypeError: for non-factors or mixed types.
    :raises ValueError: for an empty list, mismatched event shapes, devices, dtypes or extra state.
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
    if isinstance(first, CategoricalFactor):
        tensors = [p.logits for p in parts]
        _check_tensors_match(tensors, "logits")
        return CategoricalFactor(torch.cat(tensors), validate_args=False)
    extra = {k: v for k, v in first.__dict__.items() if k in first._extra_state}
    for i, part in enumerate(parts):
        other = {k: v for k, v in part.__dict__.items() if k in part._extra_state}
        if other != extra:
            raise ValueError(f"parts[{i}] has settings {other} but parts[0] has {extra}")
    locs = [p.loc for p in parts]
    _check_tensors_match(locs, "loc")
    return first._rebuild(torch.cat(locs), torch.cat([p.scale for p in parts]))


def _check_tensors_match(tensors: list[torch.Tensor], what: str) -> None:
    for i, t in enumerate(tensors[1:], 1):
        if t.device != tensors[0].device or t.dtype != tensors[0].dtype:
            raise ValueError(
                f"parts[{i}].{what} is {t.dtype} on {t.device} but parts[0].{what} is "
                f"{tensors[0].dtype} on {tensors[0].device}; use one device and dtype"
            )
