# SPDX-License-Identifier: Apache-2.0
r"""The two-view demo: recover a 2-D latent from two noisy nonlinear views, without a decoder.

Data: ``x1, x2, z = two_view_gaussian(n)`` (:mod:`pyro_rpm.datasets.synthetic`), two views of a
latent :math:`z \sim \mathcal N(0, I_2)`. Model: the canonical two-view RPM,

.. math::

    z \sim \mathcal N(0, I), \qquad
    p(x_j = x_j^{(b)} \mid z) = \frac{f_j(z \mid x_j^{(b)})}{\sum_{m=1}^{B} f_j(z \mid x_j^{(m)})}, \quad j = 1, 2,

with Gaussian recognition factors in the "prior + network" form, the in-batch support (the
current minibatch of B points), the tied guide :math:`q \propto p f_1 f_2 / p` and
:class:`~pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI`. After training, the posterior means of
the tied guide over the whole data set are regressed on the true latent; the linear
:math:`R^2` measures recovery up to an affine map (the isotropic prior leaves a rotation free).

Run it with ``python -m pyro_rpm demo`` or ``python examples/two_views.py``; the reusable part is
:func:`run_demo`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .._validation import resolve_device
from ..guides.recognition import RecognitionGuide
from ..infer.elbo import RPM_ELBO
from ..likelihood.recognition import observe
from ..recognition.gaussian import GaussianRecognition

__all__ = ["DEFAULTS", "QUICK", "build_parser", "main", "run_demo"]

#: Settings of the full demo (under 2 minutes on one CPU thread). It trains on the same data set as
#: ``--quick`` (:func:`~pyro_rpm.datasets.synthetic.two_view_gaussian` draws its random view maps after
#: the N latents, so another N is another problem: the former default, N = 2048, was a harder draw) for
#: twice the steps, with the learning rate decayed geometrically to ``lr_decay`` times its start (with
#: a constant rate the linear R^2 drifts down after about 1000 steps: 0.970 at 1000, 0.964 at 3000).
DEFAULTS: dict[str, Any] = {"n": 1024, "steps": 2000, "batch_size": 256, "lr": 3e-3, "lr_decay": 0.1, "hidden": 64}
#: Settings of ``--quick`` (for CI and smoke tests): a constant learning rate.
QUICK: dict[str, Any] = {"n": 1024, "steps": 1000, "batch_size": 256, "lr": 3e-3, "lr_decay": 1.0, "hidden": 64}

LATENT_DIM = 2
OBS_DIM = 10
NOISE = 0.1


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, out_dim),
    )


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _as_tensor(a: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(device, torch.float32)


def run_demo(
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: str | os.PathLike | None = "outputs",
    quick: bool = False,
    *,
    n: int | None = None,
    lr: float | None = None,
    progress: bool = True,
    compile: bool | str = False,
) -> dict[str, Any]:
    r"""Train the two-view RPM on synthetic data and measure latent recovery.

    :param int steps: SVI steps (default 2000, or 1000 with ``quick``).
    :param int batch_size: minibatch size B, also the size of the in-batch support (default 256).
    :param int seed: seed of the data set, the initialisation and the minibatches.
    :param device: torch device for data, networks and prior constants.
    :param out: folder for the figures (``elbo.png``, ``latents.png``); ``None`` skips them.
    :param bool quick: smaller data set and fewer steps.
    :param int n: number of data points N (default 1024).
    :param float lr: Adam learning rate at the first step (default 3e-3). The full demo decays it
        geometrically to a tenth of that by the last step (:class:`pyro.optim.ClippedAdam` with
        ``lrd`` :math:`= 0.1^{1/\text{steps}}`); ``quick`` keeps it constant (:class:`pyro.optim.Adam`).
    :param bool progress: show a tqdm progress bar with the running loss.
    :param compile: ``True`` (or a backend, ``"fx"``/``"inductor"``): train with
        :class:`~pyro_rpm.JitRPM_ELBO` (the step recorded once and replayed) instead of :class:`~pyro_rpm.RPM_ELBO`.
    :returns: a dict with ``r2`` (linear :math:`R^2` of the true latent from the posterior means),
        ``lr_decay`` (final over initial learning rate),
        ``seconds`` (wall time of the whole run), ``final_loss`` (mean loss per datum over the last
        100 steps, in nats), and the settings used.

    Clears Pyro's parameter store and seeds torch/Pyro (:func:`pyro.set_rng_seed`).
    """
    start = time.perf_counter()
    settings = dict(QUICK if quick else DEFAULTS)
    for key, value in (("steps", steps), ("batch_size", batch_size), ("n", n), ("lr", lr)):
        if value is not None:
            settings[key] = value
    for key in ("steps", "batch_size", "n"):
        _check_positive_int(settings[key], key)
    if not (isinstance(settings["lr"], (int, float)) and math.isfinite(settings["lr"]) and settings["lr"] > 0):
        raise ValueError(f"lr must be a finite positive float, got {settings['lr']!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    N, B, num_steps = settings["n"], settings["batch_size"], settings["steps"]
    if not 2 <= B <= N:
        raise ValueError(f"batch_size must lie in [2, n={N}] (the in-batch support needs 2 points), got {B}")
    device = resolve_device(device)

    from ..datasets.synthetic import two_view_gaussian

    x1, x2, z_true = two_view_gaussian(N, latent_dim=LATENT_DIM, obs_dim=OBS_DIM, noise=NOISE, seed=seed)
    x1, x2 = _as_tensor(x1, device), _as_tensor(x2, device)
    z_true = np.asarray(torch.as_tensor(z_true).detach().cpu(), dtype=np.float64)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    D, H = LATENT_DIM, settings["hidden"]
    r1 = GaussianRecognition(_mlp(x1.shape[-1], H, 2 * D), D, prior_scale=1.0, name="r1").to(device)
    r2 = GaussianRecognition(_mlp(x2.shape[-1], H, 2 * D), D, prior_scale=1.0, name="r2").to(device)
    prior_loc = torch.zeros(D, device=device)
    prior_scale = torch.ones(D, device=device)

    def model(x1: torch.Tensor, x2: torch.Tensor) -> None:
        f1, f2 = r1(x1), r2(x2)  # factors over the support set: here, the minibatch
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    guide = RecognitionGuide(model)
    if settings["lr_decay"] == 1.0:
        optim = pyro.optim.Adam({"lr": settings["lr"]})
    else:  # lr * lrd**step: lr * lr_decay at the last step
        optim = pyro.optim.ClippedAdam({"lr": settings["lr"], "lrd": settings["lr_decay"] ** (1 / num_steps)})
    if compile:
        from ..infer.compiled import JitRPM_ELBO

        elbo = JitRPM_ELBO(backend="fx" if compile is True else compile)
    else:
        elbo = RPM_ELBO()
    svi = pyro.infer.SVI(model, guide, optim, elbo)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    losses: list[float] = []
    order = torch.randperm(N, generator=generator)
    cursor = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="two-view RPM", unit="step", mininterval=0.5)
    train_start = time.perf_counter()
    for step in range(num_steps):
        if cursor + B > N:  # a new epoch: reshuffle
            order, cursor = torch.randperm(N, generator=generator), 0
        idx = order[cursor : cursor + B].to(device)
        cursor += B
        losses.append(svi.step(x1[idx], x2[idx]) / B)
        if bar is not None:
            bar.update(1)
            if step % 50 == 0 or step == num_steps - 1:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - train_start

    # Posterior means of the tied guide for every data point (one pass, in-batch support = all N).
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(x1, x2)
        z_mean = trace.nodes["z"]["fn"].mean.detach().cpu().double().numpy()
    r2, z_fit = _linear_r2(z_mean, z_true)

    figures: list[str] = []
    if out is not None:
        figures = _save_figures(os.fspath(out), losses, z_true, z_fit)

    return {
        "r2": round(float(r2), 4),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "log_batch_size": round(math.log(B), 4),
        "seconds": round(time.perf_counter() - start, 2),
        "train_seconds": round(train_seconds, 2),
        "steps": num_steps,
        "n": N,
        "batch_size": B,
        "lr": settings["lr"],
        "lr_decay": settings["lr_decay"],
        "seed": seed,
        "device": str(device),
        "figures": figures,
    }


def _linear_r2(z_mean: np.ndarray, z_true: np.ndarray) -> tuple[float, np.ndarray]:
    r""":math:`R^2` of the least-squares affine map from the posterior means to the true latent."""
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression().fit(z_mean, z_true)
    return float(reg.score(z_mean, z_true)), reg.predict(z_mean)


def _save_figures(out: str, losses: list[float], z_true: np.ndarray, z_fit: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="per step")
    window = max(1, min(100, len(losses) // 10))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss per datum (nats)")
    ax.set_title("RPM_ELBO loss (in-batch support)")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out, "elbo.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, z_true.shape[1], figsize=(4 * z_true.shape[1], 3.8))
    for d, ax in enumerate(np.atleast_1d(axes)):
        ax.scatter(z_true[:, d], z_fit[:, d], s=3, alpha=0.5)
        lo, hi = float(z_true[:, d].min()), float(z_true[:, d].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true z[{d}]")
        ax.set_ylabel(f"affine map of posterior mean, dim {d}")
    fig.suptitle("learned vs true latent (after the fitted affine map)")
    fig.tight_layout()
    paths.append(os.path.join(out, "latents.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def build_parser(prog: str | None = None):
    """The command-line interface of the demo (shared by ``python -m pyro_rpm demo`` and the example)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Two-view RPM demo: recover a 2-D latent from two noisy nonlinear views (no decoder). "
        "Run time on one CPU thread: under 2 minutes (default), under 40 s with --quick. Writes elbo.png and "
        "latents.png to --out (default ./outputs), prints their paths, and prints a JSON object with "
        "the linear R^2 and the wall time as its last line.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller data set and fewer steps (CI)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and minibatches")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--steps", type=int, default=None, help="SVI steps (default 2000; 1000 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch = support size B (default 256)")
    parser.add_argument("--n", type=int, default=None, help="data points N (default 1024)")
    parser.add_argument("--lr", type=float, default=None, help="initial Adam learning rate (default 3e-3; decayed to 1/10 over the run unless --quick)")
    parser.add_argument(
        "--out",
        default="outputs",
        help="folder for the PNG figures, created if missing (default outputs/ in the current folder)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--compile", action="store_true", help="train with JitRPM_ELBO (the step recorded once and replayed)"
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Parse ``argv``, run :func:`run_demo` on one torch thread, print the result as one JSON line."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the fastest setting for these small networks (a script, not library import)
    try:
        result = run_demo(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            out=args.out,
            quick=args.quick,
            n=args.n,
            lr=args.lr,
            progress=not args.no_progress,
            compile=args.compile,
        )
    except ValueError as error:
        parser.error(str(error))
    for path in result["figures"]:
        print(f"wrote {os.path.abspath(path)}", flush=True)
    print(json.dumps(result), flush=True)
    return result
