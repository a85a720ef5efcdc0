# SPDX-License-Identifier: Apache-2.0
r"""Detect a collapsed RPM: recognition factors that no longer tell the data points apart.

An RPM's likelihood :math:`p(x_j = x_j^{(n)} \mid z) = f_j(z \mid x_j^{(n)}) / \sum_m f_j(z \mid x_j^{(m)})`
is uniform, :math:`1/M`, when every support point's factor gives the latent the same density.
Training can fall into that fixed point (too high a learning rate, a prior that pulls every latent
to one place): the loss per datum then sits at :math:`\log M` per observe site, the prior's
parameters drift to whatever costs nothing, and nothing else looks wrong. The *spread* of a site,

.. math::

    s_j = \max_b \Big( \max_m \log f_j(z_b \mid x_j^{(m)}) - \min_m \log f_j(z_b \mid x_j^{(m)}) \Big),

in nats, measured at latents drawn from the guide, is 0 exactly when the factors are identical;
below ``tol`` the likelihood is within a factor :math:`e^{\text{tol}}` of uniform for every latent
looked at. :func:`factor_spread` measures it; :class:`CollapseMonitor` checks it now and then during
training and warns once (:class:`CollapseWarning`), and :func:`pyro_rpm.fit` runs one by default.

Example::

    >>> r = GaussianRecognition(nn.Linear(3, 4), 2, name="doc_collapse")
    >>> def model(x):
    ...     f = r(x)
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         observe("x", f, z)
    >>> spread = factor_spread(model, RecognitionGuide(model), torch.randn(16, 3))
    >>> sorted(spread), spread["x"] > 0.05     # an untrained network still tells points apart
    (['x'], True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

from .._pyro import param_store_rollback, recognition_cache
from .._validation import check_int, check_positive_number
from ..likelihood.recognition import RecognitionLikelihood

__all__ = ["CollapseMonitor", "CollapseWarning", "factor_spread"]

#: Latents (rows) and support points (columns) of the table that :func:`factor_spread` looks at.
_ROWS, _COLUMNS = 64, 1024


class CollapseWarning(UserWarning):
    """The recognition factors of an observe site have (nearly) stopped depending on the data."""


def _unwrap(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _site_spread(likelihood: RecognitionLikelihood) -> float:
    factors, latent = likelihood.factors, likelihood.latent
    event_shape = factors.event_shape
    rows = latent.reshape((-1,) + tuple(event_shape))[:_ROWS]
    M = factors.num_support
    if M > _COLUMNS:
        factors = factors.index(torch.linspace(0, M - 1, _COLUMNS, device=factors.device).long())
    table = factors.pairwise_log_prob(rows)  # (rows, columns)
    finite = torch.where(torch.isfinite(table), table, torch.nan)
    span = finite.nan_to_num(float("-inf")).amax(-1) - finite.nan_to_num(float("inf")).amin(-1)
    return float(span.max())


def factor_spread(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> dict[str, float]:
    r"""The spread :math:`s_j` (module docstring), in nats, of every observe site of ``model``.

    One draw from ``guide``, the model replayed on it, without gradients and without changing the
    parameter store; at most 64 latents and 1024 evenly spaced support points per site.

    :returns: ``{site name: spread}``; a spread near 0 means the site's likelihood is uniform.
    :raises ValueError: for a model without observe sites.
    """
    spreads: dict[str, float] = {}
    with torch.no_grad(), param_store_rollback(), recognition_cache():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and isinstance(_unwrap(site["fn"]), RecognitionLikelihood):
            spreads[name] = _site_spread(_unwrap(site["fn"]))
    if not spreads:
        raise ValueError("factor_spread: the model has no observe (RecognitionLikelihood) sites")
    return spreads


class CollapseMonitor:
    r"""Check for a collapse every ``every`` steps and warn once, naming the sites and what to try.

    For an SVI loop::

        monitor = CollapseMonitor(model, guide, every=200)
        for step in range(steps):
            svi.step(x1, x2)
            monitor(step + 1, x1, x2)

    :func:`pyro_rpm.fit` runs one on its minibatches (``fit(collapse_check=...)``), on a copy of the
    random streams so that the training trajectory is unchanged.

    :param model: the RPM model; ``guide``: its guide.
    :param int every: check at the steps that are multiples of this.
    :param float tol: spread in nats below which a site counts as collapsed (default 0.05: every
        point within 5 % of the same likelihood).
    :param int warm_up: no check before this step (default ``every``).
    """

    def __init__(
        self, model: Callable, guide: Callable, *, every: int = 200, tol: float = 0.05, warm_up: int | None = None
    ) -> None:
        if not callable(model) or not callable(guide):
            raise TypeError("CollapseMonitor: model and guide must be callable")
        self.model, self.guide = model, guide
        self.every = check_int(every, "every", integral=True)
        self.tol = check_positive_number(tol, "tol")
        self.warm_up = self.every if warm_up is None else check_int(warm_up, "warm_up", 0, integral=True)
        self.warned = False
        self.last: dict[str, float] | None = None

    def check(self, *args: Any, **kwargs: Any) -> list[str]:
        """Measure the spreads now; warn (once per monitor) and return the collapsed sites' names."""
        self.last = factor_spread(self.model, self.guide, *args, **kwargs)
        collapsed = [name for name, spread in self.last.items() if spread < self.tol]
        if collapsed and not self.warned:
            self.warned = True
            detail = ", ".join(f"'{n}' {self.last[n]:.2g} nats" for n in collapsed)
            warnings.warn(
                f"the recognition factors of {detail} barely depend on the data (spread below tol={self.tol}): "
                "the likelihood is nearly uniform, so the loss per datum sits at log M per site and the fit has "
                "collapsed. Try a smaller learning rate (e.g. 3e-3 or lower), a prior whose parameters start "
                "weaker (e.g. an AR coefficient near 0, not near 1), a wider prior scale, or more support points; "
                "pyro_rpm.factor_spread(model, guide, *batch) measures it",
                CollapseWarning,
                stacklevel=2,
            )
        return collapsed

    def __call__(self, step: int, *args: Any, **kwargs: Any) -> list[str]:
        """Check when ``step`` is due (a multiple of ``every``, past ``warm_up``); else do nothing."""
        if step < self.warm_up or step % self.every != 0:
            return []
        return self.check(*args, **kwargs)
