# SPDX-License-Identifier: Apache-2.0
r"""Support sets of time-series RPMs: one recognition factor per time step.

A time-series RPM has N sequences of T steps, a latent :math:`z_t` per step with any temporal
prior (an :class:`~pyro_rpm.priors.discrete.HMMPrior`, a Gaussian process, a state-space model),
and one recognition factor :math:`f(z_t \mid x_t)` per step (and per view). The likelihood of the
frame :math:`x_t^{(n)}` is a categorical over a support set of frames,

.. math::

    p(x_t = x_t^{(n)} \mid z_t) = \frac{f(z_t \mid x_t^{(n)})}{\sum_{x' \in S_t} f(z_t \mid x')},

and the choice of :math:`S_t` is the choice of empirical marginal (Walker et al.):

* ``pooling="data"``: :math:`S_t = \{x_t^{(1)}, \dots, x_t^{(N)}\}`, the N sequences at the same
  time step; :math:`F_t(z) = \frac1N \sum_m f(z \mid x_t^{(m)})` is time dependent. Constant
  :math:`\log N` per frame. Needs N >= 2.
* ``pooling="ergodic"``: :math:`S_t` is all NT frames, :math:`F(z) = \frac{1}{NT}\sum_{m,s}
  f(z \mid x_s^{(m)})`, the same at every step (a stationary process). Constant :math:`\log NT`
  per frame. The only choice for a single trajectory (N = 1).

The factors of all frames are computed once, in sequence-major order: for data ``x`` of shape
``(N, T, ...)``, ``factors = recognition(x.flatten(0, 1))`` has ``batch_shape == (N*T,)`` and the
frame :math:`(n, t)` is at flat index ``n * T + t``. This works for every factor type
(:class:`~pyro_rpm.recognition.gaussian.GaussianFactor`, :class:`~pyro_rpm.recognition.delta.DeltaFactor`,
:class:`~pyro_rpm.recognition.categorical.CategoricalFactor`), since it only uses ``Factor.index``.
"""

from __future__ import annotations

import torch

from .._validation import check_int
from ..likelihood.recognition import observe
from ..recognition.base import POOLINGS, Factor, check_frame_factors

__all__ = ["POOLINGS", "SequenceSupport", "observe_sequence"]

