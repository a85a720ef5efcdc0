# SPDX-License-Identifier: Apache-2.0
r"""Contrastive learning inverts the data-generating process (Zimmermann et al., ICML 2021), as an RPM.

Latents :math:`z \in \mathbb R^{10}` are mixed by a fixed invertible MLP, :math:`x = g(z)`
(:class:`pyro_rpm.datasets.identifiability.InvertibleMLP`); a positive pair is
:math:`(g(z), g(\tilde z))`, :math:`\tilde z \sim p(\tilde z \mid z)`. One encoder :math:`e`, shared
by both views, is trained with the InfoNCE-as-RPM model of ``docs/core.md`` §7
(:class:`~pyro_rpm.DeltaRecognition`, :class:`~pyro_rpm.MarginalPrior`,
:class:`~pyro_rpm.ContrastivePrior`, :class:`~pyro_rpm.RecognitionGuide`, :class:`~pyro_rpm.RPM_ELBO`)
whose conditional prior matches the data's conditional:

* ``sphere``: :math:`z` uniform on :math:`S^9`, :math:`\tilde z \sim \mathrm{vMF}(z, \kappa)`;
  encoder output normalised onto the sphere, :class:`~pyro_rpm.CosineCoupling` with
  :math:`\tau = 1/\kappa`, i.e. the prior conditional :math:`\propto e^{\kappa\, e(x_1)^\top e(x_2)}`.
  Theory: :math:`e \circ g` is an orthogonal map, so the affine :math:`R^2` tends to 1 (the MCC does
  not, the vMF conditional being rotation invariant).
* ``sphere``, von Mises-Fisher factors (:func:`vmf_rpm`, run beside the first): one latent
  :math:`z \sim \mathcal U(S^9)` seen by both views through one shared encoder as
  :class:`~pyro_rpm.VonMisesFisherRecognition` factors :math:`\mathrm{vMF}(z; e(x_j), \kappa_f = 2\kappa)`,
  the guide the closed-form product :math:`q \propto f_1 f_2`, :class:`~pyro_rpm.RPM_ELBO`; same data,
  encoder and budget. Reported as ``r2_vmf``, ``mcc_vmf``.
* ``box``: :math:`z` uniform in :math:`[0, 1]^{10}`, each :math:`\tilde z_j \sim \mathrm{Laplace}(z_j, \lambda)`
  truncated to the box; unbounded encoder, :class:`~pyro_rpm.LaplaceCoupling` (learned scale), the
  prior conditional :math:`\propto e^{-\lVert e(x_1) - e(x_2) \rVert_1 / b}`. Theory: :math:`e \circ g` is a
  permutation and scaling (up to sign and offset), so the MCC tends to 1.

Metrics (cl-ica's protocol, :mod:`pyro_rpm.diagnostics.metrics`): ``r2`` = affine :math:`R^2` of :math:`z` from
:math:`e(x)`, ``mcc`` = mean correlation after Hungarian matching, each fitted in-sample on fresh
batches; ``*_identity`` scores the raw observations :math:`x = g(z)` (the untrained baseline of the
paper's "identity" column).

Usage::

    python examples/identifiability.py --quick                  # both settings: ~145 s of one CPU core
    python examples/identifiability.py --quick --setting sphere
    python examples/identifiability.py --device cuda            # B = 6144, long runs (a GPU)

``--quick`` (sphere, :math:`\kappa = 10`, B = 512): target :math:`R^2 \ge 0.85` and
:math:`\ge R^2_\text{identity} + 0.2`, and :math:`R^2_\text{vMF} \ge 0.9`. The last stdout line is
one JSON object with ``r2``, ``mcc``, ``r2_identity``, ``mcc_identity``, ``r2_vmf``, ``mcc_vmf``
(sphere) and ``r2_box``, ``mcc_box``, ``r2_box_identity``, ``mcc_box_identity`` (box), ``seconds``
and the settings. Figures (``--out``): learned against true
latents for each setting and the training losses.
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
    save_latent_figure,
    save_loss_figure,
    train,
)

from pyro_rpm import (  # noqa: E402
    CosineCoupling,
    LaplaceCoupling,
    RecognitionGuide,
    VonMisesFisherRecognition,
    observe,
)
from pyro_rpm.cli.scripts import emit, script_parser, setup
from pyro_rpm.datasets.identifiability import InvertibleMLP, box_laplace_pairs, sphere_vmf_pairs  # noqa: E402
from pyro_rpm.diagnostics.metrics import linear_r2, mcc
from pyro_rpm.train.optim import FusedAdam

DIM = 10
#: ``--quick``: one CPU thread, a few minutes for both settings.
QUICK: dict[str, Any] = {
    "batch_size": 512,
    "steps_sphere": 3000,
    "steps_box": 4000,
    "lr": 1e-3,
    "hidden": (256, 256, 256),
    "eval_batches": 3,
    "eval_size": 4096,
}
#: The full setting (a GPU): Zimmermann et al.'s batch and encoder widths, many more steps.
FULL: dict[str, Any] = {
    "batch_size": 6144,
    "steps_sphere": 100_000,
    "steps_box": 100_000,
    "lr": 1e-4,
    "hidden": (100, 500, 500, 500, 500, 100),
    "eval_batches": 10,
    "eval_size": 6144,
}


def _sampler(setting: str, mixing: InvertibleMLP, kappa: float, box_scale: float):
    if setting == "sphere":
        return lambda n, gen: sphere_vmf_pairs(n, DIM, kappa, generator=gen, mixing=mixing)
    return lambda n, gen: box_laplace_pairs(n, DIM, box_scale, generator=gen, mixing=mixing)


class UniformSphere(pyro.distributions.TorchDistribution):
    r"""The uniform distribution on :math:`S^{D-1}`: density :math:`\Gamma(D/2) / (2\pi^{D/2})`."""

    support = pyro.distributions.constraints.sphere
    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, dim: int, batch_shape=torch.Size(), device=None) -> None:
        self.dim, self._device = dim, device
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return UniformSphere(self.dim, batch_shape, self._device)

    def rsample(self, sample_shape=torch.Size()):
        return torch.nn.functional.normalize(
            torch.randn(self._extended_shape(sample_shape), device=self._device), dim=-1
        )

    def log_prob(self, value):
        log_area = math.log(2) + (self.dim / 2) * math.log(math.pi) - math.lgamma(self.dim / 2)
        return value.new_full(value.shape[:-1], -log_area)


def vmf_rpm(net: torch.nn.Module, dim: int, concentration: float):
    r"""One latent :math:`z \sim \mathcal U(S^{D-1})` seen by two views through one von Mises-Fisher
    recognition module, :math:`f(z \mid x_j) = \mathrm{vMF}(z; e(x_j), \kappa_f)`; the guide is the
    closed-form product :math:`q \propto f(z \mid x_1) f(z \mid x_2)` (:class:`RecognitionGuide`).

    :returns: ``(model, guide)`` taking ``(x1, x2)`` of shape ``(B, obs_dim)``.
    """
    encoder = VonMisesFisherRecognition(net, dim, concentration=concentration, name="vmf_encoder")

    def model(x1: torch.Tensor, x2: torch.Tensor) -> None:
        f1, f2 = encoder(x1), encoder(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", UniformSphere(dim, device=x1.device))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model)


def train_and_score(model, guide, net, sampler, args, cfg: dict[str, Any], device, steps: int, desc: str):
    """Train ``model``/``guide`` for ``steps`` steps, then score the encoder ``net`` on fresh batches.

    :returns: ``(losses, training seconds, scores)`` with the scores of :func:`evaluate`.
    """
    start = time.perf_counter()
    losses = train(
        model,
        guide,
        FusedAdam({"lr": cfg["lr"]}),
        sampler,
        steps=steps,
        batch_size=cfg["batch_size"],
        seed=args.seed,
        device=device,
        desc=desc,
        disable_progress=args.no_progress,
    )
    train_seconds = time.perf_counter() - start
    net.eval()
    eval_kw = {"batches": cfg["eval_batches"], "batch_size": cfg["eval_size"], "seed": args.seed + 10_000}
    return losses, train_seconds, evaluate(net, sampler, device=device, **eval_kw)


def run_vmf(args, cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    r"""The sphere setting with von Mises-Fisher factors instead of the InfoNCE-as-RPM model (same data,
    encoder and budget). The views' factors have :math:`\kappa_f = 2\kappa`: marginalising the shared
    :math:`z` leaves :math:`p(e_1, e_2) \propto C_D(\kappa_f \lVert e_1 + e_2 \rVert)^{-1}`, close to
    the data's :math:`\mathrm{vMF}(\kappa)` conditional (exact as :math:`\kappa \to \infty`)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    mixing = InvertibleMLP(DIM, seed=args.seed)
    sampler = _sampler("sphere", mixing, args.kappa, args.box_scale)
    net = encoder_mlp(DIM, cfg["hidden"], sphere=True).to(device)
    model, guide = vmf_rpm(net, DIM, 2 * args.kappa)
    steps = cfg["steps_sphere"] if args.steps is None else args.steps
    losses, train_seconds, scores = train_and_score(model, guide, net, sampler, args, cfg, device, steps, "sphere vMF RPM")
    return {
        "r2_vmf": scores["r2"],
        "mcc_vmf": scores["mcc"],
        "loss_vmf": float(np.mean(losses[-100:])),
        "concentration_vmf": 2 * args.kappa,
        "seconds_vmf": train_seconds,
    }


