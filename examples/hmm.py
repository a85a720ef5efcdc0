# SPDX-License-Identifier: Apache-2.0
r"""RPM-HMM: recover a hidden Markov chain from the digit images it emits, without a decoder.

Data (the MNIST-HMM of Walker et al., 2023, AISTATS, on scikit-learn's 8x8 digits): K = 6 states (the digits 0-5), a
transition matrix :math:`A_{ij} \propto \exp(-(i - j)^2 / 2)` (an RBF kernel with variance 1 and
lengthscale 1, rows normalised), a uniform initial state and ONE trajectory
:math:`s_1, \dots, s_T`; at every step the chain emits a random image of digit :math:`s_t`. The
images are split (stratified) into a training pool, which the training trajectory draws from, and
a held-out pool for a second, held-out trajectory.

Model: the discrete Markov chain prior :class:`~pyro_rpm.priors.discrete.HMMPrior` (learned
transition matrix, uniform start), one recognition factor per frame
:math:`f(k \mid x_t) = \operatorname{softmax}_k \mathrm{CNN}(x_t)`
(:class:`~pyro_rpm.CategoricalRecognition`), and the ergodic support: every frame is observed
through the categorical over *all* T frames of the trajectory
(:class:`~pyro_rpm.support.sequences.SequenceSupport` with ``pooling="ergodic"``,
:math:`F(z) = \frac1T\sum_t f(z \mid x_t)`). The chain is summed out exactly by
:class:`pyro.infer.TraceEnum_ELBO` (the forward algorithm with emission :math:`f/F`), so the loss is
:math:`-\log p(X)`. For speed, training cuts the trajectory into windows of ``--window`` steps
(a plate over windows, each window a chain started from the uniform distribution; the support is
still the whole trajectory); the evaluation uses the whole held-out trajectory as one chain.
The recognition network is a small CNN with dropout, trained on frames shifted by up to one pixel.

Like any clustering objective, the likelihood has poor local optima (e.g. two neighbouring digits
merged into one state and another digit split in two), reached from some initialisations.
``--restarts R`` trains R independent fits and keeps the one with the highest marginal
likelihood of the (unshifted) training trajectory, an unsupervised choice.

Metric ``accuracy``: the most likely path of the held-out trajectory (Viterbi,
:func:`pyro_rpm.infer.posterior.map_path`, i.e. ``infer_discrete(temperature=0)``), with states matched
to digits by the Hungarian algorithm on the *training* trajectory's path. ``transition_error`` is
the largest absolute difference between the learned transition matrix (states matched) and the
true one.

Usage::

    python examples/hmm.py            # T = 4000 training frames, 3 fits of 600 steps
    python examples/hmm.py --quick    # T = 2000 training frames, 2 fits of 300 steps

Figures (``--out``): ``loss.png``, ``transitions.png`` (true against learned),
``path.png`` (held-out states against the Viterbi path). The last stdout line is one JSON object
with ``accuracy``, ``accuracy_train``, ``accuracy_frames`` (per-frame :math:`\arg\max_k f`),
``transition_error``, ``transition_learned``, ``final_loss`` (last training steps),
``exact_loss`` (:math:`-\log p(X)` per frame of the chosen fit), ``restart_losses``,
``seconds`` and the settings.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits import random_shift  # noqa: E402

from pyro_rpm import CategoricalRecognition, recognition_cache
from pyro_rpm.cli.scripts import loss_figure, progress, pyplot, run_script, save_figure, script_parser, setup
from pyro_rpm.diagnostics.metrics import cluster_accuracy
from pyro_rpm.infer.posterior import map_path
from pyro_rpm.priors.discrete import HMMPrior
from pyro_rpm.support.sequences import SequenceSupport

K = 6
FULL = {"steps": 600, "length": 4000, "restarts": 3}
QUICK = {"steps": 300, "length": 2000, "restarts": 2}
HELDOUT_LENGTH = 1000
LR, DROPOUT = 1e-2, 0.5


def rbf_transition_matrix(num_states: int, lengthscale: float = 1.0) -> np.ndarray:
    """:math:`A_{ij} \\propto \\exp(-(i-j)^2 / (2 \\ell^2))`, rows normalised."""
    i = np.arange(num_states)
    A = np.exp(-0.5 * (i[:, None] - i[None, :]) ** 2 / lengthscale**2)
    return A / A.sum(1, keepdims=True)


def digit_trajectory(length: int, A: np.ndarray, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Run the chain for ``length`` steps from a uniform start; each step emits a random image of its state."""
    states = np.empty(length, dtype=np.int64)
    states[0] = rng.integers(len(A))
    for t in range(1, length):
        states[t] = rng.choice(len(A), p=A[states[t - 1]])
    pools = [np.flatnonzero(labels == k) for k in range(len(A))]
    frames = np.array([rng.choice(pools[k]) for k in states])
    return images[frames], states


