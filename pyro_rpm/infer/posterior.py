# SPDX-License-Identifier: Apache-2.0
r"""Exact posteriors of enumerated discrete latents.

For a model whose discrete sites are marked ``infer={"enumerate": "parallel"}`` (e.g. by
:class:`~pyro_rpm.priors.discrete.CategoricalPrior` or :class:`~pyro_rpm.priors.discrete.HMMPrior`),
the posterior of the discrete latents given the data is computed exactly by variable elimination
(:class:`pyro.infer.TraceEnum_ELBO`):

* :func:`discrete_marginals`: the marginal :math:`p(z_s \mid X)` of every enumerated site s
  (forward–backward for a Markov chain);
* :func:`map_path`: the jointly most likely configuration :math:`\arg\max_{z} p(z \mid X)`
  (Viterbi for a Markov chain), via :func:`pyro.infer.infer_discrete` with ``temperature=0``;
* :func:`sample_discrete`: a joint posterior sample (forward filtering, backward sampling), via
  :func:`pyro.infer.infer_discrete` with ``temperature=1``.

The marginals use the identity :math:`p(z_s = k \mid X) = \partial \log Z(\delta) / \partial \delta_{k}`
at :math:`\delta = 0`, where :math:`Z(\delta)` is the enumerated marginal likelihood with the
site's log-density tilted by :math:`\delta_{z_s}`: one enumerated forward and backward pass gives
every marginal (this also covers plates of size 1, where
:meth:`pyro.infer.TraceEnum_ELBO.compute_marginals` fails).

For an RPM with a discrete latent and factors :math:`f_j`, the marginal is
:math:`p(k \mid X^{(n)}) \propto p(k) \prod_j f_j(k \mid x_j^{(n)}) / \sum_m f_j(k \mid x_j^{(m)})`.
Continuous latents, if any, are drawn once from ``guide`` and held fixed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import TraceEnum_ELBO, infer_discrete
from pyro.ops.indexing import Vindex
from pyro.poutine.messenger import Messenger

from .._validation import check_optional_int

__all__ = ["discrete_marginals", "map_path", "sample_discrete"]


def _empty_guide(*args: Any, **kwargs: Any) -> None:
    return None


def _enumerated(site: dict) -> bool:
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and site["infer"].get("enumerate") in ("parallel", "sequential")
    )


def _plate_shape(cond_indep_stack) -> torch.Size:
    """The shape of a site's vectorised plates, right-aligned (size 1 where no plate is open)."""
    frames = [f for f in cond_indep_stack if f.vectorized and f.dim is not None]
    if not frames:
        return torch.Size()
    shape = [1] * max(-f.dim for f in frames)
    for f in frames:
        shape[f.dim] = f.size
    return torch.Size(shape)


