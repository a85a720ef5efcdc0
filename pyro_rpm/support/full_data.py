# SPDX-License-Identifier: Apache-2.0
"""The whole data set as support, with GradCache re-encoding."""

from __future__ import annotations

import torch
from torch import nn

from .._pyro import register_module
from .._validation import check_finite, check_optional_int
from ..normalisers import Normaliser
from ..recognition.base import Factor, Recognition
from ._grad_cache import chunked_encode
from .base import Support, _check_data

__all__ = ['FullDataSupport']


class FullDataSupport(Support):
    r"""The whole data set as the support set, re-encoded every step with bounded memory.

    ``f = s()`` returns the factors of all N points under the current parameters; observe the
    minibatch with the plate's indices, ``observe(name, f, z, index=idx)``. The normaliser is
    exact and the minibatch loss is an unbiased estimate of the full-data loss (constant
    :math:`\log N`). With ``chunk_size`` the network runs chunk by chunk without autograd and the
    backward pass re-encodes each chunk to back-propagate the cached gradient of the factor
    parameters (GradCache, :mod:`pyro_rpm.support._grad_cache`): gradients equal those of
    ``recognition(data)`` while the network's activation memory is that of one chunk.

    :param Recognition recognition: the recognition module (its ``net`` must be an ``nn.Module``).
    :param torch.Tensor data: the whole data set, shape ``(N, ...)``.
    :param int chunk_size: points per network call; ``None`` calls ``recognition(data)`` once with
        autograd (activation memory O(N)).
    :param normaliser: the normaliser of the sites observed through it (:class:`~pyro_rpm.normalisers.Normaliser`
        or a backend name; default ``"auto"``).
    :param bool preserve_rng_state: replay the random state of each chunk when recomputing it
        (dropout); ``False`` saves a generator-state copy per chunk for deterministic networks.
    """

    calling = "full"

    def __init__(
        self,
        recognition: Recognition,
        data: torch.Tensor,
        *,
        chunk_size: int | None = 4096,
        preserve_rng_state: bool = True,
        normaliser: Normaliser | str | None = None,
    ) -> None:
        super().__init__(recognition, normaliser=normaliser)
        _check_data(data)
        check_optional_int(chunk_size, "chunk_size", expected="a positive int or None")
        if chunk_size is not None and not isinstance(recognition.net, nn.Module):
            raise TypeError("FullDataSupport with chunk_size needs recognition.net to be a torch.nn.Module")
        if recognition.validate:
            check_finite(data, f"data of FullDataSupport('{recognition.name}')")
        self.data = data
        self.chunk_size = chunk_size
        self.preserve_rng_state = bool(preserve_rng_state)

    @property
    def num_data(self) -> int:
        """Number of data points N (the support size)."""
        return self.data.shape[0]

    def __call__(self) -> Factor:
        return self.cached((self.data._version,), lambda: self.attach(self._build()))

    def _build(self) -> Factor:
        r = self.recognition
        if self.chunk_size is None:
            return r(self.data)
        register_module(r.name, r)
        params = tuple(p for p in r.net.parameters() if p.requires_grad)
        try:
            output = chunked_encode(
                r.net, self.data, self.chunk_size, params, preserve_rng_state=self.preserve_rng_state
            )
        except RuntimeError as error:
            r._explain_mismatch(self.data, error)
            raise
        if output.dim() < 1 or output.shape[-1] != r.output_size:
            raise ValueError(
                f"the network of recognition '{r.name}' must output a last dimension of size "
                f"{r.output_size}, got shape {tuple(output.shape)}"
            )
        if r.validate:
            check_finite(output, f"network output of recognition '{r.name}'")
        return r._head_in_full_precision(output, self.data)
