# SPDX-License-Identifier: Apache-2.0
r"""Forward + backward time, peak extra memory and Mpairs/s of the RPM normaliser backends.

The op is :func:`pyro_rpm.normalisers.gaussian_logsumexp`:
:math:`L_b = \log\sum_{m=1}^N \mathcal N(z_b; \mu_m, \operatorname{diag} s_m^2)` for B latents
against N support points, then ``L.sum().backward()`` with gradients for :math:`z`, :math:`\mu`
and :math:`s`. Problem: :math:`\mu \sim \mathcal N(0, 4 I)`, :math:`\log s \sim U(\log 0.05, 0)`,
each latent drawn from a random support point's Gaussian (as in RPM training).

Backends: ``dense`` (one ``B x N`` GEMM table, ``torch.logsumexp``, autograd: the baseline),
``streamed``, ``fused`` and ``screened`` (see :mod:`pyro_rpm.normalisers`), each with the default
float64 accumulation (exact), and the first three with ``accumulate_dtype=float32`` (suffix
``_fp32``; fast but inexact for narrow factors). ``screened`` (the default at these sizes) screens
the support in float32 with a certified error bound and computes the points that matter in float64;
``kept_fraction_<N>`` is the fraction it computed exactly. ``--problem wide`` swaps in its worst
case: wide factors (:math:`\mu \sim \mathcal N(0, I/4)`, :math:`s \sim U(0.8, 1.2)`, latents
:math:`\mathcal N(0, I)`) where every point matters to some latent. Memory: each (backend, N) runs once in a fresh subprocess after a
warm-up on 1000 points; peak extra memory is the peak resident set size minus the resident size
before the call (``/proc/self/status`` after resetting the high-water mark, with glibc's mmap
threshold fixed at 128 KiB so that freed blocks leave the resident set; ``ru_maxrss`` elsewhere; on
CUDA ``max_memory_allocated``), and the values and latent gradients of that call are compared
with the dense float64 backend's. Time: in this process, ``repeats`` interleaved rounds in which
every backend runs once (rotating order), median per backend, so load from other jobs spreads over
all backends alike.

Usage::

    python benchmarks/normaliser.py            # N = 1e4, 1e5, 1e6, every backend, 3-5 repeats
    python benchmarks/normaliser.py --quick    # 1 repeat; N = 1e6 only dense/streamed/fused/screened
    python benchmarks/normaliser.py --quick --sizes 1e6 --problem wide   # screening's worst case

The figure ``normaliser.png`` (Mpairs/s and peak memory against N) goes to ``--out``. The last
stdout line is one JSON object: for the default backend (``"auto"``) ``ms_<N>``,
``mpairs_per_s_<N>``, ``peak_mb_<N>``, ``speedup_vs_dense_<N>`` (dense float64 time over its time)
and ``speedup_vs_dense_fp32_<N>``, with ``<N>`` written ``1e4``, ``1e5``, ``1e6``; every backend's
numbers under ``backends``. Timings are wall-clock medians on one torch thread (``--threads``);
``cpu_ms_<N>`` / ``mpairs_per_s_cpu_<N>`` use the process CPU time instead, which is less
sensitive to other jobs on a shared machine, though not immune (two vCPUs that share one core slow
each other down); with one thread it equals the wall time on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
from _common import reset_peak, rss_mb, run_json_child, sync, tag

from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.normalisers import gaussian_logsumexp, resolve_backend
from pyro_rpm.normalisers import screened as screened_module

#: name -> (backend, accumulate_dtype)
BACKENDS = {
    "dense": ("dense", None),
    "streamed": ("streamed", None),
    "fused": ("fused", None),
    "screened": ("screened", None),
    "dense_fp32": ("dense", torch.float32),
    "streamed_fp32": ("streamed", torch.float32),
    "fused_fp32": ("fused", torch.float32),
}
QUICK_LARGE = ("dense", "streamed", "fused", "screened")  # backends run at N >= 1e6 with --quick


def problem(n: int, batch: int, dim: int, seed: int, device: torch.device, kind: str = "rpm"):
    """Support means/scales and latents drawn from random support points (module docstring), or
    the ``"wide"`` worst case of screening."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "wide":
        loc = 0.5 * torch.randn(n, dim, generator=gen)
        scale = torch.empty(n, dim).uniform_(0.8, 1.2, generator=gen)
        z = torch.randn(batch, dim, generator=gen)
        return [t.to(device).requires_grad_() for t in (z, loc, scale)]
    loc = 2.0 * torch.randn(n, dim, generator=gen)
    scale = torch.empty(n, dim).uniform_(math.log(0.05), 0.0, generator=gen).exp_()
    idx = torch.randint(n, (batch,), generator=gen)
    z = loc[idx] + scale[idx] * torch.randn(batch, dim, generator=gen)
    return [t.to(device).requires_grad_() for t in (z, loc, scale)]


