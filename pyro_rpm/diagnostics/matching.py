# SPDX-License-Identifier: Apache-2.0
r"""Posterior-predictive matching: which support point does a latent pick?

Every :func:`~pyro_rpm.observe` site is *conditioned* on the observed support indices (the
categorical over the support set is the likelihood), so :class:`pyro.infer.Predictive` returns those
indices at the observe sites, not draws: a "matching accuracy" computed from its output is always
1.0. The RPM's posterior predictive at a likelihood site is the categorical

.. math::

    p(n \mid z) = \frac{f(z \mid x^{(n)})}{\sum_m f(z \mid x^{(m)})}, \qquad z \sim q(z \mid x),

the "matching up" of Walker et al.; :func:`matching_accuracy` draws from it (the model run under
:func:`pyro.poutine.uncondition`, replaying the guide's latents) and compares each draw with the
observed index. Chance level is :math:`1/M`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

from .._pyro import param_store_rollback, recognition_cache
from .._validation import check_int
from ..likelihood.recognition import RecognitionLikelihood

__all__ = ["matching_accuracy"]


def matching_accuracy(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1, **kwargs: Any
) -> dict[str, float]:
    r"""The fraction of observed points whose own index a posterior-predictive draw picks, per observe site.

    For each of ``num_samples`` draws: latents from ``guide``, then every
    :class:`~pyro_rpm.RecognitionLikelihood` site of ``model`` sampled (not conditioned) at those
    latents. Without gradients; uses the global random streams (seed them for a reproducible value).

    :param model: the RPM model.
    :param guide: its guide (e.g. :class:`~pyro_rpm.RecognitionGuide`).
    :param args: the model's arguments; ``kwargs`` too.
    :param int num_samples: posterior draws to average over.
    :returns: ``{site name: accuracy}``, each in ``[0, 1]`` (chance ``1/M``).
    :raises ValueError: for a bad ``num_samples`` or a model without observe sites.

    Example::

        >>> r = GaussianRecognition(nn.Linear(3, 4), 2, name="doc_match")
        >>> def model(x):
        ...     f = r(x)
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...         observe("x", f, z)
        >>> acc = matching_accuracy(model, RecognitionGuide(model), torch.randn(16, 3), num_samples=4)
        >>> sorted(acc), 0.0 <= acc["x"] <= 1.0
        (['x'], True)
    """
    check_int(num_samples, "num_samples")
    hits: dict[str, float] = {}
    with torch.no_grad(), param_store_rollback():
        for _ in range(num_samples):
            with recognition_cache():  # one network evaluation shared by the guide and both model runs
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                replayed = poutine.replay(model, trace=guide_trace)
                observed = poutine.trace(replayed).get_trace(*args, **kwargs)
                drawn = poutine.trace(poutine.uncondition(replayed)).get_trace(*args, **kwargs)
            for name, site in observed.nodes.items():
                if site["type"] != "sample" or not isinstance(site["fn"], RecognitionLikelihood):
                    continue
                truth = site["value"]
                draw = drawn.nodes[name]["value"]
                match = (draw == truth.expand_as(draw)).double().mean().item()
                hits[name] = hits.get(name, 0.0) + match / num_samples
    if not hits:
        raise ValueError("matching_accuracy: the model has no observe (RecognitionLikelihood) sites")
    return hits
