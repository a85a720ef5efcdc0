# SPDX-License-Identifier: Apache-2.0
r"""Time of one RPM training step, traced (``RPM_ELBO``) and compiled (``JitRPM_ELBO``), against plain torch.

Three workloads (their models: ``benchmarks/_elbo_models.py``):

* **InfoNCE on MLPs** at ``--batch-sizes`` (default 16, 256, 1024): the InfoNCE model of
  ``docs/core.md`` §7 written as an RPM (``DeltaRecognition``, ``MarginalPrior``,
  ``ContrastivePrior`` with a bilinear coupling, ``RecognitionGuide``) under
  :class:`pyro.infer.SVI`, against the same step in plain torch

  .. code-block:: python

      a, b = net1(x1), net2(x2)
      loss = F.cross_entropy(a @ W @ b.T, arange(B), reduction="sum")
      opt.zero_grad(); loss.backward(); opt.step()        # torch.optim.Adam

  eager (``torch``) and with the whole step under ``torch.compile`` (``torch_compiled``). The RPM
  loss is :math:`B\,(\text{InfoNCE} + \log B)`: the same gradients.
* **InfoNCE on a convolutional encoder** (``--conv-batch-size``, default 256): images of
  1 × 28 × 28, two 3×3 convolutions of 32 channels (stride 2, ReLU) and a linear map to 16
  dimensions per view, RBF coupling with a learned lengthscale.
* **The tutorial's AR(1) prior** (64 sequences of T = 50 frames): the :func:`pyro.markov` loop
  of one sample and one observe site per frame (about 100 sites) against the same prior as one
  vectorised trajectory site, each traced and compiled.

The RPM sides step with :class:`pyro_rpm.train.optim.FusedAdam` under :class:`pyro.infer.SVI`:
``rpm`` with :class:`~pyro_rpm.RPM_ELBO` (Pyro traces model and guide at every step),
``rpm_compiled`` with :class:`~pyro_rpm.JitRPM_ELBO` (recorded once, replayed), and with
``--inductor`` also ``rpm_inductor`` (``JitRPM_ELBO(backend="inductor")``). Every side of a
workload starts from copies of one initialisation and steps on one fixed batch; before timing, the
script checks that each side's loss and gradients equal plain torch's (``initial_loss_abs_diff_*``,
``initial_grad_rel_diff_*``; the compiled sides are checked on a replayed step). The sides run
interleaved in blocks (the order rotates each round); a side's time is the median over rounds of
its mean ms per step, and each ratio divides two sides of the same run.

Usage::

    python benchmarks/elbo_step.py --quick      # a few minutes on one CPU thread
    python benchmarks/elbo_step.py              # more rounds; torch.compile at every batch size
    python benchmarks/elbo_step.py --profile    # also: where the traced and the compiled step spend their time

``torch.compile`` takes about a minute per batch size on the CPU; ``--torch-compile-batch-sizes``
(default ``256`` with ``--quick``, all otherwise; ``none`` to skip) says where it runs. The figure
``elbo_step.png`` goes to ``--out``. The last stdout line is one JSON object with
``ratio_compiled_b{B}`` (``JitRPM_ELBO`` / plain torch), ``ratio_b{B}`` (``RPM_ELBO`` / plain torch),
``ratio_torch_compiled_b{B}``, ``ratio_conv_b256`` (compiled; ``ratio_conv_traced_b256`` traced),
``ratio_markov_loop_vs_vectorised`` (both compiled; the traced ratio is
``ratio_markov_loop_vs_vectorised_traced``) and the ms per step of every side. One torch thread;
on a shared machine absolute times carry noise (compare the ratios).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from _common import sync
from _elbo_models import Side, conv_rbf, infonce_mlp, markov

from pyro_rpm.cli.scripts import emit, progress, script_parser, setup

MARKOV_BATCH, MARKOV_STEPS = 64, 50
LABELS = {
    "torch": "torch + Adam",
    "torch_compiled": "torch.compile(torch step)",
    "rpm": "RPM_ELBO (traced)",
    "rpm_compiled": "JitRPM_ELBO",
    "rpm_inductor": "JitRPM_ELBO(inductor)",
    "loop_traced": "pyro.markov loop, traced",
    "loop_compiled": "pyro.markov loop, JitRPM_ELBO",
    "vectorised_traced": "vectorised, traced",
    "vectorised_compiled": "vectorised, JitRPM_ELBO",
}


def initial_check(sides: dict[str, Side], batch_size: int) -> tuple[float, float]:
    """Max over RPM sides of ``|loss - torch loss - B log B| / B`` and of the relative gradient difference.

    Each loss is evaluated three times before its gradients are taken, so that a compiled side's
    check runs on a replayed step (call 1 is eager, call 2 records)."""
    ref = sides["torch"].loss()
    ref_grads = torch.autograd.grad(ref, sides["torch"].params)
    scale = max(g.abs().max().item() for g in ref_grads)
    loss_diff = grad_diff = 0.0
    for name, side in sides.items():
        if name.startswith("torch"):
            continue
        for _ in range(3):
            loss = side.loss()
        grads = torch.autograd.grad(loss, side.params)
        shift = batch_size * torch.log(torch.tensor(float(batch_size))).item()
        loss_diff = max(loss_diff, abs(loss.item() - ref.item() - shift) / batch_size)
        grad_diff = max(grad_diff, max((g - r).abs().max().item() for g, r in zip(grads, ref_grads)) / scale)
    return loss_diff, grad_diff


def time_sides(sides: dict[str, Side], rounds: int, block: int | None, block_ms: float, device, desc, disable):
    """Median over ``rounds`` of the mean ms per step of each side, the sides interleaved in blocks.

    The warm-up (which records the compiled sides and compiles ``torch.compile``'s) runs 5 steps;
    without a fixed ``block``, each side's block holds as many steps as fill about ``block_ms``."""
    blocks = {}
    for name, side in sides.items():
        for _ in range(4):
            side.step()
        sync(device)
        start = time.perf_counter()
        side.step()
        sync(device)
        estimate = 1e3 * (time.perf_counter() - start)
        blocks[name] = block if block is not None else max(1, min(200, round(block_ms / max(estimate, 1e-3))))
    per_round: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for r in progress(rounds, desc, disable=disable):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            step, n = sides[name].step, blocks[name]
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                step()
            sync(device)
            per_round[name].append(1e3 * (time.perf_counter() - start) / n)
    return {name: statistics.median(ms) for name, ms in per_round.items()}


def profile_traced(step: Callable[[], float], n_steps: int, top: int) -> None:
    """cProfile ``n_steps`` traced RPM steps; print where the time goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n_steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())

    def inclusive(*patterns: tuple[str, str]) -> float:
        return sum(
            v[3]
            for (file, _, func), v in stats.stats.items()
            if any(file.endswith(f) and func == n for f, n in patterns)
        )

    rows = {
        "SVI.step (total)": inclusive(("pyro/infer/svi.py", "step")),
        "guide trace (RecognitionGuide.forward)": inclusive(("pyro_rpm/guides/recognition.py", "forward")),
        "RPM_ELBO._fill_log_probs": inclusive(("pyro_rpm/infer/elbo.py", "_fill_log_probs")),
        "pyro.module registration (incl. param store)": inclusive(("pyro/primitives.py", "module")),
        "backward (torch.autograd.backward)": inclusive(("torch/autograd/__init__.py", "backward")),
        "optimizer (MultiTensorOptim.__call__)": inclusive(("pyro_rpm/train/optim.py", "__call__")),
    }
    print(f"\ncProfile of {n_steps} RPM steps: {1e3 * total / n_steps:.3f} ms/step under the profiler")
    print(f"{'where (inclusive)':<50} {'ms/step':>8} {'share':>7}")
    for label, seconds in rows.items():
        print(f"{label:<50} {1e3 * seconds / n_steps:>8.3f} {seconds / total:>7.1%}")
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    print(f"\ntop {top} by tottime:\n" + buffer.getvalue().split("\n\n", 1)[-1].strip())


def profile_compiled(step: Callable[[], float], n_steps: int, top: int) -> None:
    """torch.profiler table of ``n_steps`` compiled steps: the ATen operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n_steps):
            step()
    print(f"\ntorch.profiler of {n_steps} JitRPM_ELBO steps (operators by self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def save_figure(out: str, result: dict, batch_sizes: list[int]) -> str:
    """Ratios to plain torch at each batch size (left), the conv and Markov workloads' ms per step (right)."""
    import os

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    sides = [
        s
        for s in ("torch_compiled", "rpm", "rpm_compiled", "rpm_inductor")
        if any(f"ms_{s}_b{b}" in result for b in batch_sizes)
    ]
    width = 0.8 / max(1, len(sides))
    for k, side in enumerate(sides):
        xs = [i + k * width for i, b in enumerate(batch_sizes) if f"ms_{side}_b{b}" in result]
        ys = [result[f"ms_{side}_b{b}"] / result[f"ms_torch_b{b}"] for b in batch_sizes if f"ms_{side}_b{b}" in result]
        bars = axes[0].bar(xs, ys, width, label=LABELS[side])
        axes[0].bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_xticks(
        [i + width * (len(sides) - 1) / 2 for i in range(len(batch_sizes))], [f"B = {b}" for b in batch_sizes]
    )
    axes[0].set_ylabel("ms per step / plain torch's")
    axes[0].set_title("InfoNCE, MLP encoders")
    axes[0].legend(fontsize=7)
    for ax, (title, prefix, names) in zip(
        axes[1:],
        (
            ("InfoNCE, conv encoder, B = 256", "conv_", ("torch", "rpm", "rpm_compiled")),
            (
                "AR(1) prior, T = 50, B = 64",
                "markov_",
                ("loop_traced", "loop_compiled", "vectorised_traced", "vectorised_compiled"),
            ),
        ),
    ):
        present = [n for n in names if f"ms_{prefix}{n}" in result]
        ms = [result[f"ms_{prefix}{n}"] for n in present]
        bars = ax.bar(range(len(present)), ms, 0.6, color=[f"C{i}" for i in range(len(present))])
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in ms], fontsize=7)
        ax.set_xticks(range(len(present)), [LABELS[n] for n in present], rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("ms per step")
        ax.set_title(title)
    fig.suptitle(f"one training step ({result['threads']} thread, {result['device']})", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "elbo_step.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sizes(text: str, parser, flag: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")] if text not in ("", "none") else []
    except ValueError:
        parser.error(f"{flag} must be comma-separated integers or 'none', got {text!r}")


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser(
        "Ms per training step of an RPM under SVI, traced (RPM_ELBO) and compiled (JitRPM_ELBO), against the same "
        "step in plain torch (eager and torch.compile), interleaved in one run.",
        script=__file__,
        quick_help="fewer rounds; torch.compile at B = 256 only (a few minutes)",
    )
    parser.add_argument("--batch-sizes", default="16,256,1024", help="InfoNCE-MLP batch sizes (default 16,256,1024)")
    parser.add_argument(
        "--conv-batch-size", type=int, default=256, help="conv-encoder batch size (0: skip; default 256)"
    )
    parser.add_argument("--no-markov", action="store_true", help="skip the AR(1) workload")
    parser.add_argument(
        "--torch-compile-batch-sizes",
        default=None,
        help="where to time torch.compile of the plain step ('none' to skip)",
    )
    parser.add_argument("--inductor", action="store_true", help="also time JitRPM_ELBO(backend='inductor')")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; 5 with --quick)")
    parser.add_argument("--block", type=int, default=None, help="steps per side per round (default: about --block-ms)")
    parser.add_argument("--block-ms", type=float, default=None, help="ms per block (default 100; 40 with --quick)")
    parser.add_argument("--profile", action="store_true", help="profile the traced and the compiled step at B = 256")
    parser.add_argument("--profile-steps", type=int, default=100, help="steps profiled (default 100)")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 15)
    block_ms = args.block_ms if args.block_ms is not None else (40.0 if args.quick else 100.0)
    batch_sizes = _sizes(args.batch_sizes, parser, "--batch-sizes")
    compile_default = "256" if args.quick else args.batch_sizes
    compiled_at = _sizes(args.torch_compile_batch_sizes or compile_default, parser, "--torch-compile-batch-sizes")
    if rounds < 1 or (args.block is not None and args.block < 1) or min(batch_sizes, default=2) < 2:
        parser.error("need --rounds >= 1, --block >= 1 and batch sizes >= 2")
    if args.conv_batch_size < 0 or args.conv_batch_size == 1 or not block_ms > 0 or args.profile_steps < 1:
        parser.error("need --conv-batch-size 0 or >= 2, --block-ms > 0 and --profile-steps >= 1")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    pyro.enable_validation(True)

    result: dict = {}

    def run(workload: str, key: str, sides: dict[str, Side], baseline: str, batch_size: int | None) -> dict:
        if batch_size is not None:
            loss_diff, grad_diff = initial_check(sides, batch_size)
            result[f"initial_loss_abs_diff_{key}"], result[f"initial_grad_rel_diff_{key}"] = loss_diff, grad_diff
            if not (loss_diff <= 1e-4 and grad_diff <= 1e-3):  # a side that computes something else is not timed
                raise SystemExit(f"{workload} {key}: the sides disagree (loss {loss_diff:.1e}, gradients {grad_diff:.1e})")
        ms = time_sides(sides, rounds, args.block, block_ms, device, f"{workload} {key}", args.no_progress)
        print(
            f"\n{workload}, {key}:"
            + "".join(f"\n  {LABELS[n]:<32} {m:9.3f} ms  {m / ms[baseline]:6.2f}x" for n, m in ms.items())
        )
        if batch_size is not None:
            print(f"  check: |loss/B - (InfoNCE + log B)| <= {loss_diff:.1e}, gradients <= {grad_diff:.1e} relative")
        return ms

    for b in batch_sizes:
        names = ["torch", *(["torch_compiled"] if b in compiled_at else []), "rpm", "rpm_compiled"]
        names += ["rpm_inductor"] if args.inductor else []
        pyro.clear_param_store()
        ms = run("InfoNCE, MLP encoders", f"b{b}", infonce_mlp(names, b, args.seed, device), "torch", b)
        for name, m in ms.items():
            result[f"ms_{name}_b{b}"] = m
        result[f"ratio_b{b}"] = ms["rpm"] / ms["torch"]
        result[f"ratio_compiled_b{b}"] = ms["rpm_compiled"] / ms["torch"]
        for name in ("torch_compiled", "rpm_inductor"):
            if name in ms:
                result[f"ratio_{name.replace('rpm_', '')}_b{b}"] = ms[name] / ms["torch"]
    if args.conv_batch_size:
        b = args.conv_batch_size
        pyro.clear_param_store()
        ms = run(
            "InfoNCE, conv encoder",
            f"b{b}",
            conv_rbf(["torch", "rpm", "rpm_compiled"], b, args.seed, device),
            "torch",
            b,
        )
        for name, m in ms.items():
            result[f"ms_conv_{name}"] = m
        result[f"ratio_conv_b{b}"] = ms["rpm_compiled"] / ms["torch"]
        result[f"ratio_conv_traced_b{b}"] = ms["rpm"] / ms["torch"]
    if not args.no_markov:
        names = ["loop_traced", "loop_compiled", "vectorised_traced", "vectorised_compiled"]
        pyro.clear_param_store()
        ms = run(
            f"AR(1) prior, T = {MARKOV_STEPS}",
            f"b{MARKOV_BATCH}",
            markov(names, MARKOV_BATCH, MARKOV_STEPS, args.seed, device),
            "vectorised_traced",
            None,
        )
        for name, m in ms.items():
            result[f"ms_markov_{name}"] = m
        result["ratio_markov_loop_vs_vectorised"] = ms["loop_compiled"] / ms["vectorised_compiled"]
        result["ratio_markov_loop_vs_vectorised_traced"] = ms["loop_traced"] / ms["vectorised_traced"]
        result["ratio_markov_loop_compiled_vs_vectorised_traced"] = ms["loop_compiled"] / ms["vectorised_traced"]
        result["speedup_markov_loop_compiled"] = ms["loop_traced"] / ms["loop_compiled"]
    result.update(
        batch_sizes=batch_sizes, torch_compile_batch_sizes=compiled_at, rounds=rounds, device=str(device),
        seed=args.seed, threads=torch.get_num_threads(), torch=torch.__version__, pyro=pyro.__version__,
    )  # fmt: skip
    result["figures"] = [save_figure(args.out, result, batch_sizes)]
    if args.profile:
        pyro.clear_param_store()
        sides = infonce_mlp(["rpm", "rpm_compiled"], 256, args.seed, device)
        for side in sides.values():
            for _ in range(10):
                side.step()
        profile_traced(sides["rpm"].step, args.profile_steps, top=20)
        profile_compiled(sides["rpm_compiled"].step, args.profile_steps, top=20)
    emit(result)
    return result


if __name__ == "__main__":
    main()