def _step(z, loc, scale, backend, acc):
    for t in (z, loc, scale):
        t.grad = None
    value = gaussian_logsumexp(z, loc, scale, backend=backend, accumulate_dtype=acc)
    value.sum().backward()
    return value


def _record_kept(kept: list) -> None:
    """Record the size of the exactly computed support subset of every screened call (N when all)."""
    original = screened_module._screened_forward

    def spy(q, a, *args):
        result = original(q, a, *args)
        kept.append(a.shape[0] if result[2] is None else result[2].numel())
        return result

    screened_module._screened_forward = spy


def measure_memory(name: str, n: int, batch: int, dim: int, seed: int, device: torch.device, kind: str) -> dict:
    """Peak extra memory of one forward + backward (run in a fresh process), with its values and z-gradients."""
    backend, acc = BACKENDS[name]
    kept: list[int] = []
    _record_kept(kept)
    z, loc, scale = problem(n, batch, dim, seed, device, kind)
    small = min(n, 1000)  # warm-up: kernel probes, thread pools, allocator
    _step(z, loc[:small].detach().requires_grad_(), scale[:small].detach().requires_grad_(), backend, acc)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        value = _step(z, loc, scale, backend, acc)
        sync(device)
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    elif reset_peak():
        base, _ = rss_mb()
        value = _step(z, loc, scale, backend, acc)
        peak_mb = rss_mb()[1] - base
    else:  # no /proc: ru_maxrss (KiB on Linux) of this fresh process
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        value = _step(z, loc, scale, backend, acc)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {
        "peak_mb": peak_mb,
        "kept_fraction": kept[-1] / n if kept else None,
        "value": value.detach().double().cpu().tolist(),
        "grad_z": z.grad.double().cpu().flatten().tolist(),
    }


def time_backends(names: list[str], n: int, args, device: torch.device, disable: bool) -> dict[str, dict]:
    """Median wall and CPU time of forward + backward per backend, interleaved: each round runs every
    backend once (the order rotates), so load from other jobs spreads over all of them."""
    z, loc, scale = problem(n, args.batch, args.dim, args.seed, device, args.problem)
    for name in names:  # warm-up on 1000 points
        small = min(n, 1000)
        _step(z, loc[:small].detach().requires_grad_(), scale[:small].detach().requires_grad_(), *BACKENDS[name])
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in progress(repeats_for(args, n), f"timing N={tag(n)}", disable=disable):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            _step(z, loc, scale, *BACKENDS[name])
            sync(device)
            times[name].append((time.perf_counter() - start, time.process_time() - cpu_start))
    rows = {}
    for name, pairs in times.items():
        ms = 1e3 * statistics.median(t for t, _ in pairs)
        cpu_ms = 1e3 * statistics.median(c for _, c in pairs)
        pairs_total = args.batch * n
        rows[name] = {"ms": ms, "mpairs_per_s": pairs_total / (ms * 1e3), "cpu_ms": cpu_ms}
        rows[name]["mpairs_per_s_cpu"] = pairs_total / (cpu_ms * 1e3)
    return rows


def repeats_for(args: argparse.Namespace, n: int) -> int:
    """Timed rounds for support size ``n``: ``--repeats``, else 1 with ``--quick``, 3 at N >= 1e6, else 5."""
    return args.repeats or (1 if args.quick else 3 if n >= 10**6 else 5)


