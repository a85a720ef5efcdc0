# SPDX-License-Identifier: Apache-2.0
r"""Observing whole latent trajectories: one recognition factor per time step, one site per view.

A time-series RPM with N sequences of T steps has a trajectory :math:`Z^{(n)} = z^{(n)}_{1:T}` per
sequence, sampled from a temporal prior as one site of shape ``(N, T, D)`` (e.g.
:class:`~pyro_rpm.priors.gp.GaussianProcessPrior`), and one recognition factor
:math:`f(z_t \mid x^{(m)}_s)` per frame. Each frame is observed through a categorical over a
support set :math:`S_t` of frames,

.. math::

    p(x_t = x^{(n)}_t \mid z_t) = \frac{f(z_t \mid x^{(n)}_t)}{\sum_{x' \in S_t} f(z_t \mid x')},

and :func:`observe_trajectories` observes all T frames of each sequence in **one** site (its event
shape is ``(T,)``, the sum over steps). The support set is the choice of empirical marginal, named
as in :mod:`pyro_rpm.support.sequences`:

* ``pooling="data"`` (pooled over data points only): :math:`S_t` is the N frames at the same step
  t, so :math:`F_t(z) = \frac1N \sum_m f(z \mid x^{(m)}_t)` depends on t. Constant :math:`\log N`
  per frame; needs N >= 2.
* ``pooling="ergodic"`` (pooled over data points and time): :math:`S_t` is all NT frames,
  :math:`F(z) = \frac1{NT} \sum_{m,s} f(z \mid x^{(m)}_s)` for every t. Constant :math:`\log NT`
  per frame; the choice for few sequences, or one.

**Layout.** As in :mod:`pyro_rpm.support.sequences`, factors are computed once for all frames in
sequence-major order: for data ``x`` of shape ``(N, T, ...)``, ``recognition(x.flatten(0, 1))``
has ``batch_shape == (N*T,)`` and frame :math:`(n, t)` sits at index ``n * T + t``. (Pass the
flattened tensor into the model, rather than flattening inside it, so that the guide and the
model share one network evaluation under :func:`~pyro_rpm.recognition_cache`.) The latent is the
trajectory itself, shape ``batch + (T, D)``.

Both choices give exact per-frame categorical likelihoods; the tables cost :math:`B T N`
(``"data"``) or :math:`B T \cdot NT` (``"ergodic"``) factor evaluations for B observed sequences.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions.utils import lazy_property

from .._pyro import rpm_infer
from .._validation import (
    check_finite,
    check_same_device_and_dtype,
    check_tensor,
    full_precision_call,
    value_checks_active,
)
from ..recognition.base import POOLINGS, Factor, check_frame_factors

__all__ = ["POOLINGS", "TrajectoryLikelihood", "observe_trajectories"]


def _gaussian_table_per_step(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""``table[..., b, t, n] = log N(z[..., b, t] | loc[n, t], diag scale[n, t]^2)``.

    One batched matrix product over the steps (the expansion of :mod:`pyro_rpm.normalisers.dense`,
    centred per step and accumulated in float64 for lower-precision inputs).
    """
    out_dtype = torch.promote_types(z.dtype, loc.dtype)
    work = out_dtype if out_dtype == torch.float64 or loc.device.type == "mps" else torch.float64
    z, loc, scale = z.to(work), loc.to(work), scale.to(work)
    precision = scale.pow(-2)  # (N, T, D)
    centre = loc.detach().mean(0)  # (T, D)
    zc, mc = z - centre, loc - centre
    weights = torch.cat([-0.5 * precision, precision * mc], -1)  # (N, T, 2D)
    features = torch.cat([zc * zc, zc], -1)  # (..., B, T, 2D)
    D = loc.shape[-1]
    bias = -0.5 * (precision * mc * mc).sum(-1) - scale.log().sum(-1) - 0.5 * D * math.log(2 * math.pi)  # (N, T)
    table = torch.einsum("...btk,ntk->...btn", features, weights) + bias.transpose(0, 1)
    return table.to(out_dtype)


