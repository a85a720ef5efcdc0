# SPDX-License-Identifier: Apache-2.0
r"""Time of one ``RPM_ELBO`` SVI step against the same InfoNCE step written in plain torch.

The model is the InfoNCE RPM of ``docs/core.md`` §7 with a bilinear coupling
:math:`g(z, z') = z^\top W z'`: one MLP encoder per view (10 → 64 → 64 → 16, SiLU) in
:class:`~pyro_rpm.DeltaRecognition`, :class:`~pyro_rpm.MarginalPrior` over view 1,
:class:`~pyro_rpm.ContrastivePrior` for view 2, in-batch support, tied guide,
:class:`~pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI`. Its loss is
:math:`B\,(\text{InfoNCE} + \log B)`, so it has the same gradients as the hand-written step

.. code-block:: python

    a, b = net1(x1), net2(x2)
    loss = F.cross_entropy(a @ W @ b.T, arange(B), reduction="sum")
    opt.zero_grad(); loss.backward(); opt.step()        # torch.optim.Adam

Every side starts from copies of the same encoders and W and steps on the same fixed batch. As a
check that the sides do the same computation, the script reports the loss and the gradients of
both at the initial parameters (``initial_loss_abs_diff``, ``initial_grad_rel_diff``). (Later
the trajectories drift apart by rounding: Adam divides by the root of tiny second moments once the
fixed batch is fitted.) Two Pyro optimisers are timed: :class:`pyro.optim.Adam` (one
torch Adam per parameter tensor) and :class:`pyro_rpm.train.optim.FusedAdam` (one Adam over all of them).
The sides run interleaved in blocks of ``--block`` steps (the order rotates each round); a side's
time is the median over rounds of its mean ms per step; ``ratio = RPM ms / torch ms``.

Usage::

    python benchmarks/elbo_step.py              # B = 16 and 256, 15 rounds of 50 steps
    python benchmarks/elbo_step.py --quick      # 5 rounds of 20 steps (a few seconds)
    python benchmarks/elbo_step.py --profile    # also cProfile the RPM step at B = 16

The figure ``elbo_step.png`` (ms per step of every side) goes to ``--out``. The last stdout line is one JSON object with ``ratio_b16`` and ``ratio_b256`` (best Pyro optimiser),
the ratio for each optimiser, and the ms per step of every side. Timings are on one torch thread;
on a shared machine they carry noise (compare ratios, not absolute times).
"""

from __future__ import annotations

import copy
import cProfile
import io
import math
import os
import pstats
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from _common import sync
from torch import nn

from pyro_rpm import RPM_ELBO, BilinearCoupling, ContrastivePrior, DeltaRecognition, MarginalPrior, RecognitionGuide
from pyro_rpm import observe as observe_view
from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.train.optim import FusedAdam

OBS_DIM, HIDDEN, EMBED_DIM = 10, 64, 16
LR = 1e-3
SIDES = ("torch", "pyro_adam", "fused_adam")


def _encoder() -> nn.Module:
    return nn.Sequential(
        nn.Linear(OBS_DIM, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, EMBED_DIM)
    )


def make_torch_step(net1: nn.Module, net2: nn.Module, weight: torch.Tensor, x1, x2):
    """The hand-written InfoNCE step (sum over the batch, as the RPM loss)."""
    params = [*net1.parameters(), *net2.parameters(), weight]
    opt = torch.optim.Adam(params, lr=LR)
    labels = torch.arange(x1.shape[0], device=x1.device)

    def loss_fn() -> torch.Tensor:
        a, b = net1(x1), net2(x2)
        return F.cross_entropy(a @ weight @ b.T, labels, reduction="sum")

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.item()

    return step, params, loss_fn


def make_rpm_step(tag: str, net1: nn.Module, net2: nn.Module, weight: torch.Tensor, optim, x1, x2, validate: bool):
    """The RPM step: ``SVI(model, RecognitionGuide(model), optim, RPM_ELBO()).step``."""
    coupling = BilinearCoupling(EMBED_DIM, name=f"{tag}_W").to(x1.device)
    with torch.no_grad():
        coupling.weight.copy_(weight)
    e1 = DeltaRecognition(net1, EMBED_DIM, name=f"{tag}_e1", validate=validate)
    e2 = DeltaRecognition(net2, EMBED_DIM, name=f"{tag}_e2", validate=validate)

    def model(x1, x2):
        f1, f2 = e1(x1), e2(x2)
        with pyro.plate("data", x1.shape[0]):
            z1 = pyro.sample("z1", MarginalPrior(f1))
            z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
            observe_view("x1", f1, z1)
            observe_view("x2", f2, z2)

    guide = RecognitionGuide(model)
    svi = pyro.infer.SVI(model, guide, optim, RPM_ELBO())
    params = [*net1.parameters(), *net2.parameters(), coupling.weight]
    return (lambda: svi.step(x1, x2)), params, (lambda: RPM_ELBO().differentiable_loss(model, guide, x1, x2))


