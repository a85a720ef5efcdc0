# SPDX-License-Identifier: Apache-2.0
r"""Latent samplers of the identifiability benchmarks (:mod:`pyro_rpm.datasets.identifiability`).

Marginals :math:`p(z)` and conditionals :math:`p(\tilde z \mid z)` of the positive pairs of
Zimmermann et al. (2021) and Rusak et al. (2024), with the argument checks they share:

* :func:`uniform_sphere`: :math:`z \sim \mathcal U(S^{d-1})`, normalised Gaussians;
* :func:`uniform_box`: :math:`z \sim \mathcal U([a, b]^d)`;
* :func:`von_mises_fisher`: :math:`\tilde z \sim \mathrm{vMF}(z, \kappa)`, density
  :math:`\propto e^{\kappa z^\top \tilde z}` on :math:`S^{d-1}`, exact (Wood, 1994);
* :func:`truncated_laplace`: :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)` truncated to
  :math:`[a, b]`, density :math:`\propto e^{-|\tilde z_j - z_j| / \lambda}` on :math:`[a, b]`;
* :func:`anisotropic_sphere`: :math:`\tilde z = y / \lVert y \rVert`, :math:`y = z + \epsilon`,
  :math:`\epsilon \sim \mathcal N(0, \Lambda^{-1})`, redrawn while
  :math:`|1 - \lVert y \rVert| \ge t`; :func:`bimodal_precision` is Rusak et al.'s :math:`\Lambda`.

Every sampler draws from a private CPU :class:`torch.Generator` (the global RNG is untouched) and
returns float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_int as _positive_int
from .._validation import check_int_type, check_number, check_tensor
from .._validation import check_positive_number as _positive_float

__all__ = [
    "_box",
    "_generator",
    "_unit_rows",
    "anisotropic_sphere",
    "bimodal_precision",
    "truncated_laplace",
    "uniform_box",
    "uniform_sphere",
    "von_mises_fisher",
]

_MAX_ROUNDS = 10_000
_MAX_TRIES = 1_000_000  # candidates per row before anisotropic_sphere gives up


# --------------------------------------------------------------------------------- argument checks
def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        return generator
    check_int_type(seed, "seed")
    return torch.Generator().manual_seed(seed)


def _unit_rows(z: object, name: str) -> torch.Tensor:
    check_tensor(z, name)
    if z.dim() != 2 or z.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (n, d) with d >= 2, got {tuple(z.shape)}")
    z = z.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} must be finite")
    if not bool(((z.norm(dim=-1) - 1).abs() <= 1e-5).all()):
        raise ValueError(f"{name} must hold unit vectors (points on the sphere) in its rows")
    return z


# ----------------------------------------------------------------------------------------- marginals
def uniform_sphere(n: int, dim: int, *, generator: torch.Generator | None = None, seed: int = 0) -> torch.Tensor:
    r"""``n`` points uniform on the unit sphere :math:`S^{d-1} \subset \mathbb R^d`: normalised Gaussians.

    :param int n: number of points.
    :param int dim: ambient dimension :math:`d \ge 2`.
    :param torch.Generator generator: CPU generator to draw from (default: a new one seeded with ``seed``).
    :param int seed: seed used when ``generator`` is None.
    :returns: float64 tensor of shape ``(n, dim)``, unit rows.
    """
    _positive_int(n, "n")
    _positive_int(dim, "dim", 2)
    gen = _generator(generator, seed)
    g = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return g / g.norm(dim=-1, keepdim=True)


def uniform_box(
    n: int,
    dim: int,
    low: float = 0.0,
    high: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    r"""``n`` points uniform in the box :math:`[\text{low}, \text{high}]^d`.

    :returns: float64 tensor of shape ``(n, dim)``.
    """
    _positive_int(n, "n")
    _positive_int(dim, "dim")
    low, high = _box(low, high)
    gen = _generator(generator, seed)
    return low + (high - low) * torch.rand(n, dim, generator=gen, dtype=torch.float64)


def _box(low: object, high: object) -> tuple[float, float]:
    for value, name in ((low, "low"), (high, "high")):
        check_number(value, name, expected="a finite float")
    if not low < high:
        raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")
    return float(low), float(high)


# -------------------------------------------------------------------------------------- conditionals
def von_mises_fisher(
    mu: torch.Tensor, kappa: float, *, generator: torch.Generator | None = None, seed: int = 0
) -> torch.Tensor:
    r"""One draw of :math:`\mathrm{vMF}(\mu_i, \kappa)` per row :math:`\mu_i` of ``mu`` (Wood, 1994).

    The density on :math:`S^{d-1}` is :math:`\propto e^{\kappa \mu^\top x}`. Wood's algorithm draws the
    cosine :math:`w = \mu^\top x` exactly by rejection, with :math:`d' = d - 1`,

    .. math::

        b = \frac{d'}{\sqrt{4\kappa^2 + d'^2} + 2\kappa}, \quad x_0 = \frac{1-b}{1+b}, \quad
        c = \kappa x_0 + d' \log(1 - x_0^2),

    proposal :math:`w = \frac{1 - (1+b)B}{1 - (1-b)B}`, :math:`B \sim \mathrm{Beta}(d'/2, d'/2)`,
    accepted when :math:`\kappa w + d' \log(1 - x_0 w) - c \ge \log U`; then
    :math:`x = w \mu + \sqrt{1 - w^2}\, v` with :math:`v` uniform on the unit sphere orthogonal to
    :math:`\mu`. The mean resultant length is :math:`\mathbb E[w] = A_d(\kappa) = I_{d/2}(\kappa) / I_{d/2-1}(\kappa)`.

    :param torch.Tensor mu: mean directions, shape ``(n, d)``, unit rows, :math:`d \ge 2`.
    :param float kappa: concentration :math:`\kappa > 0`.
    :returns: float64 tensor of shape ``(n, d)``, unit rows.
    """
    mu = _unit_rows(mu, "mu")
    kappa = _positive_float(kappa, "kappa")
    gen = _generator(generator, seed)
    n, d = mu.shape
    dp = float(d - 1)
    b = dp / (math.sqrt(4 * kappa**2 + dp**2) + 2 * kappa)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + dp * math.log(1 - x0**2)
    w = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    for _ in range(_MAX_ROUNDS):
        if todo.numel() == 0:
            break
        k = todo.numel()
        bb = _symmetric_beta(d - 1, k, gen)
        cand = (1 - (1 + b) * bb) / (1 - (1 - b) * bb)
        log_u = torch.rand(k, generator=gen, dtype=torch.float64).log()
        ok = kappa * cand + dp * torch.log1p(-x0 * cand) - c >= log_u
        w[todo[ok]] = cand[ok]
        todo = todo[~ok]
    else:  # pragma: no cover - acceptance is > 0.5 for every kappa
        raise RuntimeError("von_mises_fisher: rejection sampler did not finish")
    v = torch.randn(n, d, generator=gen, dtype=torch.float64)
    v = v - (v * mu).sum(-1, keepdim=True) * mu
    v = v / v.norm(dim=-1, keepdim=True)
    x = w[:, None] * mu + (1 - w * w).clamp_min(0).sqrt()[:, None] * v
    return x / x.norm(dim=-1, keepdim=True)


def _symmetric_beta(dof: int, k: int, gen: torch.Generator) -> torch.Tensor:
    r"""``k`` draws of :math:`\mathrm{Beta}(\nu/2, \nu/2)` from the private generator, as
    :math:`X / (X + Y)` with :math:`X, Y \sim \chi^2_\nu` (torch's Gamma sampler takes no generator)."""
    x = torch.randn(k, dof, generator=gen, dtype=torch.float64).pow(2).sum(-1)
    y = torch.randn(k, dof, generator=gen, dtype=torch.float64).pow(2).sum(-1)
    return x / (x + y)


def truncated_laplace(
    z: torch.Tensor,
    scale: float,
    low: float = 0.0,
    high: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    r"""Per coordinate, :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)` truncated to :math:`[a, b]`.

    As in Zimmermann et al.'s box experiments, each coordinate that falls outside the box is redrawn
    (independently of the others) until it lies inside, so :math:`\tilde z_j` has density
    :math:`\propto e^{-|\tilde z_j - z_j| / \lambda}` on :math:`[a, b]`.

    :param torch.Tensor z: anchors, shape ``(n, d)``, inside the box.
    :param float scale: Laplace scale :math:`\lambda > 0`.
    :param float low: :math:`a`.
    :param float high: :math:`b > a`.
    :returns: float64 tensor of shape ``(n, d)`` inside the box.
    """
    check_tensor(z, "z")
    if z.dim() != 2:
        raise ValueError(f"z must have shape (n, d), got {tuple(z.shape)}")
    scale = _positive_float(scale, "scale")
    low, high = _box(low, high)
    z = z.detach().to("cpu", torch.float64)
    if not bool(((z >= low) & (z <= high)).all()):
        raise ValueError(f"z must lie in the box [{low}, {high}]^d")
    gen = _generator(generator, seed)
    out = torch.empty_like(z).view(-1)
    flat = z.reshape(-1)
    todo = torch.arange(flat.numel())
    for _ in range(_MAX_ROUNDS):
        if todo.numel() == 0:
            break
        u = torch.rand(todo.numel(), generator=gen, dtype=torch.float64) - 0.5  # Laplace by inversion
        cand = flat[todo] - scale * u.sign() * torch.log1p(-2 * u.abs())
        ok = (cand >= low) & (cand <= high)
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    else:  # pragma: no cover - every coordinate is accepted with probability >= (1 - e^{-(b-a)/scale}) / 2
        raise RuntimeError("truncated_laplace: rejection sampler did not finish")
    return out.view_as(z)


def bimodal_precision(dim: int = 10, high: float = 25.0, low: float = 5.0) -> torch.Tensor:
    r"""Rusak et al.'s bimodal diagonal precision: the first ``dim // 2`` entries ``high``
    ("content", small changes), the rest ``low`` ("style", large changes).

    :returns: float64 tensor of shape ``(dim,)``; the default is ``(25,)*5 + (5,)*5``.
    """
    _positive_int(dim, "dim", 2)
    high, low = _positive_float(high, "high"), _positive_float(low, "low")
    out = torch.full((dim,), low, dtype=torch.float64)
    out[: dim // 2] = high
    return out


def anisotropic_sphere(
    z: torch.Tensor,
    precision: torch.Tensor | Sequence[float],
    threshold: float = 0.1,
    *,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    r"""Rusak et al.'s rejected projected normal around each row of ``z`` (points on the sphere).

    Draw :math:`\epsilon \sim \mathcal N(0, \operatorname{diag}(\Lambda)^{-1})`, :math:`y = z + \epsilon`;
    redraw the whole :math:`\epsilon` while :math:`|1 - \lVert y \rVert| \ge t`; return
    :math:`\tilde z = y / \lVert y \rVert`. Near the sphere,
    :math:`p(\tilde z \mid z) \approx \propto \exp(-\tfrac12 (\tilde z - z)^\top \Lambda (\tilde z - z))`.

    :param torch.Tensor z: anchors, shape ``(n, d)``, unit rows.
    :param precision: diagonal precision :math:`\Lambda`, ``d`` positive values.
    :param float threshold: :math:`t > 0`, the rejection band around the sphere.
    :returns: float64 tensor of shape ``(n, d)``, unit rows.
    """
    z = _unit_rows(z, "z")
    prec = torch.as_tensor(precision, dtype=torch.float64).detach().cpu()
    if prec.shape != (z.shape[-1],):
        raise ValueError(f"precision must have shape ({z.shape[-1]},) (one value per latent), got {tuple(prec.shape)}")
    if not bool(torch.isfinite(prec).all()) or not bool((prec > 0).all()):
        raise ValueError("precision must be finite and strictly positive")
    threshold = _positive_float(threshold, "threshold")
    gen = _generator(generator, seed)
    std = prec.rsqrt()
    out = torch.empty_like(z)
    todo = torch.arange(z.shape[0])
    tries, spent = 1, 0  # candidates per row and round; the first accepted one is kept (= sequential rejection)
    while todo.numel() > 0:
        if spent >= _MAX_TRIES:
            raise RuntimeError(
                f"anisotropic_sphere: no draw fell within threshold={threshold} of the sphere in {spent} tries; "
                "raise the threshold or the precision"
            )
        k, d = todo.numel(), z.shape[-1]
        y = z[todo, None, :] + std * torch.randn(k, tries, d, generator=gen, dtype=torch.float64)
        radius = y.norm(dim=-1)
        ok = (1 - radius).abs() < threshold  # (k, tries)
        first = ok.to(torch.uint8).argmax(-1)
        hit = ok.any(-1)
        rows = torch.arange(k)[hit]
        out[todo[hit]] = y[rows, first[hit]] / radius[rows, first[hit], None]
        todo = todo[~hit]
        spent += tries
        rate = float(ok.double().mean())
        tries = min(1024, max(1, math.ceil(2.0 / max(rate, 1e-3))))
    return out