class TrajectoryLikelihood(TorchDistribution):
    r"""Per-frame categorical likelihoods of whole trajectories (see the module docstring).

    :param Factor factors: factors of all N*T frames (``batch_shape == (N*T,)``, sequence-major).
    :param torch.Tensor latent: trajectories, shape ``batch + (T,) + factors.event_shape``.
    :param str pooling: ``"data"`` or ``"ergodic"``.

    The value is the support index of every frame, shape ``batch + (T,)``: the sequence index n
    (``"data"``) or the frame index ``n*T + t`` (``"ergodic"``). ``log_prob`` sums the T frames.
    """

    arg_constraints: dict = {}
    has_enumerate_support = False

    def __init__(self, factors: Factor, latent: torch.Tensor, pooling: str = "data", *, validate_args=None) -> None:
        check_frame_factors(factors)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        check_tensor(latent, "latent")
        event_dim = len(factors.event_shape)
        if latent.dim() < event_dim + 1 or latent.shape[latent.dim() - event_dim :] != factors.event_shape:
            raise ValueError(
                f"latent must have shape batch + (T,) + {tuple(factors.event_shape)} (whole trajectories), got "
                f"{tuple(latent.shape)}"
            )
        num_steps = latent.shape[latent.dim() - event_dim - 1]
        num_frames = factors.batch_shape[0]
        if num_frames % num_steps:
            raise ValueError(
                f"factors has {num_frames} frames, which is not a multiple of the trajectories' T={num_steps}"
            )
        num_sequences = num_frames // num_steps
        if pooling == "data" and num_sequences < 2:
            raise ValueError(
                f"pooling='data' needs at least 2 sequences (its support at step t is the N frames at t), got "
                f"{num_sequences}; use pooling='ergodic'"
            )
        if pooling == "ergodic" and num_frames < 2:
            raise ValueError(f"the support set must have at least 2 frames, got {num_frames}")
        check_same_device_and_dtype(latent, "latent", factors.tensors()[0], "factors")
        if latent.is_floating_point():
            check_finite(latent, "latent")
        self.factors = factors
        self.latent = latent
        #: the tensor passed as ``latent`` (kept through ``expand``; guides link sites by it).
        self.latent_source = latent
        self.pooling = pooling
        self.num_steps = num_steps
        self.num_sequences = num_sequences
        batch_shape = latent.shape[: latent.dim() - event_dim - 1]
        super().__init__(batch_shape, torch.Size((num_steps,)), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.num_support - 1), 1)

    @property
    def num_support(self) -> int:
        """Size of each support set: N (``"data"``) or NT (``"ergodic"``)."""
        return self.num_sequences if self.pooling == "data" else self.num_sequences * self.num_steps

    @lazy_property
    def logits(self) -> torch.Tensor:
        r"""Table :math:`\log f(z_t \mid x')` over the support of each step, shape ``batch + (T, num_support)``.

        Computed with :func:`torch.autocast` disabled, in the factors' dtype.
        """
        return full_precision_call(self._logits)

    def _logits(self) -> torch.Tensor:
        if self.pooling == "ergodic":
            return self.factors.pairwise_log_prob(self.latent)
        N, T = self.num_sequences, self.num_steps
        gaussian = self.factors.diagonal_gaussian()
        if gaussian is not None:
            D = self.factors.event_shape[0]
            loc, scale = (t.reshape(N, T, D) for t in gaussian)
            return _gaussian_table_per_step(self.latent, loc, scale)
        event_dim = len(self.factors.event_shape)
        frames = torch.arange(N, device=self.latent.device) * T
        columns = [
            self.factors.index(frames + t).pairwise_log_prob(self.latent.select(self.latent.dim() - event_dim - 1, t))
            for t in range(T)
        ]
        return torch.stack(columns, dim=-2)

    @lazy_property
    def log_normaliser(self) -> torch.Tensor:
        r""":math:`\log \sum_{x' \in S_t} f(z_t \mid x')`, shape ``batch + (T,)``."""
        return torch.logsumexp(self.logits, dim=-1)

    def _as_index(self, value: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value, device=self.latent.device)
        if value.is_floating_point() and value_checks_active():
            if not bool((value == value.round()).all()):
                raise ValueError("TrajectoryLikelihood values must be integer support indices")
        return value.long()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = self._as_index(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        logits = self.logits.expand(shape + (self.num_support,))
        diagonal = logits.gather(-1, value.expand(shape).unsqueeze(-1)).squeeze(-1)
        return (diagonal - self.log_normaliser).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.distributions.Categorical(logits=self.logits).sample(sample_shape)

    def frame_index(self, value: torch.Tensor) -> torch.Tensor:
        """Flat frame indices ``n*T + t`` of the observed support indices ``value`` (``batch + (T,)``)."""
        value = self._as_index(value)
        if self.pooling == "ergodic":
            return value
        return value * self.num_steps + torch.arange(self.num_steps, device=value.device)

    def observed_factors(self, value: torch.Tensor) -> Factor:
        """The factors :math:`f(\\cdot \\mid x^{(n)}_t)` of the observed frames, ``batch_shape == value.shape``."""
        frames = self.frame_index(value)
        flat = self.factors.index(frames.reshape(-1))
        return flat.with_tensors([t.reshape(frames.shape + t.shape[1:]) for t in flat.tensors()])

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TrajectoryLikelihood, _instance)
        batch_shape = torch.Size(batch_shape)
        new.factors = self.factors
        new.latent_source = self.latent_source
        new.pooling = self.pooling
        new.num_steps = self.num_steps
        new.num_sequences = self.num_sequences
        target = batch_shape + (self.num_steps,) + self.factors.event_shape
        new.latent = self.latent if self.latent.shape == target else self.latent.expand(target)
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape + (self.num_steps, self.num_support))
        super(TrajectoryLikelihood, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


def observe_trajectories(
    name: str,
    factors: Factor,
    latent: torch.Tensor,
    *,
    pooling: str = "data",
    sequences: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Observe every frame of a batch of trajectories in one site (see the module docstring).

    :param str name: site name.
    :param Factor factors: factors of all N*T frames of the support, ``recognition(x.flatten(0, 1))``.
    :param torch.Tensor latent: the sampled trajectories, shape ``(..., B, T, D)`` (pass the sample
        site's value itself: guides link the site to the latent by identity).
    :param str pooling: ``"data"`` (support at step t: the N frames at t) or ``"ergodic"`` (all NT).
    :param torch.Tensor sequences: the batch's sequence indices into the support (e.g. the
        subsample indices of ``pyro.plate("sequences", N, subsample_size=B)``); default ``arange(N)``,
        which needs B = N (the batch *is* the support).
    :returns: the observed support indices, shape ``(B, T)``.

    Example::

        def model(frames):                              # frames: (N*T, obs_dim)
            f = recognition(frames)                     # batch_shape (N*T,)
            with pyro.plate("sequences", N):
                z = gp("z", times)                      # (N, T, D)
                observe_trajectories("x", f, z, pooling="ergodic")
    """
    likelihood = TrajectoryLikelihood(factors, latent, pooling)
    N, T = likelihood.num_sequences, likelihood.num_steps
    batch = likelihood.batch_shape
    if sequences is None:
        if len(batch) == 0 or batch[-1] not in (1, N):
            raise ValueError(
                f"observe_trajectories('{name}'): the latent has {batch[-1] if len(batch) else 0} trajectories but "
                f"the support has N={N} sequences; pass sequences= (the batch's sequence indices)"
            )
        sequences = torch.arange(N, device=latent.device)
    else:
        sequences = torch.as_tensor(sequences, device=latent.device)
        if sequences.is_floating_point() or sequences.dim() != 1:
            raise TypeError(
                f"sequences must be a 1-D integer tensor, got dtype {sequences.dtype}, shape {tuple(sequences.shape)}"
            )
        if sequences.numel() and value_checks_active() and (int(sequences.min()) < 0 or int(sequences.max()) >= N):
            raise ValueError(
                f"sequences must lie in [0, {N}), got range [{int(sequences.min())}, {int(sequences.max())}]"
            )
        if len(batch) == 0 or batch[-1] not in (1, sequences.shape[0]):
            raise ValueError(
                f"sequences has length {sequences.shape[0]} but the latent has "
                f"{batch[-1] if len(batch) else 0} trajectories"
            )
    steps = torch.arange(T, device=latent.device)
    if pooling == "data":
        value = sequences.long().unsqueeze(-1).expand(sequences.shape[0], T)
    else:
        value = sequences.long().unsqueeze(-1) * T + steps
    return pyro.sample(name, likelihood, obs=value, infer=rpm_infer(latent, factors))
