# SPDX-License-Identifier: Apache-2.0
r"""Shared parts of the contrastive examples (``identifiability.py``, ``anisotropic.py``,
``moving_balls.py``, ``optimal_prior_mi.py``): InfoNCE written as an RPM.

The model is the one of ``docs/core.md`` §7, with one encoder :math:`e` shared by both views:

.. math::

    z_1 \sim F_1 = \tfrac1B \textstyle\sum_m \delta_{e(x_1^{(m)})}, \qquad
    z_2 \mid z_1 \sim F_2(z_2)\, e^{g(z_1, z_2)} / Z(z_1),

both views observed through the in-batch support (:func:`pyro_rpm.observe`), the tied guide and
:class:`pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI`. Per datum the loss is
:math:`\text{InfoNCE} + \log B` with the coupling :math:`g` as the critic; choosing :math:`g` is
choosing the conditional :math:`p(z_2 \mid z_1)` of the prior, which is what the identifiability
theory of Zimmermann et al. (2021) and Rusak et al. (2024) asks to match to the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyro_rpm import RPM_ELBO, ContrastivePrior, Coupling, DeltaRecognition, MarginalPrior, RecognitionGuide, observe
from pyro_rpm.cli.scripts import progress, pyplot, save_figure
from pyro_rpm.diagnostics.metrics import linear_r2, mcc

__all__ = [
    "UnitSphere",
    "embed",
    "encoder_mlp",
    "evaluate",
    "infonce_rpm",
    "pyplot",
    "save_latent_figure",
    "save_loss_figure",
    "train",
]

#: ``sampler(n, generator) -> (x1, x2, z1, z2)``, CPU tensors.
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class UnitSphere(nn.Module):
    r"""Last layer of a sphere encoder: :math:`h \mapsto h / \lVert h \rVert` (Zimmermann's "fixed sphere")."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(h, dim=-1, eps=1e-8)


def encoder_mlp(dim: int, hidden: Sequence[int], *, sphere: bool) -> nn.Sequential:
    """MLP ``dim -> hidden... -> dim`` with LeakyReLU(0.01) (cl-ica's ``get_mlp``), optionally onto the sphere."""
    layers: list[nn.Module] = []
    width = dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.01)]
        width = h
    layers.append(nn.Linear(width, dim))
    if sphere:
        layers.append(UnitSphere())
    return nn.Sequential(*layers)


def infonce_model(
    encoder1: nn.Module,
    encoder2: nn.Module,
    coupling: Coupling,
    *,
    plate: str = "data",
    sites: Sequence[str] = ("z1", "z2", "x1", "x2"),
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The InfoNCE-as-RPM model (module docstring) over two recognition modules, which may be one.

    :param sites: names of the two latents and the two observed views.
    :returns: the model, taking ``(x1, x2)`` of shape ``(B, obs_dim)``.
    """
    z1_site, z2_site, x1_site, x2_site = sites

    def model(x1: torch.Tensor, x2: torch.Tensor) -> None:
        f1, f2 = encoder1(x1), encoder2(x2)
        with pyro.plate(plate, x1.shape[0]):
            z1 = pyro.sample(z1_site, MarginalPrior(f1))
            z2 = pyro.sample(z2_site, ContrastivePrior(f2, coupling, z1))
            observe(x1_site, f1, z1)
            observe(x2_site, f2, z2)

    return model


def infonce_rpm(net: nn.Module, dim: int, coupling: Coupling, name: str = "encoder"):
    """The InfoNCE-as-RPM model and its tied guide, one :class:`DeltaRecognition` for both views.

    :returns: ``(model, guide)`` taking ``(x1, x2)`` of shape ``(B, obs_dim)``.
    """
    encoder = DeltaRecognition(net, dim, name=name)
    model = infonce_model(encoder, encoder, coupling)
    return model, RecognitionGuide(model)


def train(
    model,
    guide,
    optim,
    sampler: Sampler,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    desc: str,
    disable_progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """``steps`` SVI steps of :class:`RPM_ELBO`, each on ``batch_size`` fresh pairs; returns loss per datum."""
    svi = pyro.infer.SVI(model, guide, optim, RPM_ELBO())
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = progress(steps, desc, disable=disable_progress)
    for step in bar:
        x1, x2, _, _ = sampler(batch_size, generator)
        losses.append(svi.step(x1.to(device), x2.to(device)) / batch_size)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
        if on_step is not None:
            on_step(step)
    return losses


@torch.no_grad()
def embed(net: nn.Module, x: torch.Tensor, device: torch.device, chunk: int = 8192) -> np.ndarray:
    """Encoder outputs for ``x`` as a float64 NumPy array."""
    parts = [net(x[i : i + chunk].to(device)).double().cpu() for i in range(0, x.shape[0], chunk)]
    return torch.cat(parts).numpy()


def evaluate(
    net: nn.Module | None,
    sampler: Sampler,
    *,
    batches: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Affine :math:`R^2` and MCC of the true latents from the encoder outputs (cl-ica's protocol).

    Each of ``batches`` fresh batches of ``batch_size`` samples from the marginal is fitted and
    scored in-sample; the means are returned. ``net=None`` scores the observations themselves
    (the "identity" baseline, :math:`\\hat z = x = g(z)`).
    """
    generator = torch.Generator().manual_seed(seed)
    r2s, mccs = [], []
    for _ in range(batches):
        x, _, z, _ = sampler(batch_size, generator)
        h = x.double().numpy() if net is None else embed(net, x, device)
        zt = z.double().numpy()
        r2s.append(linear_r2(h, zt))
        mccs.append(mcc(h, zt))
    return {"r2": float(np.mean(r2s)), "mcc": float(np.mean(mccs))}


def save_loss_figure(path: str, curves: dict[str, list[float]], reference: float | None = None) -> str:
    """Training losses per datum (raw and smoothed); ``reference`` = log B draws the bounds log B and 2 log B."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, losses in curves.items():
        steps = np.arange(1, len(losses) + 1)
        (line,) = ax.plot(steps, losses, lw=0.4, alpha=0.3)
        window = max(1, min(200, len(losses) // 10))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, color=line.get_color(), label=label)
    if reference is not None:  # loss = InfoNCE + log B: log B when InfoNCE = 0, 2 log B at chance (equal logits)
        ax.axhline(reference, color="k", ls=":", lw=1, label="log B (InfoNCE = 0)")
        ax.axhline(2 * reference, color="0.5", ls="--", lw=1, label="2 log B (chance)")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss per datum = InfoNCE + log B (nats)")
    ax.legend(fontsize=8)
    return save_figure(fig, os.path.dirname(path) or ".", os.path.basename(path), dpi=110)


def save_latent_figure(path: str, z_true: np.ndarray, z_fit: np.ndarray, title: str, ylabel: str) -> str:
    """Scatter of each true latent against its learned counterpart (up to 10 dimensions)."""
    plt = pyplot()
    dims = min(10, z_true.shape[1])
    cols = min(5, dims)
    rows = (dims + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    n = min(2000, z_true.shape[0])
    for d in range(rows * cols):
        ax = axes[d // cols][d % cols]
        if d >= dims:
            ax.axis("off")
            continue
        ax.scatter(z_true[:n, d], z_fit[:n, d], s=2, alpha=0.4)
        lo, hi = float(z_true[:, d].min()), float(z_true[:, d].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"z[{d}]", fontsize=9)
        if d % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, os.path.dirname(path) or ".", os.path.basename(path), dpi=110)
