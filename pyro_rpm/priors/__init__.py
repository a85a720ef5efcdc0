# SPDX-License-Identifier: Apache-2.0
"""Ready-made latent priors, each an ordinary Pyro distribution or program."""

from .discrete import CategoricalPrior, HMMPrior
from .empirical import ContrastivePrior, EmpiricalMarginalPrior, MarginalPrior
from .gaussian_sequence import ConjugateGaussianSequence, DenseGaussianTrajectory
from .gp import GaussianProcessPrior, GaussianProcessSequence, KernelSmoothedMean
from .kernels import RBF, Kernel, Matern12, Matern32, Matern52, make_kernel
from .mixture import MixturePrior
from .state_space import GaussianMarkovChain, LinearGaussianStateSpacePrior

__all__ = [
    "RBF",
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