def _run_child(name: str, n: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", name, str(n), "--seed", str(args.seed)]
    cmd += ["--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch), "--dim", str(args.dim)]
    cmd += ["--problem", args.problem]
    return run_json_child(cmd, f"{name} N={n}", fixed_mmap=True)


def _rel(a: list[float], b: list[float], floor: float) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((ta - tb).abs().max() / max(float(tb.abs().max()), floor))


def save_figure(out: str, rows: dict, sizes: list[int], batch: int, dim: int, problem: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in BACKENDS:
        ns = [n for n in sizes if (name, n) in rows]
        if not ns:
            continue
        style = "--" if name.endswith("_fp32") else "-"
        axes[0].plot(ns, [rows[name, n]["mpairs_per_s"] for n in ns], style, marker="o", label=name)
        axes[1].plot(ns, [max(rows[name, n]["peak_mb"], 0.1) for n in ns], style, marker="o", label=name)
    axes[0].set_ylabel("Mpairs/s (forward + backward)")
    axes[1].set_ylabel("peak extra memory (MB)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("support size N")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"gaussian_logsumexp, B = {batch}, D = {dim}, {problem} problem, one thread")
    fig.tight_layout()
    path = os.path.join(out, "normaliser.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict | None:
    parser = script_parser(
        "Forward+backward time, peak extra memory and Mpairs/s of the Gaussian row-logsumexp backends.",
        script=__file__,
        quick_help="one repeat; at N >= 1e6 only dense, streamed, fused and screened (about a minute)",
    )
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated support sizes (default 1e4,1e5,1e6)")
    parser.add_argument("--batch", type=int, default=256, help="number of latents B (default 256)")
    parser.add_argument("--dim", type=int, default=8, help="latent dimension D (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)} (default all)"
    )
    parser.add_argument(
        "--problem", choices=("rpm", "wide"), default="rpm", help="rpm (default) or wide (screening's worst case)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 5, 3 at N >= 1e6, 1 quick)")
    parser.add_argument("--measure", nargs=2, metavar=("BACKEND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated numbers, got {args.sizes!r}")
    names = [name for name in args.backends.split(",") if name]
    if not names or any(name not in BACKENDS for name in names) or "dense" not in names:
        parser.error(f"--backends must be a subset of {','.join(BACKENDS)} that includes dense (the reference)")
    if min(sizes) < 1 or args.batch < 1 or args.dim < 1 or args.threads < 1:
        parser.error("--sizes, --batch, --dim and --threads must be positive")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    if args.measure:
        name, n = args.measure[0], int(args.measure[1])
        if name not in BACKENDS:
            parser.error(f"--measure backend must be one of {sorted(BACKENDS)}")
        print(json.dumps(measure_memory(name, n, args.batch, args.dim, args.seed, device, args.problem)))
        return None

    rows = {}
    for n in sizes:
        active = [name for name in names if not (args.quick and n >= 10**6 and name not in QUICK_LARGE)]
        for name in progress(active, f"memory N={tag(n)}", disable=args.no_progress):
            rows[name, n] = _run_child(name, n, args)
        for name, timing in time_backends(active, n, args, device, args.no_progress).items():
            rows[name, n].update(timing)
    default = {n: resolve_backend("auto", args.batch * n, device, torch.float64, n) for n in sizes}
    print(
        f"{'backend':>14} {'N':>8} {'ms':>10} {'Mpairs/s':>9} {'CPU ms':>10} {'peak MB':>8} {'val err':>8} {'grad err':>8}"
    )
    result: dict = {"backends": {name: {} for name in names}}
    for (name, n), row in rows.items():
        ref = rows[("dense", n)]
        row["value_rel_err"] = _rel(row["value"], ref["value"], 1.0)
        row["grad_rel_err"] = _rel(row["grad_z"], ref["grad_z"], 1e-30)
        print(
            f"{name:>14} {n:>8} {row['ms']:>10.1f} {row['mpairs_per_s']:>9.1f} {row['cpu_ms']:>10.1f} {row['peak_mb']:>8.1f} "
            f"{row['value_rel_err']:>8.1e} {row['grad_rel_err']:>8.1e}"
        )
        for key in ("ms", "mpairs_per_s", "cpu_ms", "mpairs_per_s_cpu", "peak_mb", "value_rel_err", "grad_rel_err"):
            result["backends"][name][f"{key}_{tag(n)}"] = row[key]
        if row["kept_fraction"] is not None:
            result["backends"][name][f"kept_fraction_{tag(n)}"] = row["kept_fraction"]
    for n in sizes:
        if (default[n], n) not in rows:
            continue
        best = rows[(default[n], n)]
        result[f"backend_{tag(n)}"] = default[n]
        for key in ("ms", "mpairs_per_s", "cpu_ms", "mpairs_per_s_cpu", "peak_mb"):
            result[f"{key}_{tag(n)}"] = best[key]
        if best["kept_fraction"] is not None:
            result[f"kept_fraction_{tag(n)}"] = best["kept_fraction"]
        result[f"speedup_vs_dense_{tag(n)}"] = rows[("dense", n)]["ms"] / best["ms"]
        if ("dense_fp32", n) in rows:
            result[f"speedup_vs_dense_fp32_{tag(n)}"] = rows[("dense_fp32", n)]["ms"] / best["ms"]
    result.update(
        sizes=sizes, batch=args.batch, dim=args.dim, problem=args.problem, threads=args.threads, device=str(device), seed=args.seed,
        quick=args.quick, torch=torch.__version__,
    )  # fmt: skip
    result["figures"] = [save_figure(args.out, rows, sizes, args.batch, args.dim, args.problem)]
    emit(result)
    return result


if __name__ == "__main__":
    main()
