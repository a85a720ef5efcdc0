# SPDX-License-Identifier: Apache-2.0
r"""Tutorial "Write your own prior": a user-written Gaussian Markov (AR(1)) prior in an RPM.

The code of ``docs/tutorial-markov-prior.md``: the page includes the blocks between the
``# [name]`` / ``# [name-end]`` markers of this file, so the page and the script cannot diverge.

Data: N sequences of T = 50 steps of a 2-D latent; each dimension d is a stationary AR(1) process
:math:`z_t = a_d z_{t-1} + \sqrt{1 - a_d^2}\,\epsilon_t` (unit marginal variance) with
:math:`a = (0.95, 0.8)`, seen through a random nonlinear map to 12 noisy features per step.

Model: the AR(1) prior written by hand as a Pyro program (one sample site per step under
:func:`pyro.markov`, a learnable coefficient per dimension), one Gaussian recognition factor per
frame, every frame observed through the categorical over the frames of the same step in the
minibatch, :class:`~pyro_rpm.RecognitionGuide` and :class:`~pyro_rpm.RPM_ELBO`, trained with
:func:`pyro_rpm.fit`, diagnosed with :func:`pyro_rpm.to_inference_data` on held-out sequences.

Usage::

    python examples/tutorial_markov_prior.py            # N=1024 sequences, 2000 steps
    python examples/tutorial_markov_prior.py --quick    # N=256 sequences, 300 steps (about 30 s of CPU time)

Figures (``--out``): ``elbo.png`` (loss per frame) and ``trajectories.png`` (two held-out
sequences: the truth against the affine-mapped posterior means). The last stdout line is one JSON
object with ``r2`` (held-out affine :math:`R^2` of the true latents from the posterior means),
``r2_initial`` (the same before training), ``ar_true``, ``ar_learned``, ``elbo_per_frame``
(held-out, support of B frames per step), ``psis_khat_pointwise_median``, ``final_loss`` (mean loss
per sequence over the last 100 steps), ``seconds`` and the settings. ``--loop svi`` trains with a
plain :class:`pyro.infer.SVI` loop instead of :func:`pyro_rpm.fit`.
"""

from __future__ import annotations

# [imports]
import math
import os
import time
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from tqdm.auto import trange

import pyro_rpm
from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe

# [imports-end]

FULL = {"sequences": 1024, "steps": 2000}
QUICK = {"sequences": 256, "steps": 300}
HELD_OUT = 64


