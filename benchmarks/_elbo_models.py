# SPDX-License-Identifier: Apache-2.0
r"""The training steps timed by ``benchmarks/elbo_step.py``: each workload as plain torch and as an RPM.

Every builder returns a dict ``side -> Side``: the step (one optimiser step, returns the loss as a
float), its parameters and a function giving the differentiable loss at the current parameters
(for the check that the sides compute the same thing). The RPM sides use
:class:`~pyro_rpm.train.optim.FusedAdam` under :class:`pyro.infer.SVI`, with :class:`~pyro_rpm.RPM_ELBO`
(``rpm``, every step traced through Pyro) or :class:`~pyro_rpm.JitRPM_ELBO` (``rpm_compiled``:
recorded once, replayed; ``rpm_inductor``: the recorded graph compiled by ``torch.compile``;
``rpm_cuda_graphs``: that, captured in CUDA graphs).

Workloads:

* :func:`infonce_mlp`: the InfoNCE model of ``docs/core.md`` §7, one MLP per view
  (10 → 64 → 64 → 16, SiLU), bilinear coupling :math:`g(z, z') = z^\top W z'`; plain torch is
  ``F.cross_entropy(a @ W @ b.T, arange(B), reduction="sum")`` and ``torch.optim.Adam``, eager
  (``torch``) and under ``torch.compile`` (``torch_compiled``, loss, backward and Adam in one
  compiled function).
* :func:`conv_rbf`: images of 1 × 28 × 28, one convolutional encoder per view (two 3×3
  convolutions of 32 channels, stride 2, ReLU, then a linear map to 16 dimensions), RBF coupling
  :math:`g(z, z') = -\lVert z - z'\rVert^2 / (2\ell^2)` with a learned lengthscale.
* :func:`markov`: the AR(1) prior of ``examples/tutorial_markov_prior.py`` over T = 50 frames, as
  a :func:`pyro.markov` loop of one sample and one observe site per frame (``loop``) and vectorised
  as one trajectory site (``vectorised``), each traced and compiled.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    BilinearCoupling,
    ContrastivePrior,
    DeltaRecognition,
    GaussianRecognition,
    JitRPM_ELBO,
    MarginalPrior,
    RBFCoupling,
    RecognitionGuide,
    TrajectoryFactorGuide,
    observe,
    observe_trajectories,
)
from pyro_rpm.train.optim import FusedAdam

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from tutorial_markov_prior import AR1Trajectory  # noqa: E402  (the tutorial's vectorised AR(1) prior)

__all__ = ["Side", "conv_rbf", "infonce_mlp", "markov"]

LR = 1e-3
EMBED_DIM = 16


class Side(NamedTuple):
    step: Callable[[], float]
    params: list[torch.Tensor]
    loss: Callable[[], torch.Tensor]


def _elbo(side: str) -> RPM_ELBO:
    if side == "rpm":
        return RPM_ELBO()
    if side == "rpm_cuda_graphs":
        return JitRPM_ELBO(backend="inductor", cuda_graphs=True)
    return JitRPM_ELBO(backend="inductor" if side.endswith("inductor") else "fx")


def _svi_side(side: str, model, guide, params, args) -> Side:
    """``SVI(model, guide, FusedAdam, elbo).step`` and the differentiable loss of a separate ELBO of the same kind."""
    svi = pyro.infer.SVI(model, guide, FusedAdam({"lr": LR}), _elbo(side))
    check = _elbo(side)
    return Side(lambda: svi.step(*args), params, lambda: check.differentiable_loss(model, guide, *args))


def _torch_side(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], compiled: bool) -> Side:
    """Adam on ``loss_fn``; with ``compiled`` the whole step (loss, backward, Adam) under ``torch.compile``."""
    opt = torch.optim.Adam(params, lr=LR)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.detach()

    run = torch.compile(step) if compiled else step
    return Side(lambda: run().item(), params, loss_fn)


def _contrastive_sides(sides, make_encoder, make_coupling, torch_logits, x1, x2, tag: str) -> dict[str, Side]:
    """Plain-torch and RPM sides of a two-view InfoNCE model, all from copies of one initialisation."""
    net1, net2 = make_encoder(), make_encoder()
    coupling0 = make_coupling(f"{tag}_init")
    labels = torch.arange(x1.shape[0], device=x1.device)
    out: dict[str, Side] = {}
    for side in sides:
        n1, n2 = copy.deepcopy(net1), copy.deepcopy(net2)
        if side.startswith("torch"):
            coupling_params = [p.detach().clone().requires_grad_() for p in coupling0.parameters()]

            def loss_fn(n1=n1, n2=n2, cp=coupling_params) -> torch.Tensor:
                return F.cross_entropy(torch_logits(n1(x1), n2(x2), *cp), labels, reduction="sum")

            out[side] = _torch_side(loss_fn, [*n1.parameters(), *n2.parameters(), *coupling_params], side != "torch")
            continue
        coupling = make_coupling(f"{tag}_{side}_g")
        coupling.load_state_dict(coupling0.state_dict())
        e1 = DeltaRecognition(n1, EMBED_DIM, name=f"{tag}_{side}_e1")
        e2 = DeltaRecognition(n2, EMBED_DIM, name=f"{tag}_{side}_e2")

        def model(x1, x2, e1=e1, e2=e2, coupling=coupling):
            f1, f2 = e1(x1), e2(x2)
            with pyro.plate("data", x1.shape[0]):
                z1 = pyro.sample("z1", MarginalPrior(f1))
                z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
                observe("x1", f1, z1)
                observe("x2", f2, z2)

        params = [*n1.parameters(), *n2.parameters(), *coupling.parameters()]
        out[side] = _svi_side(side, model, RecognitionGuide(model), params, (x1, x2))
    return out


def infonce_mlp(sides, batch_size: int, seed: int, device: torch.device, prefix: str = "") -> dict[str, Side]:
    """The bilinear InfoNCE model on MLP encoders (``x`` of width 10) at batch size ``batch_size``
    (``prefix`` starts its parameter names, so that two copies can train side by side)."""
    from pyro_rpm.datasets.synthetic import two_view_gaussian

    x1, x2, _ = two_view_gaussian(batch_size, obs_dim=10, seed=seed)
    x1, x2 = x1.to(device), x2.to(device)
    torch.manual_seed(seed)

    def encoder() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, EMBED_DIM)).to(
            device
        )

    def coupling(name: str) -> nn.Module:
        g = BilinearCoupling(EMBED_DIM, name=name).to(device)
        with torch.no_grad():
            g.weight.copy_(torch.eye(EMBED_DIM, device=device) + 0.1 * torch.randn(EMBED_DIM, EMBED_DIM, device=device))
        return g

    return _contrastive_sides(sides, encoder, coupling, lambda a, b, w: a @ w @ b.T, x1, x2, f"{prefix}mlp{batch_size}")


def conv_rbf(sides, batch_size: int, seed: int, device: torch.device, prefix: str = "") -> dict[str, Side]:
    """The RBF InfoNCE model on convolutional encoders, two noisy views of random 1 × 28 × 28 images."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(batch_size, 1, 28, 28, generator=generator)
    x1 = (base + 0.3 * torch.randn(base.shape, generator=generator)).to(device)
    x2 = (base + 0.3 * torch.randn(base.shape, generator=generator)).to(device)
    torch.manual_seed(seed)

    def encoder() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 6 * 6, EMBED_DIM),
        ).to(device)  # fmt: skip

    def coupling(name: str) -> nn.Module:
        return RBFCoupling(2.0, name=name).to(device)

    def logits(a, b, log_lengthscale):  # -|a - b'|^2 / (2 l^2), expanded as fast torch code writes it
        squared = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1) - 2 * a @ b.T
        return -0.5 * squared * (-2 * log_lengthscale).exp()

    return _contrastive_sides(sides, encoder, coupling, logits, x1, x2, f"{prefix}conv{batch_size}")


