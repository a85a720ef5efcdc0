# SPDX-License-Identifier: Apache-2.0
r"""Correlated Gaussian pairs: :mod:`pyro_rpm.datasets.gaussian_pairs`.

The generator claims :math:`x \sim \mathcal N(0, I_d)`, :math:`x' = \rho x + \sqrt{1-\rho^2}\,\epsilon` and
:math:`I(x; x') = -\frac d2 \log(1-\rho^2)`. Checked against independent references:

* the MI formula against :math:`H(x) + H(x') - H(x, x')` from :mod:`scipy.stats` entropies of the
  population covariance;
* the sample moments (means, variances, per-dimension correlation :math:`\rho`, zero cross-dimension
  correlation) within a few standard errors;
* the marginal and the conditional residual :math:`(x' - \rho x)/\sqrt{1-\rho^2}` against
  :math:`\mathcal N(0, 1)` by Kolmogorov–Smirnov tests;
* the MI against a plug-in Gaussian estimate from the sample covariance and against the
  nonparametric Kraskov (KSG) estimator of :func:`sklearn.feature_selection.mutual_info_regression`.

Also: shapes, dtypes, seeding, untouched global RNG, :func:`rho_for_mi` inverting the MI, and errors.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_rpm.datasets.gaussian_pairs import correlated_gaussian_pairs, gaussian_pairs_mi, rho_for_mi


def _entropy_mi(rho: float, dim: int) -> float:
    """H(x) + H(x') - H(x, x') of the population covariance, by scipy."""
    eye = np.eye(dim)
    joint = np.block([[eye, rho * eye], [rho * eye, eye]])
    h_marginal = stats.multivariate_normal(np.zeros(dim), eye).entropy()
    return 2 * h_marginal - stats.multivariate_normal(np.zeros(2 * dim), joint).entropy()


@pytest.mark.parametrize("rho, dim", [(0.0, 1), (0.5, 1), (-0.7, 3), (0.9, 2), (0.99, 4), (0.9999, 2)])
def test_mi_formula_matches_gaussian_entropies(rho, dim):
    _, _, mi = correlated_gaussian_pairs(3, dim, rho)
    assert mi == pytest.approx(_entropy_mi(rho, dim), rel=1e-9, abs=1e-12)
    assert mi == gaussian_pairs_mi(rho, dim)


@pytest.mark.parametrize("mi, dim", [(0.0, 1), (0.3, 1), (5.0, 2), (8.0, 4), (20.0, 2)])
def test_rho_for_mi_inverts_the_formula(mi, dim):
    rho = rho_for_mi(mi, dim)
    assert 0.0 <= rho < 1.0
    assert gaussian_pairs_mi(rho, dim) == pytest.approx(mi, rel=1e-6, abs=1e-12)  # rho near 1 loses digits


def test_shapes_dtypes_and_seeding():
    x, x2, mi = correlated_gaussian_pairs(17, 3, 0.4, seed=5)
    assert x.shape == x2.shape == (17, 3) and x.dtype == x2.dtype == torch.float32
    assert isinstance(mi, float)
    y, y2, _ = correlated_gaussian_pairs(17, 3, 0.4, seed=5, dtype=torch.float64)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.float(), x)
    a, a2, _ = correlated_gaussian_pairs(17, 3, 0.4, seed=5)
    assert torch.equal(a, x) and torch.equal(a2, x2)
    b, _, _ = correlated_gaussian_pairs(17, 3, 0.4, seed=6)
    assert not torch.equal(b, x)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    correlated_gaussian_pairs(100, 2, 0.5, seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("rho", [0.8, -0.6, 0.0])
def test_moments(rho):
    n, dim = 200_000, 3
    x, x2, _ = correlated_gaussian_pairs(n, dim, rho, seed=11, dtype=torch.float64)
    x, x2 = x.numpy(), x2.numpy()
    for view in (x, x2):
        assert np.abs(view.mean(0)).max() < 5 / math.sqrt(n)
        assert np.abs(view.var(0) - 1).max() < 5 * math.sqrt(2 / n)
    corr = np.corrcoef(np.concatenate([x, x2], axis=1), rowvar=False)
    cross = corr[:dim, dim:]
    se_rho = (1 - rho**2) / math.sqrt(n)  # standard error of a sample correlation
    assert np.abs(np.diag(cross) - rho).max() < 5 * se_rho + 1e-12
    off = cross - np.diag(np.diag(cross))
    assert np.abs(off).max() < 5 / math.sqrt(n)  # independent coordinates
    within = corr[:dim, :dim] - np.eye(dim)
    assert np.abs(within).max() < 5 / math.sqrt(n)


@pytest.mark.parametrize("rho", [0.5, 0.999])
def test_marginal_and_conditional_are_standard_normal(rho):
    x, x2, _ = correlated_gaussian_pairs(20_000, 2, rho, seed=3, dtype=torch.float64)
    residual = (x2 - rho * x) / math.sqrt(1 - rho**2)
    for sample in (x[:, 0], x2[:, 1], residual[:, 0], residual[:, 1]):
        assert stats.kstest(sample.numpy(), "norm").pvalue > 1e-3
    # the residual is independent of x (zero correlation)
    assert abs(np.corrcoef(x[:, 0].numpy(), residual[:, 0].numpy())[0, 1]) < 5 / math.sqrt(20_000)


@pytest.mark.parametrize("rho, dim", [(0.6, 1), (0.95, 2), (0.999, 3)])
def test_plug_in_gaussian_mi_estimate(rho, dim):
    """The MI of the Gaussian with the sample covariance, 1/2 (log|S11| + log|S22| - log|S|), is close to the formula."""
    n = 100_000
    x, x2, mi = correlated_gaussian_pairs(n, dim, rho, seed=2, dtype=torch.float64)
    cov = np.cov(np.concatenate([x.numpy(), x2.numpy()], axis=1), rowvar=False)
    logdet = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    estimate = 0.5 * (logdet(cov[:dim, :dim]) + logdet(cov[dim:, dim:]) - logdet(cov))
    # delta method: the estimate has standard deviation about sqrt(d rho^2 / n) <= 0.0055 here, bias O(d^2 / n)
    assert estimate == pytest.approx(mi, abs=0.02 + 0.01 * mi)


def test_nonparametric_ksg_mi_estimate():
    """Kraskov's k-nearest-neighbour estimator (no Gaussian assumption) recovers the MI in one dimension."""
    feature_selection = pytest.importorskip("sklearn.feature_selection")
    for rho in (0.5, 0.9):
        x, x2, mi = correlated_gaussian_pairs(5000, 1, rho, seed=4, dtype=torch.float64)
        estimate = feature_selection.mutual_info_regression(x.numpy(), x2[:, 0].numpy(), n_neighbors=5, random_state=0)
        assert float(estimate[0]) == pytest.approx(mi, abs=0.05), f"rho={rho}: KSG {estimate[0]:.4f} vs {mi:.4f}"


