# SPDX-License-Identifier: Apache-2.0
r"""Gaussian-process priors over latent trajectories (independent GPs per latent dimension).

:class:`GaussianProcessPrior` puts an independent GP on each latent dimension d over the time
points :math:`t_1 < \dots < t_T` of a sequence,

.. math::

    z_{\cdot d} \sim \mathcal N\big(m_d(t_{1:T}),\; K_d + \epsilon I\big), \qquad
    (K_d)_{ij} = k_d(t_i, t_j),

with a stationary kernel (:mod:`pyro_rpm.priors.kernels`: RBF, Matérn 1/2, 3/2, 5/2), a learnable
lengthscale, a scale fixed at 1 by default (so every marginal is :math:`\mathcal N(m_d(t), 1)`,
matching ``GaussianRecognition(prior_scale=1.0)``), jitter :math:`\epsilon`, and an optional
learned mean function (:class:`KernelSmoothedMean`). It is an ordinary Pyro program::

    gp = GaussianProcessPrior(latent_dim=2, kernel="matern32", lengthscale=5.0)
    with pyro.plate("sequences", N):
        z = gp("z", times)            # pyro.sample("z", gp.distribution(times)), shape (N, T, D)

**Sparse option** (``inducing_times=u``, M points): the FITC prior

.. math::

    v_d \sim \mathcal N(0, I_M), \qquad
    z_{td} \mid v_d \sim \mathcal N\big(m_d(t) + w_{td}^\top v_d,\; \delta_{td}\big)
    \text{ independently over } t,

with :math:`W_d = K_{d,tu} L_{d,uu}^{-\top}` (:math:`L_{d,uu}` the Cholesky factor of
:math:`K_{d,uu} + \epsilon I`) and :math:`\delta_{td} = k_d(t, t) - \lVert w_{td}\rVert^2 + \epsilon`.
Integrating :math:`v` gives :math:`z_{\cdot d} \sim \mathcal N(m_d, W_d W_d^\top + \operatorname{diag}\delta_d)`,
a low-rank-plus-diagonal Gaussian: its density, samples and conjugate posterior cost
:math:`O(T M^2)` instead of :math:`O(T^3)`, and it keeps the exact marginals
:math:`\mathcal N(m_d(t), k_d(t, t) + \epsilon)`. With the inducing points at all the time points it
is the dense GP (up to the jitter).

**Conjugate posterior.** Both forms are :math:`\mathcal N(m, W W^\top + \operatorname{diag}\delta)`
per dimension (dense: :math:`W = L`, :math:`\delta = 0`). Given diagonal Gaussian
pseudo-observations :math:`g_t(z_t) = \exp(h_t z_t - \tfrac12 \lambda_t z_t^2)` (per dimension),
with :math:`h' = h - \lambda m`, :math:`\hat\lambda = \lambda / (1 + \delta\lambda)`,
:math:`\hat h = h' / (1 + \delta\lambda)`:

.. math::

    q(v) = \mathcal N\big(\Sigma_v W^\top \hat h,\; \Sigma_v\big), \quad
    \Sigma_v^{-1} = I + W^\top \operatorname{diag}(\hat\lambda) W = R R^\top, \qquad
    q(z) = \mathcal N\big(m + \tfrac{\delta h'}{1 + \delta\lambda} + B\,\mathbb E_q[v],\;
    B \Sigma_v B^\top + \operatorname{diag}\tfrac{\delta}{1 + \delta\lambda}\big),

with :math:`B = \operatorname{diag}(1 + \delta\lambda)^{-1} W`. This is exact (integrating each
:math:`z_t` against its own pseudo-observation is one-dimensional). In the dense case the
covariance :math:`L R^{-\top} R^{-1} L^\top` is never formed: its Cholesky factor comes from a QR
decomposition of :math:`R^{-1} L^\top`, which stays accurate when :math:`K` is ill-conditioned.
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .._learnable import set_learnable
from .._pyro import register_module
from .._validation import capturing, check_finite, check_float_type, check_int, check_positive, check_tensor
from .gaussian_sequence import ConjugateGaussianSequence, check_pseudo_observations
from .kernels import Kernel, make_kernel

__all__ = ["GaussianProcessPrior", "GaussianProcessSequence", "KernelSmoothedMean", "check_times"]

_COUNTER = itertools.count()


def check_times(times: torch.Tensor | int, name: str = "times") -> torch.Tensor:
    """Return ``times`` (shape ``(..., T)``) after checking it is finite, floating and strictly increasing.

    An int T stands for ``arange(T)`` in the default dtype.
    """
    if isinstance(times, int) and not isinstance(times, bool):
        if times < 1:
            raise ValueError(f"{name} as an int (the number of steps) must be >= 1, got {times}")
        return torch.arange(times, dtype=torch.get_default_dtype())
    check_tensor(times, name)
    if not times.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {times.dtype}")
    if times.dim() < 1 or times.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., T) with T >= 1, got {tuple(times.shape)}")
    check_finite(times, name)
    if times.shape[-1] > 1 and not capturing() and not bool((times[..., 1:] > times[..., :-1]).all()):
        raise ValueError(f"{name} must be strictly increasing along the last dimension (sorted, no repeats)")
    return times


def _cholesky(matrix: torch.Tensor, what: str) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if not capturing() and bool((info != 0).any()):  # a host sync: not while a graph is recorded
        raise ValueError(
            f"{what} is not positive definite in {matrix.dtype}; increase jitter, shorten the lengthscale or "
            "use float64 times"
        )
    return factor


class KernelSmoothedMean(nn.Module):
    r"""A learned mean function :math:`m_d(t) = \sum_k \exp\big(-(t - \tau_k)^2 / 2\ell^2\big)\, w_{kd}`.

    The weights :math:`w` (shape ``(K, D)``, initialised at 0) are learned; the anchor times
    :math:`\tau_k` and the smoothing lengthscale :math:`\ell` are fixed (RP-GPFA's prior mean).

    :param torch.Tensor anchor_times: :math:`\tau`, shape ``(K,)``.
    :param int latent_dim: D.
    :param float lengthscale: :math:`\ell > 0` (default: twice the mean anchor spacing).
    """

    def __init__(self, anchor_times: torch.Tensor, latent_dim: int, lengthscale: float | None = None) -> None:
        super().__init__()
        anchor_times = check_times(anchor_times, "anchor_times")
        if anchor_times.dim() != 1:
            raise ValueError(f"anchor_times must be one-dimensional, got shape {tuple(anchor_times.shape)}")
        check_int(latent_dim, "latent_dim", expected="a positive int")
        if lengthscale is None:
            span = float(anchor_times[-1] - anchor_times[0])
            lengthscale = 2 * span / max(len(anchor_times) - 1, 1) if span > 0 else 1.0
        check_positive(lengthscale, "lengthscale")
        self.register_buffer("anchor_times", anchor_times.detach().clone())
        self.lengthscale = float(lengthscale)
        self.weight = nn.Parameter(torch.zeros(len(anchor_times), latent_dim, dtype=anchor_times.dtype))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        """:math:`m(t)` at ``times`` of shape ``(..., T)``; returns ``(..., T, D)``."""
        anchors = self.anchor_times.to(times.dtype)
        basis = torch.exp(-0.5 * ((times.unsqueeze(-1) - anchors) / self.lengthscale) ** 2)  # (..., T, K)
        return basis @ self.weight.to(times.dtype)


class GaussianProcessSequence(ConjugateGaussianSequence):
    r"""Independent Gaussians per latent dimension over T time points, as trajectories ``(T, D)``.

    Per dimension d, :math:`z_{\cdot d} \sim \mathcal N(\mu_d, \Sigma_d)` with either

    * ``scale_tril`` :math:`L_d` (dense): :math:`\Sigma_d = L_d L_d^\top`; or
    * ``cov_factor`` :math:`W_d` and ``cov_diag`` :math:`\delta_d` (low rank plus diagonal):
      :math:`\Sigma_d = W_d W_d^\top + \operatorname{diag}\delta_d`.

    :param torch.Tensor loc: :math:`\mu`, shape ``(..., D, T)`` (dimension-major, like the kernel).
    :param torch.Tensor scale_tril: shape ``(..., D, T, T)``.
    :param torch.Tensor cov_factor: shape ``(..., D, T, M)``.
    :param torch.Tensor cov_diag: shape ``(..., D, T)``, > 0.

    Samples, ``mean`` and ``log_prob`` values are time-major, ``(..., T, D)``. See
    :mod:`pyro_rpm.priors.gp` for :meth:`posterior`.
    """

    def __init__(
        self,
        loc: torch.Tensor,
        scale_tril: torch.Tensor | None = None,
        cov_factor: torch.Tensor | None = None,
        cov_diag: torch.Tensor | None = None,
        *,
        validate_args: bool | None = None,
    ) -> None:
        check_tensor(loc, "loc")
        if loc.dim() < 2:
            raise ValueError(f"loc must have shape (..., D, T), got {tuple(loc.shape)}")
        if (scale_tril is None) == (cov_factor is None) or (cov_factor is None) != (cov_diag is None):
            raise ValueError("give either scale_tril, or cov_factor and cov_diag")
        self.dense = scale_tril is not None
        if self.dense:
            self.base = dist.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=validate_args)
            self._scale_tril = scale_tril
        else:
            self.base = dist.LowRankMultivariateNormal(loc, cov_factor, cov_diag, validate_args=validate_args)
            self._cov_factor, self._cov_diag = cov_factor, cov_diag
        self.loc = self.base.loc
        batch = self.base.batch_shape
        if len(batch) < 1:
            raise ValueError(f"loc must have shape (..., D, T), got {tuple(loc.shape)}")
        super().__init__(batch[:-1], torch.Size((self.base.event_shape[0], batch[-1])), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        T, D = self.event_shape
        loc = self.loc.expand(batch_shape + (D, T))
        if self.dense:
            new = GaussianProcessSequence(loc, scale_tril=self._scale_tril, validate_args=False)
        else:
            new = GaussianProcessSequence(
                loc, cov_factor=self._cov_factor, cov_diag=self._cov_diag, validate_args=False
            )
        new._unexpanded = self.unexpanded
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.transpose(-1, -2)

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance.transpose(-1, -2)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.rsample(torch.Size(sample_shape)).transpose(-1, -2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() < 2 or value.shape[-2:] != self.event_shape:
            raise ValueError(
                f"value must end with the event shape (T, D) = {tuple(self.event_shape)}, got {tuple(value.shape)}"
            )
        return self.base.log_prob(value.transpose(-1, -2)).sum(-1)

    def marginal_natural_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Natural parameters of the marginals :math:`\\mathcal N(\\mu_{dt}, \\Sigma_{d,tt})`, ``batch + (T, D)``."""
        if self.dense:
            var = self._scale_tril.pow(2).sum(-1)
        else:
            var = self._cov_factor.pow(2).sum(-1) + self._cov_diag
        precision = var.reciprocal()
        eta1 = self.loc * precision
        shape = self.batch_shape + self.event_shape
        return eta1.transpose(-1, -2).expand(shape), precision.expand_as(self.loc).transpose(-1, -2).expand(shape)

    def posterior(self, eta1: torch.Tensor, precision: torch.Tensor) -> GaussianProcessSequence:
        r"""Exact posterior given pseudo-observations ``(eta1, precision)`` of shape ``(..., T, D)``."""
        T, D = self.event_shape
        eta1, precision = check_pseudo_observations(eta1, precision, T, D, self.loc)
        h = eta1.transpose(-1, -2)  # (..., D, T)
        lam = precision.transpose(-1, -2)
        h_res = h - lam * self.loc  # pseudo-observation of the residual z - loc
        if self.dense:
            L = self._scale_tril
            Lt = L.transpose(-1, -2)
            eye = torch.eye(T, dtype=L.dtype, device=L.device)
            C = eye + (Lt * lam.unsqueeze(-2)) @ L  # I + L^T diag(lam) L
            R = _cholesky(C, "the posterior's whitened precision I + L^T diag(lambda) L")
            mu_v = torch.cholesky_solve((Lt @ h_res.unsqueeze(-1)), R)
            loc = self.loc + (L @ mu_v).squeeze(-1)
            root_t = torch.linalg.solve_triangular(R, Lt.expand(R.shape), upper=False)  # R^{-1} L^T
            upper = torch.linalg.qr(root_t, mode="reduced").R  # root_t^T root_t = upper^T upper
            signs = torch.sign(upper.diagonal(dim1=-2, dim2=-1))
            signs = torch.where(signs == 0, torch.ones_like(signs), signs)
            scale_tril = (upper * signs.unsqueeze(-1)).transpose(-1, -2)
            return GaussianProcessSequence(loc, scale_tril=scale_tril, validate_args=False)
        W, delta = self._cov_factor, self._cov_diag
        M = W.shape[-1]
        denom = 1 + delta * lam
        lam_hat = lam / denom
        h_hat = h_res / denom
        Wt = W.transpose(-1, -2)
        eye = torch.eye(M, dtype=W.dtype, device=W.device)
        C = eye + (Wt * lam_hat.unsqueeze(-2)) @ W
        R = _cholesky(C, "the posterior precision of the inducing values I + W^T diag(lambda) W")
        mu_v = torch.cholesky_solve(Wt @ h_hat.unsqueeze(-1), R)
        B = W / denom.unsqueeze(-1)
        loc = self.loc + delta * h_res / denom + (B @ mu_v).squeeze(-1)
        factor = torch.linalg.solve_triangular(R, B.transpose(-1, -2), upper=False).transpose(-1, -2)
        return GaussianProcessSequence(loc, cov_factor=factor, cov_diag=delta / denom, validate_args=False)


class GaussianProcessPrior(nn.Module):
    r"""Independent GP priors per latent dimension over the time points of each sequence.

    See :mod:`pyro_rpm.priors.gp`. Calling ``prior(name, times)`` inside a model samples the
    trajectory site ``name`` (shape ``batch + (T, D)``); its parameters (lengthscale, learned mean,
    inducing times) register with Pyro's parameter store under ``name=`` like a recognition module.

    :param int latent_dim: D.
    :param kernel: ``"rbf"``, ``"matern12"``, ``"matern32"``, ``"matern52"`` or a
        :class:`~pyro_rpm.priors.kernels.Kernel` instance.
    :param lengthscale: initial lengthscale (float or ``(D,)``), in the units of ``times``.
    :param scale: the kernel's standard deviation (default 1: unit marginals).
    :param bool learn_lengthscale: learn the lengthscale (default ``True``).
    :param bool learn_scale: learn the scale (default ``False``).
    :param float jitter: :math:`\epsilon` added to the kernel diagonal (default ``1e-6``; use float64
        times for long, smooth RBF kernels, or a larger jitter in float32).
    :param torch.nn.Module mean: optional mean function mapping times ``(..., T)`` to ``(..., T, D)``,
        e.g. :class:`KernelSmoothedMean` (default: zero mean).
    :param torch.Tensor inducing_times: ``(M,)`` inducing times for the sparse (FITC) prior.
    :param bool learn_inducing: learn the inducing times.
    :param str name: parameter-store name.

    Example::

        >>> from pyro_rpm.priors.gp import GaussianProcessPrior
        >>> gp = GaussianProcessPrior(2, "matern32", lengthscale=5.0)
        >>> with pyro.plate("sequences", 3):
        ...     z = gp("z", torch.arange(10.0))
        >>> z.shape
        torch.Size([3, 10, 2])
        >>> q = gp.distribution(torch.arange(10.0)).posterior(torch.zeros(3, 10, 2), torch.ones(3, 10, 2))
        >>> q.batch_shape, q.event_shape
        (torch.Size([3]), torch.Size([10, 2]))
    """

    def __init__(
        self,
        latent_dim: int,
        kernel: str | Kernel = "rbf",
        *,
        lengthscale: float | torch.Tensor = 1.0,
        scale: float | torch.Tensor = 1.0,
        learn_lengthscale: bool = True,
        learn_scale: bool = False,
        jitter: float = 1e-6,
        mean: nn.Module | None = None,
        inducing_times: torch.Tensor | None = None,
        learn_inducing: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        check_int(latent_dim, "latent_dim", expected="a positive int")
        if isinstance(kernel, Kernel):
            if kernel.latent_dim != latent_dim:
                raise ValueError(f"kernel has latent_dim {kernel.latent_dim}, but latent_dim={latent_dim}")
        else:
            kernel = make_kernel(
                kernel,
                latent_dim,
                lengthscale=lengthscale,
                scale=scale,
                learn_lengthscale=learn_lengthscale,
                learn_scale=learn_scale,
            )
        check_float_type(jitter, "jitter")
        check_positive(jitter, "jitter")
        if mean is not None and not callable(mean):
            raise TypeError(f"mean must be a callable (e.g. an nn.Module), got {type(mean).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.latent_dim = latent_dim
        self.kernel = kernel
        self.jitter = float(jitter)
        self.mean = mean
        self.name = name if name is not None else f"gaussian_process_prior_{next(_COUNTER)}"
        if inducing_times is None:
            self.inducing_times = None
        else:
            inducing = check_tensor(inducing_times, "inducing_times")
            if inducing.dim() != 1 or inducing.shape[0] < 1 or not inducing.is_floating_point():
                raise ValueError(
                    f"inducing_times must be a 1-D float tensor of M >= 1 times, got {tuple(inducing.shape)}"
                )
            check_finite(inducing, "inducing_times")
            if inducing.shape[0] > 1 and bool((inducing.sort().values.diff() == 0).any()):
                raise ValueError("inducing_times must be distinct")
            inducing = inducing.detach().clone()
            set_learnable(self, "inducing_times", inducing, learn_inducing)

    @property
    def sparse(self) -> bool:
        """Whether the prior is the sparse (inducing-point) form."""
        return self.inducing_times is not None

    def _mean(self, times: torch.Tensor) -> torch.Tensor:
        D = self.latent_dim
        if self.mean is None:
            return times.new_zeros(times.shape[:-1] + (D, times.shape[-1]))
        m = self.mean(times)
        if not isinstance(m, torch.Tensor) or m.shape[-2:] != (times.shape[-1], D):
            raise ValueError(
                f"mean must map times of shape (..., T) to (..., T, D) = (..., {times.shape[-1]}, {D}), got "
                f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}"
            )
        return m.to(times.dtype).transpose(-1, -2)

    def distribution(self, times: torch.Tensor | int) -> GaussianProcessSequence:
        """The prior over trajectories at ``times`` (shape ``(..., T)``, or an int T for ``arange(T)``)."""
        times = check_times(times)
        loc = self._mean(times)
        T = times.shape[-1]
        if not self.sparse:
            eye = torch.eye(T, dtype=times.dtype, device=times.device)
            K = self.kernel(times) + self.jitter * eye
            L = _cholesky(K, "the kernel matrix K + jitter I")
            return GaussianProcessSequence(loc.expand(L.shape[:-1]), scale_tril=L)
        u = self.inducing_times.to(times.dtype)
        eye = torch.eye(u.shape[0], dtype=times.dtype, device=times.device)
        L_uu = _cholesky(self.kernel(u) + self.jitter * eye, "the inducing kernel matrix K_uu + jitter I")
        K_ut = self.kernel(u, times)  # (..., D, M, T)
        W = torch.linalg.solve_triangular(L_uu, K_ut, upper=False).transpose(-1, -2)  # (..., D, T, M)
        delta = (self.kernel.variance(times) - W.pow(2).sum(-1)).clamp(min=0) + self.jitter
        return GaussianProcessSequence(loc.expand(delta.shape), cov_factor=W, cov_diag=delta)

    def forward(self, name: str, times: torch.Tensor | int) -> torch.Tensor:
        """``pyro.sample(name, self.distribution(times))``, registering the prior's parameters.

        The times are checked before anything is registered, so bad input leaves Pyro's parameter
        store unchanged.
        """
        times = check_times(times)
        register_module(self.name, self)
        return pyro.sample(name, self.distribution(times))
