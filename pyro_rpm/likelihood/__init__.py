# SPDX-License-Identifier: Apache-2.0
r"""The recognition-parameterised likelihoods: categoricals over a support set.

:class:`RecognitionLikelihood` (one latent per observed point, :func:`observe`) and
:class:`TrajectoryLikelihood` (whole trajectories, :func:`observe_trajectories`).
"""

from .recognition import RecognitionLikelihood, observe
from .trajectory import TrajectoryLikelihood, observe_trajectories

__all__ = ["RecognitionLikelihood", "TrajectoryLikelihood", "observe", "observe_trajectories"]
