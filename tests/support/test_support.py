# SPDX-License-Identifier: Apache-2.0
r"""Support sets: full-data GradCache against the naive full-data path, memory-bank semantics and losses.

References: the naive whole-data-set model of ``docs/core.md`` (``recognition(x_all)`` with autograd),
a manual chunk-by-chunk evaluation with autograd under the same seed (dropout), hand-written
log-softmax / InfoNCE formulas over ``[batch; bank]``, and the EMA formula of the momentum encoder.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    BilinearCoupling,
    ContrastivePrior,
    DeltaRecognition,
    GaussianFactor,
    GaussianRecognition,
    MarginalPrior,
    RecognitionGuide,
    RecognitionLikelihood,
    observe,
)
from pyro_rpm.recognition import cat_factors
from pyro_rpm.recognition.delta import DeltaFactor
from pyro_rpm.support.banks import IndexedBankSupport, MemoryBankSupport
from pyro_rpm.support.base import InBatchSupport
from pyro_rpm.support.full_data import FullDataSupport

D = 2


def mlp(width=16, dropout=0.0, dtype=torch.float64, out=2 * D):
    layers = [nn.Linear(5, width), nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(width, out)]
    return nn.Sequential(*layers).to(dtype)


def two_views(n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randn(n, 5, generator=g, dtype=dtype)


def full_data_loss_and_grads(x1, x2, chunk_size, *, naive=False, width=16, batch=32, seed=3):
    """RPM_ELBO loss and parameter gradients of the two-view whole-data-set model of docs/core.md."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    dtype = x1.dtype
    r1 = GaussianRecognition(mlp(width, dtype=dtype), D, prior_scale=1.0, name="fs_r1")
    r2 = GaussianRecognition(mlp(width, dtype=dtype), D, prior_scale=1.0, name="fs_r2")
    s1, s2 = FullDataSupport(r1, x1, chunk_size=chunk_size), FullDataSupport(r2, x2, chunk_size=chunk_size)

    def model():
        f1, f2 = (r1(x1), r2(x2)) if naive else (s1(), s2())
        with pyro.plate("data", x1.shape[0], subsample_size=batch) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=dtype), 1.0).to_event(1))
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

    pyro.set_rng_seed(seed)
    loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model))
    params = list(r1.net.parameters()) + list(r2.net.parameters())
    return loss, torch.autograd.grad(loss, params), (r1, r2, model)


# ----------------------------------------------------------------------------------------------
# FullDataSupport
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
@pytest.mark.parametrize("chunk_size", [1, 37, 64, 1000])
def test_full_data_matches_naive_path(dtype, tol, chunk_size):
    """GradCache values and gradients equal those of recognition(x_all) with autograd."""
    x1, x2 = two_views(150, dtype)
    loss, grads, _ = full_data_loss_and_grads(x1, x2, chunk_size)
    want_loss, want_grads, _ = full_data_loss_and_grads(x1, x2, None, naive=True)
    assert abs(loss.item() - want_loss.item()) <= tol * abs(want_loss.item())
    for g, w in zip(grads, want_grads):
        assert ((g - w).abs() / (w.abs().max() + 1e-30)).max() <= tol


