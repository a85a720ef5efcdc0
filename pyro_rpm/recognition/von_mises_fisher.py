# SPDX-License-Identifier: Apache-2.0
r"""The directional family on the unit sphere: :class:`VonMisesFisherFactor` and :class:`VonMisesFisherRecognition`.

A von Mises-Fisher factor on :math:`S^{D-1} = \{z \in \mathbb R^D : \lVert z \rVert = 1\}` is

.. math::

    f(z \mid x_m) = C_D(\kappa_m) \exp(\kappa_m \mu_m^\top z), \qquad
    \log C_D(\kappa) = (D/2 - 1)\log\kappa - (D/2)\log 2\pi - \log I_{D/2-1}(\kappa),

with mean direction :math:`\mu_m` (a unit vector), concentration :math:`\kappa_m > 0` and
:math:`I_\nu` the modified Bessel function of the first kind (for :math:`D = 3`,
:math:`C_3(\kappa) = \kappa / (4\pi\sinh\kappa)`). :func:`log_bessel_iv` evaluates
:math:`\log I_\nu` in float64 through SciPy's exponentially scaled :func:`scipy.special.ive`
(accurate for small and large :math:`\kappa`), with the exact derivative
:math:`\partial_\kappa \log I_\nu(\kappa) = I_{\nu+1}(\kappa)/I_\nu(\kappa) + \nu/\kappa`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn
from torch.distributions import Distribution

from .._learnable import set_learnable
from .._validation import (
    check_finite,
    check_float_type,
    check_int,
    check_positive,
    check_same_device_and_dtype,
    check_tensor,
)
from ..normalisers import score_logsumexp
from .base import Factor, Recognition, use_dense

__all__ = [
    "VonMisesFisherFactor",
    "VonMisesFisherRecognition",
    "bessel_iv_ratio",
    "log_bessel_iv",
    "vmf_log_normaliser",
]


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(device="cpu", dtype=torch.float64).numpy()


def _log_iv_numpy(nu: float, k: np.ndarray) -> np.ndarray:
    """:math:`\\log I_\\nu(k)` in float64; the leading term of the series where ``ive`` underflows."""
    from scipy import special  # imported on first use: importing SciPy changes warning filters

    shape, k = k.shape, k.reshape(-1)
    with np.errstate(divide="ignore"):
        out = np.log(special.ive(nu, k)) + k
    small = ~np.isfinite(out) & (k > 0)
    if small.any():  # I_nu(k) ~ (k/2)^nu / Gamma(nu + 1) as k -> 0
        out[small] = nu * np.log(k[small] / 2) - special.gammaln(nu + 1)
    return out.reshape(shape)


def _iv_ratio_numpy(nu: float, k: np.ndarray) -> np.ndarray:
    """:math:`I_{\\nu+1}(k) / I_\\nu(k)` in float64 (the exponential scalings cancel)."""
    from scipy import special  # imported on first use: importing SciPy changes warning filters

    shape, k = k.shape, k.reshape(-1)
    num, den = special.ive(nu + 1, k), special.ive(nu, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    bad = ~np.isfinite(out) | (den == 0)
    if bad.any():  # small k: I_{nu+1}/I_nu ~ k / (2 (nu + 1))
        out[bad] = k[bad] / (2 * (nu + 1))
    return out.reshape(shape)


class _LogBesselIv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kappa: torch.Tensor, nu: float) -> torch.Tensor:
        k = _to_numpy(kappa)
        ctx.nu = nu
        ctx.save_for_backward(kappa)
        return torch.from_numpy(_log_iv_numpy(nu, k)).to(device=kappa.device, dtype=kappa.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kappa,) = ctx.saved_tensors
        return grad * (_BesselRatio.apply(kappa, ctx.nu) + ctx.nu / kappa), None


class _BesselRatio(torch.autograd.Function):
    r""":math:`R_\nu(\kappa) = I_{\nu+1}(\kappa)/I_\nu(\kappa)`, with :math:`R' = 1 - (2\nu + 1) R / \kappa - R^2`."""

    @staticmethod
    def forward(ctx, kappa: torch.Tensor, nu: float) -> torch.Tensor:
        ratio = torch.from_numpy(_iv_ratio_numpy(nu, _to_numpy(kappa))).to(device=kappa.device, dtype=kappa.dtype)
        ctx.nu = nu
        ctx.save_for_backward(kappa, ratio)
        return ratio

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kappa, ratio = ctx.saved_tensors
        return grad * (1 - (2 * ctx.nu + 1) * ratio / kappa - ratio**2), None


def log_bessel_iv(nu: float, kappa: torch.Tensor) -> torch.Tensor:
    r""":math:`\log I_\nu(\kappa)` elementwise for :math:`\kappa > 0`, differentiable in :math:`\kappa` (twice).

    Computed in float64 on the CPU with :func:`scipy.special.ive` (:math:`\log I_\nu = \log\operatorname{ive} + \kappa`)
    and returned on ``kappa``'s device and dtype.
    """
    return _LogBesselIv.apply(kappa, float(nu))


def bessel_iv_ratio(nu: float, kappa: torch.Tensor) -> torch.Tensor:
    r""":math:`I_{\nu+1}(\kappa) / I_\nu(\kappa)` elementwise, differentiable in :math:`\kappa`."""
    return _BesselRatio.apply(kappa, float(nu))


def vmf_log_normaliser(dim: int, kappa: torch.Tensor) -> torch.Tensor:
    r""":math:`\log C_D(\kappa) = (D/2 - 1)\log\kappa - (D/2)\log 2\pi - \log I_{D/2-1}(\kappa)` on :math:`S^{D-1}`."""
    nu = dim / 2 - 1
    return nu * kappa.log() - (dim / 2) * math.log(2 * math.pi) - log_bessel_iv(nu, kappa)


def _unit_tolerance(dtype: torch.dtype) -> float:
    return max(1e-6, 1000 * torch.finfo(dtype).eps)


class VonMisesFisherFactor(Factor):
    r"""Von Mises-Fisher factor :math:`f(z \mid x_m) = C_D(\kappa_m)\exp(\kappa_m \mu_m^\top z)` on :math:`S^{D-1}`.

    :param torch.Tensor loc: mean directions :math:`\mu_m`, unit vectors, shape ``batch_shape + (D,)``, :math:`D \ge 2`.
    :param concentration: :math:`\kappa_m > 0`, a float or a tensor broadcastable to ``batch_shape``
        (stored with shape ``batch_shape``).
    :param bool validate_args: check ``loc`` (finite, unit norm) and ``concentration`` (finite, positive);
        default: torch's global setting.

    :meth:`rsample` is Wood's (1994) rejection sampler: the component :math:`w = \mu^\top z` is drawn
    by rejection, a direction orthogonal to :math:`e_1` uniformly, and a Householder reflection maps
    :math:`e_1` to :math:`\mu`. Samples are reparameterised with respect to ``loc`` (the reflection);
    **no gradient flows into the concentration through a sample** (the accepted :math:`w` is treated
    as a constant). :meth:`log_prob`, :meth:`entropy`, :attr:`mean` and the normalisers are
    differentiable in both.
    """

    arg_constraints = {"loc": constraints.sphere, "concentration": constraints.positive}
    support = constraints.sphere
    has_rsample = True
    tensor_names = ("loc", "concentration")
    combine_uses_prior = False

    def __init__(self, loc: torch.Tensor, concentration, *, validate_args: bool | None = None) -> None:
        check_tensor(loc, "loc")
        if not loc.is_floating_point():
            raise TypeError(f"loc must be a floating-point tensor, got dtype {loc.dtype}")
        if loc.dim() < 1 or loc.shape[-1] < 2:
            raise ValueError(
                f"loc must have shape batch_shape + (D,) with D >= 2 (unit vectors in R^D), got shape {tuple(loc.shape)}"
            )
        check_float_type(concentration, "concentration", tensor=True)
        if isinstance(concentration, torch.Tensor):
            check_same_device_and_dtype(loc, "loc", concentration, "concentration")
            if not concentration.is_floating_point():
                raise TypeError(f"concentration must be a floating-point tensor, got dtype {concentration.dtype}")
        else:
            concentration = loc.new_tensor(float(concentration))
        batch_shape = loc.shape[:-1]
        try:
            concentration = concentration.expand(batch_shape)
        except RuntimeError as error:
            raise ValueError(
                f"concentration of shape {tuple(concentration.shape)} does not broadcast to the batch shape "
                f"{tuple(batch_shape)} of loc (shape {tuple(loc.shape)})"
            ) from error
        self.loc, self.concentration = loc, concentration
        validate = Distribution._validate_args if validate_args is None else bool(validate_args)
        if validate and loc.device.type != "meta":
            check_finite(loc, "loc")
            norms = loc.detach().norm(dim=-1)
            bad = (norms - 1).abs() > _unit_tolerance(loc.dtype)
            if bool(bad.any()):
                raise ValueError(
                    f"loc must hold unit vectors (mean directions on the sphere); {int(bad.sum())} rows have "
                    f"norm != 1 (first: {norms[bad][0].item():.6g}); normalise them, e.g. F.normalize(loc, dim=-1)"
                )
            kappa = concentration.detach()
            bad = ~(torch.isfinite(kappa) & (kappa > 0))
            if bool(bad.any()):
                raise ValueError(
                    f"concentration must be finite and strictly positive, got {int(bad.sum())} invalid values "
                    f"(first: {kappa[bad][0].item():.3g})"
                )
        super().__init__(batch_shape, loc.shape[-1:], validate_args=False)
        self._validate_args = validate

    # ------------------------------------------------------------------ distribution
    @property
    def dim(self) -> int:
        """Dimension D of the ambient space (the sphere is :math:`S^{D-1}`)."""
        return self.loc.shape[-1]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(VonMisesFisherFactor, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.concentration = self.concentration.expand(batch_shape)
        super(VonMisesFisherFactor, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_normaliser(self) -> torch.Tensor:
        r""":math:`\log C_D(\kappa_m)`, shape ``batch_shape``."""
        return vmf_log_normaliser(self.dim, self.concentration)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log C_D(\kappa_m) + \kappa_m \mu_m^\top z` (``value`` broadcasts against ``batch_shape + (D,)``)."""
        if self._validate_args:
            self._validate_sample(value)
        return self.log_normaliser() + self.concentration * (value * self.loc).sum(-1)

    def pairwise_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""Table :math:`\log C_D(\kappa_m) + \kappa_m \mu_m^\top z_b`, shape ``z.shape[:-1] + (M,)``."""
        return self.log_normaliser() + (z @ self.loc.transpose(-1, -2)) * self.concentration

    def pairwise_logsumexp(
        self, z: torch.Tensor, *, backend: str = "auto", chunk_size: int | None = None
    ) -> torch.Tensor:
        r""":math:`\log\sum_m C_D(\kappa_m) e^{\kappa_m \mu_m^\top z}` without the ``(..., M)`` table.

        ``"dense"`` (and ``"auto"`` up to ``DENSE_MAX_PAIRS`` pairs) is the table's logsumexp;
        otherwise :func:`pyro_rpm.normalisers.score_logsumexp` with keys :math:`\kappa_m\mu_m` and bias
        :math:`\log C_D(\kappa_m)`: exact, with gradients, and no ``(B, M)`` table.
        """
        rows = z.numel() // z.shape[-1] if z.dim() and z.shape[-1] else 1
        if use_dense(backend, rows * self.num_support):
            return torch.logsumexp(self.pairwise_log_prob(z), dim=-1)
        keys = self.loc * self.concentration.unsqueeze(-1)
        return score_logsumexp(z, keys, bias=self.log_normaliser(), backend=backend, chunk_size=chunk_size)

    @property
    def mean_resultant_length(self) -> torch.Tensor:
        r""":math:`A_D(\kappa) = I_{D/2}(\kappa) / I_{D/2-1}(\kappa) = \lVert \mathbb E z \rVert`, shape ``batch_shape``."""
        return bessel_iv_ratio(self.dim / 2 - 1, self.concentration)

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\mathbb E z = A_D(\kappa)\mu` (inside the ball, not on the sphere)."""
        return self.mean_resultant_length.unsqueeze(-1) * self.loc

    def embedding(self) -> torch.Tensor:
        r"""The unit mean direction :math:`\mu`, shape ``(M, D)`` (a point on the sphere, unlike :attr:`mean`)."""
        return self.loc

    def entropy(self) -> torch.Tensor:
        r""":math:`H = -\log C_D(\kappa) - \kappa A_D(\kappa)`."""
        return -self.log_normaliser() - self.concentration * self.mean_resultant_length

    def _sample_w(self, kappa: torch.Tensor) -> torch.Tensor:
        """Wood's rejection sampler for :math:`w = \\mu^\\top z`, elementwise for the flat ``kappa`` (no gradient)."""
        D = self.dim
        k = kappa.detach().to(torch.float64)
        m1 = D - 1.0
        b = m1 / (2 * k + torch.sqrt(4 * k * k + m1 * m1))  # (-2k + sqrt(4k^2 + (D-1)^2)) / (D-1), stably
        x0 = (1 - b) / (1 + b)
        c = k * x0 + m1 * torch.log1p(-x0 * x0)
        beta = torch.distributions.Beta(k.new_tensor(m1 / 2), k.new_tensor(m1 / 2))
        w = torch.empty_like(k)
        todo = torch.arange(k.numel(), device=k.device)
        while todo.numel():
            bt, x0t, ct, kt = b[todo], x0[todo], c[todo], k[todo]
            zb = beta.sample(todo.shape)
            u = torch.rand(todo.shape, dtype=k.dtype, device=k.device)
            wt = (1 - (1 + bt) * zb) / (1 - (1 - bt) * zb)
            accept = kt * wt + m1 * torch.log1p(-x0t * wt) - ct >= u.log()
            w[todo[accept]] = wt[accept]
            todo = todo[~accept]
        return w.to(self.loc.dtype)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)  # sample_shape + batch_shape + (D,)
        D = self.dim
        kappa = self.concentration.expand(shape[:-1]).reshape(-1)
        w = self._sample_w(kappa).reshape(shape[:-1] + (1,))
        v = torch.randn(shape[:-1] + (D - 1,), dtype=self.loc.dtype, device=self.loc.device)
        v = F.normalize(v, dim=-1)
        x = torch.cat([w, (1 - w * w).clamp_min(0).sqrt() * v], dim=-1)  # around e_1
        # Householder reflection mapping e_1 to mu (identity when mu = e_1).
        e1 = torch.zeros(D, dtype=self.loc.dtype, device=self.loc.device)
        e1[0] = 1
        u = F.normalize(e1 - self.loc, dim=-1, eps=1e-30)
        return x - 2 * (x * u).sum(-1, keepdim=True) * u

    # ------------------------------------------------------------------ the factor contract
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, concentration)``, shapes ``(M, D)`` and ``(M,)``."""
        return self.loc, self.concentration

    def with_tensors(self, tensors) -> VonMisesFisherFactor:
        loc, concentration = tensors
        return VonMisesFisherFactor(loc, concentration, validate_args=False)

    @classmethod
    def combine(cls, factors, prior=None):
        r"""The product of von Mises-Fisher factors is one: :math:`\kappa_q\mu_q = \sum_j \kappa_j\mu_j`.

        With :math:`\log q(z) = \log C_D(\kappa_q) + \kappa_q\mu_q^\top z` and
        :math:`\sum_j \log f_j(z) = \sum_j \log C_D(\kappa_j) + (\sum_j\kappa_j\mu_j)^\top z`, the residual
        :math:`\log q - \sum_j \log f_j = \log C_D(\kappa_q) - \sum_j \log C_D(\kappa_j)` is constant in
        :math:`z`. The prior is not used (a uniform prior on the sphere cancels). ``None`` unless every
        factor is a :class:`VonMisesFisherFactor` of one dimension.
        """
        factors = list(factors)
        if not factors or not all(isinstance(f, VonMisesFisherFactor) for f in factors):
            return None
        if len({f.dim for f in factors}) != 1:
            return None
        eta = sum(f.loc * f.concentration.unsqueeze(-1) for f in factors)
        kappa = eta.norm(dim=-1).clamp_min(torch.finfo(eta.dtype).tiny ** 0.5)
        q = VonMisesFisherFactor(eta / kappa.unsqueeze(-1), kappa, validate_args=False)
        log_z = q.log_normaliser() - sum(f.log_normaliser() for f in factors)
        return q, lambda value: log_z


class VonMisesFisherRecognition(Recognition):
    r"""Von Mises-Fisher recognition factor :math:`f(z \mid x) = C_D(\kappa)\exp(\kappa\, \mu(x)^\top z)` on :math:`S^{D-1}`.

    The network's ``latent_dim`` outputs are normalised onto the sphere (:func:`torch.nn.functional.normalize`)
    as the mean direction :math:`\mu(x)`; the concentration :math:`\kappa` is shared by all data
    points, fixed (a buffer) or, with ``learn_concentration=True``, learned as :math:`\kappa = e^{\rho}`.

    :param torch.nn.Module net: network with ``latent_dim`` outputs.
    :param int latent_dim: dimension D of the ambient space (at least 2).
    :param float concentration: :math:`\kappa > 0` (initial value when learned).
    :param bool learn_concentration: learn :math:`\kappa` (a parameter ``log_concentration``).

    Example::

        >>> f = VonMisesFisherRecognition(torch.nn.Linear(5, 3), latent_dim=3)
        >>> f(torch.randn(7, 5)).batch_shape
        torch.Size([7])
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        *,
        concentration: float = 10.0,
        learn_concentration: bool = False,
        name: str | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(net, name=name, validate=validate)
        check_int(latent_dim, "latent_dim", 2, expected="an int >= 2 (unit vectors in R^D)")
        if isinstance(concentration, torch.Tensor):
            concentration = float(concentration)
        check_float_type(concentration, "concentration")
        if not math.isfinite(concentration):
            raise ValueError(f"concentration must be finite, got {concentration}")
        check_positive(concentration, "concentration")
        self.latent_dim = latent_dim
        self.learn_concentration = bool(learn_concentration)
        set_learnable(self, "log_concentration", torch.tensor(math.log(concentration)), self.learn_concentration)

    @property
    def concentration(self) -> torch.Tensor:
        r"""The shared :math:`\kappa` (a scalar tensor)."""
        return self.log_concentration.exp()

    @property
    def output_size(self) -> int:
        return self.latent_dim

    def head(self, output: torch.Tensor) -> VonMisesFisherFactor:
        loc = F.normalize(output, dim=-1)
        kappa = self.concentration.to(output.dtype).expand(output.shape[:-1])
        return VonMisesFisherFactor(loc, kappa, validate_args=False)
