# SPDX-License-Identifier: Apache-2.0
r"""The support-size constant of an RPM loss, read off the likelihood sites of a model run.

The categorical likelihood of an observed point carries the constant :math:`-\log M` of its support
set of M points (the maths page of the documentation, section 2): a loss per datum of two views on the
in-batch support starts near :math:`2\log B` whatever the model learns. :class:`SupportConstant`
records, while a model runs, the sum of these constants over its likelihood sites,

.. math::

    C = \sum_{\text{sites } s} \sum_{n \in s} \text{scale}_n \cdot E_s \log M_s ,

with :math:`E_s` the number of categorical events of one datum of the site (1 for
:func:`~pyro_rpm.observe`, T frames for :func:`~pyro_rpm.observe_trajectories`), the plate
scaling and masks of the site applied as the ELBO applies them. ``loss - C`` is the constant-free
loss (:math:`-\mathcal L - C`, the free energy without :math:`J\log M`); divided by the batch it is
comparable across support sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger

from ..likelihood.recognition import RecognitionLikelihood
from ..likelihood.trajectory import TrajectoryLikelihood

__all__ = ["SupportConstant", "recording_model"]


class SupportConstant(Messenger):
    r"""Accumulate :math:`C = \sum_s \sum_n \text{scale}_n E_s \log M_s` over the likelihood sites it sees.

    :attr:`total` is a float (the constant carries no gradient); :meth:`reset` sets it to 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0.0

    def reset(self) -> None:
        """Forget what was recorded."""
        self.total = 0.0

    def _postprocess_message(self, msg: dict) -> None:
        fn = msg.get("fn")
        if msg["type"] != "sample" or not isinstance(fn, (RecognitionLikelihood, TrajectoryLikelihood)):
            return
        if not msg["is_observed"]:
            return
        per_datum = math.log(fn.num_support) * max(1, fn.event_shape.numel())
        value = torch.full(fn.batch_shape, per_datum, dtype=torch.float64)
        mask = msg.get("mask")
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu()
        scale = msg.get("scale", 1.0)
        if isinstance(scale, torch.Tensor):
            scale = scale.detach().cpu().double()
        term = scale_and_mask(value, scale, mask)
        self.total += float(term.sum()) if isinstance(term, torch.Tensor) else float(term)


def recording_model(model: Callable, recorder: SupportConstant) -> Callable:
    """``model`` run inside ``recorder`` (innermost, so every plate's scaling is already applied)."""

    def recorded(*args: Any, **kwargs: Any) -> Any:
        with recorder:
            return model(*args, **kwargs)

    return recorded