def test_extreme_correlation_is_stable():
    rho = 1 - 1e-9
    x, x2, mi = correlated_gaussian_pairs(1000, 2, rho, seed=0, dtype=torch.float64)
    assert math.isfinite(mi) and mi == pytest.approx(-(math.log(1e-9) + math.log(2 - 1e-9)), rel=1e-6)
    assert bool(torch.isfinite(x2).all())
    residual_std = float((x2 - rho * x).std())
    assert residual_std == pytest.approx(math.sqrt(1 - rho**2), rel=0.1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n=0, dim=2, rho=0.5), ValueError, "n must be a positive int"),
        (dict(n=2.0, dim=2, rho=0.5), ValueError, "n must be a positive int"),
        (dict(n=5, dim=0, rho=0.5), ValueError, "dim must be a positive int"),
        (dict(n=5, dim=2, rho=1.0), ValueError, "rho must lie strictly between -1 and 1"),
        (dict(n=5, dim=2, rho=-1.0), ValueError, "rho must lie strictly between -1 and 1"),
        (dict(n=5, dim=2, rho=float("nan")), ValueError, "rho must lie strictly between -1 and 1"),
        (dict(n=5, dim=2, rho="0.5"), TypeError, "rho must be a float"),
        (dict(n=5, dim=2, rho=0.5, seed=1.5), TypeError, "seed must be an int"),
        (dict(n=5, dim=2, rho=0.5, dtype=torch.int64), TypeError, "dtype must be a floating"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        correlated_gaussian_pairs(**kwargs)


def test_rho_for_mi_bad_arguments():
    with pytest.raises(ValueError, match="mi must be a finite float >= 0"):
        rho_for_mi(-1.0, 2)
    with pytest.raises(ValueError, match="mi must be a finite float >= 0"):
        rho_for_mi(float("inf"), 2)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        rho_for_mi(1.0, 0)
