# SPDX-License-Identifier: Apache-2.0
r"""Recognition factors :math:`f(z \mid x_m)` over a support set, and the modules that build them.

:mod:`~pyro_rpm.recognition.base` holds the contracts (:class:`Factor`, :class:`Recognition`); each
family lives in a file of its own with its factor and its recognition module side by side.
"""

from .base import Factor, Recognition, cat_factors, use_dense
from .categorical import CategoricalFactor, CategoricalRecognition
from .delta import DeltaFactor, DeltaRecognition
from .encoding import EncoderMixin, load_recognition, save_recognition
from .gaussian import GaussianFactor, GaussianRecognition, gaussian_log_partition
from .von_mises_fisher import VonMisesFisherFactor, VonMisesFisherRecognition

__all__ = [
    "CategoricalFactor",
    "CategoricalRecognition",
    "DeltaFactor",
    "DeltaRecognition",
    "EncoderMixin",
    "Factor",
    "GaussianFactor",
    "GaussianRecognition",
    "Recognition",
    "cat_factors",
    "gaussian_log_partition",
    "load_recognition",
    "save_recognition",
    "use_dense",
    "VonMisesFisherFactor",
    "VonMisesFisherRecognition",
]