def test_full_data_svi_step_matches_naive():
    """One SVI step (Pyro's param store, loss_and_grads, Adam) lands on the same parameters."""
    x1, x2 = two_views(120)
    after = []
    for chunk, naive in ((25, False), (None, True)):
        _, _, (r1, r2, model) = full_data_loss_and_grads(x1, x2, chunk, naive=naive)
        svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 0.05}), RPM_ELBO())
        pyro.set_rng_seed(11)
        losses = [svi.step() for _ in range(3)]
        after.append((losses, [p.detach().clone() for p in list(r1.parameters()) + list(r2.parameters())]))
    assert after[0][0] == pytest.approx(after[1][0], rel=1e-10)
    for a, b in zip(after[0][1], after[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_full_data_encoder_sees_chunks_only():
    """The network only ever runs on chunks: ceil(N/C) calls without autograd, ceil(N/C) with, per view."""
    n, chunk, width = 300, 64, 256
    x1, x2 = two_views(n)
    calls = []

    def record(module, inputs, output):
        calls.append((inputs[0].shape[0], torch.is_grad_enabled()))

    saved = {}

    def run(chunk_size):
        pyro.clear_param_store()
        torch.manual_seed(0)
        r1 = GaussianRecognition(mlp(width), D, prior_scale=1.0, name="cs_r1")
        r1.net[0].register_forward_hook(record)
        s1 = FullDataSupport(r1, x1, chunk_size=chunk_size)

        def model():
            f1 = s1()
            with pyro.plate("data", n, subsample_size=16) as idx:
                z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1))
                observe("x1", f1, z, index=idx)

        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model))
        saved[chunk_size] = total[0]
        loss.backward()

    run(chunk)
    per_pass = math.ceil(n / chunk)
    assert len(calls) == 2 * per_pass  # the guide and the model share one encoding (recognition_cache)
    assert all(size <= chunk for size, _ in calls)
    assert sum(not grad for _, grad in calls) == per_pass  # forward: no autograd
    assert sum(grad for _, grad in calls) == per_pass  # backward: recomputation with autograd
    calls.clear()
    run(None)
    assert calls == [(n, True)]
    # Bytes saved for backward during the forward pass: the naive path keeps the (N, width)
    # activations; GradCache keeps none of them (only inputs, parameters and (N, 2D) outputs).
    activation = n * width * 8
    assert saved[None] > 2 * activation
    assert saved[chunk] < activation


