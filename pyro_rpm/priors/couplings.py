# SPDX-License-Identifier: Apache-2.0
r"""Couplings :math:`g(z, z')` for the contrastive prior :math:`p(z' \mid z) \propto F(z') e^{g(z, z')}`.

Every coupling is an :class:`torch.nn.Module` with

* ``forward(z, z2)``: :math:`g(z, z')` elementwise over broadcast leading dimensions;
* :meth:`Coupling.pairwise`: the table :math:`g(z_b, a_m)` against M atoms, shape ``(..., M)``;
* :meth:`Coupling.expected_pairwise`: :math:`\log \mathbb E_{z' \sim f_m}[e^{g(z, z')}]` for each
  factor :math:`f_m`, which is the per-component normaliser of the contrastive prior. It is exact
  for deterministic (point-mass) factors and, where a closed form exists (RBF and bilinear
  couplings), for Gaussian factors; otherwise the factor is replaced by its mean;
* :meth:`Coupling.expected_logsumexp`: :math:`\log\sum_m \mathbb E_{f_m}[e^{g(z, z')}]`, the
  contrastive prior's normaliser. Beyond the dense threshold (``backend=``) the bilinear, RBF and
  cosine forms reduce to :func:`~pyro_rpm.normalisers.score_logsumexp` or
  :func:`~pyro_rpm.normalisers.gaussian_logsumexp` (exact, without the ``B x M`` table):

  - bilinear, Gaussian :math:`f_m`: keys :math:`[\mu_m, s_m^2]`, queries :math:`[u, u^2/2]`,
    :math:`u = W^\top z`; point masses: keys :math:`a_m`, queries :math:`u`;
  - RBF: :math:`\log\sum_m \mathcal N(z; \mu_m, \operatorname{diag}(\ell^2 + s_m^2))
    + \tfrac D2 \log 2\pi + \sum_d \log \ell_d` (point masses: :math:`s_m = 0`);
  - cosine: keys :math:`a_m / \lVert a_m\rVert`, queries :math:`z / (\lVert z\rVert \tau)`;
  - Laplace: always the dense table (no dot-product form).

Their parameters are registered with Pyro's parameter store under ``name`` when used.
"""

from __future__ import annotations

import itertools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .._learnable import set_learnable
from .._pyro import register_module
from .._validation import check_int, check_positive
from ..normalisers import gaussian_logsumexp, score_logsumexp
from ..normalisers.dense import clamped_logsumexp, quadratic_pairwise
from ..recognition.base import Factor, use_dense

__all__ = [
    "Coupling",
    "BilinearCoupling",
    "RBFCoupling",
    "AnisotropicRBFCoupling",
    "CosineCoupling",
    "LaplaceCoupling",
]

_COUNTER = itertools.count()


