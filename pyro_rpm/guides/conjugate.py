# SPDX-License-Identifier: Apache-2.0
r"""Exact conjugate guides for time-series RPMs with Gaussian-process or state-space priors.

In a time-series RPM the latent of sequence n is a whole trajectory :math:`Z = z_{1:T}` with a
structured Gaussian prior :math:`p(Z)` (:class:`~pyro_rpm.priors.gp.GaussianProcessPrior`,
:class:`~pyro_rpm.priors.state_space.LinearGaussianStateSpacePrior`), and every frame of every
view j has a diagonal Gaussian recognition factor :math:`f_{jt}(z_t) = f_j(z_t \mid x^{(n)}_{jt})`,
observed with :func:`~pyro_rpm.likelihood.trajectory.observe_trajectories`. The tied posterior of
Walker et al. replaces each recognition marginal :math:`F_{jt}` by the prior marginal
:math:`p_t` (the ansatz that is exact when the marginals match),

.. math::

    q(Z) \;\propto\; p(Z) \prod_{j=1}^{J} \prod_{t=1}^{T} \frac{f_{jt}(z_t)}{p_t(z_t)}
    \;=\; p(Z) \prod_t g_t(z_t),

the time-series form of :math:`q \propto p \prod_j f_j / p` (:class:`~pyro_rpm.RecognitionGuide`).

**Pseudo-observations.** :math:`g_t` is a diagonal Gaussian "pseudo-observation" of :math:`z_t`
with natural parameters

.. math::

    h_t = \sum_j (\eta_{jt} - \eta_{0t}), \qquad \lambda_t = \sum_j (\lambda_{jt} - \lambda_{0t}),

where :math:`(\eta_{jt}, \lambda_{jt}) = (\mu_{jt}/s_{jt}^2, 1/s_{jt}^2)` are the factor's and
:math:`(\eta_{0t}, \lambda_{0t})` the prior marginal's. For factors in the "prior + network" form
(``GaussianRecognition(prior_scale=1.0)``) and a prior with unit marginals (a GP with scale 1, a
stationary state-space prior), :math:`g_t` is exactly the network's contribution
:math:`\exp(\sum_j h_j(x_{jt})^\top z - \tfrac12 z^\top \operatorname{diag}(\sum_j \operatorname{softplus} r_j(x_{jt})) z)`:
the recognition-parameterised GPFA / GSSM of Walker et al. and Hromadka et al. The posterior given
the pseudo-observations is computed exactly by the prior (Cholesky/QR for a GP, sparse
inducing-point algebra for the sparse GP, a Kalman filter with backward sampling or one Cholesky
factorisation of the block-tridiagonal precision for the state space) and sampled with
reparameterisation.

``reference="none"`` uses the factors themselves as pseudo-observations,
:math:`q \propto p(Z) \prod_{j,t} f_{jt}(z_t)`, for factors not in the "prior + network" form or
priors without diagonal marginals. A pseudo-precision that comes out negative (a factor broader
than the prior marginal) is clipped to 0, so q is always proper. Whatever q is, the ELBO stays a
valid bound: the guide's ``log_prob`` is the exact density of the q it samples from.

**With RPM_ELBO.** The guide sites are ordinary distributions (not
:class:`~pyro_rpm.TiedPosterior`), and the likelihood sites are
:class:`~pyro_rpm.likelihood.trajectory.TrajectoryLikelihood`, so :class:`~pyro_rpm.RPM_ELBO` evaluates
every site's ``log_prob`` as :class:`pyro.infer.Trace_ELBO` does (the Monte Carlo estimator, with
the normaliser at the reparameterised draw); it also provides the shared network evaluation
(:func:`~pyro_rpm.recognition_cache`). Because q is exactly :math:`p \prod_t g_t / Z_q`, the sum
:math:`\log p(Z) + \sum_{jt} \log f_{jt}(z_t) - \log q(Z)` equals
:math:`\sum_{jt} \log p_t(z_t) + \log Z_q` at every draw, so the noisy :math:`\log f - \log q`
terms cancel pointwise without special handling. Plain ``Trace_ELBO`` trains the same objective
(same value at the same draw; tested). ``RPM_ELBO(estimator="interior")`` applies only to
:class:`~pyro_rpm.RecognitionLikelihood` sites: trajectory sites always use the Monte Carlo
normaliser.

**Layout and linking.** The latent site is the whole trajectory, ``(N, T, D)`` (event shape
``(T, D)``); each view is one :func:`~pyro_rpm.likelihood.trajectory.observe_trajectories` site given that
sampled value itself (sites are linked to their latent by identity, as in
:class:`~pyro_rpm.RecognitionGuide`). The guide runs the model privately on every call (latents
get placeholder values), re-enters the model's plates with its subsample indices, and samples
each guided latent from its exact posterior. :meth:`ConjugateGaussianGuide.posteriors` returns
the posteriors without sampling (e.g. posterior means for evaluation).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

from .._pyro import LatentNames, observed_latent
from ..likelihood.trajectory import TrajectoryLikelihood
from ..priors.gaussian_sequence import ConjugateGaussianSequence
from ._private_run import PrivateModelRun, sample_in_model_plates

__all__ = ["REFERENCES", "ConjugateGaussianGuide"]

#: Accepted values of ``ConjugateGaussianGuide(reference=...)``.
REFERENCES = ("marginal", "none")


class ConjugateGaussianGuide(nn.Module):
    r"""The exact tied posterior of trajectories with a conjugate Gaussian prior (see the module docstring).

    :param callable model: the model; it is run privately on every call to read the current
        factors and prior.
    :param str reference: ``"marginal"`` (pseudo-observations :math:`f_{jt} / p_t`, default) or
        ``"none"`` (pseudo-observations :math:`f_{jt}`).
    :param sites: names of the latent sites to guide (default: every latent site, each of which
        must then be a :class:`~pyro_rpm.priors.gaussian_sequence.ConjugateGaussianSequence`
        observed by :func:`~pyro_rpm.likelihood.trajectory.observe_trajectories`).

    Example::

        gp = GaussianProcessPrior(2, "matern32", lengthscale=5.0, name="gp")
        r = GaussianRecognition(net, 2, prior_scale=1.0, name="r")

        def model(frames):                      # frames: (N*T, obs_dim), sequence-major
            f = r(frames)
            with pyro.plate("sequences", N):
                z = gp("z", times)              # (N, T, 2)
                observe_trajectories("x", f, z, pooling="ergodic")

        guide = ConjugateGaussianGuide(model)
        svi = SVI(model, guide, Adam({"lr": 3e-3}), RPM_ELBO())
    """

    def __init__(
        self,
        model: Callable,
        *,
        reference: str = "marginal",
        sites: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if sites is not None:
            if isinstance(sites, str) or not all(isinstance(s, str) for s in sites):
                raise TypeError(f"sites must be a list of site names, got {sites!r}")
            sites = tuple(sites)
        self.model = model
        self.reference = reference
        self.sites = sites

    # ------------------------------------------------------------------ discovery
    def _discover(self, args: tuple, kwargs: dict) -> tuple[PrivateModelRun, dict[str, list[str]]]:
        with PrivateModelRun() as discovery, LatentNames():
            self.model(*args, **kwargs)
        latents = [name for name, site in discovery.sites.items() if not site["is_observed"]]
        if self.sites is not None:
            missing = [s for s in self.sites if s not in latents]
            if missing:
                raise ValueError(f"sites {missing} are not latent sample sites of the model (its latents: {latents})")
            latents = list(self.sites)
        links: dict[str, list[str]] = OrderedDict((name, []) for name in latents)
        for name, site in discovery.sites.items():
            if isinstance(site["fn"], TrajectoryLikelihood):
                latent = observed_latent(site)
                if latent in links:
                    links[latent].append(name)
        for name, lik_names in links.items():
            self._check_prior(name, discovery.sites[name]["fn"])
            if not lik_names:
                raise ValueError(
                    f"latent site '{name}' is not observed through any TrajectoryLikelihood; observe it with "
                    "pyro_rpm.likelihood.trajectory.observe_trajectories(name, factors, latent) (the sampled value itself)"
                )
        return discovery, links

    def _check_prior(self, name: str, fn: Any) -> None:
        if not isinstance(fn, ConjugateGaussianSequence):
            raise ValueError(
                f"latent site '{name}' has prior {type(fn).__name__}; ConjugateGaussianGuide needs a "
                "ConjugateGaussianSequence (GaussianProcessPrior, LinearGaussianStateSpacePrior); for a prior "
                "you wrote yourself use pyro_rpm.guides.TrajectoryFactorGuide, or pass sites=[...] to guide only "
                "the conjugate sites and give the others another guide"
            )

    def _pseudo_observations(self, latent: str, prior, sites: dict, lik_names: list[str]):
        eta1 = precision = None
        for lik in lik_names:
            factors = sites[lik]["fn"].observed_factors(sites[lik]["value"])
            gaussian = factors.diagonal_gaussian()
            if gaussian is None:
                raise ValueError(
                    f"likelihood site '{lik}' of latent '{latent}' has {type(factors).__name__} factors; "
                    "ConjugateGaussianGuide needs diagonal Gaussian factors (GaussianRecognition)"
                )
            # dtype/device already match the latent (TrajectoryLikelihood checks)
            p = gaussian[1].pow(-2)
            e = gaussian[0] * p
            eta1 = e if eta1 is None else eta1 + e
            precision = p if precision is None else precision + p
        if self.reference == "marginal" and prior is not None:
            e0, p0 = prior.marginal_natural_params()
            J = len(lik_names)
            eta1 = eta1 - J * e0
            precision = precision - J * p0
        return eta1, precision.clamp(min=0)

    def posteriors(self, *args: Any, **kwargs: Any) -> dict[str, ConjugateGaussianSequence]:
        """The posterior of every guided latent site (without sampling), e.g. for posterior means."""
        discovery, links = self._discover(args, kwargs)
        return {name: self._posterior(name, discovery.sites, lik) for name, lik in links.items()}

    def _posterior(self, latent: str, sites: dict, lik_names: list[str]) -> TorchDistribution:
        prior = sites[latent]["fn"].unexpanded
        eta1, precision = self._pseudo_observations(latent, prior, sites, lik_names)
        return prior.posterior(eta1, precision)

    # ------------------------------------------------------------------ the guide
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        discovery, links = self._discover(args, kwargs)
        values: dict[str, torch.Tensor] = {}
        plates: dict[str, pyro.plate] = {}
        for latent, lik_names in links.items():
            posterior = self._posterior(latent, discovery.sites, lik_names)
            values[latent] = sample_in_model_plates(latent, posterior, discovery, plates)
        return values
