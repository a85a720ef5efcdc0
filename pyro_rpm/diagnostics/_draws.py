# SPDX-License-Identifier: Apache-2.0
r"""Posterior draws of :func:`pyro_rpm.diagnostics.arviz.to_inference_data`: trace, name and collect arrays.

The guide is run under a plate ``_pyro_rpm_draws`` of size S at dimension
:math:`-(\text{max\_plate\_nesting} + 1)`, so one call draws S independent latents
:math:`z^{(s)} \sim q(z \mid X)` per datum, and the model is replayed on them. From each chunk of
draws this module collects, as NumPy arrays with named dimensions (plate names, or
``"<site>_dim_<i>"`` for event dimensions; draws first):

* ``posterior``: the guide's latent sites, the model's ``pyro.deterministic`` sites, and the model's
  enumerated discrete latents that the guide does not sample (``infer={"enumerate": "parallel"}``,
  trained with :class:`~pyro.infer.TraceEnum_ELBO`), drawn from their exact conditional posterior
  :math:`p(c \mid X, z^{(s)})` by :func:`pyro.infer.infer_discrete` (temperature 1);
* ``log_likelihood``: :math:`\log p(x \mid z^{(s)})` of every observed site, per datum (for an RPM
  site the categorical log-probability of the observed support index);
* ``posterior_predictive``: one replicate :math:`x^{(s)} \sim p(x \mid z^{(s)})` per draw, and for
  an RPM site the count of replicates equal to the observed index (the matching accuracy);
* ``observed_data``: the observed values, without the draws dimension;
* ``sample_stats``: :math:`\mathrm{lp}^{(s)} = \log p(X, z^{(s)})`,
  :math:`\log w^{(s)} = \log p(X, z^{(s)}) - \log q(z^{(s)})`, and, when some plate holds every
  model and guide site (the rightmost such plate, usually the data plate; the posterior factorises
  over it), the per-datum weights

  .. math::

      \log w_n^{(s)} = \sum_{i \in \text{model}} \log p_i\big(v_{i,n}^{(s)}\big)
      - \sum_{i \in \text{guide}} \log q_i\big(z_{i,n}^{(s)}\big),

  with :math:`v_{i,n}^{(s)}` the value of site :math:`i` at datum :math:`n` in draw :math:`s`, each
  term summed over every dimension but the draws and :math:`n`.

Log-probabilities are accumulated in float64 on the CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import infer_discrete
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace

from ..likelihood.recognition import RecognitionLikelihood

__all__ = [
    "_DRAWS",
    "_datum_plate",
    "_deterministic_value",
    "_draw",
    "_enumerated_sites",
    "_frames",
    "_is_deterministic",
    "_named",
    "_probe",
    "_reduce_to_draws",
    "_sample_sites",
    "_trace",
    "_unwrap",
    "_without_draws",
]

#: Name of the plate that vectorises the posterior draws (dimension -(max_plate_nesting + 1)).
_DRAWS = "_pyro_rpm_draws"


# ---------------------------------------------------------------------------------------------- sites
def _sample_sites(trace: Trace) -> OrderedDict:
    """Sample sites of a trace without plate subsample sites."""
    return OrderedDict(
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample)
    )


def _is_deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic", False))


def _frames(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.name != _DRAWS and f.vectorized]


def _unwrap(fn: Any) -> Any:
    """The distribution under ``MaskedDistribution``/``ExpandedDistribution``/``Independent`` wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _enumerated_sites(model_trace: Trace, guide_trace: Trace) -> list[str]:
    """Model latents marked for enumeration that the guide does not sample (summed out in training)."""
    return [
        name
        for name, site in _sample_sites(model_trace).items()
        if not site["is_observed"] and site["infer"].get("enumerate") and name not in guide_trace.nodes
    ]