def make_model(recognition: CategoricalRecognition, hmm: HMMPrior):
    def model(frames: torch.Tensor, window: int) -> None:
        # frames: (T, 1, 8, 8), one trajectory cut into T // window windows (sequence-major layout)
        factors = recognition(frames)  # one factor per frame
        support = SequenceSupport(factors, num_steps=window, pooling="ergodic")  # support: all T frames
        with pyro.plate("windows", support.num_sequences):
            for t, z in hmm("z", window):  # pyro.markov chain, z enumerated
                support.observe(f"x_{t}", z, t)

    return model


def _viterbi(model, hmm: HMMPrior, frames: torch.Tensor, window: int) -> np.ndarray:
    values = map_path(model, None, frames, window, max_plate_nesting=1)
    path = torch.stack([values[s] for s in hmm.site_names("z", window)], -1)  # (windows, window)
    return path.reshape(-1).cpu().numpy()


def run(args) -> dict[str, Any]:
    start = time.perf_counter()
    device = setup(args)
    settings = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.length is not None:
        settings["length"] = args.length
    steps, T, L = settings["steps"], settings["length"], args.window
    if args.restarts is None:
        args.restarts = settings["restarts"]
    if args.restarts < 1:
        raise ValueError(f"need --restarts >= 1, got {args.restarts}")
    if steps < 1 or L < 2 or T < 2 * L or T % L:
        raise ValueError(f"need --steps >= 1, --window >= 2 and --length a multiple (>= 2x) of --window, got {T}, {L}")

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    keep = y < K
    X, y = (X[keep] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y[keep]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.5, stratify=y, random_state=args.seed)
    A_true = rbf_transition_matrix(K)
    rng = np.random.default_rng(args.seed)
    x_train, s_train = digit_trajectory(T, A_true, X_tr, y_tr, rng)
    x_test, s_test = digit_trajectory(HELDOUT_LENGTH, A_true, X_te, y_te, rng)
    x_train, x_test = torch.tensor(x_train, device=device), torch.tensor(x_test, device=device)

    def guide(frames: torch.Tensor, window: int) -> None:  # every latent is enumerated: nothing to guide
        return None

    def candidate(r: int) -> dict[str, Any]:
        """A fresh recognition network and chain prior (own parameter-store names) with its own SVI."""
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(args.dropout),
            nn.Linear(32 * 4 * 4, K),
        ).to(device)
        hmm = HMMPrior(K, name=f"hmm{r}").to(device)
        model = make_model(CategoricalRecognition(net, K, name=f"frames{r}"), hmm)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), TraceEnum_ELBO(max_plate_nesting=1))
        return {"net": net, "hmm": hmm, "model": model, "svi": svi}

    generator = torch.Generator().manual_seed(args.seed)
    bar = progress(args.restarts * steps, "RPM-HMM", disable=args.no_progress)
    ticks = iter(bar)

    def train(c: dict[str, Any]) -> list[float]:
        losses = []
        for step in range(steps):
            next(ticks, None)
            with recognition_cache():
                losses.append(c["svi"].step(random_shift(x_train, generator), L) / T)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return losses

    def exact_loss(c: dict[str, Any]) -> float:
        """-log p(X) per frame of the training trajectory (no dropout, no shifts): the selection criterion."""
        c["net"].eval()
        with torch.no_grad():
            value = TraceEnum_ELBO(max_plate_nesting=1).loss(c["model"], guide, x_train, L) / T
        c["net"].train()
        return value

    # independent fits (restarts); keep the one with the highest marginal likelihood of the training data
    fits, curves, exact_losses = [], [], []
    for r in range(args.restarts):
        fits.append(candidate(r))
        curves.append(train(fits[-1]))
        exact_losses.append(exact_loss(fits[-1]))
    bar.close()
    chosen = int(np.argmin(exact_losses))
    net, hmm, model = fits[chosen]["net"], fits[chosen]["hmm"], fits[chosen]["model"]
    losses = curves[chosen]

    net.eval()
    with torch.no_grad():
        path_train = _viterbi(model, hmm, x_train, L)  # windowed, as trained
        path_test = _viterbi(model, hmm, x_test, HELDOUT_LENGTH)  # the whole held-out trajectory as one chain
        frames_test = net(x_test).argmax(-1).cpu().numpy()
    acc_train, mapping = cluster_accuracy(path_train, s_train, num_classes=K, return_mapping=True)
    accuracy = float((mapping[path_test] == s_test).mean())
    accuracy_frames = float((mapping[frames_test] == s_test).mean())
    order = np.argsort(mapping)  # learned state matched to digit d is order[d]
    A_learned = hmm.transition_matrix.detach().cpu().double().numpy()[np.ix_(order, order)]
    transition_error = float(np.abs(A_learned - A_true).max())

    figures = (
        [] if args.out in (None, "") else _figures(args.out, losses, A_true, A_learned, s_test, mapping[path_test])
    )
    return {
        "accuracy": round(accuracy, 4),
        "accuracy_train": round(float(acc_train), 4),
        "accuracy_frames": round(accuracy_frames, 4),
        "transition_error": round(transition_error, 4),
        "transition_learned": np.round(A_learned, 3).tolist(),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "exact_loss": round(exact_losses[chosen], 4),
        "restarts": args.restarts,
        "restart_losses": [round(v, 4) for v in exact_losses],
        "chosen_restart": chosen,
        "log_support": round(math.log(T), 4),
        "seconds": round(time.perf_counter() - start, 2),
        "steps": steps,
        "length": T,
        "heldout_length": HELDOUT_LENGTH,
        "window": L,
        "dropout": args.dropout,
        "lr": args.lr,
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
    }


