# SPDX-License-Identifier: Apache-2.0
"""The discrete family: :class:`CategoricalFactor` and :class:`CategoricalRecognition`."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .._validation import check_int
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

    tensor_names = ("logits",)

    def tensors(self) -> tuple[torch.Tensor]:
        """``(logits,)``, shape ``(M, K)``."""
        return (self.logits,)

    def with_tensors(self, tensors) -> CategoricalFactor:
        (logits,) = tensors
        return CategoricalFactor(logits, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Categorical.log_prob(self, value)

    def embedding(self) -> torch.Tensor:
        r"""The state probabilities :math:`\operatorname{softmax}(\text{logits})`, shape ``(M, K)``
        (the mean of the one-hot code of k)."""
        return self.probs

    @classmethod
    def combine(cls, factors, prior=None):
        r"""The normalised product :math:`q(k) \propto \prod_j f_j(k)` (the prior is not needed).

        The residual is :math:`-\log Z`, :math:`Z = \sum_k \prod_j f_j(k)`.
        """
        if not all(isinstance(f, CategoricalFactor) for f in factors):
            return None
        logits = sum(f.logits for f in factors)
        log_z = torch.logsumexp(logits, -1)
        return CategoricalFactor(logits - log_z.unsqueeze(-1)), lambda value: -log_z


class CategoricalRecognition(Recognition):
    r"""Discrete recognition factor :math:`f(k \mid x) = \operatorname{softmax}_k(\text{net}(x))`.

    :param torch.nn.Module net: network with ``num_states`` outputs (logits).
    :param int num_states: number of states K (at least 2).
    """

    def __init__(self, net: nn.Module, num_states: int, *, name: str | None = None, validate: bool = True) -> None:
        super().__init__(net, name=name, validate=validate)
        check_int(num_states, "num_states", 2)
        self.num_states = num_states

    @property
    def output_size(self) -> int:
        return self.num_states

    def head(self, output: torch.Tensor) -> CategoricalFactor:
        return CategoricalFactor(output.log_softmax(-1), validate_args=False)
