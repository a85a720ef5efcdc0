# SPDX-License-Identifier: Apache-2.0
r"""Peer supervision: learn to cluster digits from pairs of images that show the same digit.

Data: scikit-learn's 8x8 digits (:func:`sklearn.datasets.load_digits`, 1797 images, no download),
pixels scaled to [0, 1], split into training and held-out images (stratified). A data point is a
pair :math:`(x_1, x_2)` of two *different* training images of the same digit (a fresh random
pairing at every step, each image shifted by up to one pixel); the labels are never used
otherwise. This is the discrete RPM of Walker et al. (2023, AISTATS: their MNIST peer-supervision experiment)
on a CPU-sized data set.

Model (J = 2 views, K = 10 states):

.. math::

    z \sim \mathrm{Categorical}(1/K), \qquad
    p(x_j = x_j^{(n)} \mid z) = \frac{f(z \mid x_j^{(n)})}{\sum_{m=1}^{B} f(z \mid x_j^{(m)})},

with one shared recognition network :math:`f(k \mid x) = \operatorname{softmax}_k \mathrm{MLP}(x)`
(:class:`~pyro_rpm.CategoricalRecognition`), the in-batch support of B pairs, and :math:`z` summed
out exactly (:class:`~pyro_rpm.priors.discrete.CategoricalPrior`, :class:`pyro.infer.TraceEnum_ELBO`):
the loss is the exact negative log marginal likelihood
:math:`-\sum_n \log \sum_k p(k) \prod_j f(k \mid x_j^{(n)}) / \sum_m f(k \mid x_j^{(m)})`.

Metrics (clusters matched to digits by the Hungarian algorithm on the *training* images, the
matching then applied unchanged to the held-out ones):

* ``accuracy``: held-out single images, cluster :math:`\arg\max_k f(k \mid x)`;
* ``accuracy_pairs``: held-out pairs, cluster :math:`\arg\max_k p(k \mid x_1, x_2)` from the exact
  posterior (:func:`pyro_rpm.infer.posterior.discrete_marginals`, support = the held-out pairs).

Usage::

    python examples/peer_supervision.py            # 3000 steps
    python examples/peer_supervision.py --quick    # 600 steps (well under a minute)

Figures (``--out``): ``loss.png``, ``confusion.png`` (held-out images), ``clusters.png`` (held-out
images of each cluster). The last stdout line is one JSON object with ``accuracy``,
``accuracy_pairs``, ``accuracy_train``, ``final_loss``, ``heldout_log_likelihood``, ``seconds``
and the settings.
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

from pyro_rpm import CategoricalRecognition, RecognitionGuide, observe, recognition_cache
from pyro_rpm.cli.scripts import loss_figure, progress, pyplot, run_script, save_figure, script_parser, setup
from pyro_rpm.diagnostics.metrics import cluster_accuracy
from pyro_rpm.infer.posterior import discrete_marginals
from pyro_rpm.priors.discrete import CategoricalPrior

K = 10
FULL_STEPS, QUICK_STEPS = 3000, 600
HIDDEN, DROPOUT, LR, WEIGHT_DECAY = 256, 0.3, 3e-3, 1e-4
HELDOUT_FRACTION = 0.3


def load_digit_images(seed: int, device: torch.device):
    """Digits as ``(N, 1, 8, 8)`` float tensors in [0, 1], split into training and held-out images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=seed)
    return torch.tensor(X_tr, device=device), torch.tensor(y_tr), torch.tensor(X_te, device=device), torch.tensor(y_te)