def markov(sides, batch_size: int, steps: int, seed: int, device: torch.device) -> dict[str, Side]:
    """The tutorial's AR(1) prior, ``loop`` (``pyro.markov``) and ``vectorised``, each traced and compiled."""
    obs, dim = 12, 2
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, steps, obs, generator=generator).to(device)
    torch.manual_seed(seed)
    net0 = nn.Sequential(nn.Linear(obs, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2 * dim))
    out: dict[str, Side] = {}
    for side in sides:
        form, _, how = side.partition("_")
        recognition = GaussianRecognition(copy.deepcopy(net0), dim, prior_scale=1.0, name=f"markov_{side}").to(device)
        ar_name = f"markov_{side}_ar"

        def ar(x, ar_name=ar_name):
            return pyro.param(ar_name, torch.full((dim,), 0.5, device=x.device), constraint=constraints.interval(-1, 1))

        def model_loop(x, recognition=recognition, ar=ar):
            n = x.shape[0]
            factors = recognition(x.reshape(n * steps, obs))
            a = ar(x)
            frames_at = torch.arange(n, device=x.device) * steps
            with pyro.plate("sequences", n):
                z = None
                for t in pyro.markov(range(steps)):
                    prior = dist.Normal(a * z, (1 - a**2).sqrt()) if t else dist.Normal(x.new_zeros(dim), 1.0)
                    z = pyro.sample(f"z_{t}", prior.to_event(1))
                    observe(f"x_{t}", factors.index(frames_at + t), z)

        def model_vectorised(x, recognition=recognition, ar=ar):
            n = x.shape[0]
            factors = recognition(x.reshape(n * steps, obs))
            with pyro.plate("sequences", n):
                z = pyro.sample("z", AR1Trajectory(ar(x), steps))
                observe_trajectories("x", factors, z, pooling="data")

        model = model_loop if form == "loop" else model_vectorised
        guide = RecognitionGuide(model) if form == "loop" else TrajectoryFactorGuide(model)
        out[side] = _svi_side(
            {"traced": "rpm", "compiled": "rpm_compiled"}.get(how, "rpm_inductor"), model, guide, [], (x,)
        )
    return out
