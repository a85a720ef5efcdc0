# SPDX-License-Identifier: Apache-2.0
"""Models that tests in several folders build the same way."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_rpm import ContrastivePrior, MarginalPrior, observe

__all__ = ["infonce_model", "markov_loop_model", "two_view_model"]


def two_view_model(r1: Callable, r2: Callable, dim: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The canonical two-view model of ``docs/core.md`` (in-batch support): per datum of the ``"data"``
    plate a latent ``z ~ N(0, I_dim)``, observed by the recognition ``r1`` through site ``"x1"`` and by
    ``r2`` through site ``"x2"``; called as ``model(x1, x2)``."""

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model


def infonce_model(e1: Callable, e2: Callable, coupling: Callable) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The InfoNCE model of ``docs/core.md`` §7: ``z1`` from the empirical marginal of ``e1``'s factors,
    ``z2`` from the contrastive prior of ``e2``'s factors coupled to ``z1``, each observed by its
    recognition (sites ``"x1"``, ``"x2"``); called as ``model(x1, x2)``."""

    def model(x1, x2):
        f1, f2 = e1(x1), e2(x2)
        with pyro.plate("data", x1.shape[0]):
            z1 = pyro.sample("z1", MarginalPrior(f1))
            z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
            observe("x1", f1, z1)
            observe("x2", f2, z2)

    return model


def markov_loop_model(recognition: Callable, steps: int, dim: int, dtype: torch.dtype, ar: str) -> Callable:
    """The tutorial's AR(1) prior written as a :func:`pyro.markov` loop: per sequence of the ``"seq"`` plate,
    ``z_0 ~ N(0, I)``, ``z_t ~ N(a z_{t-1}, (1 - a^2) I)`` with the parameter ``a = ar`` in (-1, 1), each
    ``z_t`` observed through site ``"x_t"`` by the factors of frame t (``recognition`` of all frames at
    once); called as ``model(x)`` with ``x`` of shape ``(sequences, steps, features)``."""

    def model(x):
        n = x.shape[0]
        factors = recognition(x.reshape(n * steps, x.shape[-1]))
        a = pyro.param(ar, torch.full((dim,), 0.5, dtype=dtype), constraint=constraints.interval(-1.0, 1.0))
        at = torch.arange(n) * steps
        with pyro.plate("seq", n):
            z = None
            for t in pyro.markov(range(steps)):
                if t == 0:
                    prior = dist.Normal(torch.zeros(dim, dtype=dtype), 1.0)
                else:
                    prior = dist.Normal(a * z, (1 - a**2).sqrt())
                z = pyro.sample(f"z_{t}", prior.to_event(1))
                observe(f"x_{t}", factors.index(at + t), z)

    return model
