# SPDX-License-Identifier: Apache-2.0
r"""A recognition-parameterised GPFA: the Poisson "bouncing ball" with a Gaussian-process prior.

Data (:func:`pyro_rpm.datasets.timeseries.bouncing_ball_poisson`, Walker et al.'s RP-GPFA demo):
N sequences of T = 50 steps of a 1-D latent :math:`z_n(t) = \cos(\theta_n + t\pi/10)`,
:math:`\theta_n \sim U[0, 2\pi)`, seen through D Poisson neurons with Gaussian tuning curves
:math:`r_d(t) = 10 \exp(-(c_d - z_n(t))^2 / 0.6^2)`, :math:`c_d` evenly spaced in [-1, 1].

Model (no decoder): an independent GP per latent dimension over the time steps
(:class:`~pyro_rpm.priors.gp.GaussianProcessPrior`, unit scale, learned lengthscale), one Gaussian
recognition factor per frame from an MLP on :math:`\log(1 + x_t)` in the "prior + network" form,
every frame observed through the categorical over its support set
(:func:`~pyro_rpm.likelihood.trajectory.observe_trajectories`, ``--pooling ergodic`` by default: all NT
frames, as in the RP-GPFA demo), the exact conjugate guide
:math:`q(Z) \propto p(Z) \prod_t f_t(z_t) / p_t(z_t)`
(:class:`~pyro_rpm.guides.conjugate.ConjugateGaussianGuide`) and
:class:`~pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI`, full batch. Computations are in float64
(the GP kernel matrices are ill-conditioned in float32 with the default jitter).

Metric ``r2``: the :math:`R^2` of the least-squares affine regression of the true latent on the
posterior means, over all NT frames. ``r2_initial`` is the same for the untrained model (a random
network smoothed by the GP prior); a random linear read-out of a population code is already
informative, so both are reported.

Usage::

    python examples/gp_time_series.py            # N=40 sequences, 1500 steps
    python examples/gp_time_series.py --quick    # N=20 sequences, 400 steps (well under a minute)
    python examples/gp_time_series.py --quick --inducing 10 --pooling data   # sparse GP, per-step support

Figures (``--out``): ``elbo.png`` (loss per frame), ``trajectories.png`` (true latent and the
affine-mapped posterior mean with a 2-sd band, four sequences), ``counts.png`` (spike counts of one
sequence). The last stdout line is one JSON object with ``r2``, ``r2_initial``, ``lengthscale``,
``final_loss`` (nats per frame), ``seconds`` and the settings.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition
from pyro_rpm.cli.scripts import loss_figure, progress, pyplot, run_script, save_figure, script_parser, setup
from pyro_rpm.datasets.timeseries import bouncing_ball_poisson
from pyro_rpm.guides.conjugate import ConjugateGaussianGuide
from pyro_rpm.likelihood.trajectory import POOLINGS, observe_trajectories
from pyro_rpm.priors.gp import GaussianProcessPrior

FULL = {"sequences": 40, "steps": 1500}
QUICK = {"sequences": 20, "steps": 400}
NUM_STEPS_T = 50
HIDDEN = 32
LR = 1e-2


def _mlp(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, out_dim)
    )


def _r2(z_mean: np.ndarray, z_true: np.ndarray) -> tuple[float, np.ndarray]:
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression().fit(z_mean, z_true)
    return float(reg.score(z_mean, z_true)), reg


def run(args) -> dict[str, Any]:
    start = time.perf_counter()
    device = setup(args)
    settings = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.sequences is not None:
        settings["sequences"] = args.sequences
    if settings["steps"] < 1 or settings["sequences"] < 2 or args.neurons < 1 or args.latent_dim < 1:
        raise ValueError("--steps, --neurons and --latent-dim must be >= 1 and --sequences >= 2")
    if args.inducing is not None and args.inducing < 1:
        raise ValueError("--inducing must be >= 1")
    N, T, K, dtype = settings["sequences"], NUM_STEPS_T, args.latent_dim, torch.float64

    counts, z_true = bouncing_ball_poisson(N, T, args.neurons, seed=args.seed, dtype=dtype)
    frames = torch.log1p(counts).reshape(N * T, args.neurons).to(device)  # sequence-major frames
    times = torch.arange(T, dtype=dtype, device=device)

    recognition = GaussianRecognition(_mlp(args.neurons, 2 * K), K, prior_scale=1.0, name="recognition")
    recognition = recognition.to(device, dtype)
    inducing = None
    if args.inducing is not None:  # the sparse (FITC) prior with M evenly spaced inducing times
        inducing = torch.linspace(0, T - 1, args.inducing, dtype=dtype)
    gp = GaussianProcessPrior(K, args.kernel, lengthscale=3.0, inducing_times=inducing, name="gp").to(device)

    def model(frames: torch.Tensor) -> None:
        factors = recognition(frames)  # one factor per frame, batch_shape (N*T,)
        with pyro.plate("sequences", frames.shape[0] // T):
            z = gp("z", times)  # (N, T, K)
            observe_trajectories("x", factors, z, pooling=args.pooling)

    guide = ConjugateGaussianGuide(model)
    svi = pyro.infer.SVI(
        model, guide, pyro.optim.ClippedAdam({"lr": LR, "lrd": 0.5 ** (1 / settings["steps"])}), RPM_ELBO()
    )

    z_np = z_true.reshape(N * T, 1).numpy()

    def posterior_r2() -> tuple[float, Any, Any]:
        with torch.no_grad():
            q = guide.posteriors(frames)["z"]
        mean = q.mean.reshape(N * T, K).cpu().numpy()
        r2, reg = _r2(mean, z_np)
        return r2, reg, q

    r2_initial, _, _ = posterior_r2()
    losses: list[float] = []
    bar = progress(settings["steps"], "RP-GPFA (bouncing ball)", disable=args.no_progress)
    for step in bar:
        losses.append(svi.step(frames) / (N * T))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    r2, reg, q = posterior_r2()

    figures = [] if args.out in (None, "") else _figures(args.out, losses, q, reg, z_true, counts, T, K)
    return {
        "r2": round(r2, 4),
        "r2_initial": round(r2_initial, 4),
        "lengthscale": [round(float(v), 3) for v in gp.kernel.lengthscale.detach().cpu()],
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "log_support": round(math.log(N * T if args.pooling == "ergodic" else N), 4),
        "seconds": round(time.perf_counter() - start, 2),
        "steps": settings["steps"],
        "sequences": N,
        "num_steps": T,
        "neurons": args.neurons,
        "latent_dim": K,
        "kernel": args.kernel,
        "inducing": args.inducing,
        "pooling": args.pooling,
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
    }


def _figures(out: str, losses, q, reg, z_true, counts, T: int, K: int) -> list[str]:
    plt = pyplot()
    paths = [loss_figure(losses, out, ylabel="loss per frame (nats)", title="RPM_ELBO, GP prior")]

    with torch.no_grad():
        mean = q.mean.cpu().numpy()  # (N, T, K)
        var = q.variance.cpu().numpy()
    weights = reg.coef_.reshape(-1)  # affine map: z ~ mean @ w + b
    mapped = mean @ weights + reg.intercept_[0]
    sd = np.sqrt((var * weights**2).sum(-1))  # marginal sd of the mapped latent (ignoring cross-covariances)
    t = np.arange(1, T + 1)
    fig, axes = plt.subplots(2, 2, figsize=(9, 5), sharex=True, sharey=True)
    for n, ax in enumerate(axes.ravel()):
        ax.plot(t, z_true[n, :, 0].numpy(), "k", lw=1.5, label="true z")
        ax.plot(t, mapped[n], "C0", lw=1.2, label="posterior mean (affine map)")
        ax.fill_between(t, mapped[n] - 2 * sd[n], mapped[n] + 2 * sd[n], color="C0", alpha=0.25)
        ax.set_title(f"sequence {n}")
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("t")
    paths.append(save_figure(fig, out, "trajectories.png"))

    fig, ax = plt.subplots(figsize=(6, 3))
    image = ax.imshow(counts[0].numpy().T, aspect="auto", origin="lower", cmap="Greys", extent=(0.5, T + 0.5, -1, 1))
    ax.plot(t, z_true[0, :, 0].numpy(), "C3", lw=1.2)
    ax.set_xlabel("t")
    ax.set_ylabel("neuron tuning centre")
    ax.set_title("spike counts of sequence 0 (red: true latent)")
    fig.colorbar(image, ax=ax)
    paths.append(save_figure(fig, out, "counts.png"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "RP-GPFA on Poisson bouncing-ball data: GP prior, recognition factors per frame, exact conjugate guide. "
        "Prints one JSON object (r2, ...) as the last line.",
        script=__file__,
        quick_help="N=20 sequences and 400 steps (CI)",
        steps_help="SVI steps (default 1500; 400 with --quick)",
    )
    parser.add_argument("--sequences", type=int, default=None, help="N (default 40; 20 with --quick)")
    parser.add_argument("--neurons", type=int, default=20, help="Poisson neurons D (default 20)")
    parser.add_argument("--latent-dim", type=int, default=1, help="latent dimension K (default 1)")
    parser.add_argument("--kernel", default="rbf", choices=["rbf", "matern12", "matern32", "matern52"])
    parser.add_argument("--pooling", default="ergodic", choices=list(POOLINGS), help="support set (default ergodic)")
    parser.add_argument("--inducing", type=int, default=None, help="M inducing times: the sparse GP (default: dense)")
    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
