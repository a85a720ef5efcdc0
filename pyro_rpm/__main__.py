# SPDX-License-Identifier: Apache-2.0
"""Command line: ``python -m pyro_rpm <command>`` (also installed as the ``pyro-rpm`` script).

Commands:

* ``demo [options]``: the two-view demo (:mod:`pyro_rpm.cli.demo`); ``demo --help`` lists its options.
* ``version`` (or ``--version``): print the package version.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]

#: Example and benchmark scripts of the repository (not installed with the package).
SCRIPTS = (
    ("examples/two_views.py", "two noisy nonlinear views of a 2-D latent; linear R^2 of the recovered latent"),
    ("examples/lightning_two_views.py", "the two-view RPM through PyTorch Lightning's Trainer; R^2 of held-out embeddings from the encoder API"),
    ("examples/structure_vs_pairs.py", "whole-sequence RPM priors vs pairwise InfoNCE (+ a fitted smoother) on occluded, distracted pendulum videos"),
    ("examples/infonce_identity.py", "checks numerically that the RPM loss / B equals InfoNCE + log B"),
    ("examples/identifiability.py", "Zimmermann et al.: a matched conditional prior inverts the generator"),
    ("examples/anisotropic.py", "Rusak et al. (AnInfoNCE): a learned anisotropic prior recovers the precisions"),
    ("examples/moving_balls.py", "Aitchison & Ganev: RBF prior vs bilinear critic on a video of three balls"),
    ("examples/optimal_prior_mi.py", "the ELBO under the optimal prior tracks the mutual information"),
    ("examples/peer_supervision.py", "discrete RPM: clusters digits from same-digit pairs (exact enumeration)"),
    ("examples/hmm.py", "RPM-HMM: a Markov chain of digit images, Viterbi path accuracy"),
    ("examples/gp_time_series.py", "RP-GPFA: Gaussian-process prior on Poisson spike counts"),
    ("examples/state_space.py", "RP-GSSM: linear-Gaussian state-space prior, Kalman-smoothed guide"),
    ("examples/tutorial_markov_prior.py", "the tutorial: a Markov prior written from scratch"),
    ("examples/distributed_two_views.py", "the two-view RPM on several processes (torch.distributed)"),
    ("benchmarks/elbo_step.py", "time of one RPM_ELBO step against hand-written torch InfoNCE"),
    ("benchmarks/normaliser.py", "exact normaliser backends: time, memory and Mpairs/s up to N = 1e6"),
    ("benchmarks/full_support.py", "SVI steps/s with the exact whole-data support"),
    ("benchmarks/distributed.py", "1 vs 2 gloo processes: throughput and loss agreement"),
    ("benchmarks/gpu.py", "normaliser and end-to-end SVI on a GPU (or the CPU)"),
)

_EPILOG = "scripts in a clone of the repository (each takes --quick --seed --device --out):\n" + "\n".join(
    f"  python {path:<36} {description}" for path, description in SCRIPTS
)


def _program_name(argv0: str | None = None) -> str:
    """How the program was invoked: ``pyro-rpm`` (the console script) or ``python -m pyro_rpm``."""
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    return "pyro-rpm" if name.startswith("pyro-rpm") else "python -m pyro_rpm"


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog=prog or _program_name(),
        description="pyro_rpm: recognition-parameterised models for Pyro.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", title="commands")
    commands.add_parser(
        "demo",
        help="train the two-view RPM demo (about half a minute on a CPU; --quick for a shorter run); "
        "'demo --help' lists its options",
        add_help=False,
    )
    commands.add_parser("version", help="print the package version")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m pyro_rpm`` and of the ``pyro-rpm`` console script.

    :param argv: the arguments (default ``sys.argv[1:]``).
    :param str prog: the program name in usage lines (default: how it was invoked).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog)
    if argv and argv[0] == "demo":
        from .cli.demo import main as demo_main

        demo_main(argv[1:], prog=f"{parser.prog} demo")
        return 0
    args = parser.parse_args(argv)
    if args.command == "version":
        from ._version import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if argv == [] else 2


if __name__ == "__main__":
    sys.exit(main())
