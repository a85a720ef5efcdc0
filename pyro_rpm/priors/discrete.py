# SPDX-License-Identifier: Apache-2.0
r"""Discrete latent priors, summed out exactly by enumeration.

Both priors are ordinary Pyro programs: calling them inside a model issues ``pyro.sample``
statements marked ``infer={"enumerate": "parallel"}``, so :class:`pyro.infer.TraceEnum_ELBO` sums
the discrete latents out exactly. With recognition factors :math:`f_j(k \mid x)` observed through
:func:`~pyro_rpm.observe`, the loss is then the exact negative log marginal likelihood of the
discrete RPM,

.. math::

    \log p(X) = \sum_n \log \sum_k p(k) \prod_j \frac{f_j(k \mid x_j^{(n)})}{\sum_m f_j(k \mid x_j^{(m)})},

and for a hidden Markov chain :math:`z_{1:T}` (one factor per time step) the forward algorithm
with emission :math:`f(z_t \mid x_t) / \sum_m f(z_t \mid x_m)` (Walker et al.'s Baum–Welch).

* :class:`CategoricalPrior`: :math:`z \sim \mathrm{Categorical}(\pi)`, uniform or with learned
  logits.
* :class:`HMMPrior`: :math:`z_1 \sim \mathrm{Categorical}(\pi)`,
  :math:`z_t \mid z_{t-1} \sim \mathrm{Categorical}(A_{z_{t-1}})` with a learnable transition
  matrix :math:`A`, inside :func:`pyro.markov` so enumeration costs :math:`O(T K^2)`.

Use them with no guide for the discrete sites (an empty guide, or
:class:`~pyro_rpm.RecognitionGuide`, which leaves enumerated sites alone). Posterior marginals and
the most likely path: :func:`pyro_rpm.infer.posterior.discrete_marginals` and
:func:`pyro_rpm.infer.posterior.map_path`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import nn

from .._learnable import set_learnable
from .._pyro import register_module
from .._validation import check_finite, check_int, check_tensor

__all__ = ["CategoricalPrior", "HMMPrior"]

_ENUMERATE = (None, "parallel", "sequential")


def _check_num_states(num_states: object) -> int:
    return check_int(num_states, "num_states", 2)


def _check_enumerate(enumerate: object) -> str | None:
    if enumerate not in _ENUMERATE:
        raise ValueError(f"enumerate must be one of {_ENUMERATE}, got {enumerate!r}")
    return enumerate  # type: ignore[return-value]


def _check_probs(value: object, name: str, shape: tuple[int, ...], atol: float = 1e-5) -> torch.Tensor:
    """Check that ``value`` is a tensor of ``shape`` whose last dimension holds probability vectors."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a tensor of probabilities, got {type(value).__name__}") from error
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    check_finite(value, name)
    if bool((value < 0).any()):
        raise ValueError(f"{name} must be non-negative, got min {value.min().item():.3g}")
    sums = value.sum(-1)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=atol, rtol=0)):
        if value.dim() == 2:
            bad = int((sums - 1).abs().argmax())
            raise ValueError(
                f"{name} must be stochastic (every row summing to 1), got row sums in "
                f"[{sums.min().item():.4g}, {sums.max().item():.4g}] (worst: row {bad})"
            )
        raise ValueError(f"{name} must be stochastic (a probability vector summing to 1), got sum {sums.item():.4g}")
    return value


def _safe_log(probs: torch.Tensor) -> torch.Tensor:
    """``log(probs)`` with zeros mapped to the log of the smallest normal number (finite gradients)."""
    return probs.clamp(min=torch.finfo(probs.dtype).tiny).log()


class _StatePrior(nn.Module):
    """Shared set-up of the discrete priors: the number of states, the enumeration strategy, the name."""

    def __init__(self, num_states: int, enumerate: str | None, name: str) -> None:
        super().__init__()
        self.num_states = _check_num_states(num_states)
        self.enumerate = _check_enumerate(enumerate)
        self.name = str(name)

    @property
    def _infer(self) -> dict:
        """The ``infer`` dict of this prior's sample sites (a fresh one per call)."""
        return {"enumerate": self.enumerate} if self.enumerate else {}


class CategoricalPrior(_StatePrior):
    r"""A categorical prior :math:`z \sim \mathrm{Categorical}(\pi)` over ``num_states`` states.

    :param int num_states: number of states K (at least 2).
    :param torch.Tensor probs: initial probabilities, shape ``(K,)`` (default uniform).
    :param bool learn: learn :math:`\pi` (through softmax logits); otherwise :math:`\pi` is fixed.
    :param str enumerate: ``"parallel"`` (default), ``"sequential"`` or ``None`` (sample, do not enumerate).
    :param str name: parameter-store name.

    Call it inside a plate of a model: ``z = prior("z")``. Under :class:`pyro.infer.TraceEnum_ELBO`
    ``z`` is the enumerated support (shape ``(K, 1, ...)``), which :func:`~pyro_rpm.observe` accepts.

    Example::

        >>> prior = CategoricalPrior(3)
        >>> prior.probs
        tensor([0.3333, 0.3333, 0.3333], grad_fn=<SoftmaxBackward0>)
    """

    def __init__(
        self,
        num_states: int,
        *,
        probs: torch.Tensor | None = None,
        learn: bool = True,
        enumerate: str | None = "parallel",
        name: str = "categorical_prior",
    ) -> None:
        super().__init__(num_states, enumerate, name)
        K = self.num_states
        if probs is None:
            logits = torch.zeros(K)
        else:
            logits = _safe_log(_check_probs(probs, "probs", (K,)))
        set_learnable(self, "logits", logits, learn)

    @property
    def probs(self) -> torch.Tensor:
        r""":math:`\pi`, shape ``(K,)``."""
        return self.logits.softmax(-1)

    def distribution(self) -> dist.Categorical:
        """The prior as a :class:`pyro.distributions.Categorical` (registers the parameters with Pyro)."""
        register_module(self.name, self)
        return dist.Categorical(logits=self.logits)

    def forward(self, name: str) -> torch.Tensor:
        """Sample the site ``name`` (enumerated unless ``enumerate=None``) and return its value."""
        return pyro.sample(name, self.distribution(), infer=self._infer)


