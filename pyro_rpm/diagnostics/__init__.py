# SPDX-License-Identifier: Apache-2.0
r"""Diagnostics: :func:`to_inference_data` (ArviZ), metrics against known latents, and plots.

ArviZ and matplotlib are imported when a function needs them, not with the package.
"""

from . import metrics, plots
from .arviz import to_inference_data
from .collapse import CollapseMonitor, CollapseWarning, factor_spread
from .matching import matching_accuracy
from .metrics import cluster_accuracy, linear_r2, mcc
from .smoothing import lgssm_smooth

__all__ = [
    "CollapseMonitor",
    "CollapseWarning",
    "cluster_accuracy",
    "factor_spread",
    "lgssm_smooth",
    "linear_r2",
    "matching_accuracy",
    "mcc",
    "metrics",
    "plots",
    "to_inference_data",
]
