# SPDX-License-Identifier: Apache-2.0
r"""InfoNCE is variational inference in an RPM: check ``loss / B = InfoNCE + log B`` while training.

For each coupling :math:`g` (bilinear, RBF, anisotropic RBF, cosine, Laplace) the script builds the
RPM of ``docs/core.md`` §7: deterministic encoders :math:`a = e_1(x_1)`, :math:`b = e_2(x_2)`
(:class:`~pyro_rpm.DeltaRecognition`), the prior :math:`z_1 \sim F_1` (:class:`~pyro_rpm.MarginalPrior`),
:math:`z_2 \mid z_1 \sim F_2(z_2)\, e^{g(z_1, z_2)} / Z(z_1)` (:class:`~pyro_rpm.ContrastivePrior`), both
views observed through the in-batch support, the tied guide and :class:`~pyro_rpm.RPM_ELBO`. Theory says

.. math::

    \frac{\text{loss}}{B} = -\frac1B \sum_n \Big[g(a_n, b_n) - \log \sum_m e^{g(a_n, b_m)}\Big] + \log B
    = \text{InfoNCE} + \log B .

The encoders are trained with :class:`pyro.infer.SVI`; at every step the SVI loss is compared
with InfoNCE written here independently (explicit broadcasting over the raw encoder outputs, not
the couplings' own ``pairwise``), and at a few check points also the value of
:meth:`RPM_ELBO.loss` and the gradients of :math:`\text{loss}/B` and of InfoNCE w.r.t. every
encoder and coupling parameter.

Usage::

    python examples/infonce_identity.py            # 400 steps per coupling, B = 128
    python examples/infonce_identity.py --quick    # 60 steps per coupling, B = 64 (a few seconds)

Prints a table per coupling; the figure ``identity.png`` (both curves over training and their
difference) goes to ``--out``. The last stdout line is one JSON object with ``max_abs_diff``
(max over couplings and steps of :math:`|\text{loss}/B - (\text{InfoNCE} + \log B)|`),
``max_grad_abs_diff``, ``max_grad_rel_diff``, ``batch_size`` and ``couplings``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
import pyro
import torch
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    AnisotropicRBFCoupling,
    BilinearCoupling,
    ContrastivePrior,
    CosineCoupling,
    Coupling,
    DeltaRecognition,
    LaplaceCoupling,
    MarginalPrior,
    RBFCoupling,
    RecognitionGuide,
    observe,
)
from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.datasets.synthetic import two_view_gaussian

EMBED_DIM = 4  # encoder output dimension D
HIDDEN = 32
OBS_DIM = 10
N_DATA = 2048


# --- InfoNCE logits g(a_n, b_m), written by broadcasting over the raw embeddings -----------------
def _g_bilinear(c: BilinearCoupling, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None, :, None] * c.weight[None, None] * b[None, :, None, :]).sum((-1, -2))


def _g_rbf(c: RBFCoupling | AnisotropicRBFCoupling, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -((a[:, None, :] - b[None, :, :]) ** 2 / (2 * c.lengthscale**2)).sum(-1)


def _g_cosine(c: CosineCoupling, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dots = (a[:, None, :] * b[None, :, :]).sum(-1)
    norms = a.pow(2).sum(-1).sqrt()[:, None] * b.pow(2).sum(-1).sqrt()[None, :]
    return dots / norms / c.temperature


def _g_laplace(c: LaplaceCoupling, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -(a[:, None, :] - b[None, :, :]).abs().sum(-1) / c.scale


COUPLINGS: dict[str, tuple[Callable[[], Coupling], Callable]] = {
    "bilinear": (lambda: BilinearCoupling(EMBED_DIM, name="g_bilinear"), _g_bilinear),
    "rbf": (lambda: RBFCoupling(1.0, name="g_rbf"), _g_rbf),
    "anisotropic_rbf": (
        lambda: AnisotropicRBFCoupling(EMBED_DIM, torch.linspace(0.5, 2.0, EMBED_DIM), name="g_aniso"),
        _g_rbf,
    ),
    "cosine": (lambda: CosineCoupling(0.2, learn=True, name="g_cosine"), _g_cosine),
    "laplace": (lambda: LaplaceCoupling(1.0, name="g_laplace"), _g_laplace),
}


def infonce(g: torch.Tensor) -> torch.Tensor:
    r"""InfoNCE :math:`-\frac1B \sum_n [g_{nn} - \log \sum_m e^{g_{nm}}]` from the (B, B) logits."""
    row_max = g.max(dim=-1, keepdim=True).values.detach()
    log_norm = (g - row_max).exp().sum(-1).log() + row_max.squeeze(-1)
    return -(torch.diagonal(g) - log_norm).mean()


def _encoder(dim_in: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, EMBED_DIM))


def run_coupling(name, x1, x2, *, steps, batch_size, checks, lr, seed, show_progress):
    """Train the InfoNCE RPM with coupling ``name``; compare it with InfoNCE at every step."""
    make_coupling, reference_g = COUPLINGS[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    device, dtype = x1.device, x1.dtype
    coupling = make_coupling().to(device, dtype)
    net1, net2 = _encoder(x1.shape[-1]).to(device, dtype), _encoder(x2.shape[-1]).to(device, dtype)
    e1, e2 = DeltaRecognition(net1, EMBED_DIM, name="e1"), DeltaRecognition(net2, EMBED_DIM, name="e2")

    def model(x1, x2):
        f1, f2 = e1(x1), e2(x2)
        with pyro.plate("data", x1.shape[0]):
            z1 = pyro.sample("z1", MarginalPrior(f1))
            z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
            observe("x1", f1, z1)
            observe("x2", f2, z2)

    def reference(x1, x2):
        return infonce(reference_g(coupling, net1(x1), net2(x2)))

    guide = RecognitionGuide(model)
    elbo = RPM_ELBO()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    params = [*net1.parameters(), *net2.parameters(), *coupling.parameters()]
    log_b = math.log(batch_size)
    check_steps = set(np.linspace(0, steps - 1, checks).round().astype(int).tolist())
    generator = torch.Generator().manual_seed(seed)
    rpm_curve, ref_curve, rows = [], [], []
    for step in progress(steps, f"{name:>15}", disable=not show_progress):
        idx = torch.randperm(x1.shape[0], generator=generator)[:batch_size].to(device)
        xb1, xb2 = x1[idx], x2[idx]
        if step in check_steps:
            rows.append(_check(step, elbo, model, guide, reference, params, xb1, xb2, log_b))
        with torch.no_grad():
            ref = reference(xb1, xb2).item()
        rpm_curve.append(svi.step(xb1, xb2) / batch_size - log_b)  # loss at the pre-step parameters
        ref_curve.append(ref)
    return np.array(rpm_curve), np.array(ref_curve), rows


def _check(step, elbo, model, guide, reference, params, x1, x2, log_b):
    """``RPM_ELBO.loss`` and the gradients of loss / B against InfoNCE (+ log B) on one batch."""
    batch_size = x1.shape[0]
    loss = elbo.loss(model, guide, x1, x2) / batch_size
    rpm_grads = torch.autograd.grad(elbo.differentiable_loss(model, guide, x1, x2) / batch_size, params)
    ref_loss = reference(x1, x2)
    ref_grads = torch.autograd.grad(ref_loss, params)
    grad_abs = max((a - b).abs().max().item() for a, b in zip(rpm_grads, ref_grads))
    grad_scale = max(b.abs().max().item() for b in ref_grads)
    return {
        "step": step,
        "rpm": loss - log_b,
        "infonce": ref_loss.item(),
        "abs_diff": abs(loss - (ref_loss.item() + log_b)),
        "grad_abs_diff": grad_abs,
        "grad_rel_diff": grad_abs / grad_scale,
    }


def _print_table(name: str, rows: list[dict], curve_diff: float, batch_size: int, dtype: torch.dtype) -> None:
    print(f"\n{name} coupling (B = {batch_size}, {str(dtype).replace('torch.', '')}): RPM loss/B - log B vs InfoNCE")
    print(f"{'step':>6} {'RPM loss/B-logB':>16} {'InfoNCE':>12} {'|diff|':>10} {'max|dgrad|':>11} {'rel':>9}")
    for r in rows:
        print(
            f"{r['step']:>6} {r['rpm']:>16.7f} {r['infonce']:>12.7f} {r['abs_diff']:>10.2e} "
            f"{r['grad_abs_diff']:>11.2e} {r['grad_rel_diff']:>9.2e}"
        )
    print(f"{'all steps':>6}: max |SVI loss/B - (InfoNCE + log B)| = {curve_diff:.2e}")


def _save_figure(out: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(2, len(curves), figsize=(3.2 * len(curves), 5.2), sharex=True, squeeze=False)
    for k, (name, (rpm, ref)) in enumerate(curves.items()):
        steps = np.arange(len(rpm))
        top, bottom = axes[0, k], axes[1, k]
        top.plot(steps, rpm, lw=2.5, alpha=0.5, label="RPM loss/B - log B")
        top.plot(steps, ref, "k--", lw=1, label="InfoNCE (reference)")
        top.set_title(name)
        bottom.semilogy(steps, np.maximum(np.abs(rpm - ref), 1e-10), lw=1)
        bottom.axhline(1e-5, color="r", ls=":", lw=1, label="tolerance 1e-5")
        bottom.set_ylim(1e-10, 1e-3)
        bottom.set_xlabel("SVI step")
    axes[0, 0].set_ylabel("nats per datum")
    axes[1, 0].set_ylabel("|difference| (floor 1e-10)")
    axes[1, 0].legend(fontsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"RPM_ELBO with DeltaRecognition + ContrastivePrior = InfoNCE + log B (B = {batch_size})")
    fig.tight_layout()
    path = os.path.join(out, "identity.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser(
        "Check numerically that the RPM loss / B equals InfoNCE + log B for every coupling, during training.",
        script=__file__,
        quick_help="60 steps per coupling at B = 64 (a few seconds)",
        steps_help="SVI steps per coupling (default 400; 60 with --quick)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="batch = support size B (default 128; 64 quick)")
    parser.add_argument("--checks", type=int, default=5, help="check points (value + gradients) per coupling")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default float32")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (60 if args.quick else 400)
    batch_size = args.batch_size if args.batch_size is not None else (64 if args.quick else 128)
    if steps < 1 or args.checks < 1 or not 2 <= batch_size <= N_DATA:
        parser.error(f"need --steps >= 1, --checks >= 1 and 2 <= --batch-size <= {N_DATA}")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    x1, x2, _ = two_view_gaussian(N_DATA, obs_dim=OBS_DIM, seed=args.seed, dtype=dtype)
    x1, x2 = x1.to(device), x2.to(device)

    curves, summary = {}, {}
    for name in COUPLINGS:
        rpm, ref, rows = run_coupling(
            name, x1, x2, steps=steps, batch_size=batch_size, checks=args.checks, lr=args.lr, seed=args.seed,
            show_progress=not args.no_progress,
        )  # fmt: skip
        curve_diff = float(np.abs(rpm - ref).max())
        _print_table(name, rows, curve_diff, batch_size, dtype)
        curves[name] = (rpm, ref)
        summary[name] = {
            "max_abs_diff": max(curve_diff, *(r["abs_diff"] for r in rows)),
            "max_grad_abs_diff": max(r["grad_abs_diff"] for r in rows),
            "max_grad_rel_diff": max(r["grad_rel_diff"] for r in rows),
            "infonce_first": float(ref[0]),
            "infonce_last": float(ref[-1]),
        }
    figure = _save_figure(args.out, curves, batch_size)
    result = {
        "max_abs_diff": max(s["max_abs_diff"] for s in summary.values()),
        "max_grad_abs_diff": max(s["max_grad_abs_diff"] for s in summary.values()),
        "max_grad_rel_diff": max(s["max_grad_rel_diff"] for s in summary.values()),
        "batch_size": batch_size,
        "log_batch_size": math.log(batch_size),
        "couplings": list(COUPLINGS),
        "per_coupling": summary,
        "steps": steps,
        "checks": args.checks,
        "dtype": args.dtype,
        "seed": args.seed,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 2),
        "figures": [figure],
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
