# SPDX-License-Identifier: Apache-2.0
r"""Guides tied to the recognition factors.

:class:`TiedPosterior` (an approximate posterior that knows its residual against the factors),
:class:`RecognitionGuide` (:math:`q \propto p \prod_j f_j / p` and relatives) and
:class:`ConjugateGaussianGuide` (exact Gaussian posteriors of the sequence priors) and
:class:`TrajectoryFactorGuide` (the factors' product, for trajectory priors written by hand).
"""

from .conjugate import ConjugateGaussianGuide
from .recognition import RecognitionGuide
from .tied import TiedPosterior
from .trajectory import TrajectoryFactorGuide

__all__ = ["ConjugateGaussianGuide", "RecognitionGuide", "TiedPosterior", "TrajectoryFactorGuide"]
