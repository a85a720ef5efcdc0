# SPDX-License-Identifier: Apache-2.0
r"""Matplotlib figures for training and latent recovery.

* :func:`plot_elbo` -- training curves (:math:`-\mathrm{ELBO}` per step, raw and smoothed);
* :func:`plot_latents_vs_truth` -- true latents against the learned ones mapped by the fitted
  affine map (the one behind :func:`pyro_rpm.diagnostics.metrics.linear_r2`), one panel per true dimension;
* :func:`plot_latent_trajectories` -- latents of a time series against time (optionally aligned
  to, and drawn over, the true trajectories);
* :func:`plot_latent_scatter` -- pairwise scatter plots of latent dimensions coloured by a label.

Every function returns the :class:`matplotlib.figure.Figure` it drew on, never calls
``plt.show()``, imports matplotlib only when called and works with any backend (``Agg``
included). Arrays may be NumPy arrays, torch tensors or nested lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._optional import require
from .._validation import check_int
from .metrics import _as_samples, _to_numpy, linear_r2

__all__ = ["plot_elbo", "plot_latent_scatter", "plot_latent_trajectories", "plot_latents_vs_truth"]


# ---------------------------------------------------------------------------------------------- helpers
def _new_axes(num: int, ncols: int | None = None, size: tuple[float, float] = (4.0, 3.2)):
    plt = require("matplotlib.pyplot", "pyro_rpm.plots")

    ncols = ncols or min(num, 4)
    nrows = -(-num // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = axes.ravel()
    for ax in flat[num:]:
        ax.set_visible(False)
    return fig, list(flat[:num])


def _given_axes(axes: Any, num: int, name: str = "axes") -> list:
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) < num:
        raise ValueError(f"{name} must hold at least {num} matplotlib Axes, got {len(flat)}")
    for ax in flat[:num]:
        if not hasattr(ax, "plot") or not hasattr(ax, "figure"):
            raise TypeError(f"{name} must hold matplotlib Axes, got {type(ax).__name__}")
    return flat[:num]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


# ---------------------------------------------------------------------------------------------- ELBO
def _history_curves(history: Any) -> dict[str, np.ndarray]:
    """``{label: losses}`` from a sequence, a mapping, or an InferenceData with an ``elbo_history`` group."""
    if hasattr(history, "groups") and callable(history.groups):  # arviz.InferenceData
        if "elbo_history" not in history.groups():
            raise ValueError(
                "history is an InferenceData without an 'elbo_history' group; pass elbo_history= to "
                "to_inference_data, or pass the losses themselves"
            )
        group = history["elbo_history"]
        history = {name: group[name].values for name in group.data_vars}
        if list(history) == ["loss"]:
            history = history["loss"]
    if isinstance(history, Mapping):
        if not history:
            raise ValueError("history must not be an empty mapping")
        curves = {str(key): _loss_vector(values, f"history[{key!r}]") for key, values in history.items()}
    elif isinstance(history, (str, bytes)) or not (
        isinstance(history, (Sequence, np.ndarray)) or hasattr(history, "detach")
    ):
        raise TypeError(
            "history must be a sequence of losses, a mapping label -> sequence, or an InferenceData with an "
            f"'elbo_history' group, got {type(history).__name__}"
        )
    else:
        curves = {"": _loss_vector(history, "history")}
    return curves


def _loss_vector(values: Any, name: str) -> np.ndarray:
    array = _to_numpy(values, name).astype(np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of losses, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite value(s), the first at step {int(bad[0])}: the training diverged "
            "there; plot the finite prefix instead"
        )
    return array


def plot_elbo(
    history: Any,
    *,
    ax: Any = None,
    smooth: int | str | None = "auto",
    per_datum: int | None = None,
    ylabel: str | None = None,
    title: str | None = "training loss",
):
    r"""Training curves: the loss per step (faint) and its moving average.

    :param history: losses per step -- the values returned by ``svi.step``, i.e.
        :math:`-\mathrm{ELBO}` estimates -- as a sequence, tensor or array; a mapping
        ``label -> sequence`` for several curves (restarts, training vs held-out); or an
        :class:`arviz.InferenceData` with an ``elbo_history`` group
        (:func:`pyro_rpm.to_inference_data` with ``elbo_history=``).
    :param ax: a matplotlib Axes to draw on (default: a new figure).
    :param smooth: moving-average window in steps; ``"auto"`` uses ``len // 20`` (at most 200),
        ``None`` or 1 draws the raw curve only.
    :param int per_datum: divide the losses by this batch size to plot nats per datum.
    :param str ylabel: y-axis label (default ``"loss (-ELBO)"``, with ``" per datum"``).
    :param str title: axes title.
    :returns: the :class:`~matplotlib.figure.Figure`.
    """
    curves = _history_curves(history)
    if per_datum is not None:
        per_datum = check_int(per_datum, "per_datum", integral=True)
        curves = {key: values / per_datum for key, values in curves.items()}
    created = ax is None
    if created:
        fig, (ax,) = _new_axes(1, size=(5.5, 3.5))
    else:
        (ax,) = _given_axes([ax], 1, "ax")
        fig = ax.figure
    for label, values in curves.items():
        window = smooth
        if window == "auto":
            window = min(200, len(values) // 20)
        elif window is not None:
            window = check_int(window, "smooth", integral=True)
        steps = np.arange(1, len(values) + 1)
        smoothed = window is not None and 1 < window <= len(values)
        raw = ax.plot(steps, values, lw=0.6, alpha=0.35 if smoothed else 1.0, label=None if smoothed else label or None)
        if smoothed:
            name = f"{label} (mean of {window})" if label else f"mean of {window} steps"
            ax.plot(steps[window - 1 :], _moving_average(values, window), lw=1.6, color=raw[0].get_color(), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or ("loss (-ELBO) per datum" if per_datum else "loss (-ELBO)"))
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    if created:
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- latents vs truth
def plot_latents_vs_truth(
    z_hat: Any,
    z_true: Any,
    *,
    axes: Any = None,
    fit_intercept: bool = True,
    max_points: int | None = 5000,
    seed: int = 0,
):
    r"""True latents against the learned ones after the fitted affine map.

    Fits :math:`\tilde z = \hat z A + b` by least squares (:func:`pyro_rpm.diagnostics.metrics.linear_r2`) and
    draws, for every true dimension d, :math:`z_d` (x-axis) against :math:`\tilde z_d` (y-axis)
    with the identity line; each panel's title gives that dimension's :math:`R^2`, the figure's
    title the average.

    :param z_hat: learned latents ``(N, K)`` (e.g. posterior means).
    :param z_true: true latents ``(N, D)``.
    :param axes: D matplotlib Axes to draw on (default: a new figure).
    :param bool fit_intercept: affine (default) or linear map.
    :param int max_points: draw at most this many (randomly chosen) points; the fit uses all.
    :param int seed: seed of that choice.
    :returns: the :class:`~matplotlib.figure.Figure`.
    """
    z_hat, z_true = _as_samples(z_hat, "z_hat"), _as_samples(z_true, "z_true")
    r2_dims, fitted = linear_r2(
        z_hat, z_true, fit_intercept=fit_intercept, multioutput="raw_values", return_prediction=True
    )
    D = z_true.shape[1]
    if axes is None:
        fig, axes = _new_axes(D)
    else:
        axes = _given_axes(axes, D)
        fig = axes[0].figure
    shown = np.arange(z_true.shape[0])
    if max_points is not None and z_true.shape[0] > check_int(max_points, "max_points", integral=True):
        shown = np.random.default_rng(seed).choice(z_true.shape[0], max_points, replace=False)
    for d, ax in enumerate(axes):
        x, y = z_true[shown, d], fitted[shown, d]
        ax.scatter(x, y, s=4, alpha=0.5, linewidths=0)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true z[{d}]")
        ax.set_ylabel(f"{'affine' if fit_intercept else 'linear'} map of learned z, dim {d}")
        ax.set_title(f"z[{d}]: R\u00b2 = {r2_dims[d]:.3f}")
    fig.suptitle(f"learned vs true latents ({'affine' if fit_intercept else 'linear'} R\u00b2 = {r2_dims.mean():.3f})")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- trajectories
def _as_series(value: Any, name: str) -> np.ndarray:
    """``(num_series, T, D)`` from ``(T,)``, ``(T, D)`` or ``(num_series, T, D)``."""
    array = _to_numpy(value, name).astype(np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"{name} must have shape (T, D) or (num_series, T, D), got {_to_numpy(value, name).shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, but it contains NaN or infinite values")
    return array


def plot_latent_trajectories(
    z: Any,
    t: Any = None,
    z_true: Any = None,
    *,
    axes: Any = None,
    fit_intercept: bool = True,
):
    r"""Latent trajectories of time series, one panel per dimension.

    Without ``z_true`` each panel shows one learned dimension :math:`\hat z_k(t)`. With
    ``z_true`` the learned latents are first mapped to the true coordinates by the least-squares
    affine map fitted over all series and times (:func:`pyro_rpm.diagnostics.metrics.linear_r2`), and each
    panel shows a true dimension (dashed) with its aligned estimate (solid) and its :math:`R^2`.

    :param z: learned latents ``(T, K)`` or ``(num_series, T, K)``.
    :param t: times ``(T,)`` (default ``0 .. T-1``).
    :param z_true: true latents ``(T, D)`` or ``(num_series, T, D)`` (same series and times).
    :param axes: matplotlib Axes, one per panel (default: a new figure).
    :param bool fit_intercept: affine (default) or linear alignment.
    :returns: the :class:`~matplotlib.figure.Figure`.
    """
    series = _as_series(z, "z")
    num_series, T, K = series.shape
    if t is None:
        times = np.arange(T, dtype=np.float64)
    else:
        times = _to_numpy(t, "t").astype(np.float64)
        if times.shape != (T,):
            raise ValueError(f"t must have shape (T,) = ({T},) to match z, got {times.shape}")
        if not np.isfinite(times).all():
            raise ValueError("t must be finite")
    truth = None
    if z_true is not None:
        truth = _as_series(z_true, "z_true")
        if truth.shape[:2] != series.shape[:2]:
            raise ValueError(
                f"z_true must have the same series and times as z: got {truth.shape[:2]} and {series.shape[:2]} "
                "(num_series, T)"
            )
        r2_dims, fitted = linear_r2(
            series.reshape(-1, K),
            truth.reshape(-1, truth.shape[-1]),
            fit_intercept=fit_intercept,
            multioutput="raw_values",
            return_prediction=True,
        )
        shown = fitted.reshape(num_series, T, -1)
    else:
        shown = series
    num_panels = shown.shape[-1]
    if axes is None:
        fig, axes = _new_axes(num_panels, ncols=1, size=(7.0, 2.2))
    else:
        axes = _given_axes(axes, num_panels)
        fig = axes[0].figure
    plt = require("matplotlib.pyplot", "pyro_rpm.plots")

    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for d, ax in enumerate(axes):
        for i in range(num_series):
            color = colors[i % len(colors)]
            if truth is not None:
                ax.plot(times, truth[i, :, d], "--", color=color, lw=1.0, alpha=0.8, label="true" if i == 0 else None)
            ax.plot(times, shown[i, :, d], "-", color=color, lw=1.2, label="learned" if i == 0 else None)
        if truth is not None:
            ax.set_ylabel(f"z[{d}]")
            ax.set_title(
                f"z[{d}]: aligned estimate (solid) vs truth (dashed), R\u00b2 = {r2_dims[d]:.3f}", fontsize="small"
            )
        else:
            ax.set_ylabel(f"learned z[{d}]")
    axes[-1].set_xlabel("t")
    if truth is not None:
        axes[0].legend(fontsize="small", loc="upper right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- scatter
def plot_latent_scatter(
    z: Any,
    labels: Any = None,
    *,
    dims: Sequence[int] | None = None,
    axes: Any = None,
    categorical: bool | None = None,
    cmap: str | None = None,
    s: float = 5.0,
):
    r"""Pairwise scatter plots of latent dimensions, coloured by a label.

    One panel per pair :math:`(i, j)`, :math:`i < j`, of the chosen dimensions (a single panel for
    two). Categorical labels (integers, booleans or strings, or ``categorical=True``) get one colour
    each and a legend; continuous labels a colour map and a colour bar.

    :param z: latents ``(N, D)`` with :math:`D \ge 2`.
    :param labels: one label per point ``(N,)`` (optional).
    :param dims: the dimensions to pair (default: the first ``min(D, 4)``).
    :param axes: matplotlib Axes, one per pair (default: a new figure).
    :param bool categorical: force categorical (True) or continuous (False) colouring.
    :param str cmap: colour map (default ``"tab10"``/``"tab20"`` or ``"viridis"``).
    :param float s: marker size.
    :returns: the :class:`~matplotlib.figure.Figure`.
    """
    points = _as_samples(z, "z")
    N, D = points.shape
    if D < 2:
        raise ValueError(f"z must have at least 2 dimensions for a pairwise scatter plot, got {D}")
    chosen = list(range(min(D, 4))) if dims is None else [check_int(d, "dims", 0, integral=True) for d in dims]
    if len(chosen) < 2 or len(set(chosen)) != len(chosen) or max(chosen) >= D:
        raise ValueError(f"dims must be at least 2 distinct dimensions in [0, {D}), got {list(dims or [])}")
    pairs = [(i, j) for a, i in enumerate(chosen) for j in chosen[a + 1 :]]
    if axes is None:
        fig, axes = _new_axes(len(pairs), size=(4.0, 3.6))
    else:
        axes = _given_axes(axes, len(pairs))
        fig = axes[0].figure

    values = None
    if labels is not None:
        values = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
        if values.shape != (N,):
            raise ValueError(f"labels must have shape (N,) = ({N},) to match z, got {values.shape}")
        if categorical is None:
            categorical = not np.issubdtype(values.dtype, np.floating)
        if not categorical:
            if not np.issubdtype(values.dtype, np.number):
                raise TypeError(f"continuous labels must be numbers, got dtype {values.dtype}")
            values = values.astype(np.float64)
            if not np.isfinite(values).all():
                raise ValueError("labels must be finite")
    plt = require("matplotlib.pyplot", "pyro_rpm.plots")

    for ax, (i, j) in zip(axes, pairs):
        if values is None:
            ax.scatter(points[:, i], points[:, j], s=s, alpha=0.6, linewidths=0)
        elif categorical:
            classes = np.unique(values)
            colour_map = plt.get_cmap(cmap or ("tab10" if len(classes) <= 10 else "tab20"))
            for c, cls in enumerate(classes):
                mask = values == cls
                ax.scatter(
                    points[mask, i],
                    points[mask, j],
                    s=s,
                    alpha=0.7,
                    linewidths=0,
                    color=colour_map(c % colour_map.N),
                    label=str(cls),
                )
        else:
            sc = ax.scatter(points[:, i], points[:, j], s=s, alpha=0.7, linewidths=0, c=values, cmap=cmap or "viridis")
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xlabel(f"z[{i}]")
        ax.set_ylabel(f"z[{j}]")
    if values is not None and categorical and len(np.unique(values)) <= 20:
        axes[0].legend(fontsize="small", markerscale=2.0, title="label")
    fig.tight_layout()
    return fig
