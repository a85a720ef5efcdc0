# SPDX-License-Identifier: Apache-2.0
r"""Positive pairs with known latents for the identifiability benchmarks of contrastive learning.

The data-generating processes of Zimmermann et al. (2021, "Contrastive learning inverts the data
generating process") and Rusak et al. (2024, "InfoNCE: identifying the gap between theory and
practice"). A positive pair is :math:`(z, \tilde z)` with :math:`z \sim p(z)` and
:math:`\tilde z \sim p(\tilde z \mid z)`; both are observed through one fixed invertible mixing
:math:`x = g(z)`, :math:`\tilde x = g(\tilde z)`:

* :func:`sphere_vmf_pairs`: :math:`z` uniform on the unit sphere :math:`S^{d-1}`,
  :math:`\tilde z \sim \mathrm{vMF}(z, \kappa)` (:func:`von_mises_fisher`, exact sampling);
* :func:`box_laplace_pairs`: :math:`z` uniform in the box :math:`[a, b]^d`, each coordinate
  :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)` truncated to :math:`[a, b]`
  (:func:`truncated_laplace`);
* :func:`anisotropic_sphere_pairs`: :math:`z` uniform on :math:`S^{d-1}`,
  :math:`\tilde z = y / \lVert y \rVert` with :math:`y = z + \epsilon`,
  :math:`\epsilon \sim \mathcal N(0, \Lambda^{-1})` for a diagonal precision :math:`\Lambda`, redrawn
  while :math:`|1 - \lVert y \rVert| \ge t` (:func:`anisotropic_sphere`);
* :class:`InvertibleMLP`: :math:`g(z) = W_L \sigma(\cdots \sigma(W_1 z))` with leaky-ReLU
  :math:`\sigma` (slope 0.2), no biases and well-conditioned square weights.

Every sampler draws from a private :class:`torch.Generator` (the global RNG is untouched), in
float64 on the CPU, and returns the true latents next to the observations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "InvertibleMLP",
    "anisotropic_sphere",
    "anisotropic_sphere_pairs",
    "bimodal_precision",
    "box_laplace_pairs",
    "sphere_vmf_pairs",
    "truncated_laplace",
    "uniform_box",
    "uniform_sphere",
    "von_mises_fisher",
]

_MAX_ROUNDS = 10_000
_MAX_TRIES = 1_000_000  # candidates per row before anisotropic_sphere gives up


# --------------------------------------------------------------------------------- argument checks
def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return float(value)


def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        return generator
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _unit_rows(z: object, name: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite float, got {value!r}")
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
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
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


# ------------------------------------------------------------------------------------------- mixing
class InvertibleMLP(nn.Module):
    r"""Frozen invertible MLP :math:`g(z) = W_L\, \sigma(W_{L-1} \cdots \sigma(W_1 z))` (Zimmermann et al., §1.1).

    :math:`\sigma` is the leaky ReLU with slope :math:`\alpha` (0.2), not applied after the last layer;
    there are no biases. Each :math:`W_l \in \mathbb R^{d \times d}` has entries
    :math:`\mathcal U(-1, 1)` and unit-norm columns. Zimmermann et al. rejection-sample each
    :math:`W_l` until its condition number is at most the smallest of a pool of 25 000 such matrices;
    here the ``n_layers`` best-conditioned matrices of a pool of ``pool_size`` draws are taken (the
    same target, about 4 for :math:`d = 10`, at a bounded cost), in a random order.

    The inverse is exact: :math:`g^{-1}(x) = W_1^{-1} \sigma^{-1}(\cdots \sigma^{-1}(W_L^{-1} x))`, and
    the Jacobian :math:`W_L D_{L-1} W_{L-1} \cdots D_1 W_1` (:math:`D_l` diagonal with entries 1 or
    :math:`\alpha`) has condition number at most :math:`\alpha^{-(L-1)} \prod_l \operatorname{cond}(W_l)`.

    :param int dim: latent (and observation) dimension :math:`d \ge 2`.
    :param int n_layers: number of linear layers :math:`L`.
    :param float negative_slope: :math:`\alpha \in (0, 1]`.
    :param int pool_size: number of random matrices to choose from (at least ``n_layers``).
    :param int seed: seed of the private generator.
    """

    def __init__(
        self, dim: int, n_layers: int = 3, *, negative_slope: float = 0.2, pool_size: int = 25_000, seed: int = 0
    ) -> None:
        super().__init__()
        _positive_int(dim, "dim", 2)
        _positive_int(n_layers, "n_layers")
        _positive_int(pool_size, "pool_size", n_layers)
        if (
            isinstance(negative_slope, bool)
            or not isinstance(negative_slope, (int, float))
            or not 0 < negative_slope <= 1
        ):
            raise ValueError(f"negative_slope must lie in (0, 1], got {negative_slope!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        gen = torch.Generator().manual_seed(seed)
        chunk = 5000
        best = torch.empty(0, dim, dim, dtype=torch.float64)
        best_cond = torch.empty(0, dtype=torch.float64)
        for start in range(0, pool_size, chunk):
            m = min(chunk, pool_size - start)
            w = 2 * torch.rand(m, dim, dim, generator=gen, dtype=torch.float64) - 1
            w = w / w.norm(dim=-2, keepdim=True)  # unit-norm columns
            cond = torch.linalg.cond(w)
            best = torch.cat([best, w])
            best_cond = torch.cat([best_cond, cond])
            keep = best_cond.argsort()[:n_layers]
            best, best_cond = best[keep], best_cond[keep]
        threshold = float(best_cond.max())
        order = torch.randperm(n_layers, generator=gen)
        chosen = [best[i] for i in order.tolist()]
        conds = [float(best_cond[i]) for i in order.tolist()]
        self.dim = dim
        self.n_layers = n_layers
        self.negative_slope = float(negative_slope)
        self.register_buffer("weights", torch.stack(chosen))  # (L, d, d), float64
        #: Condition number of each weight matrix (in layer order).
        self.condition_numbers: list[float] = conds
        #: Largest condition number among the chosen matrices (the pool's ``n_layers``-th smallest).
        self.cond_threshold: float = threshold

    def _check(self, z: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"{name} must have a last dimension of size {self.dim}, got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {z.dtype}")
        return z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`x = g(z)` for ``z`` of shape ``(..., dim)``, in the dtype and on the device of ``z``."""
        z = self._check(z, "z")
        w = self.weights.to(z.device, z.dtype)
        h = z
        for layer in range(self.n_layers):
            h = h @ w[layer].T
            if layer < self.n_layers - 1:
                h = torch.nn.functional.leaky_relu(h, self.negative_slope)
        return h

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`z = g^{-1}(x)` (exact, by solving each linear layer)."""
        x = self._check(x, "x")
        w = self.weights.to(x.device, x.dtype)
        h = x
        for layer in reversed(range(self.n_layers)):
            if layer < self.n_layers - 1:
                h = torch.where(h >= 0, h, h / self.negative_slope)
            h = torch.linalg.solve(w[layer], h.unsqueeze(-1)).squeeze(-1)
        return h

    def jacobian_condition_bound(self) -> float:
        r""":math:`\alpha^{-(L-1)} \prod_l \operatorname{cond}(W_l)`, an upper bound on the condition
        number of the Jacobian of :math:`g` at every point."""
        return math.prod(self.condition_numbers) / self.negative_slope ** (self.n_layers - 1)

    def extra_repr(self) -> str:
        conds = ", ".join(f"{c:.2f}" for c in self.condition_numbers)
        return f"dim={self.dim}, n_layers={self.n_layers}, negative_slope={self.negative_slope}, cond=[{conds}]"


# -------------------------------------------------------------------------------------------- pairs
def _mix(
    z1: torch.Tensor, z2: torch.Tensor, mixing: nn.Module | None, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = _check_dtype(dtype)
    if mixing is None:
        mixing = InvertibleMLP(z1.shape[-1], seed=seed)
    elif not isinstance(mixing, nn.Module) and not callable(mixing):
        raise TypeError(f"mixing must be an nn.Module or callable, got {type(mixing).__name__}")
    with torch.no_grad():
        x1, x2 = mixing(z1), mixing(z2)
    return x1.to(dtype), x2.to(dtype), z1.to(dtype), z2.to(dtype)


def sphere_vmf_pairs(
    n: int,
    dim: int = 10,
    kappa: float = 10.0,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    mixing: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Zimmermann et al.'s sphere benchmark: :math:`z \sim \mathcal U(S^{d-1})`,
    :math:`\tilde z \sim \mathrm{vMF}(z, \kappa)`, :math:`x = g(z)`, :math:`\tilde x = g(\tilde z)`.

    :param int n: number of pairs.
    :param int dim: latent dimension :math:`d`.
    :param float kappa: vMF concentration.
    :param int seed: seeds the sampler (when ``generator`` is None) and the mixing (when ``mixing`` is None).
    :param torch.Generator generator: CPU generator for the latents (e.g. one stream over training steps).
    :param mixing: the map :math:`g` (default :class:`InvertibleMLP` ``(dim, seed=seed)``).
    :param torch.dtype dtype: dtype of the returned tensors.
    :returns: ``(x1, x2, z1, z2)``, each of shape ``(n, dim)``.

    >>> x1, x2, z1, z2 = sphere_vmf_pairs(4, dim=3, seed=1)
    >>> tuple(x1.shape), bool(torch.allclose(z2.norm(dim=-1), torch.ones(4)))
    ((4, 3), True)
    """
    gen = _generator(generator, seed)
    z1 = uniform_sphere(n, dim, generator=gen)
    z2 = von_mises_fisher(z1, kappa, generator=gen)
    return _mix(z1, z2, mixing, seed, dtype)