def _probe(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[int, bool]:
    """Trace the guide and the model once, without enumeration and without touching the random
    streams: the number of vectorised plate dims, and whether any site is marked for enumeration."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Found vars in model but not guide")
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    depth = 0
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                depth = max(depth, len(_plate_shape(site["cond_indep_stack"])))
    return depth, any(_enumerated(site) for site in model_trace.nodes.values())


def _setup(model, guide, args, kwargs, max_plate_nesting):
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    guide = _empty_guide if guide is None else guide
    if not callable(guide):
        raise TypeError(f"guide must be callable or None, got {type(guide).__name__}")
    check_optional_int(max_plate_nesting, "max_plate_nesting", 0, expected="a non-negative int or None")
    depth, has_enumerated = _probe(model, guide, args, kwargs)
    if not has_enumerated:
        raise _no_sites()
    return guide, depth if max_plate_nesting is None else max_plate_nesting


def _no_sites() -> ValueError:
    return ValueError("the model has no enumerated sample sites (mark them infer={'enumerate': 'parallel'})")


class _Tilted(TorchDistribution):
    r"""``base`` with its log-density shifted by :math:`\delta_{z}` (batch-broadcast table ``delta[..., z]``)."""

    arg_constraints: dict = {}
    has_enumerate_support = True

    def __init__(self, base: TorchDistribution, delta: torch.Tensor) -> None:
        self.base, self.delta = base, delta
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base.enumerate_support(expand)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value) + Vindex(self.delta)[..., value.long()]


class _TiltMessenger(Messenger):
    """Wraps every enumerated site's distribution in :class:`_Tilted` with a zero table ``delta`` of
    shape ``plate_shape + (K,)``; the gradient of the log marginal likelihood in ``delta`` is the
    posterior marginal."""

    def __init__(self) -> None:
        super().__init__()
        self.deltas: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg) -> None:
        if not _enumerated(msg) or msg["value"] is not None:
            return
        fn = msg["fn"]
        if fn.event_shape or not fn.has_enumerate_support:
            raise ValueError(
                f"site '{msg['name']}': discrete_marginals needs an enumerable distribution with scalar events "
                f"(e.g. Categorical, Bernoulli), got {type(fn).__name__} with event shape {tuple(fn.event_shape)}"
            )
        support = fn.enumerate_support(expand=False).reshape(-1)
        reference = next(
            (getattr(fn, a) for a in ("logits", "probs") if isinstance(getattr(fn, a, None), torch.Tensor)), None
        )
        dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        shape = _plate_shape(msg["cond_indep_stack"]) + (int(support.max()) + 1,)
        delta = torch.zeros(shape, dtype=dtype, device=support.device, requires_grad=True)
        self.deltas[msg["name"]] = delta
        msg["fn"] = _Tilted(fn, delta)


def discrete_marginals(
    model: Callable,
    guide: Callable | None,
    *args: Any,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> dict[str, dist.Categorical]:
    r"""Exact posterior marginals :math:`p(z_s \mid X)` of the model's enumerated sites.

    :param callable model: the model (discrete sites marked for enumeration).
    :param callable guide: guide of the model's other latents, or ``None`` (empty guide).
    :param args: the model's arguments.
    :param int max_plate_nesting: the number of plate dims (default: found by tracing the model once).
    :param kwargs: the model's keyword arguments.
    :returns: ``{site name: Categorical}``; each marginal's ``batch_shape`` is the site's plate
        shape (e.g. ``(N,)`` inside a data plate of size N) and ``probs[..., k]`` is
        :math:`p(z_s = k \mid X)`.
    """
    guide, nesting = _setup(model, guide, args, kwargs, max_plate_nesting)
    tilt = _TiltMessenger()
    elbo = TraceEnum_ELBO(max_plate_nesting=nesting)
    with poutine.block(), torch.enable_grad():
        # -loss = log Z(delta) (continuous latents at one guide draw)
        loss = elbo.differentiable_loss(tilt(model), guide, *args, **kwargs)
        if not tilt.deltas:
            raise _no_sites()
        names = list(tilt.deltas)
        grads = torch.autograd.grad(-loss, [tilt.deltas[n] for n in names], allow_unused=True)
    out: dict[str, dist.Categorical] = {}
    for name, grad in zip(names, grads):
        if grad is None:
            grad = torch.zeros_like(tilt.deltas[name])
        # normalise: plate subsampling scales the gradient by N/B; a masked-out site has zero gradient
        total = grad.sum(-1, keepdim=True)
        probs = grad.clamp(min=0) / total.clamp(min=torch.finfo(grad.dtype).tiny)
        out[name] = dist.Categorical(probs=probs.detach())
    return out


def _infer(model, guide, args, kwargs, max_plate_nesting, temperature) -> dict[str, torch.Tensor]:
    guide, nesting = _setup(model, guide, args, kwargs, max_plate_nesting)
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        decoder = infer_discrete(
            poutine.replay(model, trace=guide_trace), first_available_dim=-1 - nesting, temperature=temperature
        )
        trace = poutine.trace(decoder).get_trace(*args, **kwargs)
    values = {}
    for name, site in trace.nodes.items():
        if _enumerated(site):
            value, shape = site["value"], _plate_shape(site["cond_indep_stack"])
            values[name] = value.expand(shape) if value.dim() <= len(shape) else value
    if not values:
        raise _no_sites()
    return values


def map_path(
    model: Callable,
    guide: Callable | None,
    *args: Any,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    r"""The jointly most likely values :math:`\arg\max_z p(z \mid X)` of the enumerated sites (Viterbi).

    Arguments as in :func:`discrete_marginals`. Returns ``{site name: value}``, each value of the
    site's plate shape; for an :class:`~pyro_rpm.priors.discrete.HMMPrior` stack
    ``[values[s] for s in hmm.site_names(name, T)]`` to get the path.
    """
    return _infer(model, guide, args, kwargs, max_plate_nesting, temperature=0)


def sample_discrete(
    model: Callable,
    guide: Callable | None,
    *args: Any,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """One joint sample of the enumerated sites from their exact posterior (forward filtering,
    backward sampling). Arguments and return value as in :func:`map_path`."""
    return _infer(model, guide, args, kwargs, max_plate_nesting, temperature=1)