def test_full_data_replays_dropout_masks():
    """With dropout, gradients equal a manual chunk-by-chunk autograd pass under the same seed."""
    x = two_views(200)[0]
    torch.manual_seed(0)
    r = GaussianRecognition(mlp(32, dropout=0.5), D, name="do_r")
    support = FullDataSupport(r, x, chunk_size=48)
    weights = torch.randn(200, D, dtype=torch.float64)

    def objective(f):
        return (f.loc * weights).sum() + f.scale.log().sum() + f.pairwise_logsumexp(x[:7, :D]).sum()

    torch.manual_seed(5)
    got = torch.autograd.grad(objective(support()), list(r.parameters()))
    after_got = torch.rand(3)
    torch.manual_seed(5)
    out = torch.cat([r.net(x[i : i + 48]) for i in range(0, 200, 48)])
    want = torch.autograd.grad(objective(r.head(out)), list(r.parameters()))
    after_want = torch.rand(3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(after_got, after_want)  # the backward pass left the global RNG alone
    torch.manual_seed(5)
    different = torch.autograd.grad(objective(support()), list(r.parameters()))
    torch.manual_seed(6)
    other = torch.autograd.grad(objective(support()), list(r.parameters()))
    assert not torch.allclose(different[0], other[0])  # dropout is live: the check above has power


def test_full_data_bad_input():
    x = two_views(10)[0]
    r = GaussianRecognition(mlp(), D)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        FullDataSupport(r, x, chunk_size=0)
    with pytest.raises(ValueError, match="data must have shape"):
        FullDataSupport(r, x[:1])
    with pytest.raises(TypeError, match="recognition must be a pyro_rpm Recognition"):
        FullDataSupport(nn.Linear(5, 4), x)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        FullDataSupport(r, bad)
    with pytest.raises(ValueError, match="last dimension of size 4"):
        FullDataSupport(GaussianRecognition(mlp(out=3), D), x, chunk_size=4)()
    with pytest.raises(ValueError, match="dtype"):
        FullDataSupport(GaussianRecognition(mlp(dtype=torch.float32), D), x, chunk_size=4)()


# ----------------------------------------------------------------------------------------------
# MemoryBankSupport (FIFO queue)
# ----------------------------------------------------------------------------------------------


def identity_recognition(name="id"):
    """Delta factors located at the inputs themselves: bank contents are readable."""
    return DeltaRecognition(nn.Identity(), D, eps=0.5, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_queue_is_fifo_bounded_detached_and_follows_dtype(dtype):
    s = MemoryBankSupport(identity_recognition(), size=5)
    batches = [torch.arange(6, dtype=dtype).reshape(3, D) + 10 * i for i in range(4)]
    assert s.bank is None and len(s) == 0 and s.update() == 0
    f = s(batches[0].requires_grad_())
    assert f.num_support == 3  # empty queue: the batch alone
    assert s.update() == 3 and len(s) == 3
    for i, x in enumerate(batches[1:], 1):
        f = s(x)
        queued = torch.cat(batches[:i])[-5:]
        assert f.num_support == 3 + len(queued)
        torch.testing.assert_close(f.loc, torch.cat([x, queued]))  # batch first, then oldest to newest
        assert s.update() == 3
    torch.testing.assert_close(s.bank.loc, torch.cat(batches)[-5:])
    assert len(s) == 5 and not s.bank.loc.requires_grad and s.bank.loc.dtype == dtype
    assert isinstance(s.bank, DeltaFactor) and s.bank.eps == 0.5
    # a batch longer than the queue keeps its newest rows
    s2 = MemoryBankSupport(identity_recognition("id2"), size=2)
    s2(batches[0])
    s2.update()
    torch.testing.assert_close(s2.bank.loc, batches[0][-2:])
    s.reset()
    assert s.bank is None and len(s) == 0


def test_queue_gradients_reach_the_batch_only():
    net = nn.Linear(5, D).double()
    s = MemoryBankSupport(DeltaRecognition(net, D, name="g_r"), size=8)
    x_old, x = two_views(6)[0], two_views(4, seed=1)[0]
    s(x_old)
    s.update()
    f = s(x)
    f.loc.sum().backward()
    torch.testing.assert_close(net.weight.grad, x.sum(0).expand(D, 5))  # 4 batch rows, not 10


def test_queue_loss_equals_hand_computed_infonce():
    """RPM_ELBO with queues on both views: loss = sum_b -log_softmax_m g(z_b, [a_batch; a_queue])_b + B log(B + K1)."""
    B, K = 6, 10
    torch.manual_seed(2)
    net1, net2 = nn.Linear(5, D).double(), nn.Linear(5, D).double()
    s1 = MemoryBankSupport(DeltaRecognition(net1, D, name="q_e1"), size=K)
    s2 = MemoryBankSupport(DeltaRecognition(net2, D, name="q_e2"), size=K)
    coupling = BilinearCoupling(D, learn=False).double()

    def model(x1, x2):
        f1, f2 = s1(x1), s2(x2)
        with pyro.plate("data", x1.shape[0]):
            z1 = pyro.sample("z1", MarginalPrior(f1))
            z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
            observe("x1", f1, z1, index=torch.arange(x1.shape[0]))
            observe("x2", f2, z2, index=torch.arange(x1.shape[0]))

    guide = RecognitionGuide(model)
    elbo = RPM_ELBO()
    for step in range(3):  # fill the queues (8 then 10 entries; the first batch is 4 rows)
        x1, x2 = two_views(B if step else 4, seed=step)
        elbo.loss(model, guide, x1, x2)
        s1.update()
        s2.update()
    x1, x2 = two_views(B, seed=7)
    loss = elbo.differentiable_loss(model, guide, x1, x2)
    k1 = len(s1)
    assert k1 == K
    z1, a2 = net1(x1), torch.cat([net2(x2), s2.bank.loc])  # the queue enters as constants
    g = z1 @ coupling.weight @ a2.T
    hand = -g.log_softmax(-1).diagonal().sum() + B * math.log(B + k1)
    torch.testing.assert_close(loss, hand, rtol=1e-12, atol=1e-10)
    params = list(net1.parameters()) + list(net2.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(hand, params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_queue_gaussian_likelihood_is_a_softmax_over_batch_and_bank():
    torch.manual_seed(3)
    r = GaussianRecognition(mlp(), D, name="gq_r")
    s = MemoryBankSupport(r, size=20)
    s(two_views(12, seed=4)[0])
    s.update()
    x = two_views(5, seed=5)[0]
    f = s(x)
    z = torch.randn(5, D, dtype=torch.float64)
    got = RecognitionLikelihood(f, z).log_prob(torch.arange(5))
    loc = torch.cat([f.loc[:5], s.bank.loc])
    scale = torch.cat([f.scale[:5], s.bank.scale])
    table = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (5, 17)
    torch.testing.assert_close(got, table.log_softmax(-1).diagonal())


def test_momentum_encoder_ema_is_exact():
    torch.manual_seed(4)
    r = GaussianRecognition(mlp(), D, name="m_r")
    s = MemoryBankSupport(r, size=50, momentum=0.9)
    key = s.key_recognition
    assert key is not r and all(not p.requires_grad for p in key.parameters())
    before = [p.detach().clone() for p in key.parameters()]
    for p, q in zip(before, r.parameters()):
        torch.testing.assert_close(p, q.detach())  # initialised at the recognition's parameters
    with torch.no_grad():
        for p in r.parameters():
            p.add_(torch.randn_like(p))  # stands in for an optimiser step
    x = two_views(7)[0]
    s(x)
    s.update()
    for p_k, p0, p in zip(key.parameters(), before, r.parameters()):
        torch.testing.assert_close(p_k, 0.9 * p0 + 0.1 * p.detach(), rtol=0, atol=1e-15)
    with torch.no_grad():
        want = key.head(key.net(x))
    torch.testing.assert_close(s.bank.loc, want.loc)  # entries come from the key encoder
    torch.testing.assert_close(s.bank.scale, want.scale)
    assert not torch.allclose(s.bank.loc, r(x).loc.detach())
    stored = [pyro.param(name) for name in pyro.get_param_store().keys()]
    assert stored and not any(p_k is p for p_k in key.parameters() for p in stored)  # never trained


def test_momentum_zero_copies_the_recognition():
    r = GaussianRecognition(mlp(), D, name="m0_r")
    s = MemoryBankSupport(r, size=50, momentum=0.0)
    with torch.no_grad():
        for p in r.parameters():
            p.mul_(2.0)
    x = two_views(7)[0]
    s(x)
    s.update()
    torch.testing.assert_close(s.bank.loc, r(x).loc.detach())


def test_bank_bad_input():
    r = identity_recognition()
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="size must be a positive int"):
            MemoryBankSupport(r, size)
    for momentum in (1.0, -0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="momentum must be None or a float in"):
            MemoryBankSupport(r, 4, momentum=momentum)
    with pytest.raises(TypeError, match="recognition must be"):
        MemoryBankSupport(nn.Identity(), 4)
    s = MemoryBankSupport(r, 4)
    s(torch.randn(3, D, dtype=torch.float64))
    s.update()
    with pytest.raises(ValueError, match="x: the recognition output is torch.float32"):
        s(torch.randn(3, D))
    other = MemoryBankSupport(DeltaRecognition(nn.Identity(), 3, name="id3"), 4)
    other._bank = s.bank  # a bank of another event shape
    with pytest.raises(ValueError, match="x: the recognition output is DeltaFactor with event shape \\(3,\\)"):
        other(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="event shape"):
        cat_factors([GaussianFactor(torch.zeros(2, 2), 1.0), GaussianFactor(torch.zeros(2, 3), 1.0)])
    with pytest.raises(TypeError, match="factors of one type"):
        cat_factors([GaussianFactor(torch.zeros(2, 2), 1.0), DeltaFactor(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match="settings"):
        cat_factors([DeltaFactor(torch.zeros(2, 2), 0.1), DeltaFactor(torch.zeros(2, 2), 0.2)])


# ----------------------------------------------------------------------------------------------
# IndexedBankSupport (lemniscate) and InBatchSupport
# ----------------------------------------------------------------------------------------------


def test_indexed_bank_replaces_rows_and_updates():
    n = 40
    x = two_views(n)[0]
    torch.manual_seed(5)
    r = GaussianRecognition(mlp(), D, name="ib_r")
    s = IndexedBankSupport(r, x, chunk_size=16)
    idx = torch.tensor([3, 17, 39, 0])
    f = s(idx)
    fresh = r(x)
    torch.testing.assert_close(f.loc, fresh.loc)  # a fresh bank: exactly the full-data factors
    torch.testing.assert_close(f.scale, fresh.scale)
    assert s.bank.loc.shape == (n, D) and not s.bank.loc.requires_grad
    with torch.no_grad():
        for p in r.parameters():
            p.add_(0.3)
    f = s(idx)
    new = r(x)
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    torch.testing.assert_close(f.loc[idx], new.loc[idx])  # fresh rows with gradients
    torch.testing.assert_close(f.loc[rest], fresh.loc[rest])  # stale rows
    assert f.loc.requires_grad
    assert s.update() == 4
    torch.testing.assert_close(s.bank.loc[idx], new.loc[idx].detach())
    torch.testing.assert_close(s.bank.loc[rest], fresh.loc[rest].detach())
    s.refresh()
    torch.testing.assert_close(s.bank.loc, new.loc.detach())
    with pytest.raises(ValueError, match="idx must lie in"):
        s(torch.tensor([n]))
    with pytest.raises(ValueError, match="idx must be a 1-D integer tensor"):
        s(torch.tensor([[1, 2]]))


def test_indexed_bank_elbo_equals_full_data_when_fresh():
    """Before any parameter change the indexed bank is the exact whole-data-set support."""
    x1, x2 = two_views(90)
    want, want_grads, (r1, r2, _) = full_data_loss_and_grads(x1, x2, None, naive=True, batch=16, seed=8)
    b1, b2 = IndexedBankSupport(r1, x1), IndexedBankSupport(r2, x2)

    def model():
        with pyro.plate("data", 90, subsample_size=16) as idx:
            f1, f2 = b1(idx), b2(idx)
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1))
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

    pyro.set_rng_seed(8)
    loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model))
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-9)
    # gradients differ from the exact ones only through the bank rows, which are constants here
    grads = torch.autograd.grad(loss, list(r1.net.parameters()) + list(r2.net.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(not torch.allclose(g, w) for g, w in zip(grads, want_grads))


def test_in_batch_support_is_the_recognition_call():
    r = GaussianRecognition(mlp(), D, name="inb_r")
    x = two_views(8)[0]
    f = InBatchSupport(r)(x)
    torch.testing.assert_close(f.loc, r(x).loc)
    assert f.num_support == 8


@pytest.mark.cuda
def test_bank_and_full_data_follow_the_device():
    device = torch.device("cuda")
    r = GaussianRecognition(mlp(dtype=torch.float32), D, name="cu_r").to(device)
    x = torch.randn(50, 5, device=device)
    s = MemoryBankSupport(r, 16, momentum=0.5)
    s.key_recognition.to(device)
    s(x[:8])
    s.update()
    assert s.bank.loc.device.type == "cuda"
    f = FullDataSupport(r, x, chunk_size=16)()
    assert f.loc.device.type == "cuda"
    f.loc.sum().backward()
    assert r.net[0].weight.grad.device.type == "cuda"


def test_docs_examples_run():
    """The four examples of docs/support.md run as written (with the shared set-up block), and so does the
    support-object example."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "support.md")) as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    standalone = [b for b in blocks if "FullDataSupport(r, torch.randn(1000, 3)" in b]  # the support-object block
    setup, *examples = [b for b in blocks if b not in standalone]
    assert len(standalone) == 1 and len(examples) == 4
    for block in examples:
        pyro.clear_param_store()
        namespace: dict = {}
        exec(setup + block, namespace)  # noqa: S102 - the documentation's own code
        assert math.isfinite(namespace["loss"])
    namespace = {}
    exec(standalone[0], namespace)  # noqa: S102
    assert namespace["f"].num_support == 1000 and namespace["f"].normaliser.backend == "fused"
    assert namespace["s"].calling == "full"


def test_benchmark_script_smoke(tmp_path):
    """benchmarks/full_support.py runs end to end and ends with one JSON line of its documented keys."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, os.path.join(root, "benchmarks", "full_support.py"), "--sizes", "3000", "--steps", "1"]
    cmd += [
        "--batch",
        "32",
        "--chunk",
        "512",
        "--naive-max",
        "0",
        "--breakdown",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("steps_per_s_3000", "cpu_ms_per_step_3000", "peak_mb_3000", "breakdown_normaliser_s_3000"):
        assert math.isfinite(result[key]) and result[key] >= 0, key
    assert math.isfinite(result["loss_last_3000"])
    assert os.path.exists(os.path.join(tmp_path, "full_support.png"))
