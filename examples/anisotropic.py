# SPDX-License-Identifier: Apache-2.0
r"""AnInfoNCE (Rusak et al., 2024) as an RPM: a learned anisotropic prior recovers the latents and their precisions.

Ten latents uniform on the sphere :math:`S^9`; a positive pair moves them by an anisotropic
Gaussian :math:`\epsilon \sim \mathcal N(0, \Lambda^{-1})` (rejected and projected back onto the
sphere, :func:`pyro_rpm.datasets.identifiability.anisotropic_sphere`) with the bimodal precision
:math:`\Lambda = (25, 25, 25, 25, 25, 5, 5, 5, 5, 5)`: five "content" latents change little, five
"style" latents a lot. Both are seen through the invertible MLP mixing :math:`x = g(z)`.

One encoder, shared by both views and normalised onto the sphere, is trained with the
InfoNCE-as-RPM model (``docs/core.md`` §7) under two conditional priors:

* ``aniso``: :class:`~pyro_rpm.AnisotropicRBFCoupling`,
  :math:`g(z, z') = -\tfrac12 (z - z')^\top \hat\Lambda (z - z')` with a learned diagonal
  :math:`\hat\Lambda` (AnInfoNCE). Theory: the latents are identified up to an orthogonal map that is
  block-diagonal over groups of equal :math:`\Lambda`, so :math:`R^2 \to 1`, the MCC is limited by the
  free rotations inside each block (≈ 0.68 in the authors' logs) and :math:`\hat\Lambda \to \Lambda`
  up to a permutation;
* ``iso``: :class:`~pyro_rpm.RBFCoupling`, one learned precision (plain InfoNCE with a learned
  temperature): the mismatched isotropic prior mixes content and style.

Metrics: ``r2_aniso``, ``mcc_aniso``, ``r2_iso``, ``mcc_iso`` (:mod:`pyro_rpm.diagnostics.metrics`, fitted on
fresh samples), per-group :math:`R^2` (``r2_content_*``, ``r2_style_*``), and the learned
precisions: ``learned_precision`` lists :math:`\hat\Lambda` in the order of the true latents (each
learned coordinate placed at the true latent the MCC's Hungarian matching pairs it with),
``true_precision`` the truth, ``lambda_ratio`` = mean of :math:`\hat\Lambda` over the coordinates
matched to the high-precision latents / mean over those matched to the low ones, and
``lambda_ratio_sorted`` the same for the five largest over the five smallest values.

Usage::

    python examples/anisotropic.py --quick              # 3000 steps per prior, B = 512: ~150 s of one CPU core
    python examples/anisotropic.py --device cuda        # B = 1000, 100 000 steps (a GPU)

``--quick`` targets: ``r2_aniso >= 0.95``, ``mcc_aniso >= 0.65``, ``mcc_iso <= 0.55``,
``lambda_ratio >= 2``. Figures (``--out``): learned against true latents for both priors, the losses,
and :math:`\hat\Lambda` against :math:`\Lambda`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import numpy as np
import pyro
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _contrastive_rpm import (  # noqa: E402
    embed,
    encoder_mlp,
    evaluate,
    infonce_rpm,
    pyplot,
    save_latent_figure,
    save_loss_figure,
    train,
)

from pyro_rpm import AnisotropicRBFCoupling, RBFCoupling  # noqa: E402
from pyro_rpm.cli.scripts import emit, save_figure, script_parser, setup
from pyro_rpm.datasets.identifiability import InvertibleMLP, anisotropic_sphere_pairs, bimodal_precision  # noqa: E402
from pyro_rpm.diagnostics.metrics import linear_r2, mcc

DIM = 10
QUICK: dict[str, Any] = {
    "batch_size": 512,
    "steps": 3000,
    "lr": 2e-3,
    "lr_precision": 3e-3,
    "hidden": (256, 256, 256),
    "eval_batches": 3,
    "eval_size": 4096,
}
FULL: dict[str, Any] = {
    "batch_size": 1000,
    "steps": 100_000,
    "lr": 1e-4,
    "lr_precision": 3e-4,
    "hidden": (100, 500, 500, 500, 500, 100),
    "eval_batches": 10,
    "eval_size": 6144,
}
#: Initial precision of both couplings: softplus(0), as AnInfoNCE's initialisation.
INIT_PRECISION = math.log(2.0)


def run_prior(prior: str, args, cfg: dict[str, Any], device: torch.device, sampler) -> dict[str, Any]:
    """Train the encoder with the ``"aniso"`` or ``"iso"`` coupling and score it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    net = encoder_mlp(DIM, cfg["hidden"], sphere=True).to(device)
    lengthscale = INIT_PRECISION**-0.5
    if prior == "aniso":
        coupling = AnisotropicRBFCoupling(DIM, lengthscale, name="coupling").to(device)
    else:
        coupling = RBFCoupling(lengthscale, name="coupling").to(device)
    model, guide = infonce_rpm(net, DIM, coupling)

    def lr(module_name: str, param_name: str) -> dict[str, float]:
        return {"lr": cfg["lr_precision"] if module_name == "coupling" else cfg["lr"]}

    steps = cfg["steps"] if args.steps is None else args.steps
    start = time.perf_counter()
    losses = train(
        model,
        guide,
        pyro.optim.Adam(lr),
        sampler,
        steps=steps,
        batch_size=cfg["batch_size"],
        seed=args.seed,
        device=device,
        desc=f"{prior} RPM",
        disable_progress=args.no_progress,
    )
    train_seconds = time.perf_counter() - start
    net.eval()
    eval_kw = {"batches": cfg["eval_batches"], "batch_size": cfg["eval_size"], "seed": args.seed + 10_000}
    scores = evaluate(net, sampler, device=device, **eval_kw)
    x, _, z, _ = sampler(cfg["eval_size"], torch.Generator().manual_seed(args.seed + 20_000))
    h, zt = embed(net, x, device), z.double().numpy()
    _, matching = mcc(h, zt, return_matching=True)
    half = DIM // 2
    precision = coupling.precision.detach().cpu().double().expand(DIM).numpy()
    return {
        "r2": scores["r2"],
        "mcc": scores["mcc"],
        "r2_content": linear_r2(h, zt[:, :half]),
        "r2_style": linear_r2(h, zt[:, half:]),
        "matching": matching,
        "precision": precision,
        "losses": losses,
        "steps": steps,
        "train_seconds": train_seconds,
        "h": h,
        "z": zt,
    }


