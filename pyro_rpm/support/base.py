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

import torch

from .._pyro import _CACHE
from .._validation import check_tensor
from ..recognition.base import Factor, Recognition

__all__ = ['Support', 'InBatchSupport']


def _check_recognition(recognition: object) -> Recognition:
    if not isinstance(recognition, Recognition):
        raise TypeError(f"recognition must be a pyro_rpm Recognition module, got {type(recognition).__name__}")
    return recognition


def _check_data(data: object, name: str = "data") -> torch.Tensor:
    check_tensor(data, name)
    if data.dim() < 1 or data.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 2 points, got {tuple(data.shape)}")
    return data


def _check_chunk_size(chunk_size: object, allow_none: bool) -> None:
    ok = isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1
    if not ok and not (allow_none and chunk_size is None):
        raise ValueError(f"chunk_size must be a positive int{' or None' if allow_none else ''}, got {chunk_size!r}")


class Support:
    """Base class: a rule that turns data into the factors of a support set (module docstring)."""

    def __init__(self, recognition: Recognition) -> None:
        self.recognition = _check_recognition(recognition)

    def _cached(self, key: tuple, build, keepalive: object = None):
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


class InBatchSupport(Support):
    r"""The minibatch as the support set: ``f = s(x_batch)``, then ``observe(name, f, z)``.

    Equivalent to calling the recognition module itself; constant :math:`\log B`.

    :param Recognition recognition: the recognition module.
    """

    def __call__(self, x: torch.Tensor) -> Factor:
        return self.recognition(x)
