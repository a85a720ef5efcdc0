# SPDX-License-Identifier: Apache-2.0
r"""The interface of Gaussian priors over whole latent trajectories, with exact conjugate posteriors.

A :class:`ConjugateGaussianSequence` is a distribution over a trajectory :math:`Z = z_{1:T}`,
:math:`z_t \in \mathbb R^D`, laid out **time-major**: ``event_shape == (T, D)``, so a batch of N
trajectories has shape ``(N, T, D)`` and ``Z[n, t]`` is the latent of step t of sequence n.
Beyond sampling and ``log_prob`` it offers

* :meth:`~ConjugateGaussianSequence.posterior`: the exact posterior given diagonal Gaussian
  *pseudo-observations* :math:`g_t(z_t) = \exp(h_t^\top z_t - \tfrac12 z_t^\top \operatorname{diag}(\lambda_t) z_t)`,

  .. math::

      q(Z) \propto p(Z) \prod_{t=1}^{T} g_t(z_t),

  again a distribution over ``(T, D)`` with reparameterised samples;
* :meth:`~ConjugateGaussianSequence.marginal_natural_params`: the natural parameters of the
  prior's one-step marginals :math:`p_t(z_t)`, when these are diagonal.

:class:`~pyro_rpm.guides.conjugate.ConjugateGaussianGuide` uses both to build the tied
posterior of a time-series RPM (see there).
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

from .._validation import capturing, check_finite, check_tensor

__all__ = ["ConjugateGaussianSequence", "DenseGaussianTrajectory", "check_pseudo_observations"]


class ConjugateGaussianSequence(TorchDistribution):
    """Base class: a Gaussian over trajectories ``(T, D)`` with a closed-form conjugate posterior."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    @property
    def num_steps(self) -> int:
        """T, the number of time steps."""
        return self.event_shape[0]

    @property
    def latent_dim(self) -> int:
        """D, the dimension of each :math:`z_t`."""
        return self.event_shape[1]

    def posterior(self, eta1: torch.Tensor, precision: torch.Tensor) -> ConjugateGaussianSequence:  # pragma: no cover
        r"""The exact posterior :math:`q(Z) \propto p(Z) \prod_t g_t(z_t)`.

        :param torch.Tensor eta1: :math:`h_t`, shape ``(..., T, D)``.
        :param torch.Tensor precision: :math:`\lambda_t \ge 0`, shape ``(..., T, D)``.
        """
        raise NotImplementedError

    def marginal_natural_params(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        r"""``(eta1, precision)`` of the diagonal marginals :math:`p_t(z_t)`, each ``batch_shape + (T, D)``.

        :raises ValueError: if the marginals are not diagonal Gaussians.
        """
        raise NotImplementedError

    @property
    def unexpanded(self) -> ConjugateGaussianSequence:
        """This distribution before any :meth:`expand` (e.g. by plates).

        Its :meth:`posterior` broadcasts against the pseudo-observations only, so a guide that samples
        inside the plates does not compute one posterior per (identical) particle.
        """
        root = getattr(self, "_unexpanded", None)
        return self if root is None else root

    def placeholder(self) -> torch.Tensor:
        """A cheap value in the support (the mean), used when a guide traces the model privately."""
        return self.mean.detach()

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


def check_pseudo_observations(
    eta1: torch.Tensor, precision: torch.Tensor, num_steps: int, latent_dim: int, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check pseudo-observation natural parameters; return them broadcast to a common shape."""
    check_tensor(eta1, "eta1")
    check_tensor(precision, "precision")
    for value, name in ((eta1, "eta1"), (precision, "precision")):
        if value.dim() < 2 or value.shape[-2:] != (num_steps, latent_dim):
            raise ValueError(
                f"{name} must have shape (..., T, D) = (..., {num_steps}, {latent_dim}), got {tuple(value.shape)}"
            )
        if value.dtype != reference.dtype or value.device != reference.device:
            raise ValueError(
                f"{name} has dtype {value.dtype} on {value.device} but the prior has dtype {reference.dtype} on "
                f"{reference.device}; convert one of them"
            )
        check_finite(value, name)
    if not capturing() and bool((precision < 0).any()):
        raise ValueError(f"precision (of the pseudo-observations) must be >= 0, got min {precision.min().item():.3g}")
    eta1, precision = torch.broadcast_tensors(eta1, precision)
    return eta1, precision


class DenseGaussianTrajectory(ConjugateGaussianSequence):
    r"""A Gaussian over trajectories with a full :math:`TD \times TD` precision matrix.

    The trajectory is flattened row-major (``Z.flatten(-2)``, step by step) and parameterised by
    its mean :math:`\mu` and the Cholesky factor :math:`L` of its precision,
    :math:`\Omega = L L^\top`. Samples are :math:`\mu + L^{-\top}\epsilon` and
    :math:`\log q(z) = -\tfrac12 \lVert L^\top (z - \mu)\rVert^2 + \sum_i \log L_{ii} - \tfrac{TD}2 \log 2\pi`:
    one triangular solve or product per draw, so the exact posterior of a Gaussian Markov chain
    costs one batched Cholesky factorisation of its block-tridiagonal precision.

    :param torch.Tensor loc: mean, shape ``(..., T, D)``.
    :param torch.Tensor precision_tril: :math:`L`, shape ``(..., TD, TD)``, lower triangular with a
        positive diagonal.
    """

    def __init__(self, loc: torch.Tensor, precision_tril: torch.Tensor, *, validate_args: bool | None = None) -> None:
        check_tensor(loc, "loc")
        check_tensor(precision_tril, "precision_tril")
        if loc.dim() < 2:
            raise ValueError(f"loc must have shape (..., T, D), got {tuple(loc.shape)}")
        T, D = loc.shape[-2:]
        if precision_tril.dim() < 2 or precision_tril.shape[-2:] != (T * D, T * D):
            raise ValueError(
                f"precision_tril must have shape (..., {T * D}, {T * D}), got {tuple(precision_tril.shape)}"
            )
        batch_shape = torch.broadcast_shapes(loc.shape[:-2], precision_tril.shape[:-2])
        self.loc = loc.expand(batch_shape + (T, D))
        self.precision_tril = precision_tril
        super().__init__(batch_shape, torch.Size((T, D)), validate_args=False)

    @classmethod
    def from_natural(cls, eta: torch.Tensor, precision: torch.Tensor, num_steps: int) -> DenseGaussianTrajectory:
        r"""From natural parameters :math:`\eta = \Omega\mu` (``(..., TD)``) and precision :math:`\Omega` (``(..., TD, TD)``)."""
        tril, info = torch.linalg.cholesky_ex(precision)
        if not capturing() and bool((info != 0).any()):  # a host sync: not while a graph is recorded
            raise ValueError(f"the posterior precision is not positive definite in {precision.dtype}")
        loc = torch.cholesky_solve(eta.unsqueeze(-1), tril).squeeze(-1)
        return cls(loc.unflatten(-1, (num_steps, -1)), tril, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = DenseGaussianTrajectory(
            self.loc.expand(torch.Size(batch_shape) + self.event_shape), self.precision_tril, validate_args=False
        )
        new._unexpanded = self.unexpanded
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def covariance_matrix(self) -> torch.Tensor:
        r"""The covariance :math:`\Omega^{-1}` of the flattened trajectory, ``batch + (TD, TD)`` (computed on demand)."""
        return torch.cholesky_inverse(self.precision_tril).expand(self.batch_shape + self.precision_tril.shape[-2:])

    @property
    def variance(self) -> torch.Tensor:
        return self.covariance_matrix.diagonal(dim1=-2, dim2=-1).unflatten(-1, tuple(self.event_shape))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = self.precision_tril.shape[-1]
        eps = torch.randn(shape + (n, 1), dtype=self.loc.dtype, device=self.loc.device)
        upper = self.precision_tril.transpose(-1, -2).expand(shape + (n, n))
        noise = torch.linalg.solve_triangular(upper, eps, upper=True).squeeze(-1)
        return self.loc + noise.unflatten(-1, tuple(self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() < 2 or value.shape[-2:] != self.event_shape:
            raise ValueError(
                f"value must end with the event shape (T, D) = {tuple(self.event_shape)}, got {tuple(value.shape)}"
            )
        diff = (value - self.loc).flatten(-2)
        white = (self.precision_tril.transpose(-1, -2) @ diff.unsqueeze(-1)).squeeze(-1)
        n = diff.shape[-1]
        half_log_det = self.precision_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * white.pow(2).sum(-1) + half_log_det - 0.5 * n * math.log(2 * math.pi)

    def marginal_natural_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("a DenseGaussianTrajectory has no diagonal marginals in general; use reference='none'")

    def posterior(self, eta1: torch.Tensor, precision: torch.Tensor) -> DenseGaussianTrajectory:
        T, D = self.event_shape
        eta1, precision = check_pseudo_observations(eta1, precision, T, D, self.loc)
        omega = self.precision_tril @ self.precision_tril.transpose(-1, -2)
        eta = (omega @ self.loc.flatten(-2).unsqueeze(-1)).squeeze(-1) + eta1.flatten(-2)
        return DenseGaussianTrajectory.from_natural(eta, omega + torch.diag_embed(precision.flatten(-2)), T)