#: The empirical-marginal choices of a time-series RPM.
class SequenceSupport:
    r"""The support sets of the frames of N sequences of T steps (see the module docstring).

    :param Factor factors: recognition factors of all frames, ``batch_shape == (N*T,)``, frame
        :math:`(n, t)` at index ``n * T + t``.
    :param int num_steps: T.
    :param str pooling: ``"data"`` (support at step t: the N frames at step t) or ``"ergodic"``
        (support: all NT frames).

    Example::

        >>> import torch
        >>> from pyro_rpm import CategoricalFactor
        >>> f = CategoricalFactor(torch.randn(2 * 5, 3))        # N=2 sequences, T=5 steps, K=3
        >>> SequenceSupport(f, num_steps=5, pooling="data").support(1).batch_shape
        torch.Size([2])
        >>> SequenceSupport(f, num_steps=5, pooling="ergodic").index(1)
        tensor([1, 6])
    """

    def __init__(self, factors: Factor, num_steps: int, pooling: str = "data") -> None:
        check_frame_factors(factors)
        check_int(num_steps, "num_steps")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        num_frames = factors.batch_shape[0]
        if num_frames % num_steps:
            raise ValueError(
                f"factors has {num_frames} frames, which is not a multiple of num_steps={num_steps} (N*T frames expected)"
            )
        self.factors = factors
        self.num_steps = num_steps
        self.num_sequences = num_frames // num_steps
        self.pooling = pooling
        if pooling == "data" and self.num_sequences < 2:
            raise ValueError(
                f"pooling='data' needs at least 2 sequences (its support at step t is the N frames at t), got "
                f"{self.num_sequences}; use pooling='ergodic' for a single trajectory"
            )
        if pooling == "ergodic" and num_frames < 2:
            raise ValueError(f"the support set must have at least 2 frames, got {num_frames}")
        self._device = factors.device
        self._steps: dict[int, Factor] = {}

    @property
    def num_support(self) -> int:
        """Size of each support set: N (``"data"``) or NT (``"ergodic"``)."""
        return self.num_sequences if self.pooling == "data" else self.num_sequences * self.num_steps

    def _check_step(self, t: int) -> int:
        if isinstance(t, torch.Tensor) and t.dim() == 0 and not t.is_floating_point():
            t = int(t)
        return check_int(t, "t", 0, below=self.num_steps)

    def _sequences(self, sequences: torch.Tensor | None) -> torch.Tensor:
        if sequences is None:
            return torch.arange(self.num_sequences, device=self._device)
        sequences = torch.as_tensor(sequences, device=self._device)
        if sequences.is_floating_point():
            raise TypeError(f"sequences must be an integer tensor, got dtype {sequences.dtype}")
        if sequences.numel() and (int(sequences.min()) < 0 or int(sequences.max()) >= self.num_sequences):
            raise ValueError(
                f"sequences must lie in [0, {self.num_sequences}), got range [{int(sequences.min())}, "
                f"{int(sequences.max())}]"
            )
        return sequences.long()

    def support(self, t: int) -> Factor:
        """The factors of the support set of step ``t`` (cached per step for ``"data"``)."""
        t = self._check_step(t)
        if self.pooling == "ergodic":
            return self.factors
        if t not in self._steps:
            frames = torch.arange(self.num_sequences, device=self._device) * self.num_steps + t
            self._steps[t] = self.factors.index(frames)
        return self._steps[t]

    def index(self, t: int, sequences: torch.Tensor | None = None) -> torch.Tensor:
        """Positions in :meth:`support` of step ``t`` of the ``sequences`` (default: all N)."""
        t = self._check_step(t)
        sequences = self._sequences(sequences)
        return sequences if self.pooling == "data" else sequences * self.num_steps + t

    def observe(self, name: str, latent: torch.Tensor, t: int, sequences: torch.Tensor | None = None) -> torch.Tensor:
        r"""Observe the frames of step ``t`` of ``sequences`` through the latent :math:`z_t`.

        ``latent`` has the batch shape of the sequence plate (or a trailing 1 when enumerated);
        ``sequences`` are the plate's (subsample) indices, default ``arange(N)``.

        :raises ValueError: if the latent's sequence dimension differs from the number of observed
            sequences (e.g. views with different numbers or lengths of series).
        """
        index = self.index(t, sequences)
        factors = self.support(t)
        event_dim = len(factors.event_shape)
        if isinstance(latent, torch.Tensor) and latent.dim() > event_dim and index.dim() == 1:
            batch = tuple(latent.shape[: latent.dim() - event_dim])
            if batch[-1] not in (1, index.shape[0]):  # a trailing 1 broadcasts (an enumerated latent)
                if sequences is not None:
                    raise ValueError(
                        f"observe('{name}'): sequences has length {index.shape[0]} but the latent has {batch[-1]} "
                        f"sequences (batch shape {batch})"
                    )
                raise ValueError(
                    f"observe('{name}'): the latent has {batch[-1]} sequences (batch shape {batch}) but factors holds "
                    f"N={self.num_sequences} sequences of num_steps={self.num_steps} frames; every view must have the "
                    "same number of sequences of the same length (mismatched series lengths between views?), or "
                    "pass sequences= (the batch's sequence indices)"
                )
        if index.numel() == 1 and latent.dim() == event_dim:
            index = index.reshape(())  # a latent without batch dims (e.g. a size-1 plate squeezed by infer_discrete)
        return observe(name, factors, latent, index=index)


def observe_sequence(
    name: str,
    factors: Factor,
    latent: torch.Tensor,
    t: int,
    num_steps: int,
    pooling: str = "data",
    sequences: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-off form of :meth:`SequenceSupport.observe` (build a :class:`SequenceSupport` once per
    model call instead when observing many steps: it caches the per-step supports)."""
    return SequenceSupport(factors, num_steps, pooling).observe(name, latent, t, sequences)
