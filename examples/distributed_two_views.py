# SPDX-License-Identifier: Apache-2.0
r"""Data-parallel two-view RPM: the canonical model on W processes, with the support gathered over ranks.

The model of ``examples/two_views.py`` (:math:`z \sim \mathcal N(0, I_2)`, two Gaussian recognition
factors in the "prior + network" form, tied guide, :class:`pyro_rpm.RPM_ELBO` under
:class:`pyro.infer.SVI`) trained with :mod:`torch.distributed`:

* every step takes a global minibatch of G = ``--batch-size`` points from one seeded permutation;
  rank r trains on its G/W of them (:func:`~pyro_rpm.distributed.rank_subsample`);
* the recognition factors of all ranks are gathered with a correct gradient
  (:func:`~pyro_rpm.distributed.gather_factors`), so the in-batch support is the whole global
  minibatch, as in the single-process run, and rank r observes its points at
  :func:`~pyro_rpm.distributed.local_index`;
* :class:`~pyro_rpm.distributed.DistributedOptim` sums the gradients over ranks before Adam steps
  (the gradient of the single-process loss over the global minibatch);
* :class:`~pyro_rpm.distributed.ShardedNoise` draws the reparameterisation noise of the global
  minibatch on every rank, so the W-process run takes the steps of the 1-process run (up to
  float rounding).

After training, rank 0 computes the tied guide's posterior means of all N points and the linear
:math:`R^2` of the true latent from them.

Usage::

    python examples/distributed_two_views.py --quick                                   # 1 process
    torchrun --standalone --nproc_per_node=2 examples/distributed_two_views.py --quick  # 2 gloo processes

With ``--device cuda`` under torchrun each process uses GPU ``LOCAL_RANK`` and the NCCL backend.
Rank 0 writes ``elbo.png`` and ``latents.png`` to ``--out`` and prints, as the last line of stdout,
one JSON object with ``r2``, ``final_loss`` (loss per datum over the last 100 steps), ``world_size``
and the wall time.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.diagnostics.metrics import linear_r2
from pyro_rpm.distributed import (
    DistributedOptim,
    ShardedNoise,
    broadcast_parameters,
    gather_factors,
    init_from_env,
    local_index,
    rank_subsample,
)
from pyro_rpm.train.optim import FusedAdam

D, OBS_DIM, HIDDEN, NOISE = 2, 10, 64, 0.1
FULL = {"n": 2048, "steps": 3000}
QUICK = {"n": 1024, "steps": 1000}


def mlp(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, out_dim)
    )


def build_model(device: torch.device):
    """Recognition modules, the model (gathered support unless ``gather=False``) and its tied guide."""
    r1 = GaussianRecognition(mlp(OBS_DIM, 2 * D), D, prior_scale=1.0, name="r1").to(device)
    r2 = GaussianRecognition(mlp(OBS_DIM, 2 * D), D, prior_scale=1.0, name="r2").to(device)
    prior_loc, prior_scale = torch.zeros(D, device=device), torch.ones(D, device=device)

    def model(x1: torch.Tensor, x2: torch.Tensor, gather: bool = True) -> None:
        f1, f2 = r1(x1), r2(x2)  # this rank's B points
        if gather:  # the support: all ranks' points (the identity with one process)
            f1, f2 = gather_factors([f1, f2])  # one all-gather for both views
        batch = x1.shape[0]
        with pyro.plate("data", batch):
            z = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            index = local_index(batch, device=x1.device) if gather else None
            observe("x1", f1, z, index=index)
            observe("x2", f2, z, index=index)

    return nn.ModuleList([r1, r2]), model, RecognitionGuide(model)


def save_figures(out: str, losses: np.ndarray, z_true: np.ndarray, z_fit: np.ndarray, world: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "elbo.png"), os.path.join(out, "latents.png")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss per datum (nats)")
    ax.set_title(f"RPM_ELBO on {world} process(es), gathered support")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, D, figsize=(4 * D, 3.8))
    for d, ax in enumerate(axes):
        ax.scatter(z_true[:, d], z_fit[:, d], s=3, alpha=0.5)
        lo, hi = float(z_true[:, d].min()), float(z_true[:, d].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true z[{d}]")
        ax.set_ylabel(f"affine map of posterior mean, dim {d}")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def main() -> None:
    parser = script_parser(
        __doc__.splitlines()[0], script=__file__, steps_help="SVI steps (default 3000; 1000 with --quick)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="global minibatch G = support size (default 256)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    rank, world = init_from_env(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        settings = dict(QUICK if args.quick else FULL)
        steps = args.steps if args.steps is not None else settings["steps"]
        n, G = settings["n"], args.batch_size
        if steps < 1:
            parser.error(f"--steps must be positive, got {steps}")
        if G < 2 or G % world or G > n:
            parser.error(f"--batch-size must be in [2, {n}] and divisible by the world size {world}, got {G}")
        B = G // world

        x1, x2, z_true = two_view_gaussian(n, latent_dim=D, obs_dim=OBS_DIM, noise=NOISE, seed=args.seed)
        x1, x2 = (torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device) for x in (x1, x2))
        modules, model, guide = build_model(device)
        broadcast_parameters(modules)  # same start on every rank (already true with one seed)
        svi = pyro.infer.SVI(model, guide, DistributedOptim(FusedAdam({"lr": args.lr})), RPM_ELBO())
        noise = ShardedNoise("data", seed=args.seed)

        local_losses = []
        for step in progress(steps, f"RPM on {world} process(es)", disable=args.no_progress or rank != 0):
            idx = rank_subsample(n, B, seed=args.seed, step=step).to(device)
            with noise:
                local_losses.append(svi.step(x1[idx], x2[idx]))
        losses = torch.tensor(local_losses, dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(losses)  # the loss of the global minibatch, step by step
        losses = (losses / G).cpu().numpy()

        if rank == 0:
            with torch.no_grad():  # posterior means of all N points (no gather: rank 0 alone)
                q = poutine.trace(guide).get_trace(x1, x2, gather=False).nodes["z"]["fn"]
            z_mean = q.mean.double().cpu().numpy()
            r2, z_fit = linear_r2(z_mean, z_true, return_prediction=True)
            figures = save_figures(args.out, losses, np.asarray(z_true), np.asarray(z_fit), world)
            emit(
                {
                    "r2": round(float(r2), 4),
                    "final_loss": round(float(losses[-100:].mean()), 4),
                    "log_batch_size": round(math.log(G), 4),
                    "world_size": world,
                    "global_batch": G,
                    "steps": steps,
                    "n": n,
                    "seed": args.seed,
                    "device": str(device),
                    "seconds": round(time.perf_counter() - start, 2),
                    "figures": figures,
                }
            )
    finally:
        if world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
