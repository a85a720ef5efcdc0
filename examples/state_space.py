# SPDX-License-Identifier: Apache-2.0
r"""A recognition-parameterised Gaussian state-space model: multi-view linear dynamics, no decoder.

Data (:func:`pyro_rpm.datasets.timeseries.linear_gaussian_ssm`, the ``generate_linear_data`` recipe
of Hromadka et al.): N sequences of T = 50 steps of a 2-D latent with
:math:`A = 0.95\,R(\pi/5)`, :math:`Q = I - AA^\top`, :math:`z_1 \sim \mathcal N(0, I)`, seen through
J = 2 views :math:`x_{jt} = C_j z_t + d_j + 0.5\,\epsilon` of dimension 10.

Model: the stationary linear-Gaussian state-space prior
(:class:`~pyro_rpm.priors.state_space.LinearGaussianStateSpacePrior`: A learned and stable by
construction, :math:`Q = I - AA^\top`, unit marginals), one Gaussian recognition factor per frame
and view from an MLP (the "prior + network" form), every frame observed through the categorical
over the frames of the same step in the minibatch (``--pooling data``, the in-batch support of
RP-GSSM), the exact conjugate guide :math:`q(Z) \propto p(Z)\prod_{j,t} f_{jt}(z_t)/p_t(z_t)`
computed by the state-space prior (block-tridiagonal Cholesky or Kalman smoother;
:class:`~pyro_rpm.guides.conjugate.ConjugateGaussianGuide`) and :class:`~pyro_rpm.RPM_ELBO`
under :class:`pyro.infer.SVI` on minibatches of B sequences.

Metric ``r2``: :math:`R^2` of the least-squares affine regression of the true latents on the
posterior means over all NT frames (averaged over the two latent dimensions). The learned
transition matrix is compared with the truth through its eigenvalues (invariant to the
unidentifiable change of basis): ``eigenvalue_error`` is the largest distance between matched
true and learned eigenvalues.

Usage::

    python examples/state_space.py            # N=400 sequences, 1000 steps
    python examples/state_space.py --quick    # N=200 sequences, 300 steps (well under a minute)

Figures (``--out``): ``elbo.png`` and ``latents.png`` (true latents against the affine-mapped
posterior means for two sequences). The last stdout line is one JSON object with ``r2``,
``r2_initial``, ``eigenvalues_true``, ``eigenvalues_learned``, ``eigenvalue_error``,
``final_loss``, ``seconds`` and the settings.
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
from pyro_rpm.datasets.timeseries import linear_gaussian_ssm
from pyro_rpm.guides.conjugate import ConjugateGaussianGuide
from pyro_rpm.likelihood.trajectory import POOLINGS, observe_trajectories
from pyro_rpm.priors.state_space import LinearGaussianStateSpacePrior

FULL = {"sequences": 400, "steps": 1000}
QUICK = {"sequences": 200, "steps": 300}
T_STEPS = 50
LATENT_DIM = 2
OBS_DIM = 10
HIDDEN = 32
LR = 1e-2
DECAY, ANGLE = 0.95, math.pi / 5


def _mlp(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, out_dim))


def _r2(z_mean: np.ndarray, z_true: np.ndarray):
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression().fit(z_mean, z_true)
    return float(reg.score(z_mean, z_true)), reg


def _eigenvalue_error(true: np.ndarray, learned: np.ndarray) -> float:
    """Largest distance between true and learned eigenvalues under the best matching."""
    from itertools import permutations

    return float(min(max(abs(true[i] - learned[j]) for i, j in enumerate(p)) for p in permutations(range(len(true)))))


def run(args) -> dict[str, Any]:
    start = time.perf_counter()
    device = setup(args)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("steps", "sequences", "batch_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.setdefault("batch_size", 32)
    N, T, K, B, J = settings["sequences"], T_STEPS, LATENT_DIM, settings["batch_size"], args.views
    if settings["steps"] < 1 or J < 1 or not 2 <= B <= N:
        raise ValueError(f"need --steps >= 1, --views >= 1 and 2 <= --batch-size <= N={N}")

    views, z_true = linear_gaussian_ssm(
        N, T, num_views=J, latent_dim=K, obs_dim=OBS_DIM, decay=DECAY, angle=ANGLE, emission_scale=0.5, seed=args.seed
    )
    # z-score every view with its own statistics; frames stay (N, T, obs)
    views = [((v - v.mean((0, 1))) / v.std((0, 1))).to(device) for v in views]
    all_frames = [v.reshape(N * T, OBS_DIM) for v in views]
    recognitions = [
        GaussianRecognition(_mlp(OBS_DIM, 2 * K), K, prior_scale=1.0, name=f"view{j}").to(device) for j in range(J)
    ]
    prior = LinearGaussianStateSpacePrior(K, init_decay=0.5, name="dynamics").to(device)

    def model(*frames: torch.Tensor) -> None:
        # frames: one (B*T, obs) tensor per view, sequence-major; the support of step t is the frames at
        # step t of the B sequences of this batch. (Flattened outside the model, so that the guide's and
        # the model's calls share one network evaluation under RPM_ELBO's recognition cache.)
        factors = [r(x) for r, x in zip(recognitions, frames)]
        with pyro.plate("sequences", frames[0].shape[0] // T):
            z = prior("z", T)  # (B, T, K)
            for j, f in enumerate(factors):
                observe_trajectories(f"x{j}", f, z, pooling=args.pooling)

    guide = ConjugateGaussianGuide(model)
    svi = pyro.infer.SVI(
        model, guide, pyro.optim.ClippedAdam({"lr": LR, "lrd": 0.2 ** (1 / settings["steps"])}), RPM_ELBO()
    )

    z_np = z_true.reshape(N * T, K).double().numpy()

    def posterior_r2():
        with torch.no_grad():
            mean = guide.posteriors(*all_frames)["z"].mean  # the posterior needs only each sequence's own factors
        mean = mean.reshape(N * T, K).double().cpu().numpy()
        r2, reg = _r2(mean, z_np)
        return r2, reg, mean

    r2_initial, _, _ = posterior_r2()
    generator = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    bar = progress(settings["steps"], "RP-GSSM (linear views)", disable=args.no_progress)
    for step in bar:
        idx = torch.randperm(N, generator=generator)[:B].to(device)
        losses.append(svi.step(*[v[idx].reshape(B * T, OBS_DIM) for v in views]) / (B * T))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    r2, reg, mean = posterior_r2()

    A_true = DECAY * np.array([[math.cos(ANGLE), -math.sin(ANGLE)], [math.sin(ANGLE), math.cos(ANGLE)]])
    eig_true = np.sort_complex(np.linalg.eigvals(A_true))
    eig_learned = np.sort_complex(np.linalg.eigvals(prior.transition_matrix.detach().double().cpu().numpy()))
    figures = [] if args.out in (None, "") else _figures(args.out, losses, reg.predict(mean), z_np, T)
    return {
        "r2": round(r2, 4),
        "r2_initial": round(r2_initial, 4),
        "eigenvalues_true": [[round(e.real, 4), round(e.imag, 4)] for e in eig_true],
        "eigenvalues_learned": [[round(e.real, 4), round(e.imag, 4)] for e in eig_learned],
        "eigenvalue_error": round(_eigenvalue_error(eig_true, eig_learned), 4),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "log_support": round(math.log(B if args.pooling == "data" else B * T), 4),
        "seconds": round(time.perf_counter() - start, 2),
        "steps": settings["steps"],
        "sequences": N,
        "batch_size": B,
        "views": J,
        "pooling": args.pooling,
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
    }


def _figures(out: str, losses, fitted: np.ndarray, z_true: np.ndarray, T: int) -> list[str]:
    plt = pyplot()
    paths = [loss_figure(losses, out, ylabel="loss per frame (nats)", title="RPM_ELBO, state-space prior")]

    fitted = fitted.reshape(-1, T, fitted.shape[-1])
    truth = z_true.reshape(-1, T, z_true.shape[-1])
    fig, axes = plt.subplots(2, 2, figsize=(9, 5), sharex=True)
    t = np.arange(1, T + 1)
    for n in range(2):
        for d in range(2):
            ax = axes[n, d]
            ax.plot(t, truth[n, :, d], "k", lw=1.5, label="true")
            ax.plot(t, fitted[n, :, d], "C0", lw=1.2, label="posterior mean (affine map)")
            ax.set_title(f"sequence {n}, latent {d}")
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("t")
    paths.append(save_figure(fig, out, "latents.png"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "RP-GSSM on multi-view linear-Gaussian data: stationary state-space prior, exact conjugate guide. "
        "Prints one JSON object (r2, ...) as the last line.",
        script=__file__,
        quick_help="N=200 sequences and 300 steps (CI)",
        steps_help="SVI steps (default 1000; 300 with --quick)",
    )
    parser.add_argument("--sequences", type=int, default=None, help="N (default 400; 200 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step B (default 32)")
    parser.add_argument("--views", type=int, default=2, help="number of views J (default 2)")
    parser.add_argument("--pooling", default="data", choices=list(POOLINGS), help="support set (default data)")
    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
