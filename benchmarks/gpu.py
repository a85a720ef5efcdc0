# SPDX-License-Identifier: Apache-2.0
r"""The RPM normaliser and end-to-end SVI on an accelerator (runs on the CPU too, for comparison).

Part 1, the normaliser: the same op, problem and backends as ``benchmarks/normaliser.py``
(:func:`pyro_rpm.normalisers.gaussian_logsumexp`, forward + backward, B = 256, D = 8), timed here
in one process: ``--repeats`` interleaved rounds in which every backend runs once (rotating order),
median per backend, with the device synchronised around each call. Peak extra memory on CUDA is
``torch.cuda.max_memory_allocated`` during the call minus the memory allocated before it (on the
CPU, see ``benchmarks/normaliser.py``, which measures it in fresh processes; here it is ``null``).
Each backend's values and latent gradients are compared with the dense float64 backend's.

Part 2, end to end: SVI steps per second of the canonical two-view RPM with the exact whole-data
support (:class:`~pyro_rpm.support.full_data.FullDataSupport`, GradCache chunks of 8192), as in
``benchmarks/full_support.py``, and with the in-batch support (B = 256) for scale.

Part 3, the training step (issue 15): the workloads of ``benchmarks/elbo_step.py`` (InfoNCE on MLP
encoders at ``--batch``, and on the convolutional encoder at B = 256), interleaved: plain torch,
``RPM_ELBO`` (traced), ``JitRPM_ELBO`` (replayed), ``JitRPM_ELBO(backend="inductor")`` and, on CUDA,
``JitRPM_ELBO(backend="inductor", cuda_graphs=True)``; and mixed precision, plain torch and
``JitRPM_ELBO`` under ``torch.autocast`` (bfloat16). ``--steps-sides`` chooses the sides (inductor
compiles take about a minute each on the CPU, so ``--quick`` on the CPU times torch, traced and
replayed only).

Target (issue 6): the default normaliser at N = 1e6 in at most 2 ms on an H100.

Usage::

    python benchmarks/gpu.py                       # CUDA if available, N = 1e4, 1e5, 1e6
    python benchmarks/gpu.py --quick --device cpu  # a small CPU run (N = 1e4, 1e5)

The figure ``gpu.png`` (milliseconds per backend against N) goes to ``--out``. The last stdout line
is one JSON object: ``device_name``; for the default backend (``"auto"``) ``ms_<N>``,
``mpairs_per_s_<N>``, ``peak_mb_<N>``, ``speedup_vs_dense_<N>``; ``normaliser_ms_1e6`` and
``meets_2ms_target`` when N = 1e6 ran; every backend's row under ``backends``; ``svi_full_steps_per_s_<N>``
and ``svi_inbatch_steps_per_s``; ``step_ms_<workload>_<side>`` and ``step_ratio_<workload>_<side>`` (to plain
torch) for part 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import full_support  # noqa: E402
import normaliser  # noqa: E402
from _common import sync, tag  # noqa: E402
from _elbo_models import Side, conv_rbf, infonce_mlp  # noqa: E402
from elbo_step import time_sides  # noqa: E402

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe  # noqa: E402
from pyro_rpm.cli.scripts import emit, progress, pyplot, save_figure, script_parser, setup
from pyro_rpm.datasets import two_view_gaussian  # noqa: E402

#: Backends timed here: name -> (backend, accumulate_dtype); ``auto`` is the library's default.
BACKENDS = {"auto": ("auto", None), **normaliser.BACKENDS}
NAMES = tuple(BACKENDS)
#: Every row's values and latent gradients are compared with this one's.
REFERENCE = "dense"


def _peak_mb(name: str, z, loc, scale, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    normaliser._step(z, loc, scale, *BACKENDS[name])
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def time_normaliser(n: int, args, device: torch.device) -> dict[str, dict]:
    """Median forward + backward time, Mpairs/s, peak memory and error vs dense float64 per backend."""
    z, loc, scale = normaliser.problem(n, args.batch, args.dim, args.seed, device)
    names = list(NAMES)
    outputs = {}
    for name in names:  # warm-up (kernel selection, allocator) and the values for the comparison
        value = normaliser._step(z, loc, scale, *BACKENDS[name])
        outputs[name] = (value.detach().double(), z.grad.detach().double().clone())
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            sync(device)
            start = time.perf_counter()
            normaliser._step(z, loc, scale, *BACKENDS[name])
            sync(device)
            times[name].append(time.perf_counter() - start)
    ref_value, ref_grad = outputs[REFERENCE]
    rows = {}
    for name in names:
        ms = 1e3 * statistics.median(times[name])
        value, grad = outputs[name]
        rows[name] = {
            "ms": ms,
            "mpairs_per_s": args.batch * n / (ms * 1e3),
            "peak_mb": _peak_mb(name, z, loc, scale, device),
            "value_rel_err": float((value - ref_value).abs().max() / ref_value.abs().max().clamp(min=1.0)),
            "grad_rel_err": float((grad - ref_grad).abs().max() / ref_grad.abs().max().clamp(min=1e-12)),
        }
    return rows


def svi_inbatch_steps_per_s(args, device: torch.device) -> float:
    """Steps/s of the canonical two-view RPM with the in-batch support of B = ``args.batch``."""
    x1, x2, _ = two_view_gaussian(args.batch, latent_dim=2, obs_dim=10, seed=args.seed)
    x1, x2 = x1.to(device), x2.to(device)

    def mlp():
        return nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))

    r1 = GaussianRecognition(mlp(), 2, prior_scale=1.0, name="r1").to(device)
    r2 = GaussianRecognition(mlp(), 2, prior_scale=1.0, name="r2").to(device)
    prior_loc = torch.zeros(2, device=device)

    def model(a, b):
        f1, f2 = r1(a), r2(b)
        with pyro.plate("data", a.shape[0]):
            z = pyro.sample("z", dist.Normal(prior_loc, 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 3e-3}), RPM_ELBO())
    for _ in range(5):
        svi.step(x1, x2)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.svi_steps):
        svi.step(x1, x2)
    sync(device)
    return args.svi_steps / (time.perf_counter() - start)


STEP_SIDES = ("torch", "rpm", "rpm_compiled", "rpm_inductor", "rpm_cuda_graphs", "torch_bf16", "rpm_compiled_bf16")


def _autocast(side: Side, device: torch.device) -> Side:
    """``side`` with every step under bfloat16 autocast."""

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return side.step()

    return Side(step, side.params, side.loss)


def time_training_steps(args, device: torch.device, sides: list[str]) -> dict[str, float]:
    """Part 3: ms per step of every side of the two InfoNCE workloads, and the ratio to plain torch."""
    result: dict[str, float] = {}
    if device.type != "cuda":
        sides = [s for s in sides if s != "rpm_cuda_graphs"]
    plain = [s for s in sides if not s.endswith("_bf16")]
    mixed = [s.removesuffix("_bf16") for s in sides if s.endswith("_bf16")]
    for workload, build, batch in (("mlp", infonce_mlp, args.batch), ("conv", conv_rbf, 256)):
        pyro.clear_param_store()
        timed = build(plain, batch, args.seed, device)
        if mixed:  # copies of their own (parameter names prefixed), stepped under autocast
            copies = build(mixed, batch, args.seed, device, prefix="bf16_")
            timed.update({f"{name}_bf16": _autocast(copies[name], device) for name in mixed})
        ms = time_sides(timed, args.repeats, None, 100.0, device, f"steps {workload}", args.no_progress)
        for name, value in ms.items():
            result[f"step_ms_{workload}_{name}"] = value
            result[f"step_ratio_{workload}_{name}"] = value / ms["torch"]
            print(f"step {workload} B={batch:<5} {name:20s} {value:9.3f} ms  {value / ms['torch']:6.2f}x", flush=True)
    return result


def _figure(out: str, rows: dict[tuple[str, int], dict], sizes: list[int], device_name: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in NAMES:
        ax.plot(sizes, [rows[name, n]["ms"] for n in sizes], "o-", label=name)
    ax.axhline(2.0, color="k", ls=":", lw=1, label="2 ms target (H100, N=1e6)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("support size N")
    ax.set_ylabel("forward + backward (ms, median)")
    ax.set_title(f"normaliser, B=256, D=8 on {device_name}", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out, "gpu.png")


def _parse_sizes(parser: argparse.ArgumentParser, flag: str, text: str, minimum: int) -> list[int]:
    """Comma-separated sizes such as ``1e4,1e5``, each at least ``minimum`` (else a usage error)."""
    try:
        sizes = [int(float(item)) for item in text.split(",")]
    except ValueError:
        parser.error(f"{flag} must be comma-separated numbers such as 1e4,1e5, got {text!r}")
    if min(sizes) < minimum:
        parser.error(f"{flag} must all be >= {minimum}, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser(
        __doc__.split("\n")[0],
        script=__file__,
        quick_help="N = 1e4, 1e5; 3 repeats; 20 SVI steps",
    )
    parser.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="comma-separated support sizes (default 1e4,1e5,1e6)")
    parser.add_argument("--batch", type=int, default=256, help="latents per call B (default 256)")
    parser.add_argument("--dim", type=int, default=8, help="latent dimension D (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20; 3 with --quick)")
    parser.add_argument("--svi-steps", type=int, default=None, help="timed SVI steps (default 100; 20 with --quick)")
    parser.add_argument("--full-sizes", default=None, help="N for the whole-data SVI run (default 1e5,1e6; 1e4 quick)")
    parser.add_argument(
        "--steps-sides", default=None,
        help=f"comma-separated sides of part 3 from {','.join(STEP_SIDES)}, or 'none' (default: all; "
        "torch,rpm,rpm_compiled with --quick on the CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.batch < 2 or args.dim < 1:
        parser.error("--batch must be >= 2 and --dim >= 1")
    for flag, value in (("--repeats", args.repeats), ("--svi-steps", args.svi_steps)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.svi_steps = args.svi_steps or (20 if args.quick else 100)
    sizes = _parse_sizes(parser, "--sizes", args.sizes or ("1e4,1e5" if args.quick else "1e4,1e5,1e6"), 1)
    full_sizes = _parse_sizes(parser, "--full-sizes", args.full_sizes or ("1e4" if args.quick else "1e5,1e6"), args.batch)
    device = setup(args)
    quick_cpu = args.quick and device.type != "cuda"
    step_sides = (args.steps_sides or ("torch,rpm,rpm_compiled" if quick_cpu else ",".join(STEP_SIDES))).split(",")
    step_sides = [] if step_sides == ["none"] else step_sides
    if step_sides and ("torch" not in step_sides or not set(step_sides) <= set(STEP_SIDES)):
        parser.error(f"--steps-sides must name 'torch' and sides from {', '.join(STEP_SIDES)}, got {args.steps_sides!r}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thread)"
    auto = "auto"
    result: dict = {"device": str(device), "device_name": device_name, "batch": args.batch, "dim": args.dim}
    rows: dict[tuple[str, int], dict] = {}
    for n in progress(sizes, "normaliser sizes", disable=args.no_progress):
        for name, row in time_normaliser(n, args, device).items():
            rows[name, n] = row
            print(f"N={tag(n):>4} {name:14s} {row['ms']:9.3f} ms  {row['mpairs_per_s']:8.1f} Mpairs/s", flush=True)
        t = tag(n)
        result[f"ms_{t}"] = rows[auto, n]["ms"]
        result[f"mpairs_per_s_{t}"] = rows[auto, n]["mpairs_per_s"]
        result[f"peak_mb_{t}"] = rows[auto, n]["peak_mb"]
        result[f"speedup_vs_dense_{t}"] = rows["dense", n]["ms"] / rows[auto, n]["ms"]
    if 10**6 in sizes:
        result["normaliser_ms_1e6"] = rows[auto, 10**6]["ms"]
        result["meets_2ms_target"] = bool(result["normaliser_ms_1e6"] <= 2.0)
    result["backends"] = {f"{name}_{tag(n)}": row for (name, n), row in rows.items()}
    result["svi_inbatch_steps_per_s"] = svi_inbatch_steps_per_s(args, device)
    print(f"SVI in-batch B={args.batch}: {result['svi_inbatch_steps_per_s']:.1f} steps/s", flush=True)
    full_args = argparse.Namespace(dim=2, seed=args.seed, chunk=8192, batch=args.batch, steps=3 if args.quick else 10)
    for n in full_sizes:
        pyro.clear_param_store()
        row = full_support.measure("gradcache", n, full_args, device)
        result[f"svi_full_steps_per_s_{tag(n)}"] = row["steps_per_s"]
        print(f"SVI whole data N={tag(n)}: {row['steps_per_s']:.2f} steps/s", flush=True)
    if step_sides:
        result.update(time_training_steps(args, device, step_sides))
    result["figure"] = _figure(args.out, rows, sizes, device_name)
    emit(result)
    return result


if __name__ == "__main__":
    main()
