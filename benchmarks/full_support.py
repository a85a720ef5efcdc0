# SPDX-License-Identifier: Apache-2.0
r"""SVI steps per second of the exact whole-data-set RPM with :class:`~pyro_rpm.support.full_data.FullDataSupport`.

Model: the canonical two-view RPM of ``docs/core.md`` on ``two_view_gaussian(N, latent_dim=D,
obs_dim=10)``, recognition networks ``10 -> 64 -> 64 -> 2D`` (tanh), ``GaussianRecognition(...,
prior_scale=1.0)``, tied guide, ``RPM_ELBO()``, ``pyro.optim.Adam(lr=3e-3)``, a data plate of N with
``subsample_size=B``. Every step re-encodes all N points of both views (GradCache, chunks of
``--chunk`` points) and evaluates the exact ``B x N`` normaliser of both likelihood sites without
the table (``backend="auto"``: the fused/streamed kernels of :mod:`pyro_rpm.normalisers`).

Each (mode, N) runs in a fresh subprocess: data, model, one warm-up step, then ``--steps`` timed
steps (wall clock and process CPU time, one torch thread). Peak extra memory comes from a second
fresh process running one step: the peak resident set size during it minus the resident size
before it (``/proc/self/status`` after resetting the high-water mark; glibc's mmap threshold fixed
at 128 KiB so freed blocks leave the resident set).
Mode ``gradcache`` is ``FullDataSupport(r, x, chunk_size=--chunk)``; mode ``naive`` (sizes up to
``--naive-max``) is ``chunk_size=None``, i.e. ``r(x_all)`` with autograd, for comparison.

Usage::

    python benchmarks/full_support.py             # N = 1e5 and 1e6
    python benchmarks/full_support.py --quick     # N = 1e4 and 1e5, 3 timed steps

The figure ``full_support.png`` goes to ``--out``. The last stdout line is one JSON object with
``steps_per_s_<N>``, ``ms_per_step_<N>``, ``cpu_ms_per_step_<N>``, ``peak_mb_<N>``, ``loss_first_<N>`` / ``loss_last_<N>``
(negative ELBO per datum of the first and last timed step), and ``naive_steps_per_s_<N>`` /
``naive_peak_mb_<N>`` where measured; ``<N>`` is written ``1e4``, ``1e5``, ``1e6``. With
``--breakdown``, ``breakdown_{normaliser,encode,recompute}_s_<N>`` at the largest N: CPU seconds of
one view's exact normaliser (forward + backward), encoder pass without autograd, and chunked
recomputation with its backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from _common import reset_peak, rss_mb, run_json_child, tag
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.datasets import two_view_gaussian
from pyro_rpm.support.full_data import FullDataSupport


def measure(mode: str, n: int, args, device: torch.device) -> dict:
    """Time ``args.steps`` SVI steps of the two-view model at N = ``n`` (run in a fresh process)."""
    x1, x2, _ = two_view_gaussian(n, latent_dim=args.dim, obs_dim=10, seed=args.seed)
    x1, x2 = x1.to(device), x2.to(device)
    d = args.dim

    def mlp():
        return nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2 * d))

    r1 = GaussianRecognition(mlp(), d, prior_scale=1.0, name="r1").to(device)
    r2 = GaussianRecognition(mlp(), d, prior_scale=1.0, name="r2").to(device)
    chunk = args.chunk if mode == "gradcache" else None
    s1, s2 = FullDataSupport(r1, x1, chunk_size=chunk), FullDataSupport(r2, x2, chunk_size=chunk)
    prior_loc = torch.zeros(d, device=device)

    def model():
        f1, f2 = s1(), s2()
        with pyro.plate("data", n, subsample_size=args.batch) as idx:
            z = pyro.sample("z", dist.Normal(prior_loc, 1.0).to_event(1))
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

    svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 3e-3}), RPM_ELBO())
    svi.step()  # warm-up: parameter registration, kernel probes, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    have_proc = reset_peak()
    before = rss_mb()[0] if have_proc else 0.0
    losses = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        losses.append(svi.step() / n)  # the loss is the full-data estimate (plate scale N/B)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = rss_mb()[1] - before if have_proc else float("nan")
    return {
        "steps_per_s": args.steps / elapsed,
        "ms_per_step": 1e3 * elapsed / args.steps,
        "cpu_ms_per_step": 1e3 * cpu / args.steps,
        "peak_mb": peak,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def breakdown(n: int, args, device: torch.device) -> dict:
    """CPU seconds of the parts of one view's step at N = ``n``: normaliser, encoder pass, recomputation."""
    from pyro_rpm.normalisers import gaussian_logsumexp

    gen = torch.Generator().manual_seed(args.seed)
    loc = torch.randn(n, args.dim, generator=gen).to(device).requires_grad_()
    scale = (0.2 + 0.5 * torch.rand(n, args.dim, generator=gen)).to(device).requires_grad_()
    z = torch.randn(args.batch, args.dim, generator=gen).to(device).requires_grad_()
    gaussian_logsumexp(z, loc[:1000], scale[:1000]).sum().backward()  # warm-up (kernel probe)
    start = time.process_time()
    gaussian_logsumexp(z, loc, scale).sum().backward()
    normaliser = time.process_time() - start
    net = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2 * args.dim))
    net = net.to(device)
    x = torch.randn(n, 10, generator=gen).to(device)
    start = time.process_time()
    with torch.no_grad():
        for i in range(0, n, args.chunk):
            net(x[i : i + args.chunk])
    encode = time.process_time() - start
    start = time.process_time()
    for i in range(0, n, args.chunk):
        out = net(x[i : i + args.chunk])
        out.backward(torch.ones_like(out))
    recompute = time.process_time() - start
    return {"normaliser_s": normaliser, "encode_s": encode, "recompute_s": recompute}


