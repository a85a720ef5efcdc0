# SPDX-License-Identifier: Apache-2.0
r"""Identifiability metrics: how well learned latents recover known ones.

A latent-variable model without a decoder identifies its latents at best up to a class of maps
(affine, orthogonal, permutation and scaling, ...). Each metric measures recovery up to one class:

* :func:`linear_r2` -- **affine** recovery: the coefficient of determination of the least-squares
  affine map from the learned latents :math:`\hat z` to the true ones :math:`z`,

  .. math::

      R^2 = \frac{1}{D} \sum_{d=1}^{D} \Big(1 - \frac{\sum_n (z_{nd} - \tilde z_{nd})^2}
      {\sum_n (z_{nd} - \bar z_d)^2}\Big), \qquad \tilde z = \hat z A + b \text{ (least squares)},

  fitted and scored on the same samples (as in Zimmermann et al. 2021, ``cl-ica``);
* :func:`mcc` -- **permutation (and per-dimension monotone/scale)** recovery: the mean absolute
  correlation coefficient over the best one-to-one matching of true and learned dimensions
  (the Hungarian algorithm on :math:`|C|`, :math:`C_{dk} = \operatorname{corr}(z_d, \hat z_k)`);
* :func:`cluster_accuracy` -- recovery of a discrete latent up to relabelling: accuracy after the
  best one-to-one matching of predicted clusters to classes.

All accept NumPy arrays, torch tensors (any device; detached and copied to the CPU) or nested
lists, and raise a :class:`ValueError` naming the argument on shape mismatches, non-finite values,
constant columns or too few samples, instead of returning NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._optional import require
from .._validation import check_int

__all__ = ["cluster_accuracy", "correlation_matrix", "hungarian_match", "linear_r2", "mcc"]


# ---------------------------------------------------------------------------------------------- inputs
def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:  # ragged nested lists
        raise TypeError(f"{name} must be an array-like of numbers, got {type(value).__name__}") from error
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
    return array


def _as_samples(value: Any, name: str) -> np.ndarray:
    """A finite float64 matrix ``(num_samples, num_dims)``; a vector is one dimension."""
    array = _to_numpy(value, name).astype(np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (num_samples, num_dims) or (num_samples,), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if not np.isfinite(array).all():
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise ValueError(f"{name} must be finite, but it contains {n_nan} NaN and {n_inf} infinite values")
    return array


def _check_pair(z_hat: Any, z_true: Any) -> tuple[np.ndarray, np.ndarray]:
    z_hat, z_true = _as_samples(z_hat, "z_hat"), _as_samples(z_true, "z_true")
    if z_hat.shape[0] != z_true.shape[0]:
        raise ValueError(
            f"z_hat and z_true must have the same number of samples (first dimension), got {z_hat.shape[0]} "
            f"and {z_true.shape[0]}"
        )
    return z_hat, z_true


def _check_not_constant(array: np.ndarray, name: str) -> None:
    constant = np.flatnonzero(np.ptp(array, axis=0) == 0)
    if constant.size:
        raise ValueError(
            f"{name} has constant column(s) {constant.tolist()}; a constant dimension has no variance, so the "
            "metric is undefined there (drop it first)"
        )


# ---------------------------------------------------------------------------------------------- matching
def hungarian_match(weights: Any, *, maximize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    r"""The one-to-one assignment of rows to columns with the largest (or smallest) total weight.

    A thin, checked wrapper of :func:`scipy.optimize.linear_sum_assignment` (the Hungarian
    algorithm): it returns ``rows, cols`` with ``rows`` sorted, pairing ``min(R, C)`` rows with distinct
    columns so that :math:`\sum_i W_{\text{rows}_i, \text{cols}_i}` is maximal (``maximize=True``) or
    minimal.

    :param weights: a finite matrix ``(R, C)`` (rectangular allowed).
    :param bool maximize: maximise (default) or minimise the total weight.
    :returns: ``(rows, cols)``, integer arrays of length ``min(R, C)``.

    >>> hungarian_match([[0.1, 0.9], [0.8, 0.2]])
    (array([0, 1]), array([1, 0]))
    """
    from scipy.optimize import linear_sum_assignment

    matrix = _to_numpy(weights, "weights").astype(np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"weights must be a non-empty matrix (R, C), got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("weights must be finite")
    rows, cols = linear_sum_assignment(matrix, maximize=maximize)
    return rows, cols


# ---------------------------------------------------------------------------------------------- R^2
def linear_r2(
    z_hat: Any,
    z_true: Any,
    *,
    fit_intercept: bool = True,
    multioutput: str = "uniform_average",
    return_prediction: bool = False,
) -> float | np.ndarray | tuple[float | np.ndarray, np.ndarray]:
    r"""Coefficient of determination of the least-squares affine map from ``z_hat`` to ``z_true``.

    Fits :class:`sklearn.linear_model.LinearRegression` of :math:`z` (``z_true``, the targets) on
    :math:`\hat z` (``z_hat``, the regressors) and scores it in-sample with
    :func:`sklearn.metrics.r2_score`:

    .. math::

        R^2_d = 1 - \frac{\sum_n (z_{nd} - \tilde z_{nd})^2}{\sum_n (z_{nd} - \bar z_d)^2},
        \qquad \tilde z = \hat z A + b,

    averaged over the D true dimensions (``multioutput="uniform_average"``, the ``cl-ica``
    convention), weighted by their variances (``"variance_weighted"``) or returned per dimension
    (``"raw_values"``). :math:`R^2 = 1` iff the true latents are an exact affine function of the
    learned ones. The regression direction matters: regressing the truth on the estimate rewards
    an estimate that *contains* the truth, even with extra dimensions.

    :param z_hat: learned latents, ``(N, K)`` or ``(N,)``.
    :param z_true: true latents, ``(N, D)`` or ``(N,)``.
    :param bool fit_intercept: fit the offset :math:`b` (affine map); ``False`` fits a linear map
        through the origin (the :math:`R^2` then still uses the centred total sum of squares).
    :param str multioutput: ``"uniform_average"``, ``"variance_weighted"`` or ``"raw_values"``.
    :param bool return_prediction: also return :math:`\tilde z`, the fitted ``(N, D)`` prediction of
        ``z_true`` (the learned latents mapped into the true coordinates), e.g. for plotting.
    :returns: the :math:`R^2` (a float, or an array ``(D,)`` with ``"raw_values"``), and the
        prediction if ``return_prediction``.
    :raises ValueError: on shape mismatches, non-finite values, a constant column of ``z_true``,
        or ``N <= K + fit_intercept`` samples (the regression would interpolate: :math:`R^2 = 1`
        whatever the data).

    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(100, 2))
    >>> round(linear_r2(z @ np.array([[2.0, 1.0], [0.0, -1.0]]) + 3.0, z), 6)
    1.0
    """
    LinearRegression = require("sklearn.linear_model", "linear_r2").LinearRegression
    r2_score = require("sklearn.metrics", "linear_r2").r2_score

    if multioutput not in ("uniform_average", "variance_weighted", "raw_values"):
        raise ValueError(
            f"multioutput must be 'uniform_average', 'variance_weighted' or 'raw_values', got {multioutput!r}"
        )
    z_hat, z_true = _check_pair(z_hat, z_true)
    num_params = z_hat.shape[1] + int(bool(fit_intercept))
    if z_hat.shape[0] <= num_params:
        raise ValueError(
            f"too few samples: linear_r2 needs more samples than regression coefficients ({num_params} for "
            f"z_hat with {z_hat.shape[1]} dimension(s){' and an intercept' if fit_intercept else ''}), got "
            f"{z_hat.shape[0]}"
        )
    _check_not_constant(z_true, "z_true")
    regression = LinearRegression(fit_intercept=fit_intercept).fit(z_hat, z_true)
    prediction = regression.predict(z_hat)
    score = r2_score(z_true, prediction, multioutput=multioutput)
    score = np.asarray(score, dtype=np.float64) if multioutput == "raw_values" else float(score)
    if return_prediction:
        return score, prediction
    return score


# ---------------------------------------------------------------------------------------------- MCC
def _ranks(array: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(array, axis=0)


def correlation_matrix(z_hat: Any, z_true: Any, *, method: str = "pearson") -> np.ndarray:
    r"""Correlations between every true and every learned dimension.

    :math:`C_{dk} = \operatorname{corr}(z_{\cdot d}, \hat z_{\cdot k})`, Pearson's on the values or
    Spearman's (Pearson's on the ranks, ties averaged).

    :param z_hat: learned latents, ``(N, K)``.
    :param z_true: true latents, ``(N, D)``.
    :param str method: ``"pearson"`` or ``"spearman"``.
    :returns: the matrix ``(D, K)``.
    :raises ValueError: on shape mismatches, non-finite values, fewer than 2 samples or a constant
        column (whose correlation is undefined).
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    z_hat, z_true = _check_pair(z_hat, z_true)
    if z_hat.shape[0] < 2:
        raise ValueError(f"too few samples: a correlation needs at least 2 samples, got {z_hat.shape[0]}")
    _check_not_constant(z_hat, "z_hat")
    _check_not_constant(z_true, "z_true")
    if method == "spearman":
        z_hat, z_true = _ranks(z_hat), _ranks(z_true)
    a = z_true - z_true.mean(0)
    b = z_hat - z_hat.mean(0)
    a /= np.linalg.norm(a, axis=0)
    b /= np.linalg.norm(b, axis=0)
    return np.clip(a.T @ b, -1.0, 1.0)


