# SPDX-License-Identifier: Apache-2.0
"""Tests of ``pyro_rpm.distributed``: 2 gloo processes on loopback against 1 process.

One module-scoped fixture spawns two processes (start method ``spawn``, gloo backend on
127.0.0.1, a free port) that run every multi-process check and save their results; each test
compares one part with an independent single-process reference computed here:

* ``all_gather_with_grad``: its backward against the analytic gradient and against
  ``torch.distributed.nn.functional.all_gather``; the two known wrong variants (local rows only,
  as in lightly before PR #1531; local rows reduced, as in cellarium-ml before PR #184) give wrong
  gradients on this asymmetric test;
* the canonical two-view RPM with the support gathered over ranks (B = 4 points per rank, support
  of 8), float64 and rank-invariant noise (``ShardedNoise``): the summed 2-process gradients equal
  the 1-process gradients over the concatenated batch of 8 (to 1e-9), the losses add up to the
  1-process loss; the local gradients alone and the naive gather do not match;
* the two training routes: ``SVI`` + ``DistributedOptim`` (Pyro's parameter store) and
  ``DistributedDataParallel`` around a container module with ``world_size * loss``;
* unequal per-rank batch sizes raise a ValueError on every rank instead of aborting gloo.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from pyro import poutine
from torch import nn

import pyro_rpm.distributed.gather as rpm_gather
from pyro_rpm import (
    RPM_ELBO,
    CategoricalFactor,
    DeltaFactor,
    GaussianFactor,
    GaussianRecognition,
    RecognitionGuide,
    observe,
)
from pyro_rpm.distributed import (
    DistributedOptim,
    ShardedNoise,
    all_gather_with_grad,
    all_reduce_gradients,
    broadcast_parameters,
    gather_factors,
    init_from_env,
    local_index,
    rank_and_world_size,
    rank_subsample,
)

WORLD = 2
B, D, OBS, HIDDEN = 4, 2, 5, 8  # per-rank batch, latent dim, observation dim, hidden units
N = 24  # data set size for the SVI route
SVI_STEPS = 3
NOISE_SEED = 3
TIMEOUT_S = 120.0
ATOL = 1e-9


# ---------------------------------------------------------------------- shared model code
def _data(n: int = WORLD * B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, OBS, generator=g, dtype=torch.float64),
        torch.randn(n, OBS, generator=g, dtype=torch.float64),
    )


def _build():
    """The canonical two-view RPM with the gathered in-batch support (float64, fixed initialisation)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(OBS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2 * D)).double() for _ in range(2)]
    r1 = GaussianRecognition(nets[0], D, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(nets[1], D, prior_scale=1.0, name="r2")

    def model(x1, x2):
        f1, f2 = gather_factors([r1(x1), r2(x2)])
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=x1.dtype), 1.0).to_event(1))
            idx = local_index(x1.shape[0], device=x1.device)
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

    return nn.ModuleDict({"r1": r1, "r2": r2}), model, RecognitionGuide(model)


def _flat_grad(modules: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in modules.parameters()])


def _flat_params(modules: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in modules.parameters()])


def _rpm_loss_and_grad(x1, x2):
    """Loss and parameter gradient of one differentiable_loss under ShardedNoise."""
    modules, model, guide = _build()
    with ShardedNoise("data", seed=NOISE_SEED):
        loss = RPM_ELBO().differentiable_loss(model, guide, x1, x2)
    loss.backward()
    return loss.detach(), modules


def _svi_run(x1, x2, batch_size: int, optim):
    modules, model, guide = _build()
    svi = pyro.infer.SVI(model, guide, optim, RPM_ELBO())
    noise = ShardedNoise("data", seed=NOISE_SEED)
    losses = []
    for step in range(SVI_STEPS):
        idx = rank_subsample(N, batch_size, seed=7, step=step)
        with noise:
            losses.append(svi.step(x1[idx], x2[idx]))
    return losses, modules


def _weights(rank: int) -> torch.Tensor:
    """The per-rank weights of the quadratic test loss L_k(y) = sum(A_k * y**2)."""
    return torch.rand(WORLD * B, D, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64)


