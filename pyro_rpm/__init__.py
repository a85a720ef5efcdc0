# SPDX-License-Identifier: Apache-2.0
r"""pyro_rpm: recognition-parameterised models for Pyro.

An RPM is a latent-variable model whose likelihood is built from recognition networks:
:math:`p(x_j = x_j^{(n)} \mid z) = f_j(z \mid x_j^{(n)}) / \sum_m f_j(z \mid x_j^{(m)})`.
Write any prior as a Pyro program, observe the data through :class:`RecognitionLikelihood`,
and train with :class:`RecognitionGuide` and :class:`RPM_ELBO` under :class:`pyro.infer.SVI`.
"""

from ._pyro import recognition_cache
from ._validation import value_checks
from ._version import __version__
from .diagnostics import (
    CollapseMonitor,
    CollapseWarning,
    cluster_accuracy,
    factor_spread,
    linear_r2,
    matching_accuracy,
    mcc,
    metrics,
    plots,
    to_inference_data,
)
from .guides import ConjugateGaussianGuide, RecognitionGuide, TiedPosterior, TrajectoryFactorGuide
from .infer import RPM_ELBO, JitRPM_ELBO
from .likelihood import RecognitionLikelihood, TrajectoryLikelihood, observe, observe_trajectories
from .normalisers import Normaliser, gaussian_logsumexp, score_logsumexp
from .priors import (
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CategoricalPrior,
    ContrastivePrior,
    CosineCoupling,
    Coupling,
    GaussianProcessPrior,
    HMMPrior,
    LaplaceCoupling,
    LinearGaussianStateSpacePrior,
    MarginalPrior,
    MixturePrior,
    RBFCoupling,
)
from .recognition import (
    CategoricalFactor,
    CategoricalRecognition,
    DeltaFactor,
    DeltaRecognition,
    Factor,
    GaussianFactor,
    GaussianRecognition,
    Recognition,
    VonMisesFisherFactor,
    VonMisesFisherRecognition,
    load_recognition,
    save_recognition,
)
from .support import FullDataSupport, InBatchSupport, IndexedBankSupport, MemoryBankSupport, Support
from .train import (
    Checkpoint,
    EarlyStopping,
    FitResult,
    RestartsResult,
    StepInfo,
    fit,
    fit_restarts,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "AnisotropicRBFCoupling",
    "BilinearCoupling",
    "CategoricalFactor",
    "CategoricalPrior",
    "CategoricalRecognition",
    "Checkpoint",
    "ConjugateGaussianGuide",
    "TrajectoryFactorGuide",
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
    "JitRPM_ELBO",
    "IndexedBankSupport",
    "LaplaceCoupling",
    "LinearGaussianStateSpacePrior",
    "MarginalPrior",
    "MemoryBankSupport",
    "MixturePrior",
    "Normaliser",
    "RBFCoupling",
    "RPM_ELBO",
    "Recognition",
    "RecognitionGuide",
    "RecognitionLikelihood",
    "StepInfo",
    "Support",
    "TiedPosterior",
    "TrajectoryLikelihood",
    "VonMisesFisherFactor",
    "VonMisesFisherRecognition",
    "cluster_accuracy",
    "fit",
    "fit_restarts",
    "RestartsResult",
    "gaussian_logsumexp",
    "linear_r2",
    "matching_accuracy",
    "CollapseMonitor",
    "CollapseWarning",
    "factor_spread",
    "load_checkpoint",
    "load_recognition",
    "mcc",
    "metrics",
    "observe",
    "observe_trajectories",
    "plots",
    "recognition_cache",
    "save_checkpoint",
    "save_recognition",
    "score_logsumexp",
    "to_inference_data",
    "value_checks",
    "__version__",
]
