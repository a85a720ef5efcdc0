# SPDX-License-Identifier: Apache-2.0
r"""Gaussian Markov chains over trajectories of shape ``(T, D)``, and their exact conjugate posteriors.

:class:`GaussianMarkovChain` is the distribution behind
:class:`~pyro_rpm.priors.state_space.LinearGaussianStateSpacePrior` (import both from
:mod:`pyro_rpm.priors.state_space`):

.. math::

    z_1 \sim \mathcal N(\mu, L L^\top), \qquad z_t \mid z_{t-1} \sim \mathcal N(A_t z_{t-1} + b_t, S_t S_t^\top),

or the same from the last step backwards (``reverse=True``, the form of a posterior).

**Kalman posterior** (``posterior_method="kalman"``). Given diagonal Gaussian pseudo-observations
:math:`g_t(z_t) = \exp(h_t^\top z_t - \tfrac12 z_t^\top \Lambda_t z_t)`, a Kalman filter gives the
filtered moments :math:`(m_t, P_t)`; with :math:`S = \Lambda_t^{1/2}` and the prediction
:math:`(m^-, P^-)`, the Joseph-form update

.. math::

    K = P^- S (I + S P^- S)^{-1}, \quad P = (I - K S) P^- (I - K S)^\top + K K^\top, \quad
    m = m^- + P (h_t - \Lambda_t m^-)

stays positive definite and allows :math:`\lambda = 0`. The posterior is the reverse chain

.. math::

    q(z_T) = \mathcal N(m_T, P_T), \qquad
    q(z_t \mid z_{t+1}) = \mathcal N\big(m_t + J_t (z_{t+1} - A m_t),\;
    (I - J_t A) P_t (I - J_t A)^\top + J_t Q J_t^\top\big),
    \quad J_t = P_t A^\top (A P_t A^\top + Q)^{-1},

sampled backwards (reparameterised); its ``mean`` is the Rauch--Tung--Striebel smoothed mean.

**Dense posterior** (``posterior_method="dense"``). The chain's precision over the flattened
trajectory is block tridiagonal (:meth:`GaussianMarkovChain.natural_params`); the
pseudo-observations add :math:`\operatorname{diag}(\lambda)`, and one batched Cholesky
factorisation gives a :class:`~pyro_rpm.priors.gaussian_sequence.DenseGaussianTrajectory`.
``"auto"`` picks it when :math:`TD \le` ``DENSE_MAX_SIZE``. Both forms are exact.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .._validation import capturing, check_tensor
from .gaussian_sequence import ConjugateGaussianSequence, DenseGaussianTrajectory, check_pseudo_observations

__all__ = ["DENSE_MAX_SIZE", "POSTERIOR_METHODS", "GaussianMarkovChain"]

#: How :meth:`GaussianMarkovChain.posterior` is computed: ``"kalman"`` (filter + backward
#: conditionals, O(T D^3), a loop over T), ``"dense"`` (one Cholesky factorisation of the
#: block-tridiagonal TD x TD posterior precision, O((TD)^3) but a few large batched operations) or
#: ``"auto"`` (dense when T * D <= DENSE_MAX_SIZE = 160). Both are exact.
POSTERIOR_METHODS = ("auto", "kalman", "dense")
DENSE_MAX_SIZE = 160


def _cholesky(matrix: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factor of ``matrix``; a ValueError naming ``what`` if it is not positive definite."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if not capturing() and bool((info != 0).any()):  # a host sync: not while a graph is recorded
        raise ValueError(f"{what} is not positive definite in {matrix.dtype}; use float64 or a larger jitter")
    return factor


def _symmetrise(matrix: torch.Tensor) -> torch.Tensor:
    """:math:`(M + M^\\top) / 2`, removing the rounding asymmetry of a covariance."""
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product ``matrix @ vector``."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


class GaussianMarkovChain(ConjugateGaussianSequence):
    r"""A Gaussian Markov chain over T steps, as one trajectory of shape ``(T, D)``.

    Forward (``reverse=False``): :math:`z_1 \sim \mathcal N(\mu, L L^\top)`,
    :math:`z_t \mid z_{t-1} \sim \mathcal N(A_t z_{t-1} + b_t, S_t S_t^\top)`.
    Reverse (``reverse=True``): the same from the last step backwards,
    :math:`z_T \sim \mathcal N(\mu, L L^\top)`, :math:`z_t \mid z_{t+1} \sim \mathcal N(A_t z_{t+1} + b_t, S_t S_t^\top)`.

    :param torch.Tensor init_loc: :math:`\mu`, shape ``(..., D)``.
    :param torch.Tensor init_scale_tril: :math:`L`, shape ``(..., D, D)``.
    :param torch.Tensor trans_matrix: :math:`A_t`, shape ``(..., T-1, D, D)`` (entry t links steps t and t+1).
    :param torch.Tensor trans_offset: :math:`b_t`, shape ``(..., T-1, D)``.
    :param torch.Tensor trans_scale_tril: :math:`S_t`, shape ``(..., T-1, D, D)``.
    :param bool reverse: the direction of the chain.
    :param marginal: optional ``(loc, variance)`` of known diagonal marginals, each ``(..., T, D)``
        (used by :meth:`marginal_natural_params`).
    :param str posterior_method: one of :data:`POSTERIOR_METHODS` (default ``"auto"``).
    """

    def __init__(
        self,
        init_loc: torch.Tensor,
        init_scale_tril: torch.Tensor,
        trans_matrix: torch.Tensor,
        trans_offset: torch.Tensor,
        trans_scale_tril: torch.Tensor,
        *,
        reverse: bool = False,
        marginal: tuple[torch.Tensor, torch.Tensor] | None = None,
        posterior_method: str = "auto",
        validate_args: bool | None = None,
    ) -> None:
        if posterior_method not in POSTERIOR_METHODS:
            raise ValueError(f"posterior_method must be one of {POSTERIOR_METHODS}, got {posterior_method!r}")
        for value, name in (
            (init_loc, "init_loc"),
            (init_scale_tril, "init_scale_tril"),
            (trans_matrix, "trans_matrix"),
            (trans_offset, "trans_offset"),
            (trans_scale_tril, "trans_scale_tril"),
        ):
            check_tensor(value, name)
        D = init_loc.shape[-1] if init_loc.dim() else 0
        if D < 1 or init_scale_tril.shape[-2:] != (D, D):
            raise ValueError(
                f"init_loc must have shape (..., D) and init_scale_tril (..., D, D), got {tuple(init_loc.shape)} "
                f"and {tuple(init_scale_tril.shape)}"
            )
        if trans_matrix.dim() < 3 or trans_matrix.shape[-2:] != (D, D):
            raise ValueError(
                f"trans_matrix must have shape (..., T-1, D, D) with D={D}, got {tuple(trans_matrix.shape)}"
            )
        steps = trans_matrix.shape[-3]
        if trans_offset.dim() < 2 or trans_offset.shape[-2:] != (steps, D):
            raise ValueError(
                f"trans_offset must have shape (..., T-1, D) = (..., {steps}, {D}), got {tuple(trans_offset.shape)}"
            )
        if trans_scale_tril.dim() < 3 or trans_scale_tril.shape[-3:] != (steps, D, D):
            raise ValueError(
                f"trans_scale_tril must have shape (..., T-1, D, D) = (..., {steps}, {D}, {D}), got "
                f"{tuple(trans_scale_tril.shape)}"
            )
        batch_shape = torch.broadcast_shapes(
            init_loc.shape[:-1],
            init_scale_tril.shape[:-2],
            trans_matrix.shape[:-3],
            trans_offset.shape[:-2],
            trans_scale_tril.shape[:-3],
        )
        self.init_loc, self.init_scale_tril = init_loc, init_scale_tril
        self.trans_matrix, self.trans_offset, self.trans_scale_tril = trans_matrix, trans_offset, trans_scale_tril
        self.reverse = bool(reverse)
        self._marginal = marginal
        self.posterior_method = posterior_method
        super().__init__(batch_shape, torch.Size((steps + 1, D)), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        T, D = self.event_shape
        marginal = None
        if self._marginal is not None:
            marginal = tuple(x.expand(batch_shape + (T, D)) for x in self._marginal)
        new = GaussianMarkovChain(
            self.init_loc.expand(batch_shape + (D,)),
            self.init_scale_tril,
            self.trans_matrix,
            self.trans_offset,
            self.trans_scale_tril,
            reverse=self.reverse,
            marginal=marginal,
            posterior_method=self.posterior_method,
        )
        new._unexpanded = self.unexpanded
        return new

    # ------------------------------------------------------------------ density and samples
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() < 2 or value.shape[-2:] != self.event_shape:
            raise ValueError(
                f"value must end with the event shape (T, D) = {tuple(self.event_shape)}, got {tuple(value.shape)}"
            )
        if self.reverse:  # z_T first, then z_t | z_{t+1}
            first, rest, given = value[..., -1, :], value[..., :-1, :], value[..., 1:, :]
        else:  # z_1 first, then z_t | z_{t-1}
            first, rest, given = value[..., 0, :], value[..., 1:, :], value[..., :-1, :]
        log_p = dist.MultivariateNormal(self.init_loc, scale_tril=self.init_scale_tril).log_prob(first)
        if self.num_steps > 1:
            loc = _matvec(self.trans_matrix, given) + self.trans_offset
            log_p = log_p + dist.MultivariateNormal(loc, scale_tril=self.trans_scale_tril).log_prob(rest).sum(-1)
        return log_p

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        T, D = self.event_shape
        eps = torch.randn(shape + (T, D), dtype=self.init_loc.dtype, device=self.init_loc.device)
        order = range(T - 1, -1, -1) if self.reverse else range(T)
        z = self.init_loc + _matvec(self.init_scale_tril, eps[..., order[0], :])
        steps = [z]
        for t in order[1:]:
            link = t if self.reverse else t - 1  # index of the transition that produces step t
            z = (
                _matvec(self.trans_matrix[..., link, :, :], z)
                + self.trans_offset[..., link, :]
                + _matvec(self.trans_scale_tril[..., link, :, :], eps[..., t, :])
            )
            steps.append(z)
        if self.reverse:
            steps = steps[::-1]
        return torch.stack([s.expand(shape + (D,)) for s in steps], dim=-2)

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        T, D = self.event_shape
        order = range(T - 1, -1, -1) if self.reverse else range(T)
        m = self.init_loc
        P = self.init_scale_tril @ self.init_scale_tril.transpose(-1, -2)
        means, covs = [m], [P]
        for t in order[1:]:
            link = t if self.reverse else t - 1
            A = self.trans_matrix[..., link, :, :]
            S = self.trans_scale_tril[..., link, :, :]
            m = _matvec(A, m) + self.trans_offset[..., link, :]
            P = A @ P @ A.transpose(-1, -2) + S @ S.transpose(-1, -2)
            means.append(m)
            covs.append(P)
        if self.reverse:
            means, covs = means[::-1], covs[::-1]
        shape = self.batch_shape
        means = torch.stack([x.expand(shape + (D,)) for x in means], -2)
        covs = torch.stack([x.expand(shape + (D, D)) for x in covs], -3)
        return means, covs

    @property
    def mean(self) -> torch.Tensor:
        """Marginal means :math:`\\mathbb E[z_t]`, shape ``batch + (T, D)`` (RTS smoothed means for a posterior)."""
        return self._moments()[0]

    @property
    def marginal_covariance(self) -> torch.Tensor:
        """Marginal covariances :math:`\\operatorname{Cov}[z_t]`, shape ``batch + (T, D, D)``."""
        return self._moments()[1]

    @property
    def variance(self) -> torch.Tensor:
        return self.marginal_covariance.diagonal(dim1=-2, dim2=-1)

    def placeholder(self) -> torch.Tensor:
        if self._marginal is not None:
            return self._marginal[0].detach().expand(self.batch_shape + self.event_shape)
        return self.mean.detach()

    def marginal_natural_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._marginal is None:
            raise ValueError(
                "this Gaussian Markov chain has no known diagonal marginals; use "
                "LinearGaussianStateSpacePrior(stationary=True) (marginals N(0, I)) or a guide with reference='none'"
            )
        loc, var = self._marginal
        precision = var.reciprocal()
        return loc * precision, precision

    # ------------------------------------------------------------------ conjugate posterior
    def natural_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Natural parameters of the forward chain as one Gaussian over the flattened trajectory.

        Returns :math:`(\eta, \Omega)` of shapes ``(..., TD)`` and ``(..., TD, TD)`` with
        :math:`p(Z) \propto \exp(\eta^\top \operatorname{vec} Z - \tfrac12 \operatorname{vec}Z^\top \Omega \operatorname{vec} Z)`;
        :math:`\Omega` is block tridiagonal: diagonal blocks :math:`P_1^{-1} + A^\top Q^{-1} A`, ...,
        :math:`Q^{-1} + A^\top Q^{-1} A`, :math:`Q^{-1}`, off-diagonal blocks :math:`-Q^{-1} A`.
        """
        if self.reverse:
            raise ValueError("natural_params() needs a forward chain")
        T, D = self.event_shape
        P0_inv = torch.cholesky_inverse(self.init_scale_tril)
        eta0 = _matvec(P0_inv, self.init_loc)
        if T == 1:
            return eta0, P0_inv
        A, b = self.trans_matrix, self.trans_offset
        Q_inv = torch.cholesky_inverse(self.trans_scale_tril)
        Q_inv_A = Q_inv @ A
        At_Q_inv_A = A.transpose(-1, -2) @ Q_inv_A
        Q_inv_b = _matvec(Q_inv, b)
        At_Q_inv_b = _matvec(A.transpose(-1, -2), Q_inv_b)
        blocks = torch.cat(
            [
                (P0_inv + At_Q_inv_A[..., 0, :, :]).unsqueeze(-3),
                Q_inv[..., :-1, :, :] + At_Q_inv_A[..., 1:, :, :],
                Q_inv[..., -1:, :, :],
            ],
            dim=-3,
        )  # (..., T, D, D)
        eta = torch.cat(
            [
                (eta0 - At_Q_inv_b[..., 0, :]).unsqueeze(-2),
                Q_inv_b[..., :-1, :] - At_Q_inv_b[..., 1:, :],
                Q_inv_b[..., -1:, :],
            ],
            dim=-2,
        )  # (..., T, D)
        eye = torch.eye(T, dtype=A.dtype, device=A.device)
        below = torch.eye(T, dtype=A.dtype, device=A.device)[1:]  # below[k, t] = [t == k + 1]
        above = eye[:-1]  # above[k, s] = [s == k]
        omega = torch.einsum("...tij,ts->...tisj", blocks, eye)
        lower = torch.einsum("...kij,kt,ks->...tisj", -Q_inv_A, below, above)  # block (k+1, k) = -Q^{-1} A
        omega = omega + lower + lower.permute(*range(lower.dim() - 4), -2, -1, -4, -3)
        return eta.flatten(-2), omega.reshape(omega.shape[:-4] + (T * D, T * D))

    def posterior(self, eta1: torch.Tensor, precision: torch.Tensor) -> ConjugateGaussianSequence:
        r"""Exact posterior given diagonal pseudo-observations ``(eta1, precision)`` of shape ``(..., T, D)``.

        ``"kalman"``: Kalman filtering, then the backward conditionals, returned as a reverse
        :class:`GaussianMarkovChain` (see :mod:`pyro_rpm.priors.state_space`). ``"dense"``: a
        :class:`~pyro_rpm.priors.gaussian_sequence.DenseGaussianTrajectory` from the Cholesky
        factorisation of :math:`\Omega + \operatorname{diag}(\lambda)` (:meth:`natural_params`).
        """
        if self.reverse:
            raise ValueError("posterior() needs a forward chain (a prior), not a posterior (reverse=True)")
        T, D = self.event_shape
        eta1, precision = check_pseudo_observations(eta1, precision, T, D, self.init_loc)
        method = self.posterior_method
        if method == "dense" or (method == "auto" and T * D <= DENSE_MAX_SIZE):
            eta, omega = self.natural_params()
            return DenseGaussianTrajectory.from_natural(
                eta + eta1.flatten(-2), omega + torch.diag_embed(precision.flatten(-2)), T
            )
        return self._kalman_posterior(eta1, precision)

    def _kalman_posterior(self, eta1: torch.Tensor, precision: torch.Tensor) -> GaussianMarkovChain:
        T, D = self.event_shape
        eye = torch.eye(D, dtype=self.init_loc.dtype, device=self.init_loc.device)
        root = precision.sqrt()
        m_pred = self.init_loc
        P_pred = self.init_scale_tril @ self.init_scale_tril.transpose(-1, -2)
        filtered: list[tuple[torch.Tensor, torch.Tensor]] = []
        links: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for t in range(T):
            if t > 0:
                A = self.trans_matrix[..., t - 1, :, :]
                S = self.trans_scale_tril[..., t - 1, :, :]
                Q = S @ S.transpose(-1, -2)
                m_prev, P_prev = filtered[-1]
                m_pred = _matvec(A, m_prev) + self.trans_offset[..., t - 1, :]
                P_pred = _symmetrise(A @ P_prev @ A.transpose(-1, -2) + Q)
                # backward conditional q(z_{t-1} | z_t): gain J = P A^T (P^-)^{-1}, Joseph-form covariance
                L_pred = _cholesky(P_pred, "the predicted covariance A P A^T + Q")
                J = torch.cholesky_solve(A @ P_prev, L_pred).transpose(-1, -2)
                I_JA = eye - J @ A
                cov = _symmetrise(I_JA @ P_prev @ I_JA.transpose(-1, -2) + J @ Q @ J.transpose(-1, -2))
                links.append((J, m_prev - _matvec(J, m_pred), cov))
            s = root[..., t, :]
            B = eye + s.unsqueeze(-1) * P_pred * s.unsqueeze(-2)
            L_B = _cholesky(B, "I + S P S")
            K = torch.cholesky_solve(s.unsqueeze(-1) * P_pred, L_B).transpose(-1, -2)  # P S B^{-1}
            I_KS = eye - K * s.unsqueeze(-2)
            P = _symmetrise(I_KS @ P_pred @ I_KS.transpose(-1, -2) + K @ K.transpose(-1, -2))
            m = m_pred + _matvec(P, eta1[..., t, :] - precision[..., t, :] * m_pred)
            filtered.append((m, P))
        m_last, P_last = filtered[-1]
        batch = torch.broadcast_shapes(self.batch_shape, eta1.shape[:-2])
        init_tril = _cholesky(P_last, "the filtered covariance").expand(batch + (D, D))
        if T == 1:
            no_links = m_last.new_zeros(batch + (0, D, D))
            return GaussianMarkovChain(
                m_last.expand(batch + (D,)), init_tril, no_links, no_links[..., 0], no_links, reverse=True
            )
        J = torch.stack([link[0].expand(batch + (D, D)) for link in links], -3)
        b = torch.stack([link[1].expand(batch + (D,)) for link in links], -2)
        S = _cholesky(torch.stack([link[2].expand(batch + (D, D)) for link in links], -3), "a backward covariance")
        return GaussianMarkovChain(m_last.expand(batch + (D,)), init_tril, J, b, S, reverse=True)