# ---------------------------------------------------------------------------------------------- tracing
def _trace(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    draws: int | None,
    nesting: int,
    enumerated: bool = False,
) -> tuple[Trace, Trace]:
    """Guide trace and replayed model trace, vectorised over ``draws`` at dim -(nesting + 1).

    With ``enumerated``, the model's enumerated latents are drawn from their conditional posterior
    given the guide's draws (:func:`pyro.infer.infer_discrete`, enumeration dims left of the draws).
    """

    def vectorise(fn: Callable) -> Callable:
        if draws is None:
            return fn

        def wrapped(*a: Any, **k: Any) -> Any:
            with pyro.plate(_DRAWS, draws, dim=-(nesting + 1)):
                return fn(*a, **k)

        return wrapped

    guide_trace = poutine.trace(vectorise(guide)).get_trace(*args, **kwargs)
    replayed = poutine.replay(vectorise(model), trace=guide_trace)
    if enumerated:
        first_dim = -(nesting + (1 if draws is None else 2))
        replayed = infer_discrete(replayed, first_available_dim=first_dim, temperature=1)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _probe(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[int, int, dict, list[str]]:
    """One unvectorised run: plate nesting, table entries per draw, plate coordinates, and the
    enumerated latents the guide does not sample."""
    guide_trace, model_trace = _trace(model, guide, args, kwargs, None, 0)
    nesting, elements = 0, 0
    for trace in (guide_trace, model_trace):
        for name, site in _sample_sites(trace).items():
            for frame in site["cond_indep_stack"]:
                if not frame.vectorized:
                    continue
                nesting = max(nesting, -frame.dim)
                if frame.full_size is not None and frame.full_size != frame.size:
                    raise ValueError(
                        f"to_inference_data needs every datum in one call, but plate '{frame.name}' subsamples "
                        f"{frame.size} of {frame.full_size} points (site '{name}'). Give the model a way to "
                        "turn subsampling off (e.g. a batch_size=None argument passed to pyro.plate's "
                        "subsample_size) and pass it here"
                    )
    for site in _sample_sites(model_trace).values():
        fn = _unwrap(site["fn"])
        if isinstance(fn, RecognitionLikelihood):
            elements += max(1, site["fn"].batch_shape.numel()) * fn.num_support
        elif not site["is_observed"]:
            elements += site["value"].numel()
    coords = {
        name: site["value"].detach().cpu().numpy()
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and isinstance(site["fn"], _Subsample)
    }
    return nesting, max(elements, 1), coords, _enumerated_sites(model_trace, guide_trace)


# ---------------------------------------------------------------------------------------------- arrays
def _named(
    array: torch.Tensor,
    site_name: str,
    site: dict,
    event_dim: int,
    nesting: int,
    has_draws: bool,
) -> tuple[np.ndarray, list[str]]:
    """Squeeze the batch dims that no plate owns and name the rest.

    ``array`` has shape ``(S,)? + batch + event`` with ``batch`` aligned on the right to the plate
    dims ``-nesting .. -1``. Returns the numpy array (draws first, if any) and the dim names after
    the draw dimension.
    """
    array = array.detach()
    lead = 1 if has_draws else 0
    batch_ndim = array.dim() - event_dim - lead
    if batch_ndim < 0 or batch_ndim > nesting:
        raise ValueError(
            f"site '{site_name}' has a value of shape {tuple(array.shape)} whose batch dimensions do not fit "
            f"the {nesting} plate dimension(s) of the model; declare every batch dimension with pyro.plate "
            "(or move it to the event shape with .to_event), or pass max_plate_nesting="
        )
    pad = nesting - batch_ndim
    shape = tuple(array.shape)
    array = array.reshape(shape[:lead] + (1,) * pad + shape[lead:])
    owners = {f.dim: f.name for f in _frames(site)}
    keep, names, extra = [], [], 0
    for position in range(nesting):
        dim = position - nesting  # -nesting .. -1
        axis = lead + position
        if dim in owners:
            keep.append(axis)
            names.append(owners[dim])
        elif array.shape[axis] != 1:
            keep.append(axis)
            names.append(f"{site_name}_batch_dim_{extra}")
            extra += 1
    squeeze = [lead + p for p in range(nesting) if lead + p not in keep]
    out = array.cpu().numpy()
    if squeeze:
        out = out.squeeze(axis=tuple(squeeze))
    names += [f"{site_name}_dim_{i}" for i in range(event_dim)]
    return out, names


def _reduce_to_draws(log_prob: torch.Tensor, draws: int, keep_dim: int | None, nesting: int) -> torch.Tensor:
    """Sum a log-probability of batch shape (aligned to ``nesting + 1`` dims) over every dim but the
    draws (and ``keep_dim``, a negative plate dim, if given)."""
    log_prob = torch.as_tensor(log_prob)
    while log_prob.dim() < nesting + 1:
        log_prob = log_prob.unsqueeze(0)
    log_prob = log_prob.expand((draws,) + tuple(log_prob.shape[1:]))
    dims = [d for d in range(1, nesting + 1) if keep_dim is None or d - (nesting + 1) != keep_dim]
    out = log_prob.sum(dims) if dims else log_prob
    return out


def _datum_plate(sites: list[dict]) -> tuple[str, int] | None:
    """The plate every latent and observed site lies in (the posterior factorises over it), if any."""
    common: set | None = None
    for site in sites:
        frames = {(f.name, f.dim) for f in _frames(site)}
        common = frames if common is None else common & frames
    if not common:
        return None
    return max(common, key=lambda frame: frame[1])  # the rightmost (usually the data plate)


# ---------------------------------------------------------------------------------------------- draws
def _without_draws(shape: torch.Size, nesting: int) -> torch.Size:
    """The batch shape with the draws dimension (at -(nesting + 1)) removed."""
    return shape[max(len(shape) - nesting, 0) :]


def _deterministic_value(value: torch.Tensor, draws: int, nesting: int) -> tuple[torch.Tensor, int]:
    """A ``pyro.deterministic`` value with a draws dimension, and its event dim.

    Its Delta's event shape is the whole value, so the split is read from the value: a value computed
    from the latents starts with the draws and plate dims; any other value is the same in every draw.
    """
    if value.dim() >= nesting + 1 and value.shape[0] == draws:
        return value, value.dim() - (nesting + 1)
    return value.expand((draws,) + (1,) * nesting + tuple(value.shape)), value.dim()


def _draw(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    chunk: int,
    nesting: int,
    enumerated: Sequence[str] = (),
) -> dict[str, Any]:
    """Draw ``num_samples`` from the guide in vectorised chunks; collect every group's arrays and dims.

    ``enumerated`` names the model's enumerated latents: they are drawn from their conditional
    posterior and collected in ``posterior``; the importance weights ``log_weight`` are then not
    collected (they would need log p(X, z) with those latents summed out).
    """
    group_names = ("posterior", "log_likelihood", "posterior_predictive", "sample_stats")
    parts: dict[str, OrderedDict] = {key: OrderedDict() for key in group_names}
    dims: dict[str, dict[str, list[str]]] = {key: {} for key in (*group_names, "observed_data")}
    observed: OrderedDict = OrderedDict()
    matching: dict[str, dict[str, int]] = {}

    def collect(group: str, name: str, array: np.ndarray, names: list[str]) -> None:
        parts[group].setdefault(name, []).append(array)
        dims[group][name] = names

    done = 0
    while done < num_samples:
        S = min(chunk, num_samples - done)
        guide_trace, model_trace = _trace(model, guide, args, kwargs, S, nesting, bool(enumerated))
        guide_sites, model_sites = _sample_sites(guide_trace), _sample_sites(model_trace)
        deterministic = [(n, s) for n, s in model_sites.items() if _is_deterministic(s)]
        discrete = [(n, model_sites[n]) for n in enumerated]
        for name, site in list(guide_sites.items()) + discrete + deterministic:
            if site["infer"].get("is_auxiliary", False) or (site["is_observed"] and not _is_deterministic(site)):
                continue
            value, event_dim = site["value"], len(site["fn"].event_shape)
            if _is_deterministic(site):
                value, event_dim = _deterministic_value(value, S, nesting)
            collect("posterior", name, *_named(value, name, site, event_dim, nesting, True))
        model_terms = [(n, s) for n, s in model_sites.items() if not _is_deterministic(s)]
        if not any(s["is_observed"] for _, s in model_terms):
            raise ValueError("the model has no observed sites: there is no likelihood to diagnose")
        # The posterior factorises over a plate that holds every model and guide site: per-datum weights.
        datum = _datum_plate([s for _, s in model_terms] + list(guide_sites.values()))

        lp = torch.zeros(S, dtype=torch.float64)
        log_q = torch.zeros(S, dtype=torch.float64)
        pointwise = torch.zeros((), dtype=torch.float64)
        for name, site in model_terms:
            fn, value = site["fn"], site["value"]
            log_prob = fn.log_prob(value).double()
            lp += _reduce_to_draws(log_prob, S, None, nesting).cpu()
            if datum is not None:
                pointwise = pointwise + _reduce_to_draws(log_prob, S, datum[1], nesting).cpu()
            if not site["is_observed"]:
                continue
            event_dim = len(fn.event_shape)
            collect("log_likelihood", name, *_named(log_prob, name, site, 0, nesting, True))
            replicate = fn.sample()
            collect("posterior_predictive", name, *_named(replicate, name, site, event_dim, nesting, True))
            if name not in observed:
                obs_value = value.expand(_without_draws(fn.batch_shape, nesting) + fn.event_shape)
                observed[name] = _named(obs_value, name, site, event_dim, nesting, False)
            base = _unwrap(fn)
            if isinstance(base, RecognitionLikelihood):
                hits = replicate == value.to(replicate.dtype)
                info = matching.setdefault(name, {"support_size": int(base.num_support), "hits": 0, "count": 0})
                info["hits"] += int(hits.sum())
                info["count"] += int(hits.numel())
        for site in guide_sites.values():
            log_prob = site["fn"].log_prob(site["value"]).double()
            log_q += _reduce_to_draws(log_prob, S, None, nesting).cpu()
            if datum is not None:
                pointwise = pointwise - _reduce_to_draws(log_prob, S, datum[1], nesting).cpu()
        collect("sample_stats", "lp", lp.numpy(), [])
        if enumerated:
            done += S
            continue
        collect("sample_stats", "log_weight", (lp - log_q).numpy(), [])
        if datum is not None:
            collect("sample_stats", "pointwise_log_weight", pointwise.numpy(), [datum[0]])
        done += S

    arrays = {
        group: OrderedDict((name, np.concatenate(chunks, 0)[None]) for name, chunks in content.items())
        for group, content in parts.items()
    }
    arrays["observed_data"] = OrderedDict((name, value) for name, (value, _) in observed.items())
    dims["observed_data"] = {name: names for name, (_, names) in observed.items()}
    return {"arrays": arrays, "dims": dims, "matching": matching}