def box_laplace_pairs(
    n: int,
    dim: int = 10,
    scale: float = 0.05,
    low: float = 0.0,
    high: float = 1.0,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    mixing: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Zimmermann et al.'s box benchmark: :math:`z \sim \mathcal U([a, b]^d)`, each
    :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)` truncated to :math:`[a, b]`, then :math:`x = g(z)`.

    Parameters as in :func:`sphere_vmf_pairs`; ``scale`` is :math:`\lambda`, ``low``/``high`` the box.

    :returns: ``(x1, x2, z1, z2)``, each of shape ``(n, dim)``.
    """
    gen = _generator(generator, seed)
    z1 = uniform_box(n, dim, low, high, generator=gen)
    z2 = truncated_laplace(z1, scale, low, high, generator=gen)
    return _mix(z1, z2, mixing, seed, dtype)


def anisotropic_sphere_pairs(
    n: int,
    precision: torch.Tensor | Sequence[float] | None = None,
    threshold: float = 0.1,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    mixing: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Rusak et al.'s anisotropic benchmark: :math:`z \sim \mathcal U(S^{d-1})`,
    :math:`\tilde z` from :func:`anisotropic_sphere` with diagonal precision :math:`\Lambda`
    (default :func:`bimodal_precision`: five latents at 25, five at 5), then :math:`x = g(z)`.

    :returns: ``(x1, x2, z1, z2)``, each of shape ``(n, d)`` with ``d = len(precision)``.
    """
    prec = bimodal_precision() if precision is None else torch.as_tensor(precision, dtype=torch.float64)
    if prec.dim() != 1 or prec.shape[0] < 2:
        raise ValueError(f"precision must be a vector of length >= 2, got shape {tuple(prec.shape)}")
    gen = _generator(generator, seed)
    z1 = uniform_sphere(n, prec.shape[0], generator=gen)
    z2 = anisotropic_sphere(z1, prec, threshold, generator=gen)
    return _mix(z1, z2, mixing, seed, dtype)
