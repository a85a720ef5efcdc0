# SPDX-License-Identifier: Apache-2.0
r"""Tutorial "Write your own prior": a user-written Gaussian Markov (AR(1)) prior in an RPM.

The code of ``docs/tutorial-markov-prior.md``: the page shows, verbatim, the blocks between the
``# [name]`` / ``# [name-end]`` markers of this file (``tests/scripts/test_tutorial.py`` checks
that every code block of the page is one of them, so the page and the script cannot diverge).

Data: N sequences of T = 50 steps of a 2-D latent; each dimension d is a stationary AR(1) process
:math:`z_t = a_d z_{t-1} + \sqrt{1 - a_d^2}\,\epsilon_t` (unit marginal variance) with
:math:`a = (0.95, 0.8)`, seen through a random nonlinear map to 12 noisy features per step.

Model: the AR(1) prior written by hand, with a learnable coefficient per dimension, in one of two
forms: (``--prior vectorised``, the default) one sample site per trajectory whose ``log_prob``
evaluates all T steps at once, observed with :func:`~pyro_rpm.observe_trajectories` and guided by
:class:`~pyro_rpm.TrajectoryFactorGuide`; or (``--prior markov``) one sample site per step under
:func:`pyro.markov`, observed with :func:`~pyro_rpm.observe` per step and guided by
:class:`~pyro_rpm.RecognitionGuide`. Both are the same model and guide: one Gaussian recognition
factor per frame, every frame observed through the categorical over the frames of the same step in
the minibatch. Trained with :class:`~pyro_rpm.RPM_ELBO` and :func:`pyro_rpm.fit`, diagnosed with
:func:`pyro_rpm.to_inference_data` on held-out sequences. ``--time-priors`` only times an SVI step
of both forms and prints ``seconds_per_step_markov``, ``seconds_per_step_vectorised`` and
``ratio_markov_loop_vs_vectorised``.

Usage::

    python examples/tutorial_markov_prior.py            # N=1024 sequences, 2000 steps
    python examples/tutorial_markov_prior.py --quick    # N=256 sequences, 300 steps (about 15 s of CPU time)

Figures (``--out``): ``elbo.png`` (loss per frame) and ``trajectories.png`` (two held-out
sequences: the truth against the affine-mapped posterior means). The last stdout line is one JSON
object with ``r2`` (held-out affine :math:`R^2` of the true latents from the posterior means),
``r2_initial`` (the same before training), ``ar_true``, ``ar_learned``, ``elbo_per_frame``
(held-out, support of B frames per step), ``psis_khat_pointwise_median``, ``final_loss`` (mean loss
per sequence over the last 100 steps), ``seconds`` and the settings (``prior``, ``loop``, ...). ``--loop svi`` trains with a
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
from pyro_rpm import (
    RPM_ELBO,
    GaussianRecognition,
    RecognitionGuide,
    TrajectoryFactorGuide,
    observe,
    observe_trajectories,
)

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


# [ar1]
class AR1Trajectory(dist.TorchDistribution):
    """Stationary AR(1) over trajectories (T, D): z_0 ~ N(0, I), z_t ~ N(a * z_{t-1}, diag(1 - a^2))."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, a, num_steps, batch_shape=()):
        self.a, self.num_steps = a, num_steps
        super().__init__(torch.Size(batch_shape), torch.Size((num_steps, a.shape[-1])))

    def expand(self, batch_shape, _instance=None):  # what pyro.plate calls
        return AR1Trajectory(self.a, self.num_steps, batch_shape)

    def log_prob(self, z):  # z: (..., T, D); all T steps at once, no loop
        first = dist.Normal(0.0, 1.0).log_prob(z[..., 0, :]).sum(-1)
        step = dist.Normal(self.a * z[..., :-1, :], (1 - self.a**2).sqrt())  # p(z_t | z_{t-1}), t >= 1
        return first + step.log_prob(z[..., 1:, :]).sum((-2, -1))

    def sample(self, sample_shape=torch.Size()):  # a loop, but only for draws from the prior
        eps = torch.randn(self._extended_shape(sample_shape), device=self.a.device)
        z = [eps[..., 0, :]]
        for t in range(1, self.num_steps):
            z.append(self.a * z[-1] + (1 - self.a**2).sqrt() * eps[..., t, :])
        return torch.stack(z, dim=-2)


