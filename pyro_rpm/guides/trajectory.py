# SPDX-License-Identifier: Apache-2.0
r"""A guide for trajectories under a prior you wrote yourself: the product of the recognition factors.

:class:`~pyro_rpm.guides.conjugate.ConjugateGaussianGuide` gives the exact tied posterior
:math:`q(Z) \propto p(Z) \prod_{j,t} f_{jt}(z_t) / p_t(z_t)` when the prior is one of the library's
conjugate Gaussian sequences. A prior written by hand in Pyro (a ``pyro.markov`` loop, a
non-Gaussian transition, a ``MultivariateNormal`` over a trajectory) has no such closed form.
:class:`TrajectoryFactorGuide` then ties the guide to the recognition factors alone,

.. math::

    q(Z) = \prod_{t=1}^{T} \frac{\prod_j f_{jt}(z_t)}{\int \prod_j f_{jt}(z)\, dz}
    = \prod_t \mathcal N\big(z_t;\ \Lambda_t^{-1} \textstyle\sum_j \lambda_{jt}\mu_{jt},\ \Lambda_t^{-1}\big),
    \qquad \Lambda_t = \textstyle\sum_j \lambda_{jt},

(diagonal Gaussian factors, precisions :math:`\lambda_{jt} = s_{jt}^{-2}`): no parameters of its
own, frames independent under q. It ignores the prior's correlations, so the ELBO is looser than
with an exact tied posterior, but it is a valid bound for *any* prior (the guide's ``log_prob`` is
the exact density it samples from), and the prior's parameters are trained through
:math:`\log p(Z)` at the draws. Factors in the "prior + network" form
(``GaussianRecognition(prior_scale=...)``) already include a unit-scale prior term per frame.

Example::

    r = GaussianRecognition(net, 2, prior_scale=1.0, name="r")

    def model(frames):                          # frames: (N*T, obs_dim), sequence-major
        f = r(frames)
        with pyro.plate("sequences", N):
            z = pyro.sample("z", my_trajectory_prior)   # event shape (T, 2)
            observe_trajectories("x", f, z)

    guide = TrajectoryFactorGuide(model)
    svi = SVI(model, guide, Adam({"lr": 3e-3}), RPM_ELBO())
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
from pyro.distributions.torch_distribution import TorchDistribution

from .conjugate import ConjugateGaussianGuide

__all__ = ["TrajectoryFactorGuide"]


class TrajectoryFactorGuide(ConjugateGaussianGuide):
    r""":math:`q(Z) = \prod_t \prod_j f_{jt}(z_t) / \text{const}` for trajectories observed with
    :func:`~pyro_rpm.likelihood.trajectory.observe_trajectories`, under any prior (module docstring).

    :param callable model: the model; run privately on every call to read the current factors.
    :param sites: names of the latent trajectory sites to guide (default: every latent site, each
        of which must be observed through ``observe_trajectories`` with diagonal Gaussian factors).
    """

    def __init__(self, model: Any, *, sites: list[str] | tuple[str, ...] | None = None) -> None:
        super().__init__(model, reference="none", sites=sites)

    def _check_prior(self, name: str, fn: Any) -> None:
        """Any prior: the guide does not use it."""

    def _posterior(self, latent: str, sites: dict, lik_names: list[str]) -> TorchDistribution:
        eta1, precision = self._pseudo_observations(latent, None, sites, lik_names)
        event_dim = len(sites[latent]["fn"].event_shape)
        return dist.Normal(eta1 / precision, precision.rsqrt()).to_event(event_dim)
