# SPDX-License-Identifier: Apache-2.0
r"""ArviZ diagnostics for a trained RPM: :func:`to_inference_data`.

:func:`to_inference_data` draws S latents per datum from the guide, replays the model on them and
returns an :class:`arviz.InferenceData` (one chain of S independent draws) with the groups

* ``posterior``: the guide's latent sites (and the model's ``pyro.deterministic`` sites);
* ``log_likelihood``: for each observed site, the pointwise :math:`\log p(x \mid z)`. For a
  :class:`~pyro_rpm.RecognitionLikelihood` site j this is the categorical log-probability of the
  observed support index,

  .. math::

      \log p(x_j = x_j^{(n)} \mid z) = \log f_j(z \mid x_j^{(n)}) - \log \sum_{m=1}^{M} f_j(z \mid x_j^{(m)})
      \;\le\; 0,

  normalised over the M points of the support set passed in *this* call (no constant added);
  the chance level of a uniform guess is :math:`-\log M` (stored as the variable attribute
  ``chance_log_prob``, with ``support_size`` = M);
* ``posterior_predictive``: one sample of every observed site per draw; for an RPM site, a support
  index drawn from :math:`p(x_j \mid z)` (the "matching up" of a latent to a data point), with the
  variable attribute ``matching_accuracy`` (fraction of draws that return the observed index;
  chance is :math:`1/M`);
* ``observed_data``: the observed values (support indices for RPM sites);
* ``sample_stats``: per draw, ``lp`` :math:`= \log p(X, z)`, ``log_weight``
  :math:`= \log p(X, z) - \log q(z)` (its mean over draws estimates the ELBO), and
  ``pointwise_log_weight`` (per datum of the data plate, when the model factorises over it);
* ``elbo_history`` (when ``elbo_history=`` is given): the training losses, indexed by step (not
  by draw, hence a group of its own; ``sample_stats`` is indexed by chain and draw);

and top-level ``attrs`` with the PSIS :math:`\hat k` of :math:`p/q`. Dimensions are named after
the plates (``"data"`` for ``pyro.plate("data", N)``) and ``"<site>_dim_<i>"`` for event
dimensions; plate coordinates are the plate indices.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

from .likelihood import RecognitionLikelihood
from .recognition import recognition_cache

if TYPE_CHECKING:  # arviz is imported when to_inference_data is called, not with the package
    import arviz

__all__ = ["to_inference_data"]

#: Name of the plate that vectorises the posterior draws (dimension -(max_plate_nesting + 1)).
_DRAWS = "_pyro_rpm_draws"
#: Default budget of table entries (S x batch x M summed over likelihood sites) per vectorised chunk.
_CHUNK_ELEMENTS = 2**24


# ---------------------------------------------------------------------------------------------- checks
def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _sample_sites(trace) -> OrderedDict:
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


# ---------------------------------------------------------------------------------------------- tracing
def _trace(model: Callable, guide: Callable, args: tuple, kwargs: dict, draws: int | None, nesting: int):
    """Guide trace and replayed model trace, vectorised over ``draws`` at dim -(nesting + 1)."""

    def vectorise(fn: Callable) -> Callable:
        if draws is None:
            return fn

        def wrapped(*a: Any, **k: Any) -> Any:
            with pyro.plate(_DRAWS, draws, dim=-(nesting + 1)):
                return fn(*a, **k)

        return wrapped

    guide_trace = poutine.trace(vectorise(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(vectorise(model), trace=guide_trace)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _probe(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[int, int, dict]:
    """One unvectorised run: plate nesting, table entries per draw, and plate coordinates."""
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
    return nesting, max(elements, 1), coords


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
) -> dict[str, Any]:
    """Draw ``num_samples`` from the guide in vectorised chunks; collect every group's arrays and dims."""
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
        guide_trace, model_trace = _trace(model, guide, args, kwargs, S, nesting)
        guide_sites, model_sites = _sample_sites(guide_trace), _sample_sites(model_trace)
        deterministic = [(n, s) for n, s in model_sites.items() if _is_deterministic(s)]
        for name, site in list(guide_sites.items()) + deterministic:
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