# [ar1-end]


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

    # [vectorised]
    def model_vectorised(x):  # x: a batch of sequences, (B, T, OBS)
        B = x.shape[0]
        factors = recognition(x.reshape(B * T, OBS))  # one factor per frame; frame (n, t) sits at n*T + t
        a = pyro.param("ar_coef", torch.full((D,), 0.5, device=x.device), constraint=constraints.interval(-1.0, 1.0))
        with pyro.plate("sequences", B):
            z = pyro.sample("z", AR1Trajectory(a, T))  # the whole trajectory in one site: (B, T, D)
            # support set of step t: the B frames at step t of this batch, for all t in one site
            observe_trajectories("x", factors, z, pooling="data")

    guide_vectorised = TrajectoryFactorGuide(model_vectorised)  # q(z_t) = f(z_t | x_t), all t at once
    # [vectorised-end]

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

    if args.time_priors:
        return time_priors({"markov": (model, guide), "vectorised": (model_vectorised, guide_vectorised)}, x_train, args)
    if args.prior == "vectorised":
        model, guide = model_vectorised, guide_vectorised

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
            collapse_check=None,  # fit's collapse check reads observe() sites only, not observe_trajectories()
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
    if args.prior == "vectorised":  # one site "z": dimensions (chain, draw, sequences, z_dim_0 = T, z_dim_1 = D)
        z_mean = torch.as_tensor(idata.posterior["z"].mean(("chain", "draw")).values)
    else:  # one site per step, z_0 ... z_49: dimensions (chain, draw, sequences, z_t_dim_0 = D)
        z_mean = torch.stack([torch.as_tensor(idata.posterior[f"z_{t}"].mean(("chain", "draw")).values) for t in range(T)], 1)
    # z_mean: posterior means, (64, T, D)
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
        "prior": args.prior,
        "seconds": round(time.perf_counter() - start, 2),
        "steps": steps,
        "sequences": N,
        "batch_size": 64,
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
    }


def time_priors(forms: dict, x_train: torch.Tensor, args) -> dict[str, Any]:
    """Seconds per SVI step (batch of 64 sequences of T = 50 steps) of each form of the prior, and their ratio."""
    seconds = {}
    for name, (model, guide) in forms.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), RPM_ELBO())
        batch = x_train[:64]
        for _ in range(3):  # warm-up: the guides trace the model on their first calls
            svi.step(batch)
        repeats = 5 if args.quick else 20
        start = time.perf_counter()
        for _ in range(repeats):
            svi.step(batch)
        seconds[name] = (time.perf_counter() - start) / repeats
    return {
        "seconds_per_step_markov": round(seconds["markov"], 4),
        "seconds_per_step_vectorised": round(seconds["vectorised"], 4),
        "ratio_markov_loop_vs_vectorised": round(seconds["markov"] / seconds["vectorised"], 2),
        "batch_size": 64,
        "steps_per_sequence": int(x_train.shape[1]),
        "threads": torch.get_num_threads(),
        "device": str(x_train.device),
        "seed": args.seed,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pyro_rpm.cli.scripts import emit, script_parser

    parser = script_parser(
        "Tutorial: a user-written AR(1) prior in a recognition-parameterised model.",
        script=__file__,
        quick_help="256 sequences, 300 steps (about 15 s on one CPU thread with the default --prior vectorised)",
        steps_help="optimisation steps (default 2000, or 300 with --quick)",
    )
    parser.add_argument(
        "--loop", choices=("fit", "svi"), default="fit", help="pyro_rpm.fit (default) or a plain SVI loop"
    )
    parser.add_argument(
        "--prior",
        choices=("vectorised", "markov"),
        default="vectorised",
        help="the AR(1) prior as one trajectory site (default) or as a pyro.markov loop of one site per step",
    )
    parser.add_argument(
        "--time-priors",
        action="store_true",
        help="only time an SVI step of both forms of the prior (64 sequences) and print their ratio",
    )
    result = run(parser.parse_args(argv))
    emit(result)
    return result


if __name__ == "__main__":
    main()
