# SPDX-License-Identifier: Apache-2.0
"""lgssm_smooth (issue 16's smoothed baseline), on data from a known linear-Gaussian state-space model."""

import numpy as np
import pytest

from pyro_rpm.diagnostics.smoothing import _smooth, lgssm_smooth


def _simulate(N=20, T=60, seed=0):
    rng = np.random.default_rng(seed)
    A = np.array([[0.95, 0.1], [-0.1, 0.95]])
    Q, R = 0.05 * np.eye(2), np.diag([0.5, 0.3])
    s = np.zeros((N, T, 2))
    s[:, 0] = rng.normal(size=(N, 2))
    for t in range(1, T):
        s[:, t] = s[:, t - 1] @ A.T + rng.multivariate_normal(np.zeros(2), Q, N)
    y = s + rng.normal(size=(N, T, 2)) * np.sqrt(np.diag(R))
    return s, y, A, Q, R


def test_em_smoother_is_close_to_the_oracle_and_far_better_than_raw():
    s, y, A, Q, R = _simulate()
    mse = lambda estimate: float(((estimate - s) ** 2).mean())  # noqa: E731
    oracle = _smooth(y, np.ones(y.shape[:2], bool), A, Q, R, np.zeros(2), np.eye(2))[0]
    fitted = lgssm_smooth(y, iterations=40)
    assert mse(fitted) < 1.1 * mse(oracle), (mse(fitted), mse(oracle))
    assert mse(fitted) < 0.5 * mse(y)


def test_missing_frames_are_interpolated_from_their_neighbours():
    s, y, *_ = _simulate(seed=1)
    missing = np.random.default_rng(2).random(y.shape[:2]) < 0.3
    corrupted = np.where(missing[..., None], 50.0, y)  # garbage where missing: must be ignored
    fitted = lgssm_smooth(corrupted, missing, iterations=30)
    error_missing = float(((fitted - s)[missing] ** 2).mean())
    assert error_missing < 0.5 * float((s[missing] ** 2).mean())  # far better than knowing nothing


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        lgssm_smooth(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        lgssm_smooth(np.full((1, 4, 2), np.nan))
    with pytest.raises(ValueError, match="missing"):
        lgssm_smooth(np.zeros((1, 4, 2)), np.zeros((1, 3), bool))
