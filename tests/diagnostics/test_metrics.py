# SPDX-License-Identifier: Apache-2.0
"""Tests of :mod:`pyro_rpm.diagnostics.metrics` against hand-computed values and brute force.

* ``linear_r2``: exact affine maps give 1; a 4-point case against the closed forms
  :math:`R^2 = S_{xy}^2/(S_{xx}S_{yy})` (with intercept) and :math:`1 - SS_{res}/SS_{tot}` (through the
  origin); random multi-output cases against a NumPy least-squares implementation of
  :math:`1 - SS_{res}/SS_{tot}`; the returned prediction is the least-squares fit;
* ``mcc``: permutations, sign flips and scalings give 1 (Pearson), monotone maps give 1 (Spearman,
  not Pearson); random cases against brute force over all permutations with ``np.corrcoef``;
* ``hungarian_match`` and ``cluster_accuracy``: a case where the greedy matching is wrong, a
  hand-counted contingency table, brute force over all relabellings;
* bad input raises errors naming the argument.
"""

import itertools

import numpy as np
import pytest
import torch

from pyro_rpm.diagnostics.metrics import cluster_accuracy, correlation_matrix, hungarian_match, linear_r2, mcc


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------- R^2
def test_r2_exact_affine_map_is_one():
    z = _rng().normal(size=(200, 3))
    A = np.array([[2.0, 0.5, 0.0], [-1.0, 1.0, 0.3], [0.0, 0.0, -4.0]])
    z_hat = (z - 1.0) @ np.linalg.inv(A)  # z = z_hat A + 1: the truth is affine in the estimate
    assert linear_r2(z_hat, z) == pytest.approx(1.0, abs=1e-12)
    # extra (useless) learned dimensions do not hurt when regressing the truth on the estimate
    assert linear_r2(np.c_[z_hat, _rng(1).normal(size=(200, 2))], z) == pytest.approx(1.0, abs=1e-12)


def test_r2_hand_computed_one_dimensional_case():
    x = [0.0, 1.0, 2.0, 3.0]
    y = [0.0, 2.0, 1.0, 3.0]
    # with intercept: S_xy = 4, S_xx = S_yy = 5, R^2 = S_xy^2 / (S_xx S_yy) = 16/25
    assert linear_r2(x, y) == pytest.approx(16 / 25, abs=1e-12)
    # through the origin: slope = sum(xy)/sum(x^2) = 13/14, SS_res = 378/196, SS_tot = 5
    assert linear_r2(x, y, fit_intercept=False) == pytest.approx(1 - (378 / 196) / 5, abs=1e-12)
    assert linear_r2(x, y, fit_intercept=False) == pytest.approx(43 / 70, abs=1e-12)
    _, prediction = linear_r2(x, y, return_prediction=True)
    np.testing.assert_allclose(prediction[:, 0], 1.5 + 0.8 * (np.array(x) - 1.5), atol=1e-12)


def _r2_reference(z_hat, z_true, fit_intercept=True):
    """1 - SS_res / SS_tot per dimension, with the least-squares fit from numpy.linalg.lstsq."""
    design = np.c_[z_hat, np.ones(len(z_hat))] if fit_intercept else z_hat
    coef, *_ = np.linalg.lstsq(design, z_true, rcond=None)
    residual = z_true - design @ coef
    ss_res = (residual**2).sum(0)
    ss_tot = ((z_true - z_true.mean(0)) ** 2).sum(0)
    return 1 - ss_res / ss_tot, design @ coef


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_r2_matches_least_squares_formula(seed, fit_intercept):
    rng = _rng(seed)
    z_true = rng.normal(size=(50, 3)) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
    z_hat = np.tanh(z_true @ rng.normal(size=(3, 4))) + 0.3 * rng.normal(size=(50, 4))
    per_dim, prediction = _r2_reference(z_hat, z_true, fit_intercept)
    assert linear_r2(z_hat, z_true, fit_intercept=fit_intercept) == pytest.approx(per_dim.mean(), abs=1e-10)
    raw, fitted = linear_r2(
        z_hat, z_true, fit_intercept=fit_intercept, multioutput="raw_values", return_prediction=True
    )
    np.testing.assert_allclose(raw, per_dim, atol=1e-10)
    np.testing.assert_allclose(fitted, prediction, atol=1e-10)
    weights = z_true.var(0)
    weighted = linear_r2(z_hat, z_true, fit_intercept=fit_intercept, multioutput="variance_weighted")
    assert weighted == pytest.approx((per_dim * weights).sum() / weights.sum(), abs=1e-10)


