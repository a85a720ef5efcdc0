# SPDX-License-Identifier: Apache-2.0
r"""Stationary covariance kernels over time, one independent kernel per latent dimension.

Each kernel is a function of the scaled distance :math:`r = |t - t'| / \ell_d`, with a
lengthscale :math:`\ell_d > 0` and a scale (standard deviation) :math:`\sigma_d > 0` per latent
dimension d:

=================  ==========================================================================
name               :math:`k_d(t, t')`
=================  ==========================================================================
``"rbf"``          :math:`\sigma_d^2 \exp(-r^2 / 2)`
``"matern12"``     :math:`\sigma_d^2 \exp(-r)` (Ornstein--Uhlenbeck)
``"matern32"``     :math:`\sigma_d^2 (1 + \sqrt3 r) \exp(-\sqrt3 r)`
``"matern52"``     :math:`\sigma_d^2 (1 + \sqrt5 r + \tfrac53 r^2) \exp(-\sqrt5 r)`
=================  ==========================================================================

As in :mod:`pyro.contrib.gp.kernels`, parameters are constrained: the lengthscale (and the
scale, when learned) is stored unconstrained and mapped through
``biject_to(constraints.positive)``. By default the scale is fixed at 1, which removes the
scale degeneracy between the prior and the recognition networks (Walker et al.).

A kernel called on times of shape ``(..., T1)`` and ``(..., T2)`` returns the matrices of all
latent dimensions, shape ``(..., D, T1, T2)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import biject_to, constraints

from .._learnable import set_learnable
from .._validation import check_finite, check_float_type, check_int, check_tensor

__all__ = ["KERNELS", "Kernel", "Matern12", "Matern32", "Matern52", "RBF", "make_kernel"]


def _per_dimension(value: float | torch.Tensor, latent_dim: int, name: str) -> torch.Tensor:
    """``value`` as a float tensor of shape ``(latent_dim,)``, checked finite and positive."""
    check_float_type(value, name, tensor=True)
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).detach().clone()
    if tensor.dim() > 1 or (tensor.dim() == 1 and tensor.shape[0] not in (1, latent_dim)):
        raise ValueError(
            f"{name} must be a scalar or have shape ({latent_dim},) (one per latent dimension), got {tuple(tensor.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be finite and strictly positive, got {tensor.tolist()}")
    return tensor.expand(latent_dim).clone()


class Kernel(nn.Module):
    r"""Base class of stationary kernels :math:`k_d(t, t') = \sigma_d^2\, \kappa(|t - t'| / \ell_d)`.

    :param int latent_dim: number D of independent latent dimensions (one kernel each).
    :param lengthscale: initial :math:`\ell` (a float, or a tensor of shape ``(D,)``), > 0.
    :param scale: :math:`\sigma` (a float or a ``(D,)`` tensor), > 0; fixed unless ``learn_scale``.
    :param bool learn_lengthscale: make :math:`\ell` a learnable parameter (default ``True``).
    :param bool learn_scale: make :math:`\sigma` a learnable parameter (default ``False``).

    Subclasses implement :meth:`profile`, :math:`\kappa(r)` with :math:`\kappa(0) = 1`.
    """

    def __init__(
        self,
        latent_dim: int,
        lengthscale: float | torch.Tensor = 1.0,
        scale: float | torch.Tensor = 1.0,
        *,
        learn_lengthscale: bool = True,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        check_int(latent_dim, "latent_dim", expected="a positive int")
        self.latent_dim = latent_dim
        to_unconstrained = biject_to(constraints.positive).inv
        raw_lengthscale = to_unconstrained(_per_dimension(lengthscale, latent_dim, "lengthscale"))
        raw_scale = to_unconstrained(_per_dimension(scale, latent_dim, "scale"))
        set_learnable(self, "unconstrained_lengthscale", raw_lengthscale, learn_lengthscale)
        set_learnable(self, "unconstrained_scale", raw_scale, learn_scale)

    @property
    def lengthscale(self) -> torch.Tensor:
        r""":math:`\ell_d`, shape ``(D,)``."""
        return biject_to(constraints.positive)(self.unconstrained_lengthscale)

    @property
    def scale(self) -> torch.Tensor:
        r""":math:`\sigma_d` (the marginal standard deviation), shape ``(D,)``."""
        return biject_to(constraints.positive)(self.unconstrained_scale)

    def profile(self, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        r""":math:`\kappa(r)` for scaled distances :math:`r \ge 0`."""
        raise NotImplementedError

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        r"""The diagonal :math:`k_d(t, t) = \sigma_d^2`, shape ``(..., D, T)``."""
        scale = self.scale.to(t.dtype)
        return scale.pow(2).unsqueeze(-1).expand(t.shape[:-1] + (self.latent_dim, t.shape[-1]))

    def forward(self, t1: torch.Tensor, t2: torch.Tensor | None = None) -> torch.Tensor:
        r"""The kernel matrices :math:`k_d(t_{1i}, t_{2j})`, shape ``(..., D, T1, T2)``.

        :param torch.Tensor t1: times, shape ``(..., T1)``.
        :param torch.Tensor t2: times, shape ``(..., T2)`` (default ``t1``).
        """
        check_tensor(t1, "times")
        check_finite(t1, "times")
        if t2 is None:
            t2 = t1
        else:
            check_tensor(t2, "times")
            check_finite(t2, "times")
        if not t1.is_floating_point() or not t2.is_floating_point():
            raise TypeError(f"times must be floating point, got {t1.dtype} and {t2.dtype}")
        lengthscale = self.lengthscale.to(t1.dtype)
        scale = self.scale.to(t1.dtype)
        diff = (t1.unsqueeze(-1) - t2.unsqueeze(-2)).abs().unsqueeze(-3)  # (..., 1, T1, T2)
        r = diff / lengthscale[:, None, None]
        return scale.pow(2)[:, None, None] * self.profile(r)


class RBF(Kernel):
    r"""Squared-exponential kernel :math:`\sigma^2 \exp(-r^2/2)`."""

    def profile(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * r * r)


class Matern12(Kernel):
    r"""Matérn-1/2 (exponential, Ornstein--Uhlenbeck) kernel :math:`\sigma^2 \exp(-r)`."""

    def profile(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-r)


class Matern32(Kernel):
    r"""Matérn-3/2 kernel :math:`\sigma^2 (1 + \sqrt3 r) \exp(-\sqrt3 r)`."""

    def profile(self, r: torch.Tensor) -> torch.Tensor:
        s = math.sqrt(3.0) * r
        return (1 + s) * torch.exp(-s)


class Matern52(Kernel):
    r"""Matérn-5/2 kernel :math:`\sigma^2 (1 + \sqrt5 r + \tfrac53 r^2) \exp(-\sqrt5 r)`."""

    def profile(self, r: torch.Tensor) -> torch.Tensor:
        s = math.sqrt(5.0) * r
        return (1 + s + s * s / 3) * torch.exp(-s)


#: Kernel names accepted by :func:`make_kernel` and :class:`~pyro_rpm.priors.gp.GaussianProcessPrior`.
KERNELS: dict[str, type[Kernel]] = {"rbf": RBF, "matern12": Matern12, "matern32": Matern32, "matern52": Matern52}


def make_kernel(name: str, latent_dim: int, **kwargs) -> Kernel:
    """Build a kernel by name (one of :data:`KERNELS`); ``kwargs`` go to :class:`Kernel`."""
    if not isinstance(name, str) or name.lower() not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)} or a Kernel instance, got {name!r}")
    return KERNELS[name.lower()](latent_dim, **kwargs)