def _figures(out: str, losses, A_true, A_learned, s_test, path_test) -> list[str]:
    plt = pyplot()
    paths = [loss_figure(losses, out, "loss.png", ylabel="-log p(X) per frame (nats)", title="exact RPM-HMM loss (TraceEnum_ELBO)")]

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, A, title in zip(axes, (A_true, A_learned), ("true", "learned (states matched)")):
        ax.imshow(A, vmin=0, vmax=1, cmap="viridis")
        for i in range(K):
            for j in range(K):
                ax.text(
                    j, i, f"{A[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if A[i, j] < 0.5 else "k"
                )
        ax.set_title(f"transition matrix: {title}")
        ax.set_xlabel("to state")
        ax.set_ylabel("from state")
    paths.append(save_figure(fig, out, "transitions.png"))

    n = min(200, len(s_test))
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.step(np.arange(n), s_test[:n], where="mid", lw=2, color="0.6", label="true state")
    ax.step(np.arange(n), path_test[:n], where="mid", lw=1, color="C3", label="Viterbi path (matched)")
    ax.set_xlabel("t (held-out trajectory)")
    ax.set_ylabel("state / digit")
    ax.legend(fontsize=8, loc="upper right")
    paths.append(save_figure(fig, out, "path.png"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "RPM-HMM on scikit-learn digits: a 6-state Markov chain emitting digit images, recovered by an exactly "
        "enumerated discrete RPM. Prints one JSON object (accuracy, ...) as the last line.",
        script=__file__,
        quick_help="T=2000 training frames, 2 fits of 300 steps (CI)",
        steps_help="SVI steps per fit (default 600; 300 with --quick)",
    )
    parser.add_argument(
        "--length", type=int, default=None, help="training trajectory length T (default 4000; 2000 quick)"
    )
    parser.add_argument("--window", type=int, default=20, help="training window length (default 20)")
    parser.add_argument(
        "--restarts", type=int, default=None, help="independent fits; the most likely one is kept (default 3; 2 quick)"
    )
    parser.add_argument("--lr", type=float, default=LR, help=f"Adam learning rate (default {LR})")
    parser.add_argument(
        "--dropout", type=float, default=DROPOUT, help=f"dropout before the last layer (default {DROPOUT})"
    )
    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