def test_r2_accepts_torch_tensors_with_grad():
    z = torch.randn(100, 2, dtype=torch.float64)
    z_hat = (2 * z + 1).requires_grad_()
    assert linear_r2(z_hat, z) == pytest.approx(1.0, abs=1e-12)
    assert isinstance(linear_r2(z_hat, z), float)


def test_r2_errors():
    z = _rng().normal(size=(10, 2))
    with pytest.raises(ValueError, match="same number of samples"):
        linear_r2(z, z[:9])
    bad = z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="z_hat must be finite.*1 NaN"):
        linear_r2(bad, z)
    with pytest.raises(ValueError, match="z_true must be finite"):
        linear_r2(z, np.where(bad == bad, bad, np.inf))
    with pytest.raises(ValueError, match="too few samples"):
        linear_r2(z[:3], z[:3])  # 3 samples, 2 slopes + intercept: the fit interpolates
    assert linear_r2(z[:4], z[:4]) == pytest.approx(1.0)  # 4 samples are enough to be defined
    with pytest.raises(ValueError, match="constant column"):
        linear_r2(z, np.c_[z[:, 0], np.ones(10)])
    with pytest.raises(ValueError, match="multioutput"):
        linear_r2(z, z, multioutput="mean")
    with pytest.raises(ValueError, match=r"shape \(num_samples, num_dims\)"):
        linear_r2(np.zeros((4, 2, 2)), z[:4])
    with pytest.raises(TypeError, match="z_hat must hold numbers"):
        linear_r2(np.array(["a", "b"]), [1.0, 2.0])


# ---------------------------------------------------------------------------------------------- MCC
def test_mcc_invariant_to_permutation_sign_and_scale():
    z = _rng().normal(size=(300, 4))
    z_hat = z[:, [2, 0, 3, 1]] * np.array([-3.0, 0.5, 2.0, -1.0]) + 7.0
    value, matching = mcc(z_hat, z, return_matching=True)
    assert value == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(matching, [1, 3, 0, 2])
    assert mcc(z_hat, z, method="spearman") == pytest.approx(1.0, abs=1e-12)


def test_mcc_spearman_sees_monotone_maps_pearson_does_not():
    z = _rng().normal(size=(500, 2))
    z_hat = np.c_[np.exp(2 * z[:, 1]), z[:, 0] ** 3]
    assert mcc(z_hat, z, method="spearman") == pytest.approx(1.0, abs=1e-12)
    assert mcc(z_hat, z, method="pearson") < 0.9


def _mcc_brute_force(z_hat, z_true):
    D = z_true.shape[1]
    C = np.corrcoef(z_true.T, z_hat.T)[:D, D:]
    return max(np.mean([abs(C[d, p[d]]) for d in range(D)]) for p in itertools.permutations(range(z_hat.shape[1]), D))


@pytest.mark.parametrize("seed", range(4))
def test_mcc_matches_brute_force(seed):
    rng = _rng(seed)
    z = rng.normal(size=(40, 4))
    z_hat = z @ rng.normal(size=(4, 4)) + 0.5 * rng.normal(size=(40, 4))  # a mixed, noisy estimate
    assert mcc(z_hat, z) == pytest.approx(_mcc_brute_force(z_hat, z), abs=1e-12)
    np.testing.assert_allclose(correlation_matrix(z_hat, z), np.corrcoef(z.T, z_hat.T)[:4, 4:], atol=1e-12)
    # rectangular: 3 true dimensions, 5 learned ones
    z_hat5 = np.c_[z_hat, rng.normal(size=(40, 1))]
    assert mcc(z_hat5, z[:, :3]) == pytest.approx(_mcc_brute_force(z_hat5, z[:, :3]), abs=1e-12)


