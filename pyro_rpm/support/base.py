# SPDX-License-Identifier: Apache-2.0
r"""The support set of the RPM likelihood, chosen in one place.

The likelihood :math:`p(x = x^{(n)} \mid z) = f(z \mid x^{(n)}) / \sum_{m=1}^M f(z \mid x^{(m)})`
normalises over a *support set* of M points. The exact model uses the whole data set (M = N);
everything else substitutes a cheaper set of "negatives". Each class below returns the factors of
its support set, to be passed to :func:`~pyro_rpm.observe` with the minibatch's positions in it:

=============================  ====================  ===============  ===================  ================================
support                        call in the model     positions        constant             normaliser of the data term
=============================  ====================  ===============  ===================  ================================
:class:`InBatchSupport`        ``f = s(x_batch)``    ``arange(B)``    :math:`\log B`       biased estimate (B points)
:class:`FullDataSupport`       ``f = s()``           plate ``idx``    :math:`\log N`       exact, current parameters
:class:`MemoryBankSupport`     ``f = s(x_batch)``    ``arange(B)``    :math:`\log(B+K)`    biased: K stale entries (queue)
:class:`IndexedBankSupport`    ``f = s(idx)``        plate ``idx``    :math:`\log N`       biased: N - B stale entries
=============================  ====================  ===============  ===================  ================================

Bias. With F the recognition marginal of the current parameters, the exact per-datum term is
:math:`-\log\sum_{n=1}^N f(z \mid x_n)`. A subset of M' random points gives
:math:`\log\frac{N}{M'}\sum_{m \le M'} f(z \mid x_m)`, whose expectation is *below*
:math:`\log\sum_n f` by Jensen (bias :math:`O(1/M')`), so the in-batch and queue objectives are
upward-biased estimates of the ELBO, up to their constants. Bank entries were computed with older
parameters (up to :math:`N/B` steps old for the indexed bank, :math:`K/B` for the queue); a
momentum encoder (``momentum=m``, MoCo) keeps them consistent with each other at the price of
lagging the trained network by about :math:`1/(1-m)` steps. Bank entries are detached: no gradient
reaches the network through them, so the gradient misses the "negatives" term of the exact one.

Cost per step (B latents, network cost c per point): in-batch B c and a B x B table; full data
about 3 N c (GradCache: a forward pass without autograd, then the backward pass recomputes each
chunk) and the exact B x N normaliser (streamed, no table); queue B c (plus B c for a momentum
encoder) and B x (B + K); indexed bank B c and B x N. Memory: full data O(chunk x activations +
N x H); banks O(K x D) or O(N x D).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from .._pyro import _CACHE
from .._validation import check_tensor
from ..normalisers import Normaliser
from ..recognition.base import Factor, Recognition

__all__ = ["InBatchSupport", "Support", "support_calling"]


def _check_recognition(recognition: object) -> Recognition:
    if not isinstance(recognition, Recognition):
        raise TypeError(f"recognition must be a pyro_rpm Recognition module, got {type(recognition).__name__}")
    return recognition


def _check_data(data: object, name: str = "data") -> torch.Tensor:
    check_tensor(data, name)
    if data.dim() < 1 or data.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 2 points, got {tuple(data.shape)}")
    return data


class Support(ABC):
    """The contract of a support set: a rule that turns data into the factors of M support points.

    A support carries everything that defines the normaliser of the likelihood sites observed
    through it: the support points (the factors its :meth:`__call__` returns, with
    ``batch_shape == (M,)``), the backend and chunk size of the normaliser (:attr:`normaliser`,
    attached to the factors it returns, so that :func:`~pyro_rpm.observe` and the empirical priors
    use it), and the calling convention (:attr:`calling`, which :func:`~pyro_rpm.fit` follows).

    A new support implements :meth:`__call__` in one class and sets :attr:`calling`; build the
    factors inside :meth:`cached` so that the guide's trace and the model's share one evaluation.

    :param Recognition recognition: the recognition module.
    :param normaliser: a :class:`~pyro_rpm.normalisers.Normaliser` or a backend name (default ``"auto"``).
    """

    #: ``"batch"``: the model is called on the minibatch and observes its own positions
    #: (``observe(name, f, z)``); ``"full"``: the model is called on the whole data set with the
    #: minibatch's indices and observes them (``observe(name, f, z, index=idx)``).
    calling: str = "batch"

    def __init__(self, recognition: Recognition, *, normaliser: Normaliser | str | None = None) -> None:
        self.recognition = _check_recognition(recognition)
        self.normaliser = Normaliser.coerce(normaliser)

    @abstractmethod
    def __call__(self, *args: Any) -> Factor:
        """The factors of the support set (with :attr:`normaliser` attached, :meth:`attach`)."""

    def attach(self, factors: Factor) -> Factor:
        """``factors`` with this support's :attr:`normaliser` (the same object when it already has it)."""
        return factors.with_normaliser(self.normaliser)

    def cached(self, key: tuple, build: Callable[[], Factor], keepalive: object = None) -> Factor:
        """``build()``, evaluated once per :func:`~pyro_rpm.recognition_cache` scope (one ELBO particle).

        ``keepalive`` is held with the entry so that ids in ``key`` stay unique within the scope.
        """
        cache = _CACHE.get()
        key = ("pyro_rpm.support", id(self)) + key
        if cache is not None and key in cache:
            return cache[key][1]
        factor = build()
        if cache is not None:
            cache[key] = ((self, keepalive), factor)
        return factor


def support_calling(support: Support | type | str) -> str:
    """The calling convention (``"batch"`` or ``"full"``) of a support given as an instance, a class or a name.

    :raises ValueError: for another string; :raises TypeError: for anything else.
    """
    if isinstance(support, str):
        if support not in ("batch", "full"):
            raise ValueError(f"support must be 'batch', 'full', a Support or a Support class, got {support!r}")
        return support
    if isinstance(support, Support) or (isinstance(support, type) and issubclass(support, Support)):
        return support.calling
    raise TypeError(f"support must be 'batch', 'full', a Support or a Support class, got {type(support).__name__}")


class InBatchSupport(Support):
    r"""The minibatch as the support set: ``f = s(x_batch)``, then ``observe(name, f, z)``.

    Equivalent to calling the recognition module itself; constant :math:`\log B`.

    :param Recognition recognition: the recognition module.
    """

    def __call__(self, x: torch.Tensor) -> Factor:
        return self.attach(self.recognition(x))