class HMMPrior(_StatePrior):
    r"""A discrete hidden Markov chain prior with a learnable transition matrix.

    .. math::

        z_1 \sim \mathrm{Categorical}(\pi), \qquad
        z_t \mid z_{t-1} \sim \mathrm{Categorical}(A_{z_{t-1}, \cdot}),\quad t = 2..T.

    Calling the prior returns a generator over the time steps: each iteration samples
    ``f"{name}_{t}"`` inside :func:`pyro.markov` and yields ``(t, z_t)``, so the caller observes
    step t inside the same Markov context::

        hmm = HMMPrior(6)

        def model(x):                              # x: (N, T, ...) sequences
            f = recognition(x.flatten(0, 1))       # factors of all N*T frames
            support = SequenceSupport(f, num_steps=T, pooling="ergodic")
            with pyro.plate("sequences", x.shape[0]):
                for t, z in hmm("z", T):
                    support.observe(f"x_{t}", z, t)

    Under :class:`pyro.infer.TraceEnum_ELBO` the chain is summed out exactly (forward algorithm,
    :math:`O(T K^2)`); the loss is :math:`-\log p(X)`.

    :param int num_states: number of states K (at least 2).
    :param torch.Tensor init: initial distribution :math:`\pi`, shape ``(K,)`` (default uniform).
    :param torch.Tensor transition: initial transition matrix :math:`A`, shape ``(K, K)``, rows
        summing to 1 (default: 0.5 on the diagonal and the rest spread uniformly).
    :param bool learn_init: learn :math:`\pi` (softmax logits).
    :param bool learn_transition: learn :math:`A` (row-wise softmax logits).
    :param str enumerate: ``"parallel"`` (default), ``"sequential"`` or ``None``.
    :param str name: parameter-store name.
    :raises ValueError: if ``num_states < 2`` or ``init``/``transition`` have the wrong shape or
        are not stochastic.
    """

    def __init__(
        self,
        num_states: int,
        *,
        init: torch.Tensor | None = None,
        transition: torch.Tensor | None = None,
        learn_init: bool = False,
        learn_transition: bool = True,
        enumerate: str | None = "parallel",
        name: str = "hmm_prior",
    ) -> None:
        super().__init__(num_states, enumerate, name)
        K = self.num_states
        init_logits = torch.zeros(K) if init is None else _safe_log(_check_probs(init, "init", (K,)))
        if transition is None:
            transition = torch.full((K, K), 0.5 / (K - 1))
            transition.fill_diagonal_(0.5)
        trans_logits = _safe_log(_check_probs(transition, "transition", (K, K)))
        set_learnable(self, "init_logits", init_logits, learn_init)
        set_learnable(self, "transition_logits", trans_logits, learn_transition)

    @property
    def initial_probs(self) -> torch.Tensor:
        r""":math:`\pi`, shape ``(K,)``."""
        return self.init_logits.softmax(-1)

    @property
    def transition_matrix(self) -> torch.Tensor:
        r""":math:`A`, shape ``(K, K)``; row i is :math:`p(z_t \mid z_{t-1} = i)`."""
        return self.transition_logits.softmax(-1)

    @staticmethod
    def site_names(name: str, num_steps: int) -> list[str]:
        """The names of the latent sites, ``[f"{name}_0", ..., f"{name}_{T-1}"]``."""
        return [f"{name}_{t}" for t in range(num_steps)]

    def forward(self, name: str, num_steps: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Generate the chain: yields ``(t, z_t)`` for ``t = 0..num_steps-1`` (see the class docstring)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        check_int(num_steps, "num_steps")
        return self._chain(name, num_steps)

    def _chain(self, name: str, num_steps: int) -> Iterator[tuple[int, torch.Tensor]]:
        register_module(self.name, self)
        init_logits, trans_logits = self.init_logits, self.transition_logits.log_softmax(-1)
        z = None
        for t in pyro.markov(range(num_steps)):
            logits = init_logits if z is None else Vindex(trans_logits)[z]
            z = pyro.sample(f"{name}_{t}", dist.Categorical(logits=logits), infer=self._infer)
            yield t, z

    def log_prob(self, path: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(z_{1:T})` of integer paths of shape ``(..., T)`` (for checks and diagnostics)."""
        check_tensor(path, "path")
        if path.dim() < 1 or path.is_floating_point():
            raise ValueError(f"path must be an integer tensor of shape (..., T), got {path.dtype} {tuple(path.shape)}")
        path = path.long()
        log_init = self.init_logits.log_softmax(-1)[path[..., 0]]
        log_trans = self.transition_logits.log_softmax(-1)[path[..., :-1], path[..., 1:]].sum(-1)
        return log_init + log_trans
