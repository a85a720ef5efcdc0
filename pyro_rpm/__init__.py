# SPDX-License-Identifier: Apache-2.0
r"""pyro_rpm: recognition-parameterised models for Pyro.

An RPM is a latent-variable model whose likelihood is built from recognition networks:
:math:`p(x_j = x_j^{(n)} \mid z) = f_j(z \mid x_j^{(n)}) / \sum_m f_j(z \mid x_j^{(m)})`.
Write any prior as a Pyro program, observe the data through :class:`RecognitionLikelihood`,
and train with :class:`RecognitionGuide` and :class:`RPM_ELBO` under :class:`pyro.infer.SVI`.
"""

from .couplings import (
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CosineCoupling,
    Coupling,
    LaplaceCoupling,
    RBFCoupling,
)
from .elbo import RPM_ELBO
from .factors import CategoricalFactor, DeltaFactor, Factor, GaussianFactor
from .guides import RecognitionGuide, TiedPosterior
from .likelihood import RecognitionLikelihood, observe
from .priors import ContrastivePrior, MarginalPrior
from .recognition import (
    CategoricalRecognition,
    DeltaRecognition,
    GaussianRecognition,
    Recognition,
    recognition_cache,
)

__version__ = "0.1.0"

__all__ = [
    "AnisotropicRBFCoupling",
    "BilinearCoupling",
    "CategoricalFactor",
    "CategoricalRecognition",
    "ContrastivePrior",
    "CosineCoupling",
    "Coupling",
    "DeltaFactor",
    "DeltaRecognition",
    "Factor",
    "GaussianFactor",
    "GaussianRecognition",
    "LaplaceCoupling",
    "MarginalPrior",
    "RBFCoupling",
    "RPM_ELBO",
    "Recognition",
    "RecognitionGuide",
    "RecognitionLikelihood",
    "TiedPosterior",
    "observe",
    "recognition_cache",
    "__version__",
]
