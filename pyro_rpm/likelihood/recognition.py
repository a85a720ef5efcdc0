# SPDX-License-Identifier: Apache-2.0
r"""The recognition-parameterised likelihood :math:`p(x_j \mid z)`.

With the empirical marginal :math:`p_0(x_j) = \frac1M \sum_m \delta(x_j - x_j^{(m)})` over a
support set of M points and the recognition marginal :math:`F_j(z) = \frac1M\sum_m f_j(z\mid x_j^{(m)})`,

.. math::

    p(x_j = x_j^{(n)} \mid z) = \frac{p_0(x_j^{(n)})\, f_j(z \mid x_j^{(n)})}{F_j(z)}
    = \operatorname{softmax}_n\big[\log f_j(z \mid x_j^{(m)})\big]_{m=1..M},

a categorical distribution over the indices of the support set. :class:`RecognitionLikelihood`
observes the index n of each datum. Two choices of support set:

* **in-batch** (the current minibatch of B points, InfoNCE-style): cheap; the normaliser is a
  biased estimate of the full-data one, and the constant relating the ELBO to InfoNCE is
  :math:`\log B`;
* **whole data set** (all N points, observed indices into it): exact; the constant is :math:`\log N`.

:mod:`pyro_rpm.support` gathers these and the memory-bank supports in one place.

The normaliser :math:`\log\sum_m f(z_b \mid x_m)` of a large support set is computed without the
``B x M`` table (``backend=``, :meth:`~pyro_rpm.recognition.base.Factor.pairwise_logsumexp`): streamed or
fused exact row-logsumexp with a recomputing backward pass (:mod:`pyro_rpm.normalisers`), and the
diagonal :math:`\log f(z_b \mid x_{n_b})` directly from the observed points' factors. The table
:attr:`RecognitionLikelihood.logits` is built only for :meth:`~RecognitionLikelihood.sample` and
for small problems.

**Mixed precision.** Under :func:`torch.autocast` the table, the diagonal and the normaliser are
computed with autocast disabled, in the factors' dtype (float32 for a float32 network: a
:class:`~pyro_rpm.Recognition` casts its network's low-precision output back), so every backend
accumulates in float32 or better.
"""

from __future__ import annotations

import pyro
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.util import broadcast_shape
from torch.distributions.utils import lazy_property

from .._pyro import rpm_infer
from .._validation import (
    check_finite,
    check_same_device_and_dtype,
    check_tensor,
    full_precision_call,
    mark_checked,
    structure,
    value_checks_active,
)
from ..normalisers import Normaliser
from ..recognition.base import Factor, use_dense
from .far_latents import far_latent_log_prob, far_latent_log_softmax, far_latent_threshold, gaussian_latent_range

__all__ = ["RecognitionLikelihood", "observe"]


