# SPDX-License-Identifier: Apache-2.0
r"""Inference: :class:`RPM_ELBO` (and :class:`JitRPM_ELBO`, its step recorded once and replayed), the estimators of :math:`\mathbb E_q[\log\sum_m f]`, and exact
posteriors of enumerated discrete latents (:func:`discrete_marginals`, :func:`map_path`,
:func:`sample_discrete`).
"""

from .compiled import CompileFallbackWarning, JitRPM_ELBO
from .elbo import RPM_ELBO
from .estimators import ESTIMATORS, interior_bound, monte_carlo_log_normaliser
from .posterior import discrete_marginals, map_path, sample_discrete

__all__ = [
    "ESTIMATORS",
    "CompileFallbackWarning",
    "JitRPM_ELBO",
    "RPM_ELBO",
    "discrete_marginals",
    "interior_bound",
    "map_path",
    "monte_carlo_log_normaliser",
    "sample_discrete",
]
