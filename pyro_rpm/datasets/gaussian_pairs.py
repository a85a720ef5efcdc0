# SPDX-License-Identifier: Apache-2.0
r"""Correlated Gaussian pairs with a known mutual information.

:func:`correlated_gaussian_pairs` draws N i.i.d. pairs :math:`(x, x')` of d-dimensional vectors,

.. math::

    x \sim \mathcal N(0, I_d), \qquad x' = \rho\, x + \sqrt{1 - \rho^2}\, \epsilon, \quad
    \epsilon \sim \mathcal N(0, I_d),

so :math:`x'` is also :math:`\mathcal N(0, I_d)`, :math:`\operatorname{Cov}(x_k, x'_l) = \rho\,\delta_{kl}`, and the
d coordinate pairs are independent. The joint covariance is
:math:`\Sigma = \begin{pmatrix} I & \rho I \\ \rho I & I \end{pmatrix}` with
:math:`\det \Sigma = (1 - \rho^2)^d`, hence

.. math::

    I(x; x') = H(x) + H(x') - H(x, x') = \tfrac12 \log \frac{\det I \, \det I}{\det \Sigma}
    = -\frac d2 \log(1 - \rho^2) \quad \text{nats.}

The conditional standard deviation of :math:`x'_k` given :math:`x_k` is
:math:`\sqrt{1-\rho^2} = e^{-I/d}`: a large mutual information means a narrow conditional.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_int, check_int_type, check_number

__all__ = ["correlated_gaussian_pairs", "gaussian_pairs_mi", "rho_for_mi"]


def _check_dim(dim: object) -> int:
    return check_int(dim, "dim", expected="a positive int")


def _check_rho(rho: object) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)):
        raise TypeError(f"rho must be a float, got {type(rho).__name__}")
    if not -1.0 < rho < 1.0:  # also rejects NaN
        raise ValueError(f"rho must lie strictly between -1 and 1, got {rho!r}")
    return float(rho)


def gaussian_pairs_mi(rho: float, dim: int) -> float:
    r"""The mutual information :math:`-\frac d2 \log(1 - \rho^2)` (nats) of :func:`correlated_gaussian_pairs`.

    :param float rho: per-dimension correlation, :math:`-1 < \rho < 1`.
    :param int dim: dimension d of each view.

    >>> gaussian_pairs_mi(0.0, 3) == 0
    True
    >>> round(gaussian_pairs_mi(0.6, 2), 6)  # -log(0.64)
    0.446287
    """
    rho, dim = _check_rho(rho), _check_dim(dim)
    return -0.5 * dim * (math.log1p(-rho) + math.log1p(rho))  # log(1 - rho^2) = log(1 - rho) + log(1 + rho)


def rho_for_mi(mi: float, dim: int) -> float:
    r"""The correlation :math:`\rho = \sqrt{1 - e^{-2I/d}} \ge 0` whose pairs have mutual information ``mi``.

    :param float mi: target mutual information :math:`I \ge 0` (nats).
    :param int dim: dimension d of each view.

    >>> round(gaussian_pairs_mi(rho_for_mi(5.0, 4), 4), 9)
    5.0
    """
    dim = _check_dim(dim)
    check_number(mi, "mi", at_least=0, expected="a finite float >= 0")
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def correlated_gaussian_pairs(
    n: int,
    dim: int,
    rho: float,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""N pairs :math:`(x, x')` with per-dimension correlation :math:`\rho` and known mutual information.

    :param int n: number of pairs N.
    :param int dim: dimension d of each view.
    :param float rho: per-dimension correlation, :math:`-1 < \rho < 1`.
    :param int seed: seed of a private generator (the global RNG is untouched).
    :param torch.dtype dtype: floating dtype of the returned tensors (drawn in float64, then cast).
    :returns: ``(x, x2, true_mi)``: two tensors of shape ``(n, dim)`` and the float
        :math:`I(x; x') = -\frac d2 \log(1 - \rho^2)` (nats).
    :raises ValueError: if ``n`` or ``dim`` is not a positive int or ``rho`` is outside (-1, 1).
    :raises TypeError: if ``rho`` is not a number, ``seed`` not an int or ``dtype`` not floating.

    >>> x, x2, mi = correlated_gaussian_pairs(1000, 2, 0.9, seed=1)
    >>> tuple(x.shape), tuple(x2.shape), round(mi, 4)
    ((1000, 2), (1000, 2), 1.6607)
    >>> torch.equal(correlated_gaussian_pairs(5, 1, 0.5, seed=3)[1], correlated_gaussian_pairs(5, 1, 0.5, seed=3)[1])
    True
    """
    check_int(n, "n", expected="a positive int")
    dim, rho = _check_dim(dim), _check_rho(rho)
    check_int_type(seed, "seed")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    x2 = rho * x + math.sqrt((1.0 - rho) * (1.0 + rho)) * noise  # sqrt(1 - rho^2) without cancellation
    return x.to(dtype), x2.to(dtype), gaussian_pairs_mi(rho, dim)
