# SPDX-License-Identifier: Apache-2.0
"""The deterministic-encoder family: :class:`DeltaFactor` and :class:`DeltaRecognition`."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_float_type, check_int, check_positive, check_tensor
from .base import Recognition
from .gaussian import GaussianFactor

__all__ = ['DeltaFactor', 'DeltaRecognition']


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
        check_float_type(eps, "eps")
        check_positive(eps, "eps")
        self.eps = float(eps)
        self.sample_noise = bool(sample_noise)
        self.is_point_mass = not self.sample_noise
        super().__init__(loc, loc.new_tensor(self.eps).expand(loc.shape), validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if self.sample_noise:
            return super().rsample(sample_shape)
        return self.loc.expand(self._extended_shape(sample_shape))


class DeltaRecognition(Recognition):
    r"""Deterministic encoder :math:`z = e(x)`, smoothed by a fixed :math:`\varepsilon`-Gaussian.

    Returns a :class:`~pyro_rpm.recognition.delta.DeltaFactor` (Aitchison & Ganev, Appendix B): densities
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
        check_int(latent_dim, "latent_dim", expected="a positive int")
        check_float_type(eps, "eps")
        check_positive(eps, "eps")
        self.latent_dim = latent_dim
        self.eps = float(eps)
        self.sample_noise = bool(sample_noise)

    @property
    def output_size(self) -> int:
        return self.latent_dim

    def head(self, output: torch.Tensor) -> DeltaFactor:
        return DeltaFactor(output, self.eps, sample_noise=self.sample_noise, validate_args=False)