def same_class_pairs(labels: torch.Tensor, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random pairs ``(a, b)`` of different images with ``labels[a] == labels[b]``."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    a = torch.randint(0, len(labels), (batch,), generator=generator)
    c = labels[a]
    offset = (torch.rand(batch, generator=generator) * (counts[c] - 1)).long()
    offset = offset + (offset >= position[a] - starts[c]).long()  # skip a itself
    return a, order[starts[c] + offset]


def make_model(recognition: CategoricalRecognition, prior: CategoricalPrior):
    def model(x1: torch.Tensor, x2: torch.Tensor) -> None:
        f1, f2 = recognition(x1), recognition(x2)  # one shared network, the batch as support
        with pyro.plate("pairs", x1.shape[0]):
            z = prior("z")  # enumerated: shape (K, 1)
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model


def run(args) -> dict[str, Any]:
    start = time.perf_counter()
    device = setup(args)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else FULL_STEPS)
    B = args.batch_size
    if steps < 1 or B < 2:
        raise ValueError(f"need --steps >= 1 and --batch-size >= 2, got {steps} and {B}")
    X_tr, y_tr, X_te, y_te = load_digit_images(args.seed, device)

    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, HIDDEN),
        nn.ReLU(),
        nn.Dropout(DROPOUT),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Dropout(DROPOUT),
        nn.Linear(HIDDEN, K),
    ).to(device)
    recognition = CategoricalRecognition(net, K, name="digits")
    prior = CategoricalPrior(K, learn=False).to(device)
    model = make_model(recognition, prior)
    guide = RecognitionGuide(model)  # z is enumerated, so the tied guide has nothing to sample
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR, "weight_decay": WEIGHT_DECAY}), elbo)

    generator = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    bar = progress(steps, "peer supervision", disable=args.no_progress)
    for step in bar:
        a, b = same_class_pairs(y_tr, B, generator)
        x1, x2 = random_shift(X_tr[a.to(device)], generator), random_shift(X_tr[b.to(device)], generator)
        with recognition_cache():  # the guide's private model run and the model share one forward pass
            losses.append(svi.step(x1, x2) / B)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")

    net.eval()
    with torch.no_grad():
        pred_tr = net(X_tr).argmax(-1).cpu()
        pred_te = net(X_te).argmax(-1).cpu()
    acc_tr, mapping = cluster_accuracy(pred_tr, y_tr, num_classes=K, return_mapping=True)
    acc_te = float((torch.as_tensor(mapping)[pred_te] == y_te).double().mean())

    # exact posterior of held-out pairs p(z | x1, x2), support = the held-out pairs
    a, b = same_class_pairs(y_te, len(y_te), generator)
    pair_x1, pair_x2 = X_te[a.to(device)], X_te[b.to(device)]
    with torch.no_grad():
        posterior = discrete_marginals(model, None, pair_x1, pair_x2)["z"].probs
        heldout_ll = -elbo.loss(model, lambda *_: None, pair_x1, pair_x2) / len(a)
    pred_pairs = posterior.argmax(-1).cpu()
    acc_pairs = float((torch.as_tensor(mapping)[pred_pairs] == y_te[a]).double().mean())

    figures = [] if args.out in (None, "") else _figures(args.out, losses, mapping, pred_te, y_te, X_te.cpu())
    return {
        "accuracy": round(acc_te, 4),
        "accuracy_pairs": round(acc_pairs, 4),
        "accuracy_train": round(float(acc_tr), 4),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "heldout_log_likelihood": round(float(heldout_ll), 4),
        "log_support": round(2 * math.log(B), 4),
        "seconds": round(time.perf_counter() - start, 2),
        "steps": steps,
        "batch_size": B,
        "num_train_images": len(y_tr),
        "num_heldout_images": len(y_te),
        "seed": args.seed,
        "device": str(device),
        "figures": figures,
    }


def _figures(out: str, losses, mapping, pred_te, y_te, X_te) -> list[str]:
    plt = pyplot()
    paths = [loss_figure(losses, out, "loss.png", ylabel="-log p(x1, x2) per pair (nats)", title="exact discrete RPM loss (TraceEnum_ELBO)")]

    matched = np.asarray(mapping)[pred_te.numpy()]
    table = np.zeros((K, K), dtype=int)
    np.add.at(table, (y_te.numpy(), matched), 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(table, cmap="Blues")
    for i in range(K):
        for j in range(K):
            if table[i, j]:
                ax.text(j, i, table[i, j], ha="center", va="center", fontsize=7, color="k" if i != j else "w")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xlabel("cluster (matched to a digit on the training images)")
    ax.set_ylabel("true digit")
    ax.set_title("held-out images")
    paths.append(save_figure(fig, out, "confusion.png"))

    per_row = 12
    fig, axes = plt.subplots(K, per_row, figsize=(per_row * 0.6, K * 0.6))
    for k in range(K):
        members = np.flatnonzero(matched == k)[:per_row]
        for i in range(per_row):
            ax = axes[k, i]
            ax.axis("off")
            if i < len(members):
                ax.imshow(X_te[members[i], 0].numpy(), cmap="gray_r")
    fig.suptitle("held-out images by cluster (rows: clusters matched to digits 0-9)", fontsize=8)
    paths.append(save_figure(fig, out, "clusters.png"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(
        "Peer supervision on scikit-learn digits: a discrete RPM (K=10) trained on pairs of same-digit images, "
        "z summed out exactly. Prints one JSON object (accuracy, ...) as the last line.",
        script=__file__,
        quick_help="600 steps (CI)",
        steps_help=f"SVI steps (default {FULL_STEPS}; {QUICK_STEPS} with --quick)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per step B, the support (default 256)")
    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