def run_setting(setting: str, args, cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Train one encoder for ``setting`` (``"sphere"`` or ``"box"``) and score it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    mixing = InvertibleMLP(DIM, seed=args.seed)
    sampler = _sampler(setting, mixing, args.kappa, args.box_scale)
    sphere = setting == "sphere"
    net = encoder_mlp(DIM, cfg["hidden"], sphere=sphere).to(device)
    if sphere:
        coupling = CosineCoupling(1.0 / args.kappa, name="coupling").to(device)  # matched: tau = 1 / kappa
    else:
        # learned scale b, started small enough that the first logits -|e(x1) - e(x2)|_1 / b are informative
        coupling = LaplaceCoupling(0.1, learn=True, name="coupling").to(device)
    model, guide = infonce_rpm(net, DIM, coupling)
    steps = cfg[f"steps_{setting}"] if args.steps is None else args.steps
    eval_kw = {"batches": cfg["eval_batches"], "batch_size": cfg["eval_size"], "seed": args.seed + 10_000}
    identity = evaluate(None, sampler, device=device, **eval_kw)

    losses, train_seconds, scores = train_and_score(model, guide, net, sampler, args, cfg, device, steps, f"{setting} RPM")

    x, _, z, _ = sampler(cfg["eval_size"], torch.Generator().manual_seed(args.seed + 20_000))
    h, zt = embed(net, x, device), z.double().numpy()
    figures = [
        save_loss_figure(os.path.join(args.out, f"{setting}_loss.png"), {setting: losses}, math.log(cfg["batch_size"]))
    ]
    if sphere:
        _, z_fit = linear_r2(h, zt, return_prediction=True)
        figures.append(
            save_latent_figure(
                os.path.join(args.out, "sphere_latents.png"),
                zt,
                z_fit,
                f"sphere/vMF(kappa={args.kappa:g}): affine map of e(x) vs true z (R2={scores['r2']:.3f})",
                "affine fit",
            )
        )
    else:
        _, matching = mcc(h, zt, return_matching=True)
        z_fit = np.empty_like(zt)
        for d, k in enumerate(matching):  # one learned coordinate per true one: sign, scale and offset
            slope, offset = np.polyfit(h[:, k], zt[:, d], 1)
            z_fit[:, d] = slope * h[:, k] + offset
        figures.append(
            save_latent_figure(
                os.path.join(args.out, "box_latents.png"),
                zt,
                z_fit,
                f"box/Laplace(lambda={args.box_scale:g}): matched coordinate of e(x) vs true z (MCC={scores['mcc']:.3f})",
                "matched, rescaled",
            )
        )
    result = {
        "r2": scores["r2"],
        "mcc": scores["mcc"],
        "r2_identity": identity["r2"],
        "mcc_identity": identity["mcc"],
        "final_loss": float(np.mean(losses[-100:])),
        "steps": steps,
        "train_seconds": train_seconds,
        "mixing_condition_numbers": mixing.condition_numbers,
        "figures": figures,
    }
    if not sphere:
        result["learned_scale"] = coupling.scale.detach().item()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "Zimmermann et al. (2021) as an RPM: recover latents on the sphere (vMF pairs) and in a box "
        "(Laplace pairs) from an invertible-MLP mixing. Last stdout line: one JSON object.",
        script=__file__,
        quick_help="B=512, 3000 (sphere) / 4000 (box) steps on one CPU thread (about 2.5 CPU minutes for both)",
        steps_help="SVI steps per setting (default: 3000 sphere / 4000 box with --quick, 100000 otherwise)",
    )
    parser.add_argument("--setting", choices=("sphere", "box", "both"), default="both", help="which benchmark")
    parser.add_argument("--kappa", type=float, default=10.0, help="vMF concentration of the sphere pairs (default 10)")
    parser.add_argument("--box-scale", type=float, default=0.05, help="Laplace scale of the box pairs (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=None, help="B, the in-batch support (512 quick / 6144)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-3 quick / 1e-4)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "batch_size" else 1):
            parser.error(f"--{name.replace('_', '-')} must be a positive int (batch size >= 2), got {value}")
    for name in ("kappa", "box_scale", "lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite positive float, got {value}")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    cfg = dict(QUICK if args.quick else FULL)
    if args.batch_size is not None:
        cfg["batch_size"] = args.batch_size
    if args.lr is not None:
        cfg["lr"] = args.lr

    start = time.perf_counter()
    out: dict[str, Any] = {}
    settings = ("sphere", "box") if args.setting == "both" else (args.setting,)
    for setting in settings:
        res = run_setting(setting, args, cfg, device)
        if setting == "sphere":
            out.update(
                {
                    "r2": res["r2"],
                    "mcc": res["mcc"],
                    "r2_identity": res["r2_identity"],
                    "mcc_identity": res["mcc_identity"],
                    "loss_sphere": res["final_loss"],
                    "steps_sphere": res["steps"],
                    "seconds_sphere": res["train_seconds"],
                }
            )
            vmf = run_vmf(args, cfg, device)
            out.update(vmf)
            print(
                f"sphere (vMF factors): R2 {vmf['r2_vmf']:.4f}, MCC {vmf['mcc_vmf']:.4f} in {vmf['seconds_vmf']:.0f} s",
                flush=True,
            )
        else:
            out.update(
                {
                    "r2_box": res["r2"],
                    "mcc_box": res["mcc"],
                    "r2_box_identity": res["r2_identity"],
                    "mcc_box_identity": res["mcc_identity"],
                    "loss_box": res["final_loss"],
                    "learned_scale_box": res["learned_scale"],
                    "steps_box": res["steps"],
                    "seconds_box": res["train_seconds"],
                }
            )
        out.setdefault("figures", []).extend(res["figures"])
        out["mixing_condition_numbers"] = res["mixing_condition_numbers"]
        print(
            f"{setting}: R2 {res['r2']:.4f} (identity {res['r2_identity']:.4f}), MCC {res['mcc']:.4f} "
            f"(identity {res['mcc_identity']:.4f}), {res['steps']} steps in {res['train_seconds']:.0f} s",
            flush=True,
        )
    out.update(
        {
            "setting": args.setting,
            "kappa": args.kappa,
            "tau": 1.0 / args.kappa,
            "box_scale": args.box_scale,
            "batch_size": cfg["batch_size"],
            "lr": cfg["lr"],
            "hidden": list(cfg["hidden"]),
            "quick": args.quick,
            "seed": args.seed,
            "device": str(device),
            "seconds": time.perf_counter() - start,
        }
    )
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
    emit(out)
    return out


if __name__ == "__main__":
    main()
