# SPDX-License-Identifier: Apache-2.0
r"""Data-parallel RPM training: 1 process against 2 processes on the same global minibatches.

The canonical two-view RPM (MLP 10 → 64 → 64 → 4 recognition networks, Gaussian factors in the
"prior + network" form, tied guide, :class:`pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI` with
:class:`~pyro_rpm.distributed.DistributedOptim` around :class:`~pyro_rpm.train.optim.FusedAdam`) is
trained for ``--steps`` steps on global minibatches of G = ``--batch-size`` points with the
in-batch support of all G points:

* **1 process**: the minibatch of G points, support of G points;
* **2 processes** (gloo on loopback, or NCCL with ``--device cuda`` and two GPUs): each rank takes
  G/2 of the points (:func:`~pyro_rpm.distributed.rank_subsample`), gathers the factors of both
  ranks (:func:`~pyro_rpm.distributed.gather_factors`, support of G points) and the gradients are
  summed over ranks.

Both runs see the same minibatches, start from the same parameters and use the same noise
(:class:`~pyro_rpm.distributed.ShardedNoise`), so they take the same optimisation steps up to
float32 rounding: ``max_loss_diff`` is the largest difference of the per-datum losses over all
steps. Every process runs on one torch thread and is started fresh for every run (start method
``spawn``); a run's speed is ``(steps - warmup) / t`` where ``t`` is the slowest rank's wall time
of the steps after the warm-up. The runs alternate over ``--rounds`` rounds and the median is
reported; ``throughput = G * steps/s`` (points per second) and ``speedup = throughput_2proc /
throughput_1proc``. Two processes can at best halve the per-step compute (the B x G table and the
networks on B points per rank) and add one all-gather per view in the forward pass, one
all-reduce per view in the backward pass and one all-reduce of the gradients per step. The
machine's load average is reported with the numbers: on a shared machine they are noisy.

Usage::

    python benchmarks/distributed.py            # G = 512, 300 steps, 3 rounds
    python benchmarks/distributed.py --quick    # G = 256, 100 steps, 1 round

The figure ``distributed.png`` (throughput bars, the loss curves of both runs and their
difference) goes to ``--out``. The last line of stdout is one JSON object with
``throughput_1proc``, ``throughput_2proc``, ``speedup``, ``steps_per_s_1proc``,
``steps_per_s_2proc``, ``max_loss_diff`` and the settings.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.distributed import DistributedOptim, ShardedNoise, gather_factors, local_index, rank_subsample
from pyro_rpm.train.optim import FusedAdam

D, OBS_DIM, HIDDEN, NOISE, LR = 2, 10, 64, 0.1, 3e-3
FULL = {"n": 4096, "batch_size": 512, "steps": 300, "warmup": 20, "rounds": 3}
QUICK = {"n": 2048, "batch_size": 256, "steps": 100, "warmup": 10, "rounds": 1}
TIMEOUT_S = 600.0


def _mlp(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, out_dim)
    )


def _train(rank: int, world: int, port: int, cfg: dict, out_dir: str) -> None:
    """One rank of one run: train, then save (rank 0) the global losses and the slowest rank's time."""
    torch.set_num_threads(1)
    device = torch.device(cfg["device"])
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    try:
        pyro.set_rng_seed(cfg["seed"])
        pyro.clear_param_store()
        x1, x2, _ = two_view_gaussian(cfg["n"], latent_dim=D, obs_dim=OBS_DIM, noise=NOISE, seed=cfg["seed"])
        x1, x2 = (torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device) for x in (x1, x2))
        r1 = GaussianRecognition(_mlp(OBS_DIM, 2 * D), D, prior_scale=1.0, name="r1").to(device)
        r2 = GaussianRecognition(_mlp(OBS_DIM, 2 * D), D, prior_scale=1.0, name="r2").to(device)
        prior_loc, prior_scale = torch.zeros(D, device=device), torch.ones(D, device=device)

        def model(x1, x2):
            f1, f2 = gather_factors([r1(x1), r2(x2)])  # one all-gather for both views
            with pyro.plate("data", x1.shape[0]):
                z = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
                idx = local_index(x1.shape[0], device=x1.device)
                observe("x1", f1, z, index=idx)
                observe("x2", f2, z, index=idx)

        svi = pyro.infer.SVI(model, RecognitionGuide(model), DistributedOptim(FusedAdam({"lr": LR})), RPM_ELBO())
        noise = ShardedNoise("data", seed=cfg["seed"])
        B = cfg["batch_size"] // world
        losses = []
        bar = progress(cfg["steps"], f"{world} process(es)", disable=cfg["no_progress"] or rank != 0)
        for step in bar:
            if step == cfg["warmup"]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            idx = rank_subsample(cfg["n"], B, seed=cfg["seed"], step=step).to(device)
            with noise:
                losses.append(svi.step(x1[idx], x2[idx]))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
        losses = torch.tensor(losses, dtype=torch.float64, device=device)
        if world > 1:
            tdist.all_reduce(losses)  # loss of the global minibatch
            tdist.all_reduce(seconds, op=tdist.ReduceOp.MAX)  # the slowest rank sets the pace
        if rank == 0:
            torch.save(
                {"losses": (losses / cfg["batch_size"]).cpu(), "seconds": float(seconds)},
                os.path.join(out_dir, f"world{world}.pt"),
            )
        if world > 1:
            tdist.barrier()
    finally:
        if world > 1:
            tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, cfg: dict) -> dict:
    """Start ``world`` fresh processes for one training run; return rank 0's record."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _train, args=(world, _free_port(), cfg, out_dir), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the run on {world} process(es) did not finish within {TIMEOUT_S} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)
        return torch.load(os.path.join(out_dir, f"world{world}.pt"))


def _figure(out: str, speeds: dict, curves: dict, G: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    worlds = sorted(speeds)
    medians = [G * statistics.median(speeds[w]) for w in worlds]
    axes[0].bar([str(w) for w in worlds], medians, color=["tab:blue", "tab:orange"][: len(worlds)])
    for i, w in enumerate(worlds):
        axes[0].scatter([i] * len(speeds[w]), [G * s for s in speeds[w]], color="k", s=12, zorder=3)
    axes[0].set_xlabel("processes")
    axes[0].set_ylabel("throughput (points / s)")
    axes[0].set_title(f"global minibatch G = {G} (median, dots: rounds)")
    for w, style in zip(worlds, ("-", "--")):
        axes[1].plot(np.arange(1, len(curves[w]) + 1), curves[w], style, lw=1.2, label=f"{w} process(es)")
    axes[1].set_xlabel("SVI step")
    axes[1].set_ylabel("loss per datum (nats)")
    axes[1].set_title("loss on the same global minibatches")
    axes[1].legend()
    diff = np.abs(curves[worlds[-1]] - curves[worlds[0]])
    axes[2].semilogy(np.arange(1, len(diff) + 1), np.maximum(diff, 1e-12), lw=1.0)
    axes[2].set_xlabel("SVI step")
    axes[2].set_ylabel("|loss 2 proc - loss 1 proc| per datum")
    axes[2].text(0.02, 0.02, "exact agreement drawn at 1e-12", transform=axes[2].transAxes, fontsize=8)
    axes[2].set_title("loss agreement (float32 rounding)")
    fig.tight_layout()
    path = os.path.join(out, "distributed.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = script_parser(
        __doc__.splitlines()[0],
        script=__file__,
        quick_help="G = 256, 100 steps, 1 round",
        steps_help="SVI steps per run (default 300; 100 with --quick)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="global minibatch G (default 512; 256 with --quick)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of (1 process, 2 processes) (default 3; 1 with --quick)"
    )
    args = parser.parse_args()
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu (gloo) or cuda (NCCL), got {args.device!r}")
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        parser.error("--device cuda needs 2 GPUs (one per process; NCCL does not share a GPU between ranks)")
    if device.type == "cpu" and not tdist.is_gloo_available():
        parser.error("torch.distributed with the gloo backend is not available in this torch build")
    settings = dict(QUICK if args.quick else FULL)
    for key in ("steps", "batch_size", "rounds"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    G, steps, rounds = settings["batch_size"], settings["steps"], settings["rounds"]
    if G < 4 or G % 2 or G > settings["n"]:
        parser.error(f"--batch-size must be even and in [4, {settings['n']}], got {G}")
    if steps <= settings["warmup"] or rounds < 1:
        parser.error(f"--steps must exceed the {settings['warmup']} warm-up steps and --rounds must be positive")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned processes
    cfg = {**settings, "seed": args.seed, "device": device.type, "no_progress": args.no_progress}

    speeds: dict[int, list[float]] = {1: [], 2: []}
    curves: dict[int, np.ndarray] = {}
    load_before = os.getloadavg()[0]
    for round_ in progress(rounds, "rounds", disable=args.no_progress):
        for world in (1, 2) if round_ % 2 == 0 else (2, 1):
            record = _run(world, cfg)
            speeds[world].append((steps - settings["warmup"]) / record["seconds"])
            curves.setdefault(world, record["losses"].numpy())
    load_after = os.getloadavg()[0]

    sps1, sps2 = statistics.median(speeds[1]), statistics.median(speeds[2])
    diff = np.abs(curves[2] - curves[1])
    figure = _figure(args.out, speeds, curves, G)
    emit(
        {
            "throughput_1proc": round(G * sps1, 1),
            "throughput_2proc": round(G * sps2, 1),
            "speedup": round(sps2 / sps1, 3),
            "steps_per_s_1proc": round(sps1, 2),
            "steps_per_s_2proc": round(sps2, 2),
            "steps_per_s_rounds_1proc": [round(s, 2) for s in speeds[1]],
            "steps_per_s_rounds_2proc": [round(s, 2) for s in speeds[2]],
            "max_loss_diff": float(f"{diff.max():.3g}"),
            "max_rel_loss_diff": float(f"{(diff / np.abs(curves[1])).max():.3g}"),
            "final_loss_1proc": round(float(curves[1][-20:].mean()), 4),
            "final_loss_2proc": round(float(curves[2][-20:].mean()), 4),
            "global_batch": G,
            "n": settings["n"],
            "steps": steps,
            "warmup": settings["warmup"],
            "rounds": rounds,
            "backend": "nccl" if device.type == "cuda" else "gloo",
            "cpu_count": os.cpu_count(),
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "seed": args.seed,
            "figure": figure,
        }
    )


if __name__ == "__main__":
    main()