def mcc(
    z_hat: Any,
    z_true: Any,
    *,
    method: str = "pearson",
    return_matching: bool = False,
) -> float | tuple[float, np.ndarray]:
    r"""Mean correlation coefficient after the best one-to-one matching of dimensions.

    With :math:`C` the correlation matrix of :func:`correlation_matrix` (true dimensions by
    learned dimensions), the Hungarian algorithm (:func:`hungarian_match`) finds the injective
    matching :math:`\pi` that maximises :math:`\sum_d |C_{d \pi(d)}|`, and

    .. math::

        \mathrm{MCC} = \frac{1}{\min(D, K)} \sum_{d} |C_{d \pi(d)}| \in [0, 1].

    MCC is 1 iff each true dimension is an exact affine (Pearson) or strictly monotone (Spearman)
    function of a distinct learned dimension: it is invariant to permutations, signs and
    per-dimension scalings, but not to rotations. With ``D != K`` only ``min(D, K)`` pairs are
    matched.

    :param z_hat: learned latents, ``(N, K)``.
    :param z_true: true latents, ``(N, D)``.
    :param str method: ``"pearson"`` (the ``cl-ica`` convention) or ``"spearman"``.
    :param bool return_matching: also return ``matching``, an integer array ``(D,)`` whose entry d is
        the learned dimension matched to true dimension d (-1 if unmatched).
    :returns: the MCC, and the matching if ``return_matching``.

    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(200, 3))
    >>> value, matching = mcc(-2.0 * z[:, [2, 0, 1]], z, return_matching=True)
    >>> round(value, 12), matching
    (1.0, array([1, 2, 0]))
    """
    corr = correlation_matrix(z_hat, z_true, method=method)
    rows, cols = hungarian_match(np.abs(corr), maximize=True)
    value = float(np.abs(corr[rows, cols]).mean())
    if return_matching:
        matching = np.full(corr.shape[0], -1, dtype=np.int64)
        matching[rows] = cols
        return value, matching
    return value


