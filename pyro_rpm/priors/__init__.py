# SPDX-License-Identifier: Apache-2.0
"""Ready-made latent priors, each an ordinary Pyro distribution or program, and the couplings
:math:`g(z, z')` of the contrastive priors."""

from .couplings import (
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CosineCoupling,
    Coupling,
    LaplaceCoupling,
    RBFCoupling,
)
from .discrete import CategoricalPrior, HMMPrior
from .empirical import ContrastivePrior, EmpiricalMarginalPrior, MarginalPrior
from .gaussian_sequence import ConjugateGaussianSequence, DenseGaussianTrajectory
from .gp import GaussianProcessPrior, GaussianProcessSequence, KernelSmoothedMean
from .kernels import RBF, Kernel, Matern12, Matern32, Matern52, make_kernel
from .mixture import MixturePrior
from .state_space import GaussianMarkovChain, LinearGaussianStateSpacePrior

__all__ = [
    "RBF",
    "AnisotropicRBFCoupling",
    "BilinearCoupling",
    "CosineCoupling",
    "Coupling",
    "LaplaceCoupling",
    "RBFCoupling",
    "CategoricalPrior",
    "ConjugateGaussianSequence",
    "ContrastivePrior",
    "DenseGaussianTrajectory",
    "EmpiricalMarginalPrior",
    "GaussianMarkovChain",
    "GaussianProcessPrior",
    "GaussianProcessSequence",
    "HMMPrior",
    "Kernel",
    "KernelSmoothedMean",
    "LinearGaussianStateSpacePrior",
    "MarginalPrior",
    "Matern12",
    "Matern32",
    "Matern52",
    "MixturePrior",
    "make_kernel",
]
