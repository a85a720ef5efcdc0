# SPDX-License-Identifier: Apache-2.0
"""Ready-made latent priors, each an ordinary Pyro distribution or program."""

from .empirical import ContrastivePrior, EmpiricalMarginalPrior, MarginalPrior

__all__ = ["ContrastivePrior", "EmpiricalMarginalPrior", "MarginalPrior"]