def _run_child(mode: str, n: int, args, *, memory: bool) -> dict:
    """One fresh process: timing (default allocator) or memory (fixed mmap threshold, one step)."""
    steps = 1 if memory else args.steps
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", mode, str(n), "--seed", str(args.seed)]
    cmd += ["--device", args.device, "--batch", str(args.batch), "--dim", str(args.dim)]
    cmd += ["--chunk", str(args.chunk), "--steps", str(steps), "--out", args.out]
    row = run_json_child(cmd, f"{mode} N={n}", fixed_mmap=memory)
    return {"peak_mb": row["peak_mb"]} if memory else {k: v for k, v in row.items() if k != "peak_mb"}


def save_figure(out: str, result: dict, sizes: list[int]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for prefix, label in (("", "FullDataSupport (GradCache)"), ("naive_", "r(x_all) with autograd")):
        ns = [n for n in sizes if f"{prefix}steps_per_s_{tag(n)}" in result]
        if ns:
            axes[0].plot(ns, [result[f"{prefix}steps_per_s_{tag(n)}"] for n in ns], marker="o", label=label)
            axes[1].plot(ns, [result[f"{prefix}peak_mb_{tag(n)}"] for n in ns], marker="o", label=label)
    axes[0].set_ylabel("SVI steps / s")
    axes[1].set_ylabel("peak extra memory (MB)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("data set size N (exact support)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"two-view RPM, exact normaliser, B = {result['batch']}, D = {result['dim']}, one thread")
    fig.tight_layout()
    path = os.path.join(out, "full_support.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict | None:
    parser = script_parser(__doc__.split("\n")[0], script=__file__, quick_help="N = 1e4, 1e5; 3 timed steps")
    parser.add_argument("--sizes", default=None, help="comma-separated data set sizes (default 1e5,1e6)")
    parser.add_argument("--batch", type=int, default=256, help="minibatch size B (default 256)")
    parser.add_argument("--dim", type=int, default=2, help="latent dimension D (default 2)")
    parser.add_argument("--chunk", type=int, default=8192, help="encoder chunk size (default 8192)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5; 3 with --quick)")
    parser.add_argument("--naive-max", type=float, default=1e5, help="largest N for the naive comparison")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of one view's step")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 5)
    device = setup(args)
    if args.measure:
        mode, n = args.measure[0], int(float(args.measure[1]))
        print(json.dumps(measure(mode, n, args, device)))
        return None
    sizes = [int(float(s)) for s in (args.sizes or ("1e4,1e5" if args.quick else "1e5,1e6")).split(",")]
    jobs = [("gradcache", n) for n in sizes] + [("naive", n) for n in sizes if n <= args.naive_max]
    result: dict = {"batch": args.batch, "dim": args.dim, "chunk": args.chunk, "steps": args.steps}
    result["device"] = str(device)
    for mode, n in progress(jobs, "configurations", disable=args.no_progress):
        row = _run_child(mode, n, args, memory=False) | _run_child(mode, n, args, memory=True)
        prefix = "naive_" if mode == "naive" else ""
        for key, value in row.items():
            if prefix and key.startswith("loss"):
                continue
            result[f"{prefix}{key}_{tag(n)}"] = value
        print(
            f"{mode:9s} N={n:>8d}: {row['steps_per_s']:.3f} steps/s, {row['ms_per_step']:.0f} ms/step "
            f"({row['cpu_ms_per_step']:.0f} ms CPU), "
            f"peak {row['peak_mb']:.0f} MB, loss/datum {row['loss_first']:.3f} -> {row['loss_last']:.3f}",
            flush=True,
        )
    if args.breakdown:
        parts = breakdown(max(sizes), args, device)
        result.update({f"breakdown_{key}_{tag(max(sizes))}": value for key, value in parts.items()})
        print(f"one view at N={max(sizes)} (CPU s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    result["figure"] = save_figure(args.out, result, sizes)
    emit(result)
    return result


if __name__ == "__main__":
    main()
