# SPDX-License-Identifier: Apache-2.0
"""Draw ``docs/figures/architecture.png``: the data flow of ``docs/architecture.md`` as boxes and arrows.

Deterministic (no randomness, fixed layout, no timestamp in the PNG metadata)::

    python docs/figures/draw_architecture.py            # writes docs/figures/architecture.png
    python docs/figures/draw_architecture.py out.png    # writes elsewhere
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "architecture.png"

# colours by role: user code, recognition/support, model sites, guide, objective, training
COLOURS = {
    "user": "#f2f2f2",
    "recognition": "#dbe9f6",
    "model": "#e3f1dc",
    "guide": "#fde8cf",
    "objective": "#f6d9d9",
    "train": "#e9e1f3",
}

# name: (x centre, y centre, width, height, title, folder line, role)
BOXES = {
    "data": (1.0, 6.3, 1.7, 1.1, "data x_j", "a batch (B, ...)", "user"),
    "recognition": (3.65, 6.3, 2.6, 1.1, "Recognition", "recognition/  net + family head", "recognition"),
    "support": (3.65, 8.0, 2.6, 1.0, "Support", "support/  which M points", "recognition"),
    "factor": (7.0, 6.3, 2.8, 1.1, "Factor  f(z | x_m)", "recognition/base.py  M points", "recognition"),
    "prior": (10.75, 8.0, 3.0, 1.0, "prior p(z)", "any Pyro program  (priors/)", "user"),
    "observe": (10.75, 6.3, 3.0, 1.1, "observe(name, f, z)", "likelihood/recognition.py", "model"),
    "site": (10.75, 4.5, 3.0, 1.1, "RecognitionLikelihood", "site: categorical over M", "model"),
    "guide": (3.65, 3.6, 2.6, 1.1, "RecognitionGuide", "guides/recognition.py", "guide"),
    "tied": (7.0, 3.6, 2.8, 1.1, "TiedPosterior", "guides/tied.py  q, residual r(z)", "guide"),
    "elbo": (7.0, 1.6, 2.8, 1.1, "RPM_ELBO", "infer/elbo.py  (Trace_ELBO)", "objective"),
    "normalisers": (10.75, 1.6, 3.0, 1.1, "normalisers/", "dense, streamed, fused, screened", "objective"),
    "train": (3.65, 1.6, 2.6, 1.1, "SVI / fit()", "train/", "train"),
    "diagnostics": (1.0, 3.6, 1.7, 1.1, "diagnostics/", "ArviZ, metrics", "train"),
}

# (from, (side, offset), to, (side, offset), label, curvature)
ARROWS = [
    ("data", ("right", 0), "recognition", ("left", 0), "", 0.0),
    ("support", ("bottom", 0), "recognition", ("top", 0), "calls", 0.0),
    ("recognition", ("right", 0), "factor", ("left", 0), "", 0.0),
    ("factor", ("right", 0), "observe", ("left", 0), "", 0.0),
    ("prior", ("bottom", 0), "observe", ("top", 0), "z", 0.0),
    ("observe", ("bottom", 0), "site", ("top", 0), "", 0.0),
    ("factor", ("bottom", -0.6), "guide", ("top", 0.3), "the same factors", 0.0),
    ("guide", ("right", 0), "tied", ("left", 0), "builds", 0.0),
    ("tied", ("bottom", 0), "elbo", ("top", 0), "guide trace", 0.0),
    ("site", ("bottom", 0), "elbo", ("top", 0.95), "model trace", -0.2),
    ("normalisers", ("left", 0), "elbo", ("right", 0), r"$\log\,\Sigma_m f$", 0.0),
    ("elbo", ("left", 0), "train", ("right", 0), "loss", 0.0),
    ("train", ("left", 0), "diagnostics", ("bottom", 0), "trained model, guide", -0.3),
]


def _anchor(name: str, where: tuple[str, float]) -> tuple[float, float]:
    """A point on the edge of box ``name``: the middle of ``side``, moved by ``offset`` along it."""
    x, y, w, h = BOXES[name][:4]
    side, offset = where
    return {
        "left": (x - w / 2, y + offset),
        "right": (x + w / 2, y + offset),
        "top": (x + offset, y + h / 2),
        "bottom": (x + offset, y - h / 2),
    }[side]


def draw(path: Path = OUT) -> Path:
    plt.rcParams.update({"font.family": "DejaVu Sans", "svg.hashsalt": "pyro_rpm"})
    fig, ax = plt.subplots(figsize=(11.5, 7.0), dpi=110)
    ax.set_xlim(0.0, 12.55)
    ax.set_ylim(0.5, 9.0)
    ax.axis("off")

    # the user's Pyro model: prior, observe and the likelihood site
    ax.add_patch(
        FancyBboxPatch(
            (9.1, 3.75),
            3.3,
            5.1,
            boxstyle="round,pad=0.02,rounding_size=0.15",
            fill=False,
            linestyle="--",
            linewidth=1.2,
            edgecolor="#555555",
        )
    )
    ax.text(9.2, 8.75, "the user's Pyro model", fontsize=10, color="#555555", va="top", style="italic")

    for x, y, w, h, title, folder, role in BOXES.values():
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=COLOURS[role],
                edgecolor="#333333",
                linewidth=1.1,
            )
        )
        ax.text(x, y + 0.17, title, ha="center", va="center", fontsize=12, fontweight="bold")
        ax.text(x, y - 0.23, folder, ha="center", va="center", fontsize=9.5, color="#333333")

    for start, side_a, end, side_b, label, rad in ARROWS:
        a, b = _anchor(start, side_a), _anchor(end, side_b)
        ax.add_patch(
            FancyArrowPatch(
                a,
                b,
                arrowstyle="-|>",
                mutation_scale=16,
                linewidth=1.4,
                color="#222222",
                connectionstyle=f"arc3,rad={rad}",
                shrinkA=2,
                shrinkB=2,
            )
        )
        if label:
            mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
            vertical = abs(a[0] - b[0]) < 1e-6
            ax.text(
                mx + (0.1 if vertical else 0.0),
                my + (0.0 if vertical else 0.15),
                label,
                ha="left" if vertical else "center",
                va="center" if vertical else "bottom",
                fontsize=9.5,
                color="#1f4e79",
                style="italic",
            )

    # what RPM_ELBO rewrites, beside its box
    ax.text(
        7.0,
        0.72,
        r"exact rewrites:  $\Sigma_j \log f_j(z \mid x_{jn}) - \log q(z) = -r(z)$ (tied residual);"
        r"  $\log F(z)$ of MarginalPrior / ContrastivePrior cancels",
        ha="center",
        va="center",
        fontsize=9.5,
        color="#7a1f1f",
    )

    fig.tight_layout(pad=0.2)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