# ---------------------------------------------------------------------------------------------- PSIS
def _largest_divisor_at_most(n: int, bound: int) -> int:
    for d in range(min(n, max(bound, 1)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _joint_psis_khat(model, guide, args, kwargs, particles: int, chunk: int, nesting: int) -> float:
    from pyro.infer.importance import psis_diagnostic

    simultaneous = _largest_divisor_at_most(particles, chunk)
    return float(
        psis_diagnostic(
            model,
            guide,
            *args,
            num_particles=particles,
            max_simultaneous_particles=simultaneous,
            max_plate_nesting=nesting,
            **kwargs,
        )
    )


# ---------------------------------------------------------------------------------------------- ELBO history
def _history_dataset(elbo_history: Any):
    import xarray as xr

    def as_vector(values: Any, name: str) -> np.ndarray:
        if hasattr(values, "detach"):
            values = values.detach().cpu().numpy()
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}") from error
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D sequence of losses, got shape {array.shape}")
        return array

    if isinstance(elbo_history, Mapping):
        if not elbo_history:
            raise ValueError("elbo_history must not be an empty mapping")
        variables = {}
        for key, values in elbo_history.items():
            if not isinstance(key, str):
                raise TypeError(f"elbo_history keys must be strings, got {type(key).__name__}")
            array = as_vector(values, f"elbo_history[{key!r}]")
            variables[key] = xr.DataArray(array, dims=[f"{key}_step"], coords={f"{key}_step": np.arange(len(array))})
        return xr.Dataset(variables)
    if (
        isinstance(elbo_history, (str, bytes))
        or not isinstance(elbo_history, (Sequence, np.ndarray))
        and not hasattr(elbo_history, "detach")
    ):
        raise TypeError(
            f"elbo_history must be a sequence of losses or a mapping name -> sequence, got {type(elbo_history).__name__}"
        )
    array = as_vector(elbo_history, "elbo_history")
    return xr.Dataset({"loss": xr.DataArray(array, dims=["step"], coords={"step": np.arange(len(array))})})


# ---------------------------------------------------------------------------------------------- main
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 500,
    elbo_history: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    psis_particles: int | None = 1000,
    draws_per_batch: int | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> arviz.InferenceData:
    r"""Draw from a trained guide and collect ArviZ groups (see the module docstring).

    Runs without gradients under :func:`~pyro_rpm.recognition_cache` (guide and model share one
    network evaluation per module and input). Networks with dropout or batch normalisation should
    be put in ``eval()`` mode first. Every datum must be in the call: plates that subsample raise
    a :class:`ValueError`. The support set is the one the model builds from ``args``: passing the
    whole data set to a model trained with the in-batch support gives log-likelihoods normalised
    over N points instead of B (lower by about :math:`\log(N/B)`).

    :param callable model: the model, called as ``model(*args, **kwargs)``.
    :param callable guide: its guide (e.g. :class:`~pyro_rpm.RecognitionGuide`; any Pyro guide works).
    :param args: the model's arguments (the data).
    :param int num_samples: draws S from the guide (one chain).
    :param elbo_history: training losses (``svi.step`` return values, i.e. :math:`-\text{ELBO}`), a
        sequence or a mapping ``name -> sequence``; stored in the ``elbo_history`` group (dimension
        ``step``, or ``<name>_step`` for a mapping).
    :param int psis_particles: particles for :func:`pyro.infer.importance.psis_diagnostic`, the
        Pareto :math:`\hat k` of the joint importance weights :math:`p(X, z)/q(z)` over all latents
        (``attrs["psis_khat"]``); at least 100, or ``None`` to skip it.
    :param int draws_per_batch: draws vectorised at once (default: as many as keep the
        :math:`S \times B \times M` likelihood tables under :math:`2^{24}` entries); 1 means one draw at a time.
    :param int max_plate_nesting: plate nesting of the model (default: read from one trace).
    :param kwargs: keyword arguments of the model and guide.
    :returns: an :class:`arviz.InferenceData`. Top-level ``attrs``: ``inference_library`` ("pyro"),
        ``inference_method`` ("variational"), ``num_draws``, ``elbo`` and ``elbo_se`` (mean and
        standard error of ``log_weight``: a Monte Carlo estimate of the ELBO on these data, with
        the standard :math:`\log q`), ``psis_khat`` and ``psis_particles`` (joint), and, when the
        model factorises over a data plate, ``psis_khat_pointwise_max``, ``psis_khat_pointwise_median``
        and ``psis_khat_pointwise_fraction_bad`` (share of data with :math:`\hat k > 0.7`), from
        :func:`arviz.psislw` on ``sample_stats.pointwise_log_weight``.

    ``az.loo`` and ``az.compare`` need ``var_name=`` when the model has several observed sites.

    Example::

        >>> idata = to_inference_data(model, guide, x1, x2, num_samples=500, elbo_history=losses)  # doctest: +SKIP
        >>> az.loo(idata, var_name="x1")      # log-probability of matching view 1 from the others  # doctest: +SKIP
        >>> idata.attrs["psis_khat_pointwise_median"], idata.attrs["elbo"] / x1.shape[0]  # doctest: +SKIP
    """
    import arviz as az

    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not callable(guide):
        raise TypeError(f"guide must be callable, got {type(guide).__name__}")
    num_samples = _check_positive_int(num_samples, "num_samples")
    if draws_per_batch is not None:
        draws_per_batch = _check_positive_int(draws_per_batch, "draws_per_batch")
    if psis_particles is not None:
        psis_particles = _check_positive_int(psis_particles, "psis_particles", minimum=100)
    if max_plate_nesting is not None:
        max_plate_nesting = _check_positive_int(max_plate_nesting, "max_plate_nesting", minimum=0)
    history = _history_dataset(elbo_history) if elbo_history is not None else None

    with torch.no_grad(), recognition_cache():
        nesting, elements, plate_coords = _probe(model, guide, args, kwargs)
        if max_plate_nesting is not None:
            if max_plate_nesting < nesting:
                raise ValueError(f"max_plate_nesting={max_plate_nesting} but the model nests {nesting} plates")
            nesting = max_plate_nesting
        chunk = draws_per_batch or max(1, min(num_samples, _CHUNK_ELEMENTS // elements))
        result = _draw(model, guide, args, kwargs, num_samples, chunk, nesting)
        khat = None
        if psis_particles is not None:
            khat = _joint_psis_khat(model, guide, args, kwargs, psis_particles, chunk, nesting)

    arrays, dims = result["arrays"], result["dims"]
    coords = {name: np.asarray(value) for name, value in plate_coords.items()}
    datasets = {
        group: az.dict_to_dataset(
            arrays[group],
            library=pyro,
            coords=coords,
            dims=dims[group],
            default_dims=[] if group == "observed_data" else None,
        )
        for group in ("posterior", "posterior_predictive", "log_likelihood", "sample_stats", "observed_data")
    }
    for name, info in result["matching"].items():
        M = info["support_size"]
        datasets["log_likelihood"][name].attrs.update(
            support_size=M,
            chance_log_prob=-math.log(M),
            definition="log f(z | x_n) - logsumexp_m log f(z | x_m), m over the support set of this call",
        )
        datasets["posterior_predictive"][name].attrs.update(
            support_size=M,
            matching_accuracy=info["hits"] / info["count"],
            chance_accuracy=1.0 / M,
        )

    from . import __version__

    log_weight = arrays["sample_stats"]["log_weight"].reshape(-1)
    attrs: dict[str, Any] = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "pyro_rpm_version": __version__,
        "inference_method": "variational",
        "num_draws": num_samples,
        "elbo": float(log_weight.mean()),
    }
    if num_samples > 1:
        attrs["elbo_se"] = float(log_weight.std(ddof=1) / math.sqrt(num_samples))
    if khat is not None:
        attrs["psis_khat"] = khat
        attrs["psis_particles"] = psis_particles
    if "pointwise_log_weight" in datasets["sample_stats"]:
        pointwise = arrays["sample_stats"]["pointwise_log_weight"]  # (1, S, data)
        _, k = az.psislw(pointwise.reshape(num_samples, -1).T)
        k = np.asarray(k, dtype=np.float64)
        attrs["psis_khat_pointwise_max"] = float(k.max())
        attrs["psis_khat_pointwise_median"] = float(np.median(k))
        attrs["psis_khat_pointwise_fraction_bad"] = float((k > 0.7).mean())
    if history is not None:
        datasets["elbo_history"] = history
    return az.InferenceData(attrs=attrs, **datasets)