class RecognitionLikelihood(TorchDistribution):
    r"""Categorical likelihood over support points with logits :math:`\log f(z \mid x_m)`.

    :param Factor factors: recognition factors over the support set (``batch_shape == (M,)``),
        e.g. ``recognition(x_support)``.
    :param torch.Tensor latent: the latent :math:`z`, shape ``batch_shape + factors.event_shape``;
        any leading particle/plate dimensions broadcast.
    :param backend: how :attr:`log_normaliser` is computed: ``"auto"`` (the dense table for at most
        ``2**16`` latent-support pairs, else an exact kernel: screened, fused or streamed), ``"dense"``,
        ``"streamed"``, ``"fused"`` or ``"screened"`` (see :mod:`pyro_rpm.normalisers`), or a whole
        :class:`~pyro_rpm.normalisers.Normaliser`; default (``None``) the factors' own
        :attr:`~pyro_rpm.Factor.normaliser`, which a :class:`~pyro_rpm.Support` sets.
    :param int chunk_size: support points per chunk for the streamed/fused backends (``None``: the factors').

    ``log_prob(n) = log f(z | x_n) - logsumexp_m log f(z | x_m)``, exactly
    ``Categorical(logits=log f(z | x_.)).log_prob(n)``; ``sample()`` draws support indices (the
    "matching up" of the paper).

    Example::

        >>> f = GaussianFactor(torch.randn(5, 2), torch.ones(5, 2))
        >>> lik = RecognitionLikelihood(f, torch.randn(3, 2))
        >>> lik.log_prob(torch.tensor([0, 1, 2])).shape
        torch.Size([3])
    """

    arg_constraints: dict = {}
    has_enumerate_support = True

    def __init__(
        self,
        factors: Factor,
        latent: torch.Tensor,
        *,
        backend: str | Normaliser | None = None,
        chunk_size: int | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(factors, Factor):
            raise TypeError(
                f"factors must be a pyro_rpm Factor (the output of a recognition module), got {type(factors).__name__}"
            )
        check_tensor(latent, "latent")
        if len(factors.batch_shape) != 1:
            raise ValueError(
                f"factors must have batch_shape (M,) over the support set, got {tuple(factors.batch_shape)}"
            )
        num_support = factors.batch_shape[0]
        if num_support < 2:
            raise ValueError(f"the support set must have at least 2 points, got {num_support}")
        event_dim = len(factors.event_shape)
        if latent.dim() < event_dim or latent.shape[latent.dim() - event_dim :] != factors.event_shape:
            raise ValueError(
                f"latent must end with the factors' event shape {tuple(factors.event_shape)}, "
                f"got shape {tuple(latent.shape)}"
            )
        check_same_device_and_dtype(latent, "latent", factors.tensors()[0], "factors")
        if latent.is_floating_point():
            check_finite(latent, "latent")
        normaliser = factors.normaliser.replace(backend, chunk_size)  # validates both
        self.backend = normaliser.backend
        self.chunk_size = normaliser.chunk_size
        self.factors = factors
        self.latent = latent
        #: the tensor passed as ``latent`` (kept through ``expand``, to identify the latent site).
        self.latent_source = latent
        self.num_support = num_support
        batch_shape = latent.shape[: latent.dim() - event_dim]
        super().__init__(batch_shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.num_support - 1)

    @lazy_property
    def logits(self) -> torch.Tensor:
        r"""Table :math:`\log f(z \mid x_m)`, shape ``batch_shape + (M,)``.

        Each entry is accurate relative to its own size; for latents far from the support points
        (:meth:`log_prob`) their *differences* are not (they fall below the entries' rounding error),
        so normalise with :meth:`log_prob`, or take the exact table from
        :func:`~pyro_rpm.likelihood.far_latents.far_latent_log_softmax`, as :meth:`sample` does.
        """
        return full_precision_call(self.factors.pairwise_log_prob, self.latent)

    @lazy_property
    def log_normaliser(self) -> torch.Tensor:
        r""":math:`\log \sum_m f(z \mid x_m) = \log F(z) + \log M`, shape ``batch_shape``.

        From :attr:`logits` when the table exists already, else by
        :meth:`~pyro_rpm.recognition.base.Factor.pairwise_logsumexp` with this likelihood's ``backend``.
        """
        if "logits" in self.__dict__:
            return full_precision_call(torch.logsumexp, self.logits, dim=-1)
        return full_precision_call(
            self.factors.pairwise_logsumexp, self.latent, backend=self.backend, chunk_size=self.chunk_size
        )

    def _as_index(self, value: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value, device=self.latent.device)
        if value.is_floating_point() and value_checks_active():
            if not bool((value == value.round()).all()):
                raise ValueError("RecognitionLikelihood values must be integer support indices")
        return value.long()

    def diagonal(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log f(z \mid x_n)` at the observed indices n, shape ``broadcast(value, batch_shape)``.

        Gathered from :attr:`logits` when the table exists, else evaluated directly as
        ``factors.index(value).log_prob(latent)`` (no ``(..., M)`` table).
        """
        value = self._as_index(value)
        shape = broadcast_shape(tuple(value.shape), tuple(self.batch_shape))
        if "logits" in self.__dict__ or use_dense(self.backend, self._num_pairs()):
            logits = self.logits.expand(shape + (self.num_support,))
            return logits.gather(-1, value.expand(shape).unsqueeze(-1)).squeeze(-1)
        return full_precision_call(self.factors.index(value).log_prob, self.latent).expand(shape)

    def _num_pairs(self) -> int:
        """Number of (latent, support point) pairs of the table."""
        return self.batch_shape.numel() * self.num_support

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log f(z \mid x_n) - \log\sum_m f(z \mid x_m)` at the observed indices ``value``.

        For diagonal Gaussian factors a value check (:func:`pyro_rpm.value_checks`: one reduction and
        one host synchronisation, skipped under :func:`torch.compile`) bounds the quadratic forms by
        :math:`\hat Q` (:func:`~pyro_rpm.likelihood.far_latents.gaussian_latent_range`). A latent so far
        from the support points that :math:`\hat Q > 1/\epsilon_w` (:math:`2^{52}` with float64 work),
        where the two terms' rounding errors would swamp their difference, is computed from the
        differences of the logits instead (:mod:`pyro_rpm.likelihood.far_latents`): the exact answer,
        or a :class:`ValueError` naming the latent where it cannot be given (e.g. not representable
        in float32).
        """
        if self._validate_args:
            self._validate_sample(value)
        far = self._far_latent_log_prob(value)
        if far is not None:
            return far
        return self.diagonal(value) - self.log_normaliser

    def _far_gaussian(self) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """``(loc, scale, name)`` of diagonal Gaussian factors when the latent is far from them (:meth:`log_prob`), else ``None``."""
        if not self.latent.is_floating_point() or self.latent.device.type == "meta":
            return None
        key = structure("far-latent", self.latent)
        if not value_checks_active(key):
            return None
        gaussian = self.factors.diagonal_gaussian()
        if gaussian is None or gaussian[0].dim() != 2:
            return None
        loc, scale = gaussian
        bound, extent = gaussian_latent_range(self.latent, loc, scale)
        if bound <= far_latent_threshold(self.latent.dtype, self.latent.device):
            mark_checked(key)
            return None
        return loc, scale, f"latent (at distance {extent:.3g} from the support's centre)"

    def _far_latent_log_prob(self, value: torch.Tensor) -> torch.Tensor | None:
        """The exact log-probability of a far latent (:meth:`log_prob`), or ``None`` for the usual path."""
        far = self._far_gaussian()
        if far is None:
            return None
        loc, scale, name = far
        return full_precision_call(
            far_latent_log_prob,
            self.latent,
            loc,
            scale,
            self._as_index(value),
            name=name,
            backend=self.backend,
            chunk_size=self.chunk_size,
        )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Draw support indices from the categorical; for far latents (:meth:`log_prob`) from the exact
        table of :func:`~pyro_rpm.likelihood.far_latents.far_latent_log_softmax`, not the rounded logits."""
        with torch.no_grad():
            far = self._far_gaussian()
            if far is None:
                logits = self.logits
            else:
                loc, scale, name = far
                table = far_latent_log_softmax(self.latent, loc, scale, name=name)
                logits = table.expand(self.batch_shape + (self.num_support,))
            return torch.distributions.Categorical(logits=logits).sample(sample_shape)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        values = torch.arange(self.num_support, device=self.latent.device)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            values = values.expand((-1,) + self.batch_shape)
        return values

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(RecognitionLikelihood, _instance)
        batch_shape = torch.Size(batch_shape)
        new.factors = self.factors
        new.num_support = self.num_support
        new.latent_source = self.latent_source
        new.backend = self.backend
        new.chunk_size = self.chunk_size
        target = batch_shape + self.factors.event_shape
        new.latent = self.latent if self.latent.shape == target else self.latent.expand(target)
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape + (self.num_support,))
        if "log_normaliser" in self.__dict__:
            new.log_normaliser = self.log_normaliser.expand(batch_shape)
        super(RecognitionLikelihood, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new


def observe(
    name: str,
    factors: Factor,
    latent: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    backend: str | Normaliser | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Observe data through a :class:`RecognitionLikelihood` site.

    ``observe("x1", f1(x1), z)`` is ``pyro.sample("x1", RecognitionLikelihood(f1(x1), z), obs=index)``
    with ``index`` defaulting to ``arange(M)``: the in-batch support, in which the b-th latent
    belongs to the b-th support point. For a whole-data-set support pass the minibatch's indices
    into it.

    :param str name: site name.
    :param Factor factors: recognition factors over the support set.
    :param torch.Tensor latent: latents of the observed batch.
    :param torch.Tensor index: support index of each latent (default ``arange(M)``).
    :param backend: normaliser backend of the :class:`RecognitionLikelihood`: a name or a
        :class:`~pyro_rpm.normalisers.Normaliser`; default the factors' own (:attr:`Factor.normaliser`, set by
        the :class:`~pyro_rpm.Support` that built them; ``"auto"`` otherwise).
    :param int chunk_size: support points per chunk for the streamed/fused backends (overrides the factors').
    :returns: the observed indices.
    """
    if not isinstance(name, str):
        raise TypeError(f"observe: name must be a str (the site name), got {type(name).__name__}")
    if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
        raise TypeError(
            f"observe('{name}'): index must be an integer tensor of support positions, got a boolean tensor "
            "(a mask? pass mask.nonzero().squeeze(-1))"
        )
    try:
        likelihood = RecognitionLikelihood(factors, latent, backend=backend, chunk_size=chunk_size)
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):
            raise
        raise type(error)(f"observe('{name}'): {error}") from None  # the same error, naming the site
    infer = rpm_infer(latent, factors)
    # the default index, arange(M): guides' plans read this instead of the values under torch.compile
    infer["rpm"]["in_batch"] = index is None
    if index is None:
        batch = likelihood.batch_shape
        # A trailing batch size of 1 broadcasts against the plate (e.g. an enumerated discrete latent).
        if len(batch) == 0 or batch[-1] not in (1, likelihood.num_support):
            raise ValueError(
                f"observe('{name}'): the observed batch has shape {tuple(batch)} but the support set has "
                f"{likelihood.num_support} points; pass index= (the batch's positions in the support set) "
                "for a support other than the batch itself"
            )
        index = torch.arange(likelihood.num_support, device=latent.device)
    else:
        index = torch.as_tensor(index, device=latent.device)
        if index.is_floating_point():
            raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
        if (
            index.numel()
            and value_checks_active()
            and (int(index.min()) < 0 or int(index.max()) >= likelihood.num_support)
        ):
            raise ValueError(
                f"index must lie in [0, {likelihood.num_support}) (the support set), got range "
                f"[{int(index.min())}, {int(index.max())}]"
            )
        if index.shape[-1:] != likelihood.batch_shape[-1:] and likelihood.batch_shape[-1:] != (1,):
            raise ValueError(
                f"index has length {index.shape[-1] if index.dim() else 0} but the observed batch has "
                f"length {likelihood.batch_shape[-1] if len(likelihood.batch_shape) else 0}"
            )
    return pyro.sample(name, likelihood, obs=index, infer=infer)
