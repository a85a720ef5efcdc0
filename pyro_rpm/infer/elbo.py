# SPDX-License-Identifier: Apache-2.0
r"""``RPM_ELBO``: the evidence lower bound of a recognition-parameterised model, for :class:`pyro.infer.SVI`.

Per datum, with tied posterior :math:`q` and likelihood sites j,

.. math::

    \mathcal L = \mathbb E_q\Big[\log p(z) + \sum_j \big(\log f_j(z \mid x_{jn})
    - \log\textstyle\sum_m f_j(z \mid x_{jm})\big) - \log q(z)\Big].

``RPM_ELBO`` is :class:`pyro.infer.Trace_ELBO` with three exact rewrites of the per-site terms:

1. **Tied guides.** For a :class:`~pyro_rpm.guides.tied.TiedPosterior`,
   :math:`\sum_j \log f_j(z \mid x_{jn}) - \log q(z) = -r(z)` is used in closed form (zero for a
   single view), so no noisy :math:`\log f - \log f` difference enters the value or the gradient.
2. **Empirical-marginal priors.** When a :class:`~pyro_rpm.MarginalPrior` or
   :class:`~pyro_rpm.ContrastivePrior` carries the same factors as a likelihood site of its latent,
   the shared :math:`\log\sum_m f(z \mid x_m)` cancels and is never computed.
3. **Estimator of** :math:`\mathbb E_q[\log\sum_m f_j]`: ``"mc"`` (the draw itself; any prior and
   factor) or ``"interior"`` (closed-form lower bound for Gaussian factors and posteriors).

**The model-to-ELBO contract.** ``observe`` writes ``infer["rpm"] = {"latent": name, "factors": f}``
into its site: the *name* of the latent site it observes (found while the model runs inside
:class:`pyro_rpm._pyro.LatentNames`, which ``RPM_ELBO`` and the tied guides open) and the factors it
carries. Tied posteriors list their likelihood sites by name (:attr:`TiedPosterior.likelihood_sites`).
Priors take part in rewrite 2 through a protocol, not a class: a prior distribution whose
``log_prob(z)`` is ``log_prob_excluding_marginal(z) + marginal_factors.pairwise_logsumexp(z)`` exposes
the attribute ``marginal_factors`` and the method ``log_prob_excluding_marginal``
(:class:`~pyro_rpm.priors.empirical.EmpiricalMarginalPrior` does). Pyro's :class:`~pyro.infer.Trace_ELBO`
has no public hook for rewriting per-site terms, so ``RPM_ELBO`` overrides two of its private methods,
``_get_trace`` (the traces, with the cache and the latent names) and ``_differentiable_loss_particle``
(a clear error for a non-finite term); this is the one place that depends on Pyro's internals.

Every term stays inside its Pyro site, so plate scaling, masks and ``poutine.scale`` apply as in
Pyro. The normaliser of a likelihood site is a per-datum quantity (each observed point has its own
:math:`\log\sum_m`), so subsampling the data plate scales it like any other per-datum term: with a
whole-data-set support this is an unbiased estimate of the full-data ELBO; with the in-batch
support it is the (biased) InfoNCE-style estimate. Nothing is rescaled separately.

The reported loss is :math:`-\mathcal L` summed over the data (Pyro's convention). With a support
of M points, :math:`-\mathcal L / B = \text{InfoNCE} + \log M` in the setting of
:class:`~pyro_rpm.ContrastivePrior`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.util import check_model_guide_match, check_site_shape

from .._pyro import LatentNames, observed_latent, param_store_rollback, recognition_cache
from .._validation import check_choice, check_int, full_precision_call, value_checks_active
from ..guides.plan import PlanMismatch, planning, verify_plan
from ..guides.tied import TiedPosterior, diagonal_normal
from ..likelihood.recognition import RecognitionLikelihood
from .estimators import ESTIMATORS, interior_bound

__all__ = ["RPM_ELBO"]


def _same_scale(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
    return a == b


class RPM_ELBO(Trace_ELBO):
    r"""The RPM evidence lower bound (see the module docstring).

    :param int num_particles: number of particles (samples of the guide) per step.
    :param int max_plate_nesting: as in Pyro (guessed when vectorising particles).
    :param bool vectorize_particles: draw all particles in one vectorised pass.
    :param str estimator: ``"mc"`` (default) or ``"interior"``.
    :param reference: for ``"interior"``: ``"flat"`` (Jensen) or ``"prior"`` (the p/q ansatz, when
        the latent's prior is a diagonal Normal).

    ``loss``, ``differentiable_loss`` and ``loss_and_grads`` agree; ``differentiable_loss`` is the
    route for plain ``torch.optim`` loops, Lightning and DDP.

    Example (two views of a 2-D latent, in-batch support of 8 points)::

        >>> r1 = GaussianRecognition(nn.Linear(3, 4), 2, prior_scale=1.0, name="doc_r1")
        >>> r2 = GaussianRecognition(nn.Linear(3, 4), 2, prior_scale=1.0, name="doc_r2")
        >>> def model(x1, x2):
        ...     f1, f2 = r1(x1), r2(x2)
        ...     with pyro.plate("data", x1.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...         observe("x1", f1, z)
        ...         observe("x2", f2, z)
        >>> guide = RecognitionGuide(model)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), RPM_ELBO())
        >>> x1, x2 = torch.randn(8, 3), torch.randn(8, 3)
        >>> loss = svi.step(x1, x2)                     # negative ELBO, summed over the 8 data
        >>> elbo = RPM_ELBO()
        >>> pyro.set_rng_seed(1); a = elbo.loss(model, guide, x1, x2)
        >>> pyro.set_rng_seed(1); b = elbo.differentiable_loss(model, guide, x1, x2).item()
        >>> abs(a - b) < 1e-4                           # the entry points agree under one seed
        True
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        *,
        estimator: str = "mc",
        reference: str = "flat",
        **kwargs: Any,
    ) -> None:
        check_int(num_particles, "num_particles", expected="a positive int")
        check_choice(estimator, "estimator", ESTIMATORS)
        if reference not in ("flat", "prior"):
            raise ValueError(f"reference must be 'flat' or 'prior', got {reference!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        self.estimator = estimator
        self.reference = reference

    # ------------------------------------------------------------------ traces
    def _get_trace(self, model, guide, args, kwargs):
        try:
            return self._get_trace_once(model, guide, args, kwargs)
        except PlanMismatch as mismatch:
            mismatch.args[0].disable_plan()
            return self._get_trace_once(model, guide, args, kwargs)

    def _get_trace_once(self, model, guide, args, kwargs):
        with recognition_cache(), planning():
            guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(LatentNames()(model), trace=guide_trace), graph_type="flat").get_trace(
                *args, **kwargs
            )
        self._refuse_enumerated(model_trace, guide_trace)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        model_trace = poutine.util.prune_subsample_sites(model_trace)
        # Under torch.autocast every term (priors, likelihoods, normalisers, residuals) runs in full precision.
        full_precision_call(self._fill_log_probs, model_trace, guide_trace)
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    @staticmethod
    def _refuse_enumerated(model_trace, guide_trace) -> None:
        """Raise for latents the model marks for enumeration that the guide does not sample.

        ``RPM_ELBO`` estimates like :class:`~pyro.infer.Trace_ELBO`: such a site would be drawn from its
        prior instead of summed out, a silently worse objective (Pyro only warns "Found vars in model but
        not guide"). :class:`~pyro.infer.TraceEnum_ELBO` sums them out exactly.
        """
        unguided = [
            name
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and site["infer"].get("enumerate") in ("parallel", "sequential")
            and name not in guide_trace.nodes
        ]
        if unguided:
            raise ValueError(
                f"RPM_ELBO: the model marks {unguided} for enumeration (infer={{'enumerate': ...}}) but the guide "
                "does not sample them; RPM_ELBO would draw them from their prior instead of summing them out. "
                "Use pyro.infer.TraceEnum_ELBO(max_plate_nesting=...) (with fit: elbo=TraceEnum_ELBO(...)), which sums "
                "them out exactly, or give them a guide"
            )

    # ------------------------------------------------------------------ terms
    def _fill_log_probs(self, model_trace, guide_trace) -> None:
        """Write each site's (rewritten) log-probability where Trace_ELBO reads it."""
        tied: dict[str, dict] = {}
        tied_by_likelihood: dict[str, str] = {}
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and isinstance(site["fn"], TiedPosterior):
                verify_plan(site["fn"], model_trace)
                if self._can_cancel(name, site, model_trace):
                    tied[name] = site
                    for lik in site["fn"].likelihood_sites:
                        tied_by_likelihood[lik] = name

        # Priors whose log F(z) cancels against a likelihood site of the same latent.
        prior_cancels: set[str] = set()  # likelihood sites whose normaliser is cancelled
        cancelled_priors: set[str] = set()  # latent sites whose prior drops the same normaliser
        for latent, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            marginal = getattr(site["fn"], "marginal_factors", None)  # the cancellation protocol
            if marginal is None:
                continue
            for lik_name, lik in model_trace.nodes.items():
                if (
                    isinstance(lik.get("fn"), RecognitionLikelihood)
                    and lik_name not in prior_cancels
                    and observed_latent(lik) == latent
                    and lik["fn"].factors is marginal
                    and _same_scale(lik["scale"], site["scale"])
                    and lik["mask"] is None
                    and site["mask"] is None
                ):
                    prior_cancels.add(lik_name)
                    cancelled_priors.add(latent)
                    break

        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn, value = site["fn"], site["value"]
            if isinstance(fn, RecognitionLikelihood):
                log_p = 0.0
                if name not in tied_by_likelihood:
                    log_p = fn.diagonal(value)
                if name not in prior_cancels:
                    log_p = log_p - self._log_normaliser(fn, value, tied.get(tied_by_likelihood.get(name)), model_trace)
                log_p = torch.as_tensor(log_p, dtype=fn.latent.dtype, device=fn.latent.device).expand(
                    torch.Size(torch.broadcast_shapes(fn.batch_shape, value.shape))
                )
            elif name in cancelled_priors:
                log_p = fn.log_prob_excluding_marginal(value)
            else:
                log_p = fn.log_prob(value)
            self._store(site, log_p)

        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn, value = site["fn"], site["value"]
            if name in tied:
                log_q = fn.residual(value)
                score = fn.log_prob(value) if not fn.has_rsample else 0
            else:
                log_q = fn.log_prob(value)
                score = log_q if not fn.has_rsample else 0
            self._store(site, log_q)
            entropy = site["log_prob"]
            if not isinstance(score, int):
                score = scale_and_mask(score, site["scale"], site["mask"])
            site["score_parts"] = ScoreParts(log_prob=site["log_prob"], score_function=score, entropy_term=entropy)

    @staticmethod
    def _store(site: dict, log_p: torch.Tensor) -> None:
        site["unscaled_log_prob"] = log_p
        site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])
        site["log_prob_sum"] = site["log_prob"].sum()

    @staticmethod
    def _can_cancel(name: str, site: dict, model_trace) -> bool:
        for lik in site["fn"].likelihood_sites:
            if lik not in model_trace.nodes:
                return False
            lsite = model_trace.nodes[lik]
            if not _same_scale(lsite["scale"], site["scale"]) or lsite["mask"] is not None or site["mask"] is not None:
                return False
            if observed_latent(lsite) != name:
                return False
        return True

    def _log_normaliser(self, fn: RecognitionLikelihood, value, guide_site, model_trace) -> torch.Tensor:
        if self.estimator == "mc" or guide_site is None:
            return fn.log_normaliser
        q = guide_site["fn"].base
        point_mass = getattr(q, "is_point_mass", False)
        if diagonal_normal(q) is None or fn.factors.diagonal_gaussian() is None or point_mass:
            raise ValueError(
                "estimator='interior' needs Gaussian recognition factors and a Gaussian tied posterior "
                f"(got {type(fn.factors).__name__} and {type(q).__name__})"
            )
        reference = None
        if self.reference == "prior":
            reference = diagonal_normal(model_trace.nodes[guide_site["name"]]["fn"])
            if reference is None:
                raise ValueError("reference='prior' needs a diagonal Normal prior on the tied latent")
        # -interior_bound is an upper bound on E_q[log sum_m f]; the ELBO stays a lower bound.
        return -interior_bound(q, fn.factors, value, reference)

    # ------------------------------------------------------------------ losses
    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        # A host sync: skipped inside torch.compile and with value checks off (pyro_rpm.value_checks).
        if value_checks_active() and not math.isfinite(loss):
            self._raise_non_finite(model_trace, guide_trace)
        return loss, surrogate

    @staticmethod
    def _raise_non_finite(model_trace, guide_trace) -> None:
        bad = [
            f"{kind} site '{name}'"
            for kind, trace in (("model", model_trace), ("guide", guide_trace))
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not math.isfinite(torch_item(site["log_prob_sum"]))
        ]
        raise ValueError(f"RPM_ELBO: non-finite ELBO term at {', '.join(bad) or 'an unknown site'}")

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """Estimate of :math:`-\\mathcal L` (a float), without gradients."""
        elbo = 0.0
        with param_store_rollback():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                particle = torch_item(model_trace.log_prob_sum()) - torch_item(guide_trace.log_prob_sum())
                if not math.isfinite(particle):
                    self._raise_non_finite(model_trace, guide_trace)
                elbo += particle / self.num_particles
        return -elbo

    # A failing step (bad input, a non-finite term) leaves Pyro's parameter store as it was.
    def differentiable_loss(self, model, guide, *args, **kwargs):
        with param_store_rollback():
            return super().differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        with param_store_rollback():
            return super().loss_and_grads(model, guide, *args, **kwargs)