def _local_x(rank: int) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(200 + rank), dtype=torch.float64) * (rank + 1)


# ---------------------------------------------------------------------- wrong gathers
class _LocalRowsGather(torch.autograd.Function):
    """Wrong: backward keeps the local rows of the local gradient (lightly GatherLayer before #1531)."""

    @staticmethod
    def forward(ctx, tensor, group):
        parts = [torch.empty_like(tensor) for _ in range(WORLD)]
        tdist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = tdist.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows].clone(), None


class _ReducedLocalRowsGather(_LocalRowsGather):
    """Wrong: backward takes the local rows first, then all-reduces them (cellarium-ml before #184)."""

    @staticmethod
    def backward(ctx, grad):
        rows = grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows].contiguous().clone()
        tdist.all_reduce(rows)
        return rows, None


# ---------------------------------------------------------------------- the worker
def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.nn.functional import all_gather as nn_all_gather

    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        result = {"rank_and_world_size": rank_and_world_size(), "local_index": local_index(B)}

        # 1. all_gather_with_grad on the quadratic loss, and the wrong variants.
        for name, gather in (
            ("ours", all_gather_with_grad),
            ("torch_nn", lambda t: torch.cat(nn_all_gather(t))),
            ("local_rows", lambda t: _LocalRowsGather.apply(t, None)),
            ("reduced_local_rows", lambda t: _ReducedLocalRowsGather.apply(t, None)),
        ):
            x = _local_x(rank).requires_grad_()
            y = gather(x)
            (_weights(rank) * y**2).sum().backward()
            result[f"gather_{name}"] = (y.detach(), x.grad)

        # 2. The RPM gradients over the gathered support (and with the naive gather).
        x1, x2 = _data()
        rows = slice(rank * B, (rank + 1) * B)
        loss, modules = _rpm_loss_and_grad(x1[rows], x2[rows])
        local = _flat_grad(modules).clone()
        all_reduce_gradients(modules)
        total = loss.clone()
        tdist.all_reduce(total)
        result["rpm"] = {"loss": loss, "total_loss": total, "local_grad": local, "summed_grad": _flat_grad(modules)}
        original = rpm_gather.all_gather_with_grad  # the name gather_factors calls
        rpm_gather.all_gather_with_grad = lambda t, group=None: _LocalRowsGather.apply(t, group)
        try:
            _, modules = _rpm_loss_and_grad(x1[rows], x2[rows])
        finally:
            rpm_gather.all_gather_with_grad = original
        all_reduce_gradients(modules)
        result["rpm_naive_summed_grad"] = _flat_grad(modules)

        # 3. SVI + DistributedOptim over a few steps of rank_subsample minibatches.
        x1, x2 = _data(N)
        losses, modules = _svi_run(x1, x2, B, DistributedOptim(pyro.optim.Adam({"lr": 0.05})))
        totals = torch.tensor(losses, dtype=torch.float64)
        tdist.all_reduce(totals)
        result["svi"] = {"losses": totals, "params": _flat_params(modules)}

        # 4. DistributedDataParallel around a container module, world_size * loss.
        result["ddp_grad"], modules = _ddp_grad(rank)

        # 5. broadcast_parameters makes the ranks equal again.
        with torch.no_grad():
            for p in modules.parameters():
                p.add_(rank)
        broadcast_parameters(modules)
        result["broadcast_params"] = _flat_params(modules)

        # 6. Unequal per-rank sizes: a ValueError on every rank, no abort, and the group still works.
        factor = GaussianFactor(torch.zeros(B + rank, D), torch.ones(B + rank, D))
        try:
            gather_factors(factor)
            result["unequal"] = None
        except ValueError as error:
            result["unequal"] = str(error)
        check = torch.ones(1)
        tdist.all_reduce(check)
        result["after_unequal"] = float(check)

        # 7. A DeltaFactor keeps its type and eps through the gather; a categorical factor joins it.
        delta = DeltaFactor(torch.full((B, D), float(rank)), eps=0.01)
        gathered = gather_factors(delta)
        result["delta"] = (type(gathered).__name__, gathered.eps, gathered.loc, gathered.is_point_mass)
        logits = torch.randn(B, 3, generator=torch.Generator().manual_seed(rank))
        delta_all, categorical_all = gather_factors((delta, CategoricalFactor(logits)))
        result["mixed"] = (
            type(delta_all).__name__,
            delta_all.loc,
            type(categorical_all).__name__,
            categorical_all.logits,
        )

        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def _ddp_grad(rank: int):
    """One DDP forward/backward; the DDP wrapper is released before the caller goes on."""
    x1, x2 = _data()
    rows = slice(rank * B, (rank + 1) * B)
    modules, model, guide = _build()
    with torch.no_grad():  # make the ranks differ: DDP must broadcast rank 0's values
        for p in modules.parameters():
            p.add_(rank)

    class LossModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.recognition = modules

        def forward(self, x1, x2):
            return RPM_ELBO().differentiable_loss(model, guide, x1, x2)

    ddp = nn.parallel.DistributedDataParallel(LossModule())
    with ShardedNoise("data", seed=NOISE_SEED):
        loss = ddp(x1[rows], x2[rows])
    (WORLD * loss).backward()
    grad = _flat_grad(modules)
    del ddp, loss
    return grad, modules


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the worker on 2 gloo processes; return the results of rank 0 and rank 1."""
    if not (tdist.is_available() and tdist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    out_dir = str(tmp_path_factory.mktemp("distributed"))
    saved = os.environ.get("GLOO_SOCKET_IFNAME")
    if saved is None and sys.platform.startswith("linux") and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback, whatever the host name resolves to
    try:  # the spawned processes copy the environment at start
        context = mp.start_processes(
            _worker, args=(_free_port(), out_dir), nprocs=WORLD, join=False, start_method="spawn"
        )
    finally:
        if saved is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {WORLD} gloo processes did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


# ---------------------------------------------------------------------- 2 processes against 1
@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_worker_ranks(ranks):
    for r, result in enumerate(ranks):
        assert result["rank_and_world_size"] == (r, WORLD)
        assert torch.equal(result["local_index"], torch.arange(r * B, (r + 1) * B))


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_all_gather_with_grad_matches_analytic_gradient(ranks):
    xs = [_local_x(r) for r in range(WORLD)]
    y = torch.cat(xs)
    weights = [_weights(k) for k in range(WORLD)]
    # L = sum_k sum(A_k * y**2)  =>  dL/dx_r = sum_k 2 A_k[rows r] * x_r
    for r, result in enumerate(ranks):
        gathered, grad = result["gather_ours"]
        assert torch.equal(gathered, y)
        rows = slice(r * B, (r + 1) * B)
        analytic = sum(2 * weights[k][rows] * xs[r] for k in range(WORLD))
        torch.testing.assert_close(grad, analytic, rtol=0, atol=1e-12)
        torch.testing.assert_close(grad, result["gather_torch_nn"][1], rtol=0, atol=1e-12)


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
@pytest.mark.parametrize("variant", ["local_rows", "reduced_local_rows"])
def test_wrong_gather_variants_give_wrong_gradients(ranks, variant):
    xs = [_local_x(r) for r in range(WORLD)]
    weights = [_weights(k) for k in range(WORLD)]
    for r, result in enumerate(ranks):
        rows = slice(r * B, (r + 1) * B)
        analytic = sum(2 * weights[k][rows] * xs[r] for k in range(WORLD))
        assert (result[f"gather_{variant}"][1] - analytic).abs().max() > 0.1


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_rpm_gradients_equal_single_process_over_concatenated_batch(ranks):
    x1, x2 = _data()
    loss, modules = _rpm_loss_and_grad(x1, x2)  # one process, support = all 8 points
    reference = _flat_grad(modules)
    assert reference.abs().max() > 0.1
    parts = [result["rpm"] for result in ranks]
    torch.testing.assert_close(parts[0]["loss"] + parts[1]["loss"], loss, rtol=0, atol=ATOL)
    for part in parts:
        torch.testing.assert_close(part["total_loss"], loss, rtol=0, atol=ATOL)
        torch.testing.assert_close(part["summed_grad"], reference, rtol=0, atol=ATOL)
        # The local gradient alone is not the answer (the reduction matters) ...
        assert (part["local_grad"] - reference).abs().max() > 1e-2
    # ... but the local gradients add up to it.
    torch.testing.assert_close(parts[0]["local_grad"] + parts[1]["local_grad"], reference, rtol=0, atol=ATOL)


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_rpm_naive_gather_gives_wrong_gradients(ranks):
    x1, x2 = _data()
    _, modules = _rpm_loss_and_grad(x1, x2)
    reference = _flat_grad(modules)
    for result in ranks:
        assert (result["rpm_naive_summed_grad"] - reference).abs().max() > 1e-2


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_svi_with_distributed_optim_follows_single_process_run(ranks):
    x1, x2 = _data(N)
    losses, modules = _svi_run(x1, x2, WORLD * B, pyro.optim.Adam({"lr": 0.05}))
    start = _build()[0]
    assert (_flat_params(modules) - _flat_params(start)).abs().max() > 1e-2  # training moved the parameters
    for result in ranks:
        torch.testing.assert_close(
            result["svi"]["losses"], torch.tensor(losses, dtype=torch.float64), rtol=0, atol=1e-8
        )
        torch.testing.assert_close(result["svi"]["params"], _flat_params(modules), rtol=0, atol=1e-8)


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_ddp_with_world_size_scaled_loss_matches_single_process(ranks):
    x1, x2 = _data()
    _, modules = _rpm_loss_and_grad(x1, x2)  # DDP broadcast rank 0's parameters = the reference start
    for result in ranks:
        torch.testing.assert_close(result["ddp_grad"], _flat_grad(modules), rtol=0, atol=ATOL)


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_broadcast_parameters(ranks):
    torch.testing.assert_close(ranks[0]["broadcast_params"], ranks[1]["broadcast_params"], rtol=0, atol=0)


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_unequal_batch_sizes_raise_on_every_rank(ranks):
    for result in ranks:
        assert "same number of support points, got [4, 5]" in result["unequal"]
        assert result["after_unequal"] == WORLD


@pytest.mark.slow  # spawns 2 processes once per module (~15 s)
def test_gather_keeps_factor_types(ranks):
    locs = torch.cat([torch.full((B, D), float(r)) for r in range(WORLD)])
    logits = torch.cat([torch.randn(B, 3, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)])
    for result in ranks:
        name, eps, loc, point_mass = result["delta"]
        assert (name, eps, point_mass) == ("DeltaFactor", 0.01, True)
        torch.testing.assert_close(loc, locs)
        delta_name, delta_loc, categorical_name, categorical_logits = result["mixed"]
        assert (delta_name, categorical_name) == ("DeltaFactor", "CategoricalFactor")
        torch.testing.assert_close(delta_loc, locs)
        torch.testing.assert_close(categorical_logits, logits.log_softmax(-1))


# ---------------------------------------------------------------------- one process
def test_single_process_helpers_are_identities():
    assert rank_and_world_size() == (0, 1)
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    f = GaussianFactor(torch.zeros(3, 2), torch.ones(3, 2))
    assert gather_factors(f) is f
    assert torch.equal(local_index(3), torch.arange(3))
    net = nn.Linear(2, 2)
    net(x).sum().backward()
    before = net.weight.grad.clone()
    all_reduce_gradients(net)
    broadcast_parameters(net)
    assert torch.equal(net.weight.grad, before)


def test_init_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert init_from_env() == (0, 1)
    assert not tdist.is_initialized()


def test_bad_inputs():
    with pytest.raises(TypeError, match="factors must be a pyro_rpm Factor"):
        gather_factors(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="factors must be pyro_rpm Factors"):
        gather_factors([GaussianFactor(torch.zeros(3, 2), torch.ones(3, 2)), torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="same number of points"):
        gather_factors(
            [GaussianFactor(torch.zeros(3, 2), torch.ones(3, 2)), GaussianFactor(torch.zeros(4, 2), torch.ones(4, 2))]
        )
    with pytest.raises(ValueError, match="batch_shape"):
        gather_factors(GaussianFactor(torch.zeros(2, 3, 2), torch.ones(2, 3, 2)))
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        all_gather_with_grad([1.0])
    with pytest.raises(ValueError, match="size must be a positive int"):
        local_index(0)
    with pytest.raises(TypeError, match="optim must be a pyro.optim.PyroOptim"):
        DistributedOptim(torch.optim.Adam)
    with pytest.raises(ValueError, match="seed must be an int"):
        ShardedNoise("data", seed=1.5)
    with pytest.raises(TypeError, match="parameters must be an nn.Module or an iterable"):
        all_reduce_gradients(3)


# ---------------------------------------------------------------------- rank_subsample
def test_rank_subsample_slices_one_global_permutation():
    n, b, world = 50, 4, 3
    per_epoch = n // (world * b)  # 4 steps per epoch, 2 points dropped
    for step in range(3 * per_epoch):
        parts = [rank_subsample(n, b, seed=5, step=step, rank=r, world_size=world) for r in range(world)]
        glob = rank_subsample(n, world * b, seed=5, step=step, rank=0, world_size=1)
        assert torch.equal(torch.cat(parts), glob)
        assert len(set(torch.cat(parts).tolist())) == world * b  # disjoint
    epoch = torch.cat(
        [rank_subsample(n, b, seed=5, step=s, rank=r, world_size=world) for s in range(per_epoch) for r in range(world)]
    )
    assert len(set(epoch.tolist())) == per_epoch * world * b  # an epoch visits distinct points
    other = rank_subsample(n, b, seed=5, step=per_epoch, rank=0, world_size=world)
    assert not torch.equal(other, rank_subsample(n, b, seed=5, step=0, rank=0, world_size=world))  # new permutation
    assert not torch.equal(
        rank_subsample(n, b, seed=6, step=0, rank=0, world_size=world),
        rank_subsample(n, b, seed=5, step=0, rank=0, world_size=world),
    )


def test_rank_subsample_bad_inputs():
    with pytest.raises(ValueError, match="exceeds the number of data points"):
        rank_subsample(10, 6, seed=0, step=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank must be an int in"):
        rank_subsample(10, 2, seed=0, step=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        rank_subsample(10, 2, seed=0, step=-1)


# ---------------------------------------------------------------------- ShardedNoise
def test_sharded_noise_uses_the_seeded_global_draw_and_spares_global_rng():
    x1, x2 = _data()
    modules, model, guide = _build()
    state = torch.get_rng_state()
    with ShardedNoise("data", seed=11):
        trace = poutine.trace(guide).get_trace(x1, x2)
    assert torch.equal(torch.get_rng_state(), state)
    site = trace.nodes["z"]
    q = site["fn"].base
    eps = torch.randn(WORLD * B, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    torch.testing.assert_close(site["value"], q.loc + q.scale * eps, rtol=0, atol=1e-12)
    # Outside the handler the guide draws from the global stream as usual.
    other = poutine.trace(guide).get_trace(x1, x2).nodes["z"]["value"]
    assert not torch.allclose(other, site["value"])


def test_sharded_noise_loss_is_a_valid_draw():
    """Under ShardedNoise the ELBO estimate averages to the one without it (same estimator)."""
    x1, x2 = _data()
    _, model, guide = _build()
    elbo = RPM_ELBO()
    noise = ShardedNoise("data", seed=0)
    with torch.no_grad():
        with noise:
            a = torch.tensor([elbo.loss(model, guide, x1, x2) for _ in range(300)])
        b = torch.tensor([elbo.loss(model, guide, x1, x2) for _ in range(300)])
    se = math.sqrt(a.var() / 300 + b.var() / 300)
    assert abs(a.mean() - b.mean()) < 4 * se


# ---------------------------------------------------------------------- the example under torchrun
@pytest.mark.slow  # torchrun and 2 processes (~20 s)
def test_example_runs_under_torchrun(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    if sys.platform.startswith("linux") and os.path.exists("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [
        "examples/distributed_two_views.py",
        "--quick",
        "--steps",
        "20",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["world_size"], result["steps"], result["global_batch"]) == (2, 20, 256)
    assert 0 < result["r2"] <= 1 and math.isfinite(result["final_loss"])
    assert all((tmp_path / name).stat().st_size > 5_000 for name in ("elbo.png", "latents.png"))