def build(batch_size: int, seed: int, device: torch.device, validate: bool):
    """The three sides, from copies of one initialisation, on one fixed batch (clears the param store)."""
    pyro.clear_param_store()
    x1, x2, _ = two_view_gaussian(batch_size, obs_dim=OBS_DIM, seed=seed)
    x1, x2 = x1.to(device), x2.to(device)
    torch.manual_seed(seed)
    net1, net2 = _encoder().to(device), _encoder().to(device)
    weight = (torch.eye(EMBED_DIM) + 0.1 * torch.randn(EMBED_DIM, EMBED_DIM)).to(device)
    steps, params, losses = {}, {}, {}
    steps["torch"], params["torch"], losses["torch"] = make_torch_step(
        copy.deepcopy(net1), copy.deepcopy(net2), weight.clone().requires_grad_(), x1, x2
    )
    for side, optim in (("pyro_adam", pyro.optim.Adam({"lr": LR})), ("fused_adam", FusedAdam({"lr": LR}))):
        steps[side], params[side], losses[side] = make_rpm_step(
            f"b{batch_size}_{side}", copy.deepcopy(net1), copy.deepcopy(net2), weight, optim, x1, x2, validate
        )
    return steps, params, losses


def initial_gradient_check(params: dict, losses: dict, batch_size: int) -> tuple[float, float]:
    """Before any step: max |loss/B - (InfoNCE + log B)| and max relative gradient difference, RPM vs torch."""
    ref_loss = losses["torch"]()
    ref_grads = torch.autograd.grad(ref_loss, params["torch"])
    scale = max(g.abs().max().item() for g in ref_grads)
    loss_diff, grad_diff = 0.0, 0.0
    for side in SIDES[1:]:
        loss = losses[side]()
        grads = torch.autograd.grad(loss, params[side])
        loss_diff = max(loss_diff, abs(loss.item() - ref_loss.item() - batch_size * math.log(batch_size)) / batch_size)
        grad_diff = max(grad_diff, max((g - r).abs().max().item() for g, r in zip(grads, ref_grads)) / scale)
    return loss_diff, grad_diff


def time_sides(steps: dict, rounds: int, block: int, warmup: int, device, desc: str, disable: bool) -> dict:
    """Median over ``rounds`` of the mean ms per step of each side, the sides interleaved in blocks."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    per_round: dict[str, list[float]] = {side: [] for side in steps}
    order = list(steps)
    for r in progress(rounds, desc, disable=disable):
        for side in order[r % len(order) :] + order[: r % len(order)]:
            step = steps[side]
            sync(device)
            start = time.perf_counter()
            for _ in range(block):
                step()
            sync(device)
            per_round[side].append(1e3 * (time.perf_counter() - start) / block)
    return {side: statistics.median(ms) for side, ms in per_round.items()}


def profile_rpm(step, n_steps: int, top: int) -> None:
    """cProfile ``n_steps`` RPM steps; print the top entries and where the time goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n_steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # total tottime = profiled time

    def inclusive(*patterns: tuple[str, str]) -> float:
        return sum(
            v[3]
            for (file, _, func), v in stats.stats.items()
            if any(file.endswith(f) and func == n for f, n in patterns)
        )

    def exclusive_in(folder: str) -> float:
        return sum(v[2] for (file, _, _), v in stats.stats.items() if folder in file)

    rows = {
        "SVI.step (total)": inclusive(("pyro/infer/svi.py", "step")),
        "guide trace (RecognitionGuide.forward)": inclusive(("pyro_rpm/guides/recognition.py", "forward")),
        "model replay (model)": inclusive(("benchmarks/elbo_step.py", "model")),
        "RPM_ELBO._fill_log_probs": inclusive(("pyro_rpm/infer/elbo.py", "_fill_log_probs")),
        "pyro.module registration (incl. param store)": inclusive(("pyro/primitives.py", "module")),
        "finite checks of recognition inputs/outputs": inclusive(("pyro_rpm/_validation.py", "check_finite")),
        "Pyro validation (check_model_guide_match, check_site_shape)": inclusive(
            ("pyro/util.py", "check_model_guide_match"), ("pyro/infer/util.py", "check_site_shape")
        ),
        "backward (torch.autograd.backward)": inclusive(("torch/autograd/__init__.py", "backward")),
        "optimizer (PyroOptim/MultiTensorOptim.__call__)": inclusive(
            ("pyro/optim/optim.py", "__call__"), ("pyro_rpm/train/optim.py", "__call__")
        ),
        "param store total (pyro/params, exclusive)": exclusive_in("pyro/params/"),
        "poutine messengers (pyro/poutine, exclusive)": exclusive_in("pyro/poutine/"),
    }
    print(f"\ncProfile of {n_steps} RPM steps: {1e3 * total / n_steps:.3f} ms/step under the profiler")
    print(f"{'where (inclusive unless marked)':<62} {'ms/step':>8} {'share':>7}")
    for label, seconds in rows.items():
        print(f"{label:<62} {1e3 * seconds / n_steps:>8.3f} {seconds / total:>7.1%}")
    for key in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(key).print_stats(top)
        print(f"\ntop {top} by {key}:\n" + buffer.getvalue().split("\n\n", 1)[-1].strip())