def test_mcc_errors():
    z = _rng().normal(size=(10, 2))
    with pytest.raises(ValueError, match="method"):
        mcc(z, z, method="kendall")
    with pytest.raises(ValueError, match="z_hat has constant column"):
        mcc(np.c_[z[:, 0], np.zeros(10)], z)
    with pytest.raises(ValueError, match="too few samples"):
        mcc(z[:1], z[:1])
    with pytest.raises(ValueError, match="same number of samples"):
        mcc(z, z[:5])


# ---------------------------------------------------------------------------------------------- matching
def test_hungarian_beats_greedy():
    weights = np.array([[0.9, 0.8], [0.85, 0.1]])  # greedy takes 0.9 then 0.1 (total 1.0); optimum 1.65
    rows, cols = hungarian_match(weights)
    np.testing.assert_array_equal(rows, [0, 1])
    np.testing.assert_array_equal(cols, [1, 0])
    rows, cols = hungarian_match(weights, maximize=False)
    assert weights[rows, cols].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights must be a non-empty matrix"):
        hungarian_match(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        hungarian_match([[np.nan, 1.0]])


def test_cluster_accuracy_permuted_labels_is_one():
    labels = _rng().integers(0, 5, size=100)
    permutation = np.array([3, 0, 4, 1, 2])
    value, mapping = cluster_accuracy(permutation[labels], labels, return_mapping=True)
    assert value == 1.0
    np.testing.assert_array_equal(mapping[permutation], np.arange(5))  # cluster permutation[k] -> class k
    assert cluster_accuracy(torch.as_tensor(permutation[labels]), torch.as_tensor(labels)) == 1.0


def test_cluster_accuracy_hand_counted():
    pred = [0, 0, 0, 1, 1, 2, 2, 2]
    labels = [1, 1, 0, 0, 0, 2, 2, 1]
    # table (pred x class): row 0 = [1, 2, 0], row 1 = [2, 0, 0], row 2 = [0, 1, 2]
    # best relabelling 0->1, 1->0, 2->2 matches 2 + 2 + 2 = 6 of 8
    value, mapping = cluster_accuracy(pred, labels, return_mapping=True)
    assert value == pytest.approx(6 / 8)
    np.testing.assert_array_equal(mapping, [1, 0, 2])
    # more clusters than classes: the unmatched clusters are errors
    assert cluster_accuracy([0, 1, 2, 3], [0, 0, 1, 1]) == pytest.approx(2 / 4)
    # a padded table (num_classes) changes nothing
    assert cluster_accuracy(pred, labels, num_classes=6) == pytest.approx(6 / 8)


@pytest.mark.parametrize("seed", range(3))
def test_cluster_accuracy_matches_brute_force(seed):
    rng = _rng(seed)
    labels = rng.integers(0, 4, size=60)
    pred = np.where(rng.random(60) < 0.6, (labels + 1) % 4, rng.integers(0, 4, size=60))
    best = max(np.mean(np.array(p)[pred] == labels) for p in itertools.permutations(range(4)))
    assert cluster_accuracy(pred, labels, num_classes=4) == pytest.approx(best)


def test_cluster_accuracy_errors():
    with pytest.raises(ValueError, match="same length"):
        cluster_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="pred must hold integer labels"):
        cluster_accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="labels must hold labels >= 0"):
        cluster_accuracy([0, 1], [0, -1])
    with pytest.raises(ValueError, match="num_classes=2 is smaller"):
        cluster_accuracy([0, 2], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        cluster_accuracy([0, 1], [0, 1], num_classes=0)
    with pytest.raises(ValueError, match="vector of integer labels"):
        cluster_accuracy([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="NaN"):
        cluster_accuracy([0.0, np.nan], [0, 1])
