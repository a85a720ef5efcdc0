# SPDX-License-Identifier: Apache-2.0
"""Shared plumbing of the example and benchmark scripts (``examples/``, ``benchmarks/``).

Every script takes ``--quick --seed --device --out --no-progress`` (and ``--steps`` where it
trains), runs on one torch thread, shows tqdm progress on its long loops and prints its metrics
as ONE JSON object on the last line of stdout. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from typing import Any

import pyro
import torch

from .._optional import require

__all__ = ["emit", "loss_figure", "progress", "pyplot", "run_script", "save_figure", "script_parser", "setup"]


def script_parser(
    description: str,
    *,
    script: str,
    quick_help: str = "a short CPU run (CI)",
    steps_help: str | None = None,
) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` with the flags every script shares.

    :param str description: what the script does (shown by ``--help``).
    :param str script: the script's path (``__file__``); ``--out`` defaults to ``outputs/<stem>``.
    :param str quick_help: what ``--quick`` shortens.
    :param str steps_help: if given, add ``--steps`` (int, default ``None``) with this help text.
    """
    stem = os.path.splitext(os.path.basename(script))[0]
    parser = argparse.ArgumentParser(prog=f"python {_script_path(script)}", description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--out", default=os.path.join("outputs", stem), help=f"figure folder (default outputs/{stem})")
    if steps_help is not None:
        parser.add_argument("--steps", type=int, default=None, help=steps_help)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _script_path(script: str) -> str:
    """``script`` relative to the current folder when it lies below it (for ``prog`` in ``--help``)."""
    rel = os.path.relpath(os.path.abspath(script))
    return os.path.basename(script) if rel.startswith("..") else rel


def setup(args: argparse.Namespace) -> torch.device:
    """Pin torch to one thread, seed torch/NumPy/Python (:func:`pyro.set_rng_seed`) with ``args.seed``,
    clear Pyro's parameter store and return the checked ``args.device``.

    :raises ValueError: if the device is malformed, or is a CUDA device and CUDA is not available.
    """
    torch.set_num_threads(1)  # fastest for small networks on the 2-vCPU CI box (a script, not an import)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device must name a torch device (e.g. 'cpu', 'cuda'), got {args.device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r} requested but CUDA is not available on this machine")
    return device


def progress(iterable_or_total: Iterable[Any] | int, desc: str, disable: bool = False):
    """A tqdm bar over an iterable, or over ``range(n)`` when given an int ``n``."""
    from tqdm.auto import tqdm

    if isinstance(iterable_or_total, int):
        iterable_or_total = range(iterable_or_total)
    return tqdm(iterable_or_total, desc=desc, disable=disable, mininterval=0.5, leave=False)


def run_script(
    parser: argparse.ArgumentParser, run: Any, argv: list[str] | None = None
) -> dict[str, Any]:
    """Parse ``argv``, call ``run(args)``, print its result with :func:`emit` and return it.

    A :class:`ValueError` from ``run`` (bad settings found while building the problem) becomes a
    usage error: ``parser.error`` prints it and exits with status 2.
    """
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except ValueError as error:
        parser.error(str(error))
    emit(result)
    return result


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` as one JSON line (the last line a script writes to stdout)."""
    print(json.dumps(result), flush=True)


def pyplot():
    """:mod:`matplotlib.pyplot`, imported on first use, on the Agg backend unless one is already chosen."""
    matplotlib = require("matplotlib", "saving figures")
    matplotlib.use("Agg", force=False)
    plt = require("matplotlib.pyplot", "saving figures")

    return plt


def save_figure(fig: Any, out: str, name: str, dpi: int = 120) -> str:
    """Lay out ``fig``, save it as ``out/name`` (creating ``out``), close it and return the path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def loss_figure(losses: Any, out: str, name: str = "elbo.png", *, ylabel: str, title: str) -> str:
    """Save the training curve of ``losses`` (one value per step, or a mapping label -> values)."""
    from ..diagnostics.plots import plot_elbo

    pyplot()
    return save_figure(plot_elbo(losses, ylabel=ylabel, title=title), out, name)