def save_figure(out: str, result: dict, batch_sizes: list[int]) -> str:
    """Bar chart of the ms per step of each side at each batch size."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    labels = {"torch": "torch + Adam", "pyro_adam": "RPM SVI + pyro.optim.Adam", "fused_adam": "RPM SVI + FusedAdam"}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / len(SIDES)
    for k, side in enumerate(SIDES):
        ms = [result[f"ms_{side}_b{b}"] for b in batch_sizes]
        bars = ax.bar([i + k * width for i in range(len(batch_sizes))], ms, width, label=labels[side])
        if side != "torch":
            ratios = [result[f"ratio_{side}_b{b}"] for b in batch_sizes]
            ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], fontsize=7)
    ax.set_xticks([i + width for i in range(len(batch_sizes))], [f"B = {b}" for b in batch_sizes])
    ax.set_ylabel("ms per step (median over rounds)")
    ax.set_title(f"one SVI step vs hand-written torch ({result['threads']} thread)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "elbo_step.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser(
        "Steps per second of an RPM_ELBO SVI step against a hand-written torch InfoNCE step (same encoders, "
        "same batch, Adam), interleaved in one run.",
        script=__file__,
        quick_help="5 rounds of 20 steps per side and batch size (a few seconds)",
    )
    parser.add_argument("--batch-sizes", default="16,256", help="comma-separated batch sizes (default 16,256)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; 5 with --quick)")
    parser.add_argument("--block", type=int, default=None, help="steps per side per round (default 50; 20 quick)")
    parser.add_argument("--no-validate", action="store_true", help="switch off Pyro's and the encoders' checks")
    parser.add_argument("--profile", action="store_true", help="cProfile the RPM step (fused Adam) and print it")
    parser.add_argument("--profile-batch-size", type=int, default=16, help="batch size profiled (default 16)")
    parser.add_argument("--profile-steps", type=int, default=300, help="steps profiled (default 300)")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 15)
    block = args.block if args.block is not None else (20 if args.quick else 50)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if rounds < 1 or block < 1 or min(batch_sizes) < 2:
        parser.error("need --rounds >= 1, --block >= 1 and batch sizes >= 2")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    validate = not args.no_validate
    pyro.enable_validation(validate)

    result: dict = {}
    print(
        f"{'B':>5} {'torch ms':>9} {'pyro.optim.Adam ms':>19} {'FusedAdam ms':>13} {'ratio Adam':>11} {'ratio Fused':>12}"
    )
    for batch_size in batch_sizes:
        steps, params, loss_fns = build(batch_size, args.seed, device, validate)
        init_loss_diff, init_grad_diff = initial_gradient_check(params, loss_fns, batch_size)
        ms = time_sides(steps, rounds, block, max(5, block // 5), device, f"B={batch_size}", disable=args.no_progress)
        ratio = {side: ms[side] / ms["torch"] for side in SIDES[1:]}
        best = min(ratio, key=ratio.get)
        print(
            f"{batch_size:>5} {ms['torch']:>9.3f} {ms['pyro_adam']:>19.3f} {ms['fused_adam']:>13.3f} "
            f"{ratio['pyro_adam']:>11.2f} {ratio['fused_adam']:>12.2f}"
        )
        key = f"b{batch_size}"
        result[f"ratio_{key}"] = ratio[best]
        result[f"optimizer_{key}"] = best
        result[f"ratio_pyro_adam_{key}"] = ratio["pyro_adam"]
        result[f"ratio_fused_adam_{key}"] = ratio["fused_adam"]
        result[f"ms_torch_{key}"] = ms["torch"]
        result[f"ms_rpm_{key}"] = ms[best]
        result[f"ms_pyro_adam_{key}"] = ms["pyro_adam"]
        result[f"ms_fused_adam_{key}"] = ms["fused_adam"]
        print(
            f"{'':>5} check at the initial parameters: |loss/B - (InfoNCE + log B)| <= {init_loss_diff:.1e}, "
            f"relative gradient difference <= {init_grad_diff:.1e}"
        )
        result[f"initial_loss_abs_diff_{key}"] = init_loss_diff
        result[f"initial_grad_rel_diff_{key}"] = init_grad_diff
    result.update(
        batch_sizes=batch_sizes, rounds=rounds, block=block, validate=validate, device=str(device), seed=args.seed,
        threads=torch.get_num_threads(), torch=torch.__version__, pyro=pyro.__version__,
    )  # fmt: skip
    result["figures"] = [save_figure(args.out, result, batch_sizes)]
    if args.profile:
        steps, _, _ = build(args.profile_batch_size, args.seed, device, validate)
        for _ in range(10):
            steps["fused_adam"]()
        profile_rpm(steps["fused_adam"], args.profile_steps, top=25)
    emit(result)
    return result


if __name__ == "__main__":
    main()
