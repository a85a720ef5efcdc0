# SPDX-License-Identifier: Apache-2.0
"""The discrete family: :class:`CategoricalFactor` and :class:`CategoricalRecognition`."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .base import Factor, Recognition, use_dense

__all__ = ['CategoricalFactor', 'CategoricalRecognition']


class CategoricalFactor(Factor, dist.Categorical):
    r"""Discrete factor :math:`f(k \mid x_m)` over K states.

    :param torch.Tensor logits: unnormalised log-probabilities, shape ``batch_shape + (K,)``.
    """

    def __init__(self, logits: torch.Tensor, *, validate_args: bool | None = None) -> None:
        dist.Categorical.__init__(self, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalFactor, _instance)
        return dist.Categorical.expand(self, batch_shape, _instance=new)

    @property
    def num_states(self) -> int:
        """Number of discrete states K."""
        return self._num_events

    def pairwise_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Table of :math:`\\log f(k \\mid x_m)` for integer states ``z``, shape ``z.shape + (M,)``."""
        return self.logits.transpose(0, 1)[z.long()]

    def pairwise_logsumexp(
        self, z: torch.Tensor, *, backend: str = "auto", chunk_size: int | None = None
    ) -> torch.Tensor:
        r""":math:`\log\sum_m f(k \mid x_m)` for integer states ``z``, shape ``z.shape``.

        The sum depends on the state only, so beyond the dense threshold it is computed once per
        state, :math:`\operatorname{logsumexp}_m \text{logits}_{mk}` (cost :math:`O(MK)`), and
        gathered at ``z``: exact, without the ``z.shape + (M,)`` table. ``chunk_size`` is unused.
        """
        if use_dense(backend, z.numel() * self.num_support):
            return torch.logsumexp(self.pairwise_log_prob(z), dim=-1)
        return torch.logsumexp(self.logits, dim=0)[z.long()]

    def index(self, idx: torch.Tensor) -> CategoricalFactor:
        """Factors of the support points ``idx``."""
        return CategoricalFactor(self.logits[idx], validate_args=False)

    def detach(self) -> CategoricalFactor:
        """The same factors with detached logits."""
        return CategoricalFactor(self.logits.detach(), validate_args=False)


class CategoricalRecognition(Recognition):
    r"""Discrete recognition factor :math:`f(k \mid x) = \operatorname{softmax}_k(\text{net}(x))`.

    :param torch.nn.Module net: network with ``num_states`` outputs (logits).
    :param int num_states: number of states K (at least 2).
    """

    def __init__(self, net: nn.Module, num_states: int, *, name: str | None = None, validate: bool = True) -> None:
        super().__init__(net, name=name, validate=validate)
        if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 2:
            raise ValueError(f"num_states must be an int >= 2, got {num_states!r}")
        self.num_states = num_states

    def _output_size(self) -> int:
        return self.num_states

    def _factor(self, output: torch.Tensor) -> CategoricalFactor:
        return CategoricalFactor(output.log_softmax(-1), validate_args=False)
