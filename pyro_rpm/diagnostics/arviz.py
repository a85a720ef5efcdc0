# SPDX-License-Identifier: Apache-2.0
r"""ArviZ diagnostics for a trained RPM: :func:`to_inference_data`.

:func:`to_inference_data` draws S latents per datum from the guide, replays the model on them and
returns an :class:`arviz.InferenceData` (one chain of S independent draws) with the groups

* ``posterior``: the guide's latent sites (and the model's ``pyro.deterministic`` sites), and the
  model's enumerated discrete latents that the guide leaves to :class:`~pyro.infer.TraceEnum_ELBO`,
  drawn from :math:`p(c \mid X, z)` by :func:`pyro.infer.infer_discrete` (for such a model
  ``lp`` is :math:`\log p(X, z, c)` at the draw, and ``log_weight``, ``elbo`` and the PSIS
  :math:`\hat k` are left out: ``attrs["omitted"]`` says so);
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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch

from .._optional import require
from .._pyro import recognition_cache
from .._validation import check_int
from ._draws import _draw, _probe
from ._summaries import _history_dataset, _joint_psis_khat

if TYPE_CHECKING:  # arviz is imported when to_inference_data is called, not with the package
    import arviz

__all__ = ['to_inference_data']


#: Default budget of table entries (S x batch x M summed over likelihood sites) per vectorised chunk.
_CHUNK_ELEMENTS = 2**24


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
    az = require("arviz", "to_inference_data")

    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not callable(guide):
        raise TypeError(f"guide must be callable, got {type(guide).__name__}")
    num_samples = check_int(num_samples, "num_samples", integral=True)
    if draws_per_batch is not None:
        draws_per_batch = check_int(draws_per_batch, "draws_per_batch", integral=True)
    if psis_particles is not None:
        psis_particles = check_int(psis_particles, "psis_particles", 100, integral=True)
    if max_plate_nesting is not None:
        max_plate_nesting = check_int(max_plate_nesting, "max_plate_nesting", 0, integral=True)
    history = _history_dataset(elbo_history) if elbo_history is not None else None

    with torch.no_grad(), recognition_cache():
        nesting, elements, plate_coords, enumerated = _probe(model, guide, args, kwargs)
        if max_plate_nesting is not None:
            if max_plate_nesting < nesting:
                raise ValueError(f"max_plate_nesting={max_plate_nesting} but the model nests {nesting} plates")
            nesting = max_plate_nesting
        chunk = draws_per_batch or max(1, min(num_samples, _CHUNK_ELEMENTS // elements))
        result = _draw(model, guide, args, kwargs, num_samples, chunk, nesting, enumerated)
        khat = None
        if psis_particles is not None and not enumerated:
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

    from .._version import __version__

    attrs: dict[str, Any] = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "pyro_rpm_version": __version__,
        "inference_method": "variational",
        "num_draws": num_samples,
    }
    if enumerated:
        attrs["enumerated_sites"] = list(enumerated)
        attrs["omitted"] = (
            "log_weight, elbo and PSIS: the enumerated latents are drawn from their exact conditional "
            "posterior (infer_discrete); importance weights would need them summed out"
        )
    else:
        log_weight = arrays["sample_stats"]["log_weight"].reshape(-1)
        attrs["elbo"] = float(log_weight.mean())
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
