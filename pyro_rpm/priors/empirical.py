# SPDX-License-Identifier: Apache-2.0
r"""Priors built from the recognition marginal :math:`F(z) = \frac1M \sum_m f(z \mid x_m)`.

* :class:`MarginalPrior`: :math:`p(z) = F(z)`.
* :class:`ContrastivePrior`: :math:`p(z' \mid z) = F(z')\, e^{g(z, z')} / Z(z)` with
  :math:`Z(z) = \frac1M \sum_m \mathbb E_{f_m}[e^{g(z, z')}]` (Aitchison & Ganev, Eq. 21–22).

With these priors and tied guides the RPM ELBO becomes InfoNCE: per datum,
:math:`\mathcal L_n = g(z_n, z'_n) - \log\sum_m e^{g(z_n, a_m)} - \log M`, where :math:`a_m` are the
encoder outputs of the second view. :class:`~pyro_rpm.RPM_ELBO` cancels the :math:`\log F` terms
that these priors share with :class:`~pyro_rpm.RecognitionLikelihood` sites exactly.

Large supports: both normalisers (:math:`\log\sum_m f(z \mid x_m)` and :math:`\log Z`) are
computed without the ``B x M`` table beyond the dense threshold (``backend=``): by
:meth:`~pyro_rpm.recognition.base.Factor.pairwise_logsumexp` and
:meth:`~pyro_rpm.priors.couplings.Coupling.expected_logsumexp`, which reduce the RBF and bilinear closed
forms (and cosine or point-mass forms) to :mod:`pyro_rpm.normalisers`. The tables
(``component_logits``) are built only for sampling.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions.utils import lazy_property

from .._validation import check_same_device_and_dtype, check_tensor
from ..normalisers import Normaliser
from ..recognition.base import Factor
from .anchors import check_anchor_resolves_support
from .couplings import Coupling

__all__ = ["EmpiricalMarginalPrior", "MarginalPrior", "ContrastivePrior"]


class EmpiricalMarginalPrior(TorchDistribution):
    r"""Base class of priors whose density contains :math:`\log F(z)` over a support set.

    Subclasses implement :meth:`log_prob_excluding_marginal`, which is
    ``log_prob(z) - logsumexp_m log f(z | x_m)``.

    :param backend: normaliser backend (a name or a :class:`~pyro_rpm.normalisers.Normaliser`; default the
        factors' own :attr:`~pyro_rpm.Factor.normaliser`): ``"auto"``, ``"dense"``, ``"streamed"``, ``"fused"`` or ``"screened"``
        (:mod:`pyro_rpm.normalisers`).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        factors: Factor,
        batch_shape: torch.Size,
        *,
        backend: str | Normaliser | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(factors, Factor):
            raise TypeError(f"factors must be a pyro_rpm Factor, got {type(factors).__name__}")
        if len(factors.batch_shape) != 1 or factors.batch_shape[0] < 2:
            raise ValueError(
                f"factors must have batch_shape (M,) with M >= 2 support points, got {tuple(factors.batch_shape)}"
            )
        #: the normaliser of log F (the factors' own unless ``backend`` overrides it)
        self.normaliser = factors.normaliser.replace(backend)
        self.backend = self.normaliser.backend
        self.marginal_factors = factors
        super().__init__(torch.Size(batch_shape), factors.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return self.marginal_factors.support

    @property
    def num_support(self) -> int:
        return self.marginal_factors.batch_shape[0]

    def log_marginal_normaliser(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \sum_m f(z \mid x_m)` at ``value``."""
        return self.marginal_factors.pairwise_logsumexp(
            value, backend=self.backend, chunk_size=self.normaliser.chunk_size
        )

    def log_prob_excluding_marginal(self, value: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.log_marginal_normaliser(value) + self.log_prob_excluding_marginal(value)

    def placeholder(self) -> torch.Tensor:
        """A cheap value in the support (the first factor's mean), used when a guide traces the model."""
        mean = self.marginal_factors.mean[0]
        return mean.detach().expand(self.batch_shape + self.event_shape)

    def _sample_component(self, index: torch.Tensor) -> torch.Tensor:
        return self.marginal_factors.index(index).sample()


class MarginalPrior(EmpiricalMarginalPrior):
    r"""The recognition marginal as a prior, :math:`p(z) = F(z) = \frac1M \sum_m f(z \mid x_m)`.

    :param Factor factors: recognition factors over the support set, ``batch_shape == (M,)``.
    :param str backend: backend of :meth:`log_marginal_normaliser` (:mod:`pyro_rpm.normalisers`).
    """

    def __init__(
        self, factors: Factor, *, backend: str | Normaliser | None = None, validate_args: bool | None = None
    ) -> None:
        super().__init__(factors, torch.Size(), backend=backend, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MarginalPrior, _instance)
        EmpiricalMarginalPrior.__init__(
            new, self.marginal_factors, torch.Size(batch_shape), backend=self.normaliser, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def log_prob_excluding_marginal(self, value: torch.Tensor) -> torch.Tensor:
        shape = value.shape[: value.dim() - len(self.event_shape)]
        # in the factors' floating dtype: integer values (discrete latents) must not truncate -log M
        factors = self.marginal_factors
        if value.is_floating_point():
            dtype = value.dtype
        else:
            dtype = factors.dtype
        return torch.full(shape, -math.log(self.num_support), dtype=dtype, device=value.device)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        index = torch.randint(self.num_support, shape, device=self.marginal_factors.mean.device)
        with torch.no_grad():
            return self._sample_component(index)


class ContrastivePrior(EmpiricalMarginalPrior):
    r"""The contrastive prior :math:`p(z' \mid z) \propto F(z')\, e^{g(z, z')}` (Aitchison & Ganev, Eq. 21).

    .. math::

        \log p(z' \mid z) = \log F(z') + g(z, z') - \log Z(z), \qquad
        Z(z) = \frac1M \sum_m \mathbb E_{f_m}\big[e^{g(z, z')}\big].

    :math:`Z` is exact for deterministic factors (:class:`~pyro_rpm.DeltaRecognition`) and, for
    Gaussian factors, for couplings with a closed form (see :mod:`pyro_rpm.priors.couplings`).
    Sampling draws a support point with probability :math:`\propto \mathbb E_{f_m}[e^{g(z,z')}]`, then
    :math:`z'` from its factor (exact for deterministic factors; it ignores the tilt of a
    Gaussian factor by :math:`e^{g}`).

    :param Factor factors: recognition factors of the second view over the support set.
    :param Coupling coupling: the coupling :math:`g`.
    :param torch.Tensor anchor: the conditioning latent :math:`z`, shape ``batch_shape + (D,)``.
    :param str backend: backend of both normalisers, :math:`\log Z` and
        :meth:`~EmpiricalMarginalPrior.log_marginal_normaliser` (:mod:`pyro_rpm.normalisers`).
    """

    def __init__(
        self,
        factors: Factor,
        coupling: Coupling,
        anchor: torch.Tensor,
        *,
        backend: str | Normaliser | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(coupling, Coupling):
            raise TypeError(f"coupling must be a pyro_rpm Coupling, got {type(coupling).__name__}")
        check_tensor(anchor, "anchor")
        if anchor.dim() < 1:
            raise ValueError("anchor must have a trailing latent dimension")
        check_same_device_and_dtype(anchor, "anchor", factors.mean, "factors")
        if len(factors.event_shape) == 1:
            coupling.check_widths(anchor.shape[-1], factors.event_shape[0])
            check_anchor_resolves_support(anchor, factors.mean, coupling)
        self.coupling = coupling
        self.anchor = anchor
        super().__init__(factors, anchor.shape[:-1], backend=backend, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ContrastivePrior, _instance)
        batch_shape = torch.Size(batch_shape)
        new.coupling = self.coupling
        new.anchor = self.anchor.expand(batch_shape + self.anchor.shape[-1:])
        if "component_logits" in self.__dict__:
            new.component_logits = self.component_logits.expand(batch_shape + (self.num_support,))
        if "log_normaliser" in self.__dict__:
            new.log_normaliser = self.log_normaliser.expand(batch_shape)
        EmpiricalMarginalPrior.__init__(
            new, self.marginal_factors, batch_shape, backend=self.normaliser, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @lazy_property
    def component_logits(self) -> torch.Tensor:
        r""":math:`\log \mathbb E_{f_m}[e^{g(z, z')}]`, shape ``batch_shape + (M,)``."""
        return self.coupling.expected_pairwise(self.anchor, self.marginal_factors)

    @lazy_property
    def log_normaliser(self) -> torch.Tensor:
        r""":math:`\log Z(z)`, shape ``batch_shape``.

        From ``component_logits`` when that table exists, else by
        :meth:`~pyro_rpm.priors.couplings.Coupling.expected_logsumexp` with this prior's ``backend``.
        """
        if "component_logits" in self.__dict__:
            lse = torch.logsumexp(self.component_logits, dim=-1)
        else:
            lse = self.coupling.expected_logsumexp(
                self.anchor, self.marginal_factors, backend=self.backend, chunk_size=self.normaliser.chunk_size
            )
        return lse - math.log(self.num_support)

    def log_prob_excluding_marginal(self, value: torch.Tensor) -> torch.Tensor:
        return self.coupling(self.anchor, value) - self.log_normaliser - math.log(self.num_support)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.component_logits).sample(sample_shape)
            return self._sample_component(index)
