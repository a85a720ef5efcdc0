# SPDX-License-Identifier: Apache-2.0
r"""Guides tied to the recognition factors.

:class:`RecognitionGuide` traces the model, finds every latent site that is observed through
:class:`~pyro_rpm.RecognitionLikelihood` sites, and sets its approximate posterior from the
factors :math:`f_j(z \mid x_{jn})` of the observed data:

* one view: :math:`q(z \mid x_n) = f(z \mid x_n)` (Aitchison & Ganev);
* several views, Gaussian factors and a diagonal Gaussian prior whose parameters do not depend
  on other latents: the closed form :math:`q \propto p \prod_j f_j / p` (Walker et al.), i.e.
  natural parameters :math:`\eta_q = \eta_p + \sum_j (\eta_j - \eta_p)`;
* several views otherwise: the normalised product :math:`q \propto \prod_j f_j`;
* ``amortiser=``: a user network maps the factors' parameters to :math:`q`.

Discrete sites marked ``infer={"enumerate": ...}`` are left out: :class:`pyro.infer.TraceEnum_ELBO`
sums them out exactly, so the guide must not sample them (their exact posterior is available from
:func:`pyro_rpm.infer.posterior.discrete_marginals`). When the model has such sites, ``combine="auto"``
uses the plain product for the other latents, since their prior may depend on the enumerated value.

Each guide site is a :class:`TiedPosterior`, which also knows the *residual*
:math:`r(z) = \log q(z) - \sum_j \log f_j(z \mid x_{jn})` in closed form, so that
:class:`~pyro_rpm.RPM_ELBO` cancels the :math:`\log f` terms exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from .._pyro import LatentNames, observed_latent, param_store_rollback, record_recognition_calls
from ..likelihood.recognition import RecognitionLikelihood
from ..recognition.gaussian import GaussianFactor
from ._private_run import PrivateModelRun, sample_in_model_plates
from .plan import locate, make_plan, planning_enabled
from .tied import TiedPosterior, diagonal_normal

__all__ = ['RecognitionGuide']


def _depends_on(tensors: tuple[torch.Tensor, ...], leaves: list[torch.Tensor]) -> bool:
    r"""Whether any of ``tensors`` was computed from any of the leaf tensors ``leaves``.

    Walks the autograd graph (no computation): a conditional prior such as
    :math:`p(z_t \mid z_{t-1}) = \mathcal N(a z_{t-1}, s^2)` depends on the placeholder of
    :math:`z_{t-1}` from the private model run, a prior with fixed or learned parameters does not.
    """
    targets = {id(leaf) for leaf in leaves}
    if not targets:
        return False
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in targets:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return any(id(t) in targets for t in tensors)


def _check_views_claimed_once(links: dict[str, list[str]], sites: dict[str, dict]) -> None:
    """Raise if two likelihood sites observe one latent through the same factors at the same indices."""
    for latent, lik_names in links.items():
        for i, second in enumerate(lik_names):
            for first in lik_names[:i]:
                a, b = sites[first], sites[second]
                if (
                    a["fn"].factors is b["fn"].factors
                    and a["value"].shape == b["value"].shape
                    and torch.equal(a["value"], b["value"])
                ):
                    raise ValueError(
                        f"likelihood sites '{first}' and '{second}' both observe latent '{latent}' through the same "
                        "factors at the same support indices: one view claimed twice would count its evidence "
                        "twice; observe each view once"
                    )


def _enumerated(site: dict) -> bool:
    """Whether a model site is a latent that TraceEnum_ELBO enumerates (sums out) in the model."""
    return not site["is_observed"] and site["infer"].get("enumerate") in ("parallel", "sequential")


class RecognitionGuide(nn.Module):
    r"""A guide built from the model's recognition factors (see the module docstring).

    :param callable model: the model; it is traced on every call to read the current factors.
    :param str combine: how several views of one latent combine: ``"auto"`` (Walker et al.'s
        :math:`p \prod_j f_j/p` when the prior is a diagonal Normal whose parameters do not
        depend on other latents (a conditional prior such as :math:`p(z_t \mid z_{t-1})` falls back
        to the product) and the factors are Gaussian, else the product), ``"prior_product"`` or
        ``"product"``.
    :param torch.nn.Module amortiser: optional network mapping the concatenated factor
        parameters ``(..., J * 2D)`` (means and log-scales) to ``(..., 2D)`` (mean and
        pre-softplus scale of q).
    :param str name: parameter-store prefix of the amortiser.

    Example::

        >>> guide = RecognitionGuide(model)          # doctest: +SKIP
        >>> svi = SVI(model, guide, Adam({"lr": 1e-3}), RPM_ELBO())   # doctest: +SKIP
    """

    def __init__(
        self,
        model: Callable,
        *,
        combine: str = "auto",
        amortiser: nn.Module | None = None,
        name: str = "recognition_guide",
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if combine not in ("auto", "prior_product", "product"):
            raise ValueError(f"combine must be 'auto', 'prior_product' or 'product', got {combine!r}")
        if amortiser is not None and not isinstance(amortiser, nn.Module):
            raise TypeError(f"amortiser must be a torch.nn.Module, got {type(amortiser).__name__}")
        self.model = model
        self.combine = combine
        self.amortiser = amortiser
        self.name = name
        self._plan: list | None = None
        self._plan_disabled = False

    # ------------------------------------------------------------------ discovery
    def _discover(self, args: tuple, kwargs: dict) -> tuple[PrivateModelRun, dict[str, list[str]]]:
        with PrivateModelRun(track_dependence=True) as discovery, LatentNames():
            self.model(*args, **kwargs)
        links: dict[str, list[str]] = OrderedDict(
            (name, []) for name, site in discovery.sites.items() if not site["is_observed"] and not _enumerated(site)
        )
        for name, site in discovery.sites.items():
            if isinstance(site["fn"], RecognitionLikelihood):
                latent = observed_latent(site)
                if latent is not None and latent not in links:
                    continue  # an enumerated latent: summed out by TraceEnum_ELBO, not guided
                if latent is None:
                    raise ValueError(
                        f"likelihood site '{name}' observes a latent that is not the value of any sample site "
                        "of the model (was it transformed?); RecognitionGuide cannot tie it. Pass the sampled "
                        "latent itself to RecognitionLikelihood."
                    )
                links[latent].append(name)
        untied = [name for name, lik in links.items() if not lik]
        if untied:
            raise ValueError(
                f"latent site(s) {untied} are not observed through any RecognitionLikelihood, so "
                "RecognitionGuide cannot tie them; observe them with pyro_rpm.observe(...) or give them "
                "another guide"
            )
        _check_views_claimed_once(links, discovery.sites)
        return discovery, links

    # ------------------------------------------------------------------ posteriors
    def _posterior(self, latent: str, sites: dict[str, dict], lik_names: list[str]) -> TiedPosterior:
        factors = [sites[n]["fn"].factors.index(sites[n]["value"].long()) for n in lik_names]
        prior_fn = sites[latent]["fn"]
        if self.combine == "auto" and len(factors) > 1:
            if any(_enumerated(site) for site in sites.values()):
                prior_fn = None  # the prior may depend on an enumerated site's placeholder value
            else:
                normal = diagonal_normal(prior_fn)
                others = [s["value"] for n, s in sites.items() if n != latent and not s["is_observed"]]
                if normal is not None and _depends_on(normal, others):
                    prior_fn = None  # a conditional prior, read at another latent's placeholder
        return self._combine(latent, factors, prior_fn, lik_names)

    def _prior_free(self, links: dict[str, list[str]], sites: dict[str, dict]) -> bool:
        """Whether every latent's posterior can be formed without its prior."""
        if self.amortiser is not None or self.combine == "product":
            return True
        for lik_names in links.values():
            if len(lik_names) > 1 and any(sites[n]["fn"].factors.combine_uses_prior for n in lik_names):
                return False
        return True

    def _combine(self, latent: str, factors: list, prior_fn: Any, lik_names: list[str]) -> TiedPosterior:
        if self.amortiser is not None:
            return self._amortised(factors, lik_names)
        if len(factors) == 1:
            return TiedPosterior(factors[0], tuple(lik_names))
        family = type(factors[0])
        prior = None
        if family.combine_uses_prior and self.combine != "product":
            prior = diagonal_normal(prior_fn)
            if prior is None and self.combine == "prior_product":
                raise ValueError(f"latent '{latent}': combine='prior_product' needs a diagonal Normal prior")
        try:
            combined = family.combine(factors, prior)
        except ValueError as error:
            raise ValueError(f"latent '{latent}': {error}") from None
        if combined is None:
            raise ValueError(
                f"latent '{latent}': cannot combine factors of types {[type(f).__name__ for f in factors]} "
                f"({family.__name__}.combine has no closed form for them)"
            )
        base, residual = combined
        return TiedPosterior(base, tuple(lik_names), residual)

    def _amortised(self, factors, lik_names) -> TiedPosterior:
        gaussians = [f.diagonal_gaussian() for f in factors]
        if any(g is None for g in gaussians):
            raise ValueError("amortiser= needs Gaussian recognition factors")
        pyro.module(f"{self.name}.amortiser", self.amortiser)
        features = torch.cat([torch.cat([loc, scale.log()], -1) for loc, scale in gaussians], -1)
        out = self.amortiser(features)
        D = factors[0].event_shape[0]
        if out.shape[-1] != 2 * D:
            raise ValueError(f"amortiser must output 2 * latent_dim = {2 * D} features, got {out.shape[-1]}")
        base = GaussianFactor(out[..., :D], F.softplus(out[..., D:]) + 1e-3)

        def residual(value: torch.Tensor) -> torch.Tensor:
            return base.log_prob(value) - sum(f.log_prob(value) for f in factors)

        return TiedPosterior(base, lik_names, residual)

    # ------------------------------------------------------------------ the guide
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self._plan is not None and planning_enabled():
            return self._planned_forward(args, kwargs)
        with record_recognition_calls() as calls, param_store_rollback():
            discovery, links = self._discover(args, kwargs)
        if not self._plan_disabled and planning_enabled():
            prior_free = self._prior_free(links, discovery.sites)
            self._plan = make_plan(discovery.sites, discovery.subsamples, links, calls, args, kwargs, prior_free)
        values: dict[str, torch.Tensor] = {}
        plates: dict[str, pyro.plate] = {}
        for latent, lik_names in links.items():
            posterior = self._posterior(latent, discovery.sites, lik_names)
            values[latent] = sample_in_model_plates(latent, posterior, discovery, plates)
        return values

    # ------------------------------------------------------------------ planned path
    def _planned_forward(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """Build the posteriors from the plan (see :mod:`pyro_rpm.guides.plan`), without a model run."""
        values: dict[str, torch.Tensor] = {}
        plates: dict[str, pyro.plate] = {}
        for plan in self._plan:
            factors = [module(locate(args, kwargs, where)) for module, where in plan.sources]
            posterior = self._combine(plan.name, factors, None, list(plan.lik_names))
            posterior.planned = (self, dict(zip(plan.lik_names, factors)))
            if plan.plate_name not in plates:
                plates[plan.plate_name] = pyro.plate(plan.plate_name, factors[0].num_support, dim=plan.plate_dim)
            with plates[plan.plate_name]:
                values[plan.name] = pyro.sample(plan.name, posterior, infer=dict(plan.infer))
        return values

    def disable_plan(self) -> None:
        """Always trace the model from now on (called by RPM_ELBO when a plan does not hold)."""
        self._plan = None
        self._plan_disabled = True
