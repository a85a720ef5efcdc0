# SPDX-License-Identifier: Apache-2.0
"""The tied posterior: an approximate posterior that knows its residual against the factors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution

from ..recognition.base import Factor

__all__ = ["TiedPosterior", "diagonal_normal"]


class TiedPosterior(TorchDistribution):
    r"""An approximate posterior tied to recognition factors.

    Behaves as ``base`` (sampling, ``log_prob``), and adds :meth:`residual`.

    :param base: the distribution of q (e.g. a :class:`~pyro_rpm.recognition.gaussian.GaussianFactor`).
    :param tuple likelihood_sites: names of the model's likelihood sites whose factors q contains.
    :param residual: callable :math:`z \mapsto \log q(z) - \sum_j \log f_j(z \mid x_{jn})`, or
        ``None`` when q is a single factor (the residual is exactly 0).
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        base: TorchDistribution,
        likelihood_sites: tuple[str, ...],
        residual: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        validate_args: bool | None = None,
    ) -> None:
        self.base = base
        self.likelihood_sites = tuple(likelihood_sites)
        self._residual = residual
        #: ``(guide, {likelihood site: factors})`` when built from a guide's plan (verified by RPM_ELBO).
        self.planned: tuple | None = None
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    @property
    def has_enumerate_support(self) -> bool:
        return self.base.has_enumerate_support

    @property
    def support(self):
        return self.base.support

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TiedPosterior, _instance)
        TiedPosterior.__init__(new, self.base.expand(batch_shape), self.likelihood_sites, self._residual)
        new.planned = self.planned
        return new

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base.enumerate_support(expand)

    def residual(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(z) - \sum_j \log f_j(z \mid x_{jn})`, in closed form where possible."""
        shape = value.shape[: value.dim() - len(self.event_shape)]
        if self._residual is None:
            return value.new_zeros(shape) if value.is_floating_point() else torch.zeros(shape, device=value.device)
        return self._residual(value).expand(shape)


def diagonal_normal(fn: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` if the distribution ``fn`` is a diagonal Normal over a vector (possibly expanded, or
    a factor whose :meth:`~pyro_rpm.Factor.diagonal_gaussian` is one), else ``None``."""
    while isinstance(fn, dist.ExpandedDistribution):
        fn = fn.base_dist
    if isinstance(fn, (dist.Independent, torch.distributions.Independent)) and fn.reinterpreted_batch_ndims == 1:
        base = fn.base_dist
        while isinstance(base, dist.ExpandedDistribution):
            base = base.base_dist
        if isinstance(base, (dist.Normal, torch.distributions.Normal)):
            return base.loc, base.scale
    if isinstance(fn, Factor):
        return fn.diagonal_gaussian()
    return None