# [data]
def simulate(num_sequences, num_steps=50, ar=(0.95, 0.8), obs_dim=12, noise=0.3, seed=0):
    """AR(1) latents (N, T, D) and noisy nonlinear observations (N, T, obs_dim)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor(ar)
    z = torch.empty(num_sequences, num_steps, len(ar))
    z[:, 0] = torch.randn(num_sequences, len(ar), generator=g)  # z_0 ~ N(0, 1)
    for t in range(1, num_steps):
        eps = torch.randn(num_sequences, len(ar), generator=g)
        z[:, t] = a * z[:, t - 1] + (1 - a**2).sqrt() * eps  # stationary: every z_t ~ N(0, 1)
    w1 = torch.randn(len(ar), 32, generator=g)
    w2 = torch.randn(32, obs_dim, generator=g) / math.sqrt(32)
    x = torch.tanh(z @ w1) @ w2
    x = x + noise * x.std() * torch.randn(x.shape, generator=g)
    return (x - x.mean((0, 1))) / x.std((0, 1)), z


# [data-end]


def run(args) -> dict[str, Any]:
    from pyro_rpm.cli.scripts import setup

    start = time.perf_counter()
    device = setup(args)
    settings = QUICK if args.quick else FULL
    if args.steps is not None:
        settings = {**settings, "steps": args.steps}
    N, steps = settings["sequences"], settings["steps"]
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")

    # [setup]
    x_all, z_all = simulate(N + HELD_OUT, seed=args.seed)
    x_train, x_test = x_all[:N].to(device), x_all[N:].to(device)
    z_test = z_all[N:]
    T, OBS = x_train.shape[1], x_train.shape[2]
    D = 2  # latent dimension of the model
    net = nn.Sequential(nn.Linear(OBS, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2 * D))
    recognition = GaussianRecognition(net, D, prior_scale=1.0, name="frames").to(device)
    # [setup-end]

    # [model]
    def model(x):  # x: a batch of sequences, (B, T, OBS)
        B = x.shape[0]
        factors = recognition(x.reshape(B * T, OBS))  # one factor per frame; frame (n, t) sits at n*T + t
        a = pyro.param("ar_coef", torch.full((D,), 0.5, device=x.device), constraint=constraints.interval(-1.0, 1.0))
        innovation = (1 - a**2).sqrt()  # keeps every marginal p(z_t) = N(0, I)
        frames_at = torch.arange(B, device=x.device) * T
        with pyro.plate("sequences", B):
            z = None
            for t in pyro.markov(range(T)):
                if t == 0:
                    prior = dist.Normal(torch.zeros(D, device=x.device), 1.0).to_event(1)
                else:
                    prior = dist.Normal(a * z, innovation).to_event(1)
                z = pyro.sample(f"z_{t}", prior)
                # support set of step t: the B frames at step t of this batch
                observe(f"x_{t}", factors.index(frames_at + t), z)

    # [model-end]

    # [guide]
    guide = RecognitionGuide(model)
    # [guide-end]

    def posterior_mean(x):  # one view per step: q(z_t) = f(z_t | x_t), so the mean is the factor's
        with torch.no_grad():
            return recognition(x.reshape(-1, OBS)).loc.reshape(x.shape[0], T, D).cpu()

    r2_initial = pyro_rpm.linear_r2(posterior_mean(x_test).reshape(-1, D), z_test.reshape(-1, D))

    if args.loop == "fit":
        # [fit]
        result = pyro_rpm.fit(
            model,
            guide,
            x_train,
            steps=steps,
            batch_size=64,
            lr=3e-3,
            elbo=RPM_ELBO(),  # the default; shown for clarity
            seed=args.seed,
            validation=x_test,
            validate_every=100,
            progress=not args.no_progress,
        )
        losses = result.losses  # loss per sequence at every step
        # [fit-end]
    else:
        # [svi]
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), RPM_ELBO())
        generator = torch.Generator().manual_seed(args.seed)
        losses = []
        for _ in trange(steps, desc="SVI", disable=args.no_progress):
            idx = torch.randperm(N, generator=generator)[:64].to(device)  # 64 random sequences
            losses.append(svi.step(x_train[idx]) / 64)  # loss per sequence
        # [svi-end]

    # [diagnose]
    idata = pyro_rpm.to_inference_data(model, guide, x_test, num_samples=200, elbo_history=losses, psis_particles=None)
    z_mean = torch.stack(
        [torch.as_tensor(idata.posterior[f"z_{t}"].mean(("chain", "draw")).values) for t in range(T)], dim=1
    )  # posterior means, (64, T, D)
    r2 = pyro_rpm.linear_r2(z_mean.reshape(-1, D), z_test.reshape(-1, D))
    ar_learned = pyro.param("ar_coef").detach().cpu()
    # [diagnose-end]

    figures = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        # [plots]
        from pyro_rpm.diagnostics.plots import plot_elbo, plot_latent_trajectories

        fig = plot_elbo(idata, per_datum=T, ylabel="loss (-ELBO) per frame", title="AR(1) prior")
        fig.savefig(os.path.join(args.out, "elbo.png"), dpi=120)
        fig = plot_latent_trajectories(z_mean[:2], z_true=z_test[:2])
        fig.savefig(os.path.join(args.out, "trajectories.png"), dpi=120)
        # [plots-end]
        figures = [os.path.join(args.out, name) for name in ("elbo.png", "trajectories.png")]
        import matplotlib.pyplot as plt

        plt.close("all")

    return {
        "r2": round(float(r2), 4),
        "r2_initial": round(float(r2_initial), 4),
        "ar_true": [0.95, 0.8],
        "ar_learned": [round(float(v), 4) for v in sorted(ar_learned.tolist(), reverse=True)],
        "elbo_per_frame": round(idata.attrs["elbo"] / (HELD_OUT * T), 4),
        "psis_khat_pointwise_median": round(float(idata.attrs["psis_khat_pointwise_median"]), 4),
        "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
        "loop": args.loop,
        "seconds": round(time.perf_counter() - start, 2),
        "steps": steps,
        "sequences": N,
        "batch_size": 64,
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pyro_rpm.cli.scripts import emit, script_parser

    parser = script_parser(
        "Tutorial: a user-written AR(1) prior in a recognition-parameterised model.",
        script=__file__,
        quick_help="256 sequences, 300 steps (about 30 s on one CPU thread)",
        steps_help="optimisation steps (default 2000, or 300 with --quick)",
    )
    parser.add_argument(
        "--loop", choices=("fit", "svi"), default="fit", help="pyro_rpm.fit (default) or a plain SVI loop"
    )
    result = run(parser.parse_args(argv))
    emit(result)
    return result


if __name__ == "__main__":
    main()