# ---------------------------------------------------------------------------------------------- clustering
def _as_labels(value: Any, name: str) -> np.ndarray:
    array = _to_numpy(value, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector of integer labels (num_samples,), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if array.dtype == bool:
        array = array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite integer labels, but it contains NaN or infinite values")
        if not (array == np.round(array)).all():
            raise ValueError(f"{name} must hold integer labels, got non-integer values")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise ValueError(f"{name} must hold labels >= 0, got minimum {int(array.min())}")
    return array


def cluster_accuracy(
    pred: Any,
    labels: Any,
    num_classes: int | None = None,
    *,
    return_mapping: bool = False,
) -> float | tuple[float, np.ndarray]:
    r"""Clustering accuracy after the best one-to-one relabelling of the clusters.

    With the contingency table :math:`T_{ck} = \#\{n : \text{pred}_n = c, \text{labels}_n = k\}`,
    the Hungarian algorithm finds the injective map :math:`\sigma` from clusters to classes that
    maximises the matched count, and

    .. math::

        \mathrm{ACC} = \frac{1}{N} \max_\sigma \sum_c T_{c \sigma(c)} .

    Clusters left unmatched (more clusters than classes, or the reverse) count as errors.

    :param pred: predicted cluster of each sample, integers ``>= 0``, shape ``(N,)``.
    :param labels: true class of each sample, integers ``>= 0``, shape ``(N,)``.
    :param int num_classes: number of clusters and classes K (table ``K x K``); by default the
        table is ``(max(pred) + 1) x (max(labels) + 1)``.
    :param bool return_mapping: also return ``mapping``, an integer array whose entry c is the class
        matched to cluster c (-1 if unmatched).
    :returns: the accuracy in [0, 1], and the mapping if ``return_mapping``.

    >>> cluster_accuracy([1, 1, 0, 0, 2], [0, 0, 1, 1, 2])
    1.0
    """
    pred, labels = _as_labels(pred, "pred"), _as_labels(labels, "labels")
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same length, got {pred.shape[0]} and {labels.shape[0]}")
    num_pred, num_true = int(pred.max()) + 1, int(labels.max()) + 1
    if num_classes is not None:
        check_int(num_classes, "num_classes", integral=True, expected="a positive int")
        if num_classes < max(num_pred, num_true):
            raise ValueError(
                f"num_classes={num_classes} is smaller than the largest label + 1 ({max(num_pred, num_true)})"
            )
        num_pred = num_true = int(num_classes)
    table = np.zeros((num_pred, num_true), dtype=np.int64)
    np.add.at(table, (pred, labels), 1)
    rows, cols = hungarian_match(table, maximize=True)
    accuracy = float(table[rows, cols].sum() / pred.shape[0])
    if return_mapping:
        mapping = np.full(num_pred, -1, dtype=np.int64)
        mapping[rows] = cols
        return accuracy, mapping
    return accuracy