def _precision_figure(path: str, true: np.ndarray, learned: np.ndarray, iso: float) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    idx = np.arange(len(true))
    ax.bar(idx - 0.2, true, width=0.4, label="true Λ", color="0.6")
    ax.bar(idx + 0.2, learned, width=0.4, label="learned Λ̂ (aniso, matched coordinate)")
    ax.axhline(iso, color="C3", ls="--", lw=1, label=f"learned isotropic precision ({iso:.1f})")
    ax.set_xticks(idx)
    ax.set_xlabel("true latent")
    ax.set_ylabel("precision")
    ax.legend(fontsize=8)
    return save_figure(fig, os.path.dirname(path) or ".", os.path.basename(path), dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "AnInfoNCE (Rusak et al. 2024) as an RPM: anisotropic vs isotropic contrastive priors on "
        "bimodal-precision sphere data. Last stdout line: one JSON object.",
        script=__file__,
        quick_help="B=512, 3000 steps per prior on one CPU thread (a few minutes)",
        steps_help="SVI steps per prior (default 3000 with --quick, 100000 otherwise)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="B, the in-batch support (512 quick / 1000)")
    parser.add_argument("--lr", type=float, default=None, help="encoder Adam learning rate (2e-3 quick / 1e-4)")
    parser.add_argument(
        "--lr-precision",
        type=float,
        default=None,
        help="learning rate of the couplings' log-lengthscales (3e-3 quick / 3e-4)",
    )
    parser.add_argument("--threshold", type=float, default=0.1, help="rejection band around the sphere")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive int, got {args.steps}")
    if args.batch_size is not None and args.batch_size < 2:
        parser.error(f"--batch-size must be an int >= 2, got {args.batch_size}")
    for name in ("lr", "lr_precision", "threshold"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite positive float, got {value}")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("batch_size", "lr", "lr_precision"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    start = time.perf_counter()
    true_precision = bimodal_precision(DIM)
    mixing = InvertibleMLP(DIM, seed=args.seed)

    def sampler(n, gen):
        return anisotropic_sphere_pairs(n, true_precision, args.threshold, generator=gen, mixing=mixing)

    aniso = run_prior("aniso", args, cfg, device, sampler)
    print(
        f"aniso: R2 {aniso['r2']:.4f}, MCC {aniso['mcc']:.4f}, {aniso['steps']} steps in {aniso['train_seconds']:.0f} s",
        flush=True,
    )
    iso = run_prior("iso", args, cfg, device, sampler)
    print(
        f"iso:   R2 {iso['r2']:.4f}, MCC {iso['mcc']:.4f}, {iso['steps']} steps in {iso['train_seconds']:.0f} s",
        flush=True,
    )

    true = true_precision.numpy()
    learned = aniso["precision"][aniso["matching"]]  # learned precision of the coordinate matched to each true latent
    high = true == true.max()
    ratio = float(learned[high].mean() / learned[~high].mean())
    ranked = np.sort(aniso["precision"])
    ratio_sorted = float(ranked[DIM // 2 :].mean() / ranked[: DIM // 2].mean())

    figures = [
        save_loss_figure(
            os.path.join(args.out, "loss.png"),
            {"anisotropic (learned Λ̂)": aniso["losses"], "isotropic": iso["losses"]},
            math.log(cfg["batch_size"]),
        ),
        _precision_figure(os.path.join(args.out, "precisions.png"), true, learned, float(iso["precision"][0])),
    ]
    for name, res in (("aniso", aniso), ("iso", iso)):
        _, z_fit = linear_r2(res["h"], res["z"], return_prediction=True)
        figures.append(
            save_latent_figure(
                os.path.join(args.out, f"latents_{name}.png"),
                res["z"],
                z_fit,
                f"{name} prior: affine map of e(x) vs true z (content z[0:5], style z[5:10]; R2={res['r2']:.3f})",
                "affine fit",
            )
        )

    out: dict[str, Any] = {
        "r2_aniso": aniso["r2"],
        "mcc_aniso": aniso["mcc"],
        "r2_iso": iso["r2"],
        "mcc_iso": iso["mcc"],
        "lambda_ratio": ratio,
        "lambda_ratio_sorted": ratio_sorted,
        "learned_precision": [round(float(v), 3) for v in learned],
        "true_precision": [float(v) for v in true],
        "learned_precision_iso": round(float(iso["precision"][0]), 3),
        "r2_content_aniso": aniso["r2_content"],
        "r2_style_aniso": aniso["r2_style"],
        "r2_content_iso": iso["r2_content"],
        "r2_style_iso": iso["r2_style"],
        "loss_aniso": float(np.mean(aniso["losses"][-100:])),
        "loss_iso": float(np.mean(iso["losses"][-100:])),
        "steps": aniso["steps"],
        "seconds_aniso": aniso["train_seconds"],
        "seconds_iso": iso["train_seconds"],
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"],
        "lr_precision": cfg["lr_precision"],
        "hidden": list(cfg["hidden"]),
        "quick": args.quick,
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
        "seconds": time.perf_counter() - start,
    }
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
    emit(out)
    return out


if __name__ == "__main__":
    main()
