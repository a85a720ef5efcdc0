# SPDX-License-Identifier: Apache-2.0
r"""A post-hoc smoother for per-frame embeddings: a linear-Gaussian state-space model fitted by EM.

The strong baseline against a whole-sequence prior: take embeddings :math:`y_t` that an encoder
computed one frame at a time, fit

.. math::

    s_t = A s_{t-1} + w_t,\quad w_t \sim \mathcal N(0, Q), \qquad
    y_t = s_t + v_t,\quad v_t \sim \mathcal N(0, R), \qquad s_1 \sim \mathcal N(m_0, P_0),

to them by expectation-maximisation (Shumway & Stoffer 1982; :math:`A` full, :math:`Q` full,
:math:`R` diagonal, the observation matrix fixed to the identity because the embedding space is the
state space), and return the Rauch-Tung-Striebel smoothed means :math:`\mathbb E[s_t \mid y_{1:T}]`.
Frames marked missing (e.g. known occlusions: the baseline gets every advantage) are skipped by
the filter, so their estimates are interpolated from the neighbours. Float64 NumPy throughout.

Example::

    >>> import numpy as np
    >>> y = np.cumsum(np.random.default_rng(0).normal(size=(2, 50, 3)), axis=1)
    >>> smoothed = lgssm_smooth(y, iterations=5)
    >>> smoothed.shape
    (2, 50, 3)
"""

from __future__ import annotations

import numpy as np

from .._validation import check_int

__all__ = ["lgssm_smooth"]


def _smooth(y, observed, A, Q, R, m0, P0):
    """Kalman filter + RTS smoother for every sequence; returns means, covariances, lag-one covariances."""
    N, T, D = y.shape
    eye = np.eye(D)
    mf = np.zeros((N, T, D))
    Pf = np.zeros((N, T, D, D))
    mp = np.zeros((N, T, D))
    Pp = np.zeros((N, T, D, D))
    m, P = np.broadcast_to(m0, (N, D)).copy(), np.broadcast_to(P0, (N, D, D)).copy()
    for t in range(T):
        if t > 0:
            m = m @ A.T
            P = A @ P @ A.T + Q
        mp[:, t], Pp[:, t] = m, P
        S = P + R
        K = np.linalg.solve(S, P).transpose(0, 2, 1)  # P S^-1 (P, S symmetric)
        seen = observed[:, t][:, None]
        m = np.where(seen, m + np.einsum("nij,nj->ni", K, y[:, t] - m), m)
        P = np.where(seen[..., None], (eye - K) @ P, P)
        mf[:, t], Pf[:, t] = m, P
    ms, Ps = mf.copy(), Pf.copy()
    lag = np.zeros((N, T, D, D))  # Cov(s_t, s_{t-1} | y)
    for t in range(T - 2, -1, -1):
        J = np.linalg.solve(Pp[:, t + 1], A @ Pf[:, t]).transpose(0, 2, 1)  # Pf A^T Pp^-1
        ms[:, t] = mf[:, t] + np.einsum("nij,nj->ni", J, ms[:, t + 1] - mp[:, t + 1])
        Ps[:, t] = Pf[:, t] + J @ (Ps[:, t + 1] - Pp[:, t + 1]) @ J.transpose(0, 2, 1)
        lag[:, t + 1] = Ps[:, t + 1] @ J.transpose(0, 2, 1)
    return ms, Ps, lag


def lgssm_smooth(
    embeddings: np.ndarray, missing: np.ndarray | None = None, *, iterations: int = 30
) -> np.ndarray:
    r"""Fit the state-space model of the module docstring to ``embeddings`` by EM and smooth them.

    :param embeddings: array ``(N, T, D)`` (or a torch tensor): N sequences of T embeddings.
    :param missing: optional boolean ``(N, T)``, ``True`` for frames the filter should skip.
    :param int iterations: EM iterations.
    :returns: the smoothed means, ``(N, T, D)`` float64.
    """
    y = np.asarray(getattr(embeddings, "detach", lambda: embeddings)(), dtype=np.float64)
    if y.ndim != 3 or y.shape[1] < 2:
        raise ValueError(f"embeddings must have shape (N, T, D) with T >= 2, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("embeddings must be finite")
    N, T, D = y.shape
    if missing is None:
        observed = np.ones((N, T), dtype=bool)
    else:
        observed = ~np.asarray(getattr(missing, "detach", lambda: missing)(), dtype=bool)
        if observed.shape != (N, T):
            raise ValueError(f"missing must have shape {(N, T)}, got {observed.shape}")
        if not observed.any():
            raise ValueError("missing marks every frame: nothing to fit")
    iterations = check_int(iterations, "iterations", integral=True)
    seen = y[observed]
    var = seen.var(0) + 1e-6
    A, Q, R = np.eye(D), np.diag(0.1 * var), np.diag(0.1 * var)
    m0, P0 = seen.mean(0), np.diag(var)
    for _ in range(iterations):
        ms, Ps, lag = _smooth(y, observed, A, Q, R, m0, P0)
        Ess = Ps + ms[..., :, None] * ms[..., None, :]  # E[s_t s_t^T]
        previous = np.roll(ms, 1, axis=1)  # previous[:, t] = ms[:, t - 1]; t = 0 is not used
        Elag = lag + ms[..., :, None] * previous[..., None, :]  # E[s_t s_{t-1}^T]
        S11 = Ess[:, 1:].sum((0, 1))
        S00 = Ess[:, :-1].sum((0, 1))
        S10 = Elag[:, 1:].sum((0, 1))
        A = np.linalg.solve(S00.T, S10.T).T
        Q = (S11 - A @ S10.T) / (N * (T - 1))
        Q = 0.5 * (Q + Q.T) + 1e-9 * np.eye(D)
        resid = (y - ms) ** 2 + np.diagonal(Ps, axis1=-2, axis2=-1)
        R = np.diag(resid[observed].mean(0) + 1e-9)
        m0 = ms[:, 0].mean(0)
        P0 = Ess[:, 0].mean(0) - np.outer(m0, m0) + 1e-9 * np.eye(D)
    return _smooth(y, observed, A, Q, R, m0, P0)[0]