def _log_positive(value: float | torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """``log(value)`` in float64 expanded to ``shape`` (a fresh tensor), after checking that ``value`` is positive."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    check_positive(value, name)
    tensor = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=torch.float64)
    try:
        tensor = tensor.expand(shape)
    except RuntimeError:
        raise ValueError(f"{name} must be a scalar or have shape {shape}, got shape {tuple(tensor.shape)}") from None
    return torch.log(tensor.clone())


class Coupling(nn.Module):
    """Base class of couplings :math:`g(z, z')`.

    :param str name: parameter-store name (default: class name and a counter).
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        self.name = name if name is not None else f"{type(self).__name__.lower()}_{next(_COUNTER)}"

    def _set_exact(self, name: str, value64: torch.Tensor, learn: bool) -> None:
        r"""Register ``value64`` (float64) as parameter/buffer ``name`` in the default dtype, keeping the float64
        value: while the tensor still holds its initial value, :meth:`_value` and ``.to()`` use the float64
        one, so a coupling follows the dtype of the model it joins exactly (e.g. ``RBFCoupling(0.1)``:
        lengthscale 0.1 to float64 rounding in a float64 model, not float32's 0.1)."""
        if "_exact" not in self.__dict__:
            self._exact: dict[str, torch.Tensor] = {}
        self._exact[name] = value64
        set_learnable(self, name, value64.to(torch.get_default_dtype()), learn)

    def _pristine(self, name: str) -> bool:
        """Whether ``name`` still holds its initial value (rounded to its dtype)."""
        tensor = getattr(self, name)
        source = self._exact[name].to(device=tensor.device, dtype=tensor.dtype)
        return bool(torch.equal(tensor.detach(), source))

    def _value(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Parameter/buffer ``name`` in ``dtype``: its initial float64 value (rounded to ``dtype``) while
        untrained, with the gradient still flowing to the stored tensor."""
        tensor = getattr(self, name)
        cast = tensor.to(dtype)
        exact = self.__dict__.get("_exact", {})
        if name not in exact or dtype == tensor.dtype or torch.finfo(dtype).eps >= torch.finfo(tensor.dtype).eps:
            return cast
        if not self._pristine(name):
            return cast
        return cast + (exact[name].to(device=cast.device, dtype=dtype) - cast).detach()

    def _apply(self, fn, recurse: bool = True):
        """``.to()``/``.double()``/...: untrained parameters are re-rounded from their float64 initial values."""
        exact = self.__dict__.get("_exact", {})
        pristine = [name for name in exact if self._pristine(name)]
        out = super()._apply(fn, recurse)
        with torch.no_grad():
            for name in pristine:
                tensor = getattr(self, name)
                if tensor.is_floating_point():
                    tensor.copy_(exact[name].to(device=tensor.device, dtype=tensor.dtype))
        return out

    def _register(self) -> None:
        if any(True for _ in self.parameters()):
            register_module(self.name, self)

    def check_widths(self, anchor: int, factors: int) -> None:
        """Raise :class:`ValueError` unless an anchor :math:`z` of width ``anchor`` pairs with factors over
        :math:`z'` of width ``factors`` (by default both live in one space: equal widths)."""
        if anchor != factors:
            raise ValueError(
                f"anchor must end with the factors' latent dimension ({factors},) for {type(self).__name__}, "
                f"got width {anchor}"
            )

    def forward(self, z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pairwise(self, z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """Table :math:`g(z_b, a_m)` of shape ``z.shape[:-1] + (M,)`` for atoms of shape ``(M, D)``."""
        self._register()
        return self.forward(z.unsqueeze(-2), atoms)

    def expected_pairwise(self, z: torch.Tensor, factors: Factor) -> torch.Tensor:
        r""":math:`\log \mathbb E_{f_m}[\exp g(z, z')]` for every factor; defaults to :math:`g(z, \mathbb E f_m)`."""
        return self.pairwise(z, factors.mean)

    def expected_logsumexp(
        self, z: torch.Tensor, factors: Factor, *, backend: str = "auto", chunk_size: int | None = None
    ) -> torch.Tensor:
        r""":math:`\log\sum_m \mathbb E_{f_m}[\exp g(z, z')]`, shape ``z.shape[:-1]``.

        The row-logsumexp of :meth:`expected_pairwise`: the table for small supports or
        ``backend="dense"``, else :meth:`_streamed_logsumexp` where a coupling has one (bilinear,
        RBF and cosine; module docstring).

        :param str backend: ``"auto"``, ``"dense"``, ``"streamed"``, ``"fused"`` or ``"screened"`` (:mod:`pyro_rpm.normalisers`).
        :param int chunk_size: support points per chunk (streamed/fused backends).
        """
        rows = z.numel() // z.shape[-1] if z.shape[-1] else 0
        if use_dense(backend, rows * factors.num_support) or not self.streams:
            return clamped_logsumexp(self.expected_pairwise(z, factors), -1)
        self._register()
        return self._streamed_logsumexp(z, factors, backend, chunk_size)

    #: whether :meth:`_streamed_logsumexp` is implemented.
    streams: bool = False
    #: whether :math:`g` depends on the differences :math:`z - z'` (RBF, Laplace): an anchor so far from
    #: the support that :math:`z - z'` rounds to :math:`z` makes :math:`g` blind to :math:`z'`, and
    #: :class:`~pyro_rpm.ContrastivePrior` refuses it (:func:`pyro_rpm.priors.anchors.check_anchor_resolves_support`).
    compares_differences: bool = False

    def _streamed_logsumexp(
        self, z: torch.Tensor, factors: Factor, backend: str, chunk_size: int | None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """:meth:`expected_logsumexp` without the table (parameters already registered)."""
        raise NotImplementedError


def _unit_vectors(x: torch.Tensor) -> torch.Tensor:
    r""":math:`x / \lVert x \rVert` along the last dimension, without overflow or underflow of the norm.

    ``F.normalize`` squares the entries: at :math:`|x| \sim 10^{20}` in float32 (:math:`10^{155}` in
    float64) the norm is ``inf`` and every direction becomes 0, and below its ``eps`` the vector is not
    normalised; dividing by :math:`\max_i |x_i|` first keeps the result exact at every scale. The zero
    vector stays 0.
    """
    peak = x.detach().abs().amax(-1, keepdim=True)
    scaled = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    return F.normalize(scaled, dim=-1, eps=0.5)  # a scaled nonzero vector has norm >= 1


def _stochastic_gaussian(factors: Factor) -> bool:
    """Whether the factors are diagonal Gaussians that are not point masses (closed-form expectations)."""
    return not factors.is_point_mass and factors.diagonal_gaussian() is not None


def _shared_rows(x: torch.Tensor) -> torch.Tensor:
    """``x[0]`` when ``x`` is one ``(D,)`` vector expanded along the support dimension, else ``x``."""
    return x[0] if x.dim() == 2 and x.stride(0) == 0 else x


class BilinearCoupling(Coupling):
    r"""InfoNCE's bilinear critic :math:`g(z, z') = z^\top W z'`.

    For a Gaussian factor the expectation is exact:
    :math:`\log \mathbb E[e^{u^\top z'}] = u^\top \mu + \tfrac12 \sum_d u_d^2 s_d^2`, with :math:`u = W^\top z`.

    :param int dim: dimension of z.
    :param int dim2: dimension of z' (default ``dim``).
    :param bool learn: learn W (initialised at the identity) or keep it fixed.
    """

    def __init__(self, dim: int, dim2: int | None = None, *, learn: bool = True, name: str | None = None) -> None:
        super().__init__(name=name)
        check_int(dim, "dim", expected="a positive int")
        dim2 = dim if dim2 is None else check_int(dim2, "dim2", expected="a positive int or None")
        weight = torch.eye(dim, dim2)
        set_learnable(self, "weight", weight, learn)

    def check_widths(self, anchor: int, factors: int) -> None:
        """:math:`z^\top W z'` pairs an anchor of width ``W.shape[0]`` with factors of width ``W.shape[1]``."""
        dim, dim2 = self.weight.shape
        if anchor != dim or factors != dim2:
            raise ValueError(
                f"anchor must have width {dim} and the factors width {dim2} for BilinearCoupling(dim={dim}, "
                f"dim2={dim2}), got {anchor} and {factors}"
            )

    def forward(self, z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        self._register()
        return ((z @ self.weight.to(z.dtype)) * z2).sum(-1)

    def pairwise(self, z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        self._register()
        return (z @ self.weight.to(z.dtype)) @ atoms.transpose(-1, -2)

    def expected_pairwise(self, z: torch.Tensor, factors: Factor) -> torch.Tensor:
        if not _stochastic_gaussian(factors):
            return self.pairwise(z, factors.mean)
        self._register()
        u = z @ self.weight.to(z.dtype)
        return u @ factors.diagonal_gaussian()[0].transpose(-1, -2) + 0.5 * (u * u) @ factors.diagonal_gaussian()[1].pow(2).transpose(-1, -2)

    streams = True

    def _streamed_logsumexp(
        self, z: torch.Tensor, factors: Factor, backend: str, chunk_size: int | None
    ) -> torch.Tensor:
        u = z @ self.weight.to(z.dtype)
        if not _stochastic_gaussian(factors):
            return score_logsumexp(u, factors.mean, backend=backend, chunk_size=chunk_size)
        query = torch.cat([u, 0.5 * u * u], dim=-1)
        keys = torch.cat([factors.diagonal_gaussian()[0], factors.diagonal_gaussian()[1].pow(2)], dim=-1)
        return score_logsumexp(query, keys, backend=backend, chunk_size=chunk_size)


class AnisotropicRBFCoupling(Coupling):
    r"""Gaussian RBF coupling with a lengthscale per dimension (AnInfoNCE),
    :math:`g(z, z') = -\sum_d (z_d - z'_d)^2 / (2\ell_d^2)`.

    For a Gaussian factor, :math:`\log \mathbb E[e^{g}] = \sum_d \big[\tfrac12 \log\frac{\ell_d^2}{\ell_d^2 + s_d^2}
    - \frac{(z_d - \mu_d)^2}{2(\ell_d^2 + s_d^2)}\big]`, exact.

    :param int dim: latent dimension.
    :param lengthscale: initial lengthscale(s), positive.
    :param bool learn: learn the lengthscales.
    """

    def __init__(
        self, dim: int, lengthscale: float | torch.Tensor = 1.0, *, learn: bool = True, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self._set_exact("log_lengthscale", _log_positive(lengthscale, self._shape(dim), "lengthscale"), learn)

    def _shape(self, dim: int) -> tuple[int, ...]:
        return (dim,)

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.log_lengthscale.exp()

    @property
    def precision(self) -> torch.Tensor:
        r"""Per-dimension precision :math:`\ell_d^{-2}` of the implied Gaussian :math:`p(z' \mid z)`."""
        return (-2 * self.log_lengthscale).exp()

    def _log_ell(self, dtype: torch.dtype) -> torch.Tensor:
        r""":math:`\log\ell` in ``dtype`` (the exact initial value while untrained, :meth:`Coupling._value`)."""
        return self._value("log_lengthscale", dtype)

    def forward(self, z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        self._register()
        diff = z - z2
        return -0.5 * (diff * diff * (-2 * self._log_ell(z.dtype)).exp()).sum(-1)

    def pairwise(self, z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        self._register()
        precision = (-2 * self._log_ell(z.dtype)).exp().expand(z.shape[-1])
        return quadratic_pairwise(z, atoms, precision)

    def expected_pairwise(self, z: torch.Tensor, factors: Factor) -> torch.Tensor:
        if not _stochastic_gaussian(factors):
            return self.pairwise(z, factors.mean)
        self._register()
        ell2 = (2 * self._log_ell(z.dtype)).exp().expand(z.shape[-1])
        total = ell2 + factors.diagonal_gaussian()[1].pow(2)  # (M, D)
        log_shrink = 0.5 * (ell2.log() - total.log()).sum(-1)  # (M,)
        return quadratic_pairwise(z, factors.diagonal_gaussian()[0], total.reciprocal()) + log_shrink

    streams = True
    compares_differences = True

    def _streamed_logsumexp(
        self, z: torch.Tensor, factors: Factor, backend: str, chunk_size: int | None
    ) -> torch.Tensor:
        dim = z.shape[-1]
        ell2 = (2 * self._log_ell(z.dtype)).exp().expand(dim)
        # log sum_m N(z; mu_m, diag(l^2 + s_m^2)) + D/2 log 2 pi + sum_d log l_d
        constant = 0.5 * dim * math.log(2 * math.pi) + 0.5 * ell2.log().sum()
        if _stochastic_gaussian(factors):
            loc, variance = factors.diagonal_gaussian()[0], ell2 + _shared_rows(factors.diagonal_gaussian()[1]).pow(2)
        else:
            loc, variance = factors.mean, ell2
        lse = gaussian_logsumexp(z, loc, precision=variance.reciprocal(), backend=backend, chunk_size=chunk_size)
        return lse + constant


class RBFCoupling(AnisotropicRBFCoupling):
    r"""Gaussian RBF coupling with one learned lengthscale (Aitchison & Ganev, Eq. 27),
    :math:`g(z, z') = -\lVert z - z' \rVert^2 / (2\ell^2)`.

    With a uniform :math:`F` this is the prior :math:`z' \mid z \sim \mathcal N(z, \ell^2 I)`.

    :param float lengthscale: initial lengthscale.
    :param bool learn: learn the lengthscale.
    """

    def __init__(self, lengthscale: float = 1.0, *, learn: bool = True, name: str | None = None) -> None:
        super().__init__(1, lengthscale, learn=learn, name=name)

    def _shape(self, dim: int) -> tuple[int, ...]:
        return ()


class CosineCoupling(Coupling):
    r"""SimCLR's cosine critic :math:`g(z, z') = \cos(z, z') / \tau`.

    The directions are computed without overflow at any scale of the latents (before: every
    cosine was 0 at :math:`|z| \sim 10^{20}` in float32, a silent uniform answer); a zero vector
    has cosine 0 with everything.

    For stochastic factors the expectation has no closed form; the factor mean is used.

    :param float temperature: :math:`\tau > 0`.
    :param bool learn: learn the temperature.
    """

    def __init__(self, temperature: float = 0.1, *, learn: bool = False, name: str | None = None) -> None:
        super().__init__(name=name)
        self._set_exact("log_temperature", _log_positive(temperature, (), "temperature"), learn)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        self._register()
        cosine = (_unit_vectors(z) * _unit_vectors(z2)).sum(-1)
        return cosine / self._value("log_temperature", z.dtype).exp()

    def pairwise(self, z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        self._register()
        return _unit_vectors(z) @ _unit_vectors(atoms).transpose(-1, -2) / self._value("log_temperature", z.dtype).exp()

    streams = True

    def _streamed_logsumexp(
        self, z: torch.Tensor, factors: Factor, backend: str, chunk_size: int | None
    ) -> torch.Tensor:
        query = _unit_vectors(z) / self._value("log_temperature", z.dtype).exp()
        keys = _unit_vectors(factors.mean)
        return score_logsumexp(query, keys, backend=backend, chunk_size=chunk_size)


class LaplaceCoupling(Coupling):
    r"""L1 coupling :math:`g(z, z') = -\lVert z - z' \rVert_1 / b` (Laplace positive pairs).

    The pairwise table needs the elementwise differences; it is computed in chunks of support
    points so memory stays bounded.

    :param float scale: :math:`b > 0`.
    :param bool learn: learn the scale.
    """

    compares_differences = True

    def __init__(self, scale: float = 1.0, *, learn: bool = True, name: str | None = None) -> None:
        super().__init__(name=name)
        self._set_exact("log_scale", _log_positive(scale, (), "scale"), learn)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        self._register()
        return -(z - z2).abs().sum(-1) / self._value("log_scale", z.dtype).exp()

    def pairwise(self, z: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        self._register()
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        chunk = max(1, (1 << 22) // max(1, flat.shape[0] * z.shape[-1]))
        pieces = [torch.cdist(flat, atoms[i : i + chunk], p=1) for i in range(0, atoms.shape[0], chunk)]
        return (-torch.cat(pieces, -1) / self._value("log_scale", z.dtype).exp()).reshape(*lead, atoms.shape[0])
