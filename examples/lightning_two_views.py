# SPDX-License-Identifier: Apache-2.0
r"""The two-view demo trained through PyTorch Lightning: ``pyro_rpm.lightning.RPMModule`` + ``lightning.Trainer``.

Data and model are those of ``examples/two_views.py`` (:mod:`pyro_rpm.cli.demo`): a 2-D latent
:math:`z \sim \mathcal N(0, I)`, two noisy nonlinear 10-D views, Gaussian recognition factors in
the "prior + network" form, the in-batch support, :class:`pyro_rpm.RecognitionGuide` and
:class:`pyro_rpm.RPM_ELBO`. Training runs in Lightning's Trainer (its progress bar, its
:class:`~lightning.pytorch.loggers.CSVLogger` under ``--out``, a checkpoint at the end); the
recognition networks' weights live in the Lightning module's ``state_dict`` and in Pyro's
parameter store at once.

After training, the encoder API embeds **held-out** inputs: ``r1.transform(x1_new)`` is the
posterior mean of view 1 alone (:meth:`pyro_rpm.Recognition.transform`, in batches, in eval mode).
The linear :math:`R^2` of the true latent from those embeddings measures recovery up to an affine
map (the isotropic prior leaves a rotation free). The encoder of view 1 is also saved alone
(``encoder_r1.pt``, :meth:`pyro_rpm.Recognition.save`), reloaded into a fresh network, and checked
to give the same embeddings.

Usage::

    pip install pyro-rpm[lightning]
    python examples/lightning_two_views.py --quick    # N=2048 (+2048 held out), 1200 steps on the CPU (under a minute)
    python examples/lightning_two_views.py            # N=4096 (+4096 held out), 3000 steps

Last stdout line: one JSON object with ``r2`` (view 1, held-out data), ``r2_view2``, ``seconds``,
``final_loss`` (mean loss per datum over the last 100 steps), ``final_loss_constant_free`` (the
same without :math:`2\log B`) and the figures (``elbo.png``, ``latents.png``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_rpm import GaussianRecognition, RecognitionGuide, linear_r2, observe
from pyro_rpm.cli.scripts import loss_figure, pyplot, run_script, save_figure, script_parser, setup
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.diagnostics.plots import plot_latents_vs_truth

D, OBS, NOISE, HIDDEN = 2, 10, 0.1, 64
QUICK = {"n": 2048, "steps": 1200, "batch_size": 256, "lr": 3e-3}
FULL = {"n": 4096, "steps": 3000, "batch_size": 256, "lr": 3e-3}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(OBS, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, 2 * D))


def _views(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    x1, x2, z = two_view_gaussian(n, latent_dim=D, obs_dim=OBS, noise=NOISE, seed=seed)
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32).to(device)  # noqa: E731
    return as_tensor(x1), as_tensor(x2), np.asarray(z, dtype=np.float64)


def _trainer_device(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    if device.type == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    raise ValueError(f"--device must be cpu or cuda for this example, got {str(device)!r}")


def run(args) -> dict[str, Any]:
    start = time.perf_counter()
    device = setup(args)
    import lightning
    from lightning.pytorch.loggers import CSVLogger

    from pyro_rpm.lightning import RPMModule

    settings = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be a positive int, got {args.steps}")
        settings["steps"] = args.steps
    N, B = settings["n"], settings["batch_size"]
    # 2N points of one generative process (the seed also draws the views' maps): N to train on,
    # N held out for the encoder API.
    x1_all, x2_all, z_all = _views(2 * N, args.seed, torch.device("cpu"))
    x1, x2 = x1_all[:N], x2_all[:N]
    x1_new, x2_new, z_new = x1_all[N:], x2_all[N:], z_all[N:]

    r1 = GaussianRecognition(_mlp(), D, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(_mlp(), D, prior_scale=1.0, name="r2")

    def model(x1: torch.Tensor, x2: torch.Tensor) -> None:
        f1, f2 = r1(x1), r2(x2)  # factors over the support set: the minibatch
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(x1.new_zeros(D), 1.0).to_event(1))  # on the data's device
            observe("x1", f1, z)
            observe("x2", f2, z)

    module = RPMModule(model, RecognitionGuide(model), (x1[:B], x2[:B]), lr=settings["lr"])
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(TensorDataset(x1, x2), batch_size=B, shuffle=True, drop_last=True, generator=generator)

    losses: list[float] = []
    free: list[float] = []

    class History(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["loss_step"]))
            free.append(float(trainer.callback_metrics["loss_constant_free_step"]))

    os.makedirs(args.out, exist_ok=True)
    trainer = lightning.Trainer(
        max_steps=settings["steps"],
        **_trainer_device(device),
        logger=CSVLogger(args.out, name="lightning_logs"),
        log_every_n_steps=50,
        callbacks=[History()],
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=args.out,
    )
    train_start = time.perf_counter()
    with warnings.catch_warnings():
        # Lightning's advice for large jobs (more dataloader workers) and its use of a pytree API
        # that torch deprecates: neither concerns this run.
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        trainer.fit(module, loader)
    train_seconds = time.perf_counter() - train_start
    checkpoint = os.path.join(args.out, "rpm.ckpt")
    trainer.save_checkpoint(checkpoint)

    # The encoder API on held-out inputs; the encoder of view 1 saved alone and reloaded.
    z1 = r1.transform(x1_new, batch_size=512).cpu()  # chunks go to the module's device
    z2 = r2.transform(x2_new, batch_size=512).cpu()
    encoder = os.path.join(args.out, "encoder_r1.pt")
    r1.save(encoder)  # the state_dict on the CPU, weights_only-loadable
    reloaded = GaussianRecognition(_mlp(), D, prior_scale=1.0, name="r1_reloaded").load(encoder)
    reload_diff = float((reloaded.transform(x1_new, batch_size=512) - z1).abs().max())

    r2_view1 = linear_r2(z1, z_new)
    figures = [
        loss_figure(
            {"loss": losses, "loss - 2 log B": free}, args.out, ylabel="loss per datum (nats)", title="RPMModule under lightning.Trainer"
        )
    ]
    pyplot()
    figures.append(save_figure(plot_latents_vs_truth(z1, z_new), args.out, "latents.png"))
    return {
        "r2": round(float(r2_view1), 4),
        "r2_view2": round(float(linear_r2(z2, z_new)), 4),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "final_loss_constant_free": round(float(np.mean(free[-100:])), 4),
        "log_batch_size": round(math.log(B), 4),
        "reload_max_abs_diff": reload_diff,
        "seconds": round(time.perf_counter() - start, 2),
        "train_seconds": round(train_seconds, 2),
        "steps": int(trainer.global_step),
        "n": N,
        "batch_size": B,
        "seed": args.seed,
        "device": str(device),
        "checkpoint": checkpoint,
        "encoder": encoder,
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "The two-view RPM trained through PyTorch Lightning (pyro_rpm.lightning.RPMModule); R^2 of held-out "
        "embeddings from the encoder API. Last stdout line: one JSON object.",
        script=__file__,
        quick_help="N=2048, 1200 steps on one CPU thread (under a minute)",
        steps_help="training steps (default 1200 with --quick, 3000 otherwise)",
    )
    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
