# SPDX-License-Identifier: Apache-2.0
r"""pyro_rpm: recognition-parameterised models for Pyro.

An RPM is a latent-variable model whose likelihood is built from recognition networks:
:math:`p(x_j = x_j^{(n)} \mid z) = f_j(z \mid x_j^{(n)}) / \sum_m f_j(z \mid x_j^{(m)})`.
Write any prior as a Pyro program, observe the data through :class:`RecognitionLikelihood`,
and train with :class:`RecognitionGuide` and :class:`RPM_ELBO` under :class:`pyro.infer.SVI`.
"""

from . import metrics, plots
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .couplings import (
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CosineCoupling,
    Coupling,
    LaplaceCoupling,
    RBFCoupling,
)
from .diagnostics import to_inference_data
from .elbo import RPM_ELBO
from .factors import CategoricalFactor, DeltaFactor, Factor, GaussianFactor
from .fit import EarlyStopping, FitResult, StepInfo, fit
from .guides import RecognitionGuide, TiedPosterior
from .guides_structured import ConjugateGaussianGuide
from .likelihood import RecognitionLikelihood, observe
from .metrics import cluster_accuracy, linear_r2, mcc
from .normalisers import gaussian_logsumexp, score_logsumexp
from .priors import (
    CategoricalPrior,
    ContrastivePrior,
    GaussianProcessPrior,
    HMMPrior,
    LinearGaussianStateSpacePrior,
    MarginalPrior,
    MixturePrior,
)
from .recognition import (
    CategoricalRecognition,
    DeltaRecognition,
    GaussianRecognition,
    Recognition,
    recognition_cache,
)
from .support import FullDataSupport, InBatchSupport, IndexedBankSupport, MemoryBankSupport, Support
from .trajectories import TrajectoryLikelihood, observe_trajectories

__version__ = "0.1.0"

__all__ = [
    "AnisotropicRBFCoupling",
    "BilinearCoupling",
    "CategoricalFactor",
    "CategoricalPrior",
    "CategoricalRecognition",
    "Checkpoint",
    "ConjugateGaussianGuide",
    "ContrastivePrior",
    "CosineCoupling",
    "Coupling",
    "DeltaFactor",
    "DeltaRecognition",
    "EarlyStopping",
    "Factor",
    "FitResult",
    "FullDataSupport",
    "GaussianFactor",
    "GaussianProcessPrior",
    "GaussianRecognition",
    "HMMPrior",
    "InBatchSupport",
    "IndexedBankSupport",
    "LaplaceCoupling",
    "LinearGaussianStateSpacePrior",
    "MarginalPrior",
    "MemoryBankSupport",
    "MixturePrior",
    "RBFCoupling",
    "RPM_ELBO",
    "Recognition",
    "RecognitionGuide",
    "RecognitionLikelihood",
    "StepInfo",
    "Support",
    "TiedPosterior",
    "TrajectoryLikelihood",
    "cluster_accuracy",
    "fit",
    "gaussian_logsumexp",
    "linear_r2",
    "load_checkpoint",
    "mcc",
    "metrics",
    "observe",
    "observe_trajectories",
    "plots",
    "recognition_cache",
    "save_checkpoint",
    "score_logsumexp",
    "to_inference_data",
    "__version__",
]
