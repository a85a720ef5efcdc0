# SPDX-License-Identifier: Apache-2.0
r"""Whole-fit summaries of :func:`pyro_rpm.diagnostics.arviz.to_inference_data`: joint PSIS and ELBO history.

* :func:`_joint_psis_khat`: the Pareto :math:`\hat k` of the joint importance weights
  :math:`w = p(X, z) / q(z)`, :math:`z \sim q`, over all latents at once, from
  :func:`pyro.infer.importance.psis_diagnostic` (:math:`\hat k < 0.5`: :math:`q` covers :math:`p`
  well; :math:`\hat k > 0.7`: importance sampling with :math:`q` is unreliable). The particles are
  vectorised in the largest chunk that divides their number and is at most the draw chunk size.
* :func:`_history_dataset`: the training losses (:math:`-\text{ELBO}` per step) as an
  :class:`xarray.Dataset` indexed by step, for the ``elbo_history`` group.

``xarray`` is imported inside :func:`_history_dataset` (with ArviZ, only when needed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # xarray comes with arviz and is imported when the history is built
    import xarray

__all__ = ["_history_dataset", "_joint_psis_khat", "_largest_divisor_at_most"]


# ---------------------------------------------------------------------------------------------- PSIS
def _largest_divisor_at_most(n: int, bound: int) -> int:
    """The largest divisor of ``n`` that is at most ``max(bound, 1)``."""
    for d in range(min(n, max(bound, 1)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _joint_psis_khat(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, particles: int, chunk: int, nesting: int
) -> float:
    r"""Pareto :math:`\hat k` of :math:`p(X, z)/q(z)` from ``particles`` joint draws, at most ``chunk`` at once."""
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
def _history_dataset(elbo_history: Any) -> xarray.Dataset:
    """The losses as variable ``loss`` over ``step``, or, for a mapping, one variable per key over ``<key>_step``."""
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
