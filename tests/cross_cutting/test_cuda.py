# SPDX-License-Identifier: Apache-2.0
"""GPU checks (marked ``cuda``; skipped by ``tests/conftest.py`` when no CUDA device is present).

* one SVI step of the canonical two-view model on CUDA: finite loss, every parameter on the GPU;
* ``RecognitionLikelihood.log_prob``, the pairwise table and the interior bound on CUDA equal the CPU values;
* data and modules on different devices raise a ``ValueError`` naming the device.
"""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    CategoricalFactor,
    DeltaFactor,
    GaussianFactor,
    GaussianRecognition,
    RecognitionGuide,
    RecognitionLikelihood,
    observe,
)
from pyro_rpm.infer.estimators import interior_bound

pytestmark = pytest.mark.cuda

D = 2


def _canonical(device: torch.device, N: int = 32, obs: int = 10):
    torch.manual_seed(0)
    r1 = GaussianRecognition(nn.Sequential(nn.Linear(obs, 16), nn.SiLU(), nn.Linear(16, 2 * D)), D, prior_scale=1.0)
    r2 = GaussianRecognition(nn.Sequential(nn.Linear(obs, 16), nn.SiLU(), nn.Linear(16, 2 * D)), D, prior_scale=1.0)
    r1, r2 = r1.to(device), r2.to(device)
    x1, x2 = torch.randn(N, obs, device=device), torch.randn(N, obs, device=device)
    loc, scale = torch.zeros(D, device=device), torch.ones(D, device=device)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model), (x1, x2)


@pytest.mark.parametrize("elbo_kwargs", [{}, {"estimator": "interior", "reference": "prior"}])
def test_svi_step_on_cuda(elbo_kwargs):
    device = torch.device("cuda")
    model, guide, args = _canonical(device)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), RPM_ELBO(**elbo_kwargs))
    loss = svi.step(*args)
    assert math.isfinite(loss)
    store = pyro.get_param_store()
    assert len(list(store.keys())) > 0
    for name, value in store.items():
        assert value.device.type == "cuda", f"param {name} on {value.device}"
    before = {name: value.detach().clone() for name, value in store.items()}
    assert math.isfinite(svi.step(*args))
    for name, value in before.items():
        assert not torch.equal(value, store[name].detach()), f"param {name} did not move"


def test_cuda_loss_equals_cpu_loss_with_the_same_parameters():
    """One view, a deterministic encoder (``DeltaRecognition``: q = f_n draws e(x_n) exactly) and a
    N(0, I) prior, float64: the loss -sum_n [log p(e(x_n)) - log sum_m f_m(e(x_n))] has no sampling
    noise, so the same network and data give the same loss and gradients on CUDA and on the CPU."""
    from pyro_rpm import DeltaRecognition

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, D)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        pyro.clear_param_store()
        enc = DeltaRecognition(copy.deepcopy(net).to(device), D, eps=0.3, name="delta")
        loc = torch.zeros(D, dtype=torch.float64, device=device)

        def model(x, enc=enc, loc=loc):
            f = enc(x)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
                observe("x", f, z)

        loss = RPM_ELBO().differentiable_loss(model, RecognitionGuide(model), x.to(device))
        loss.backward()
        results.append((loss.item(), [p.grad.cpu() for p in enc.parameters()]))
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = results
    assert math.isfinite(loss_cpu)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-9, abs=1e-9)
    for a, b in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(a, b)


def _factors(kind: str, device: str, M: int = 6, B: int = 4):
    g = torch.Generator().manual_seed(0)
    if kind == "gaussian":
        f = GaussianFactor(torch.randn(M, D, generator=g), torch.rand(M, D, generator=g) + 0.5)
        z = torch.randn(B, D, generator=g)
    elif kind == "delta":
        f = DeltaFactor(torch.randn(M, D, generator=g), 0.7)
        z = torch.randn(B, D, generator=g)
    else:
        f = CategoricalFactor(torch.randn(M, 3, generator=g).log_softmax(-1))
        z = torch.randint(3, (B,), generator=g)
    if device != "cpu":
        if kind == "gaussian":
            f = GaussianFactor(f.loc.to(device), f.scale.to(device))
        elif kind == "delta":
            f = DeltaFactor(f.loc.to(device), 0.7)
        else:
            f = CategoricalFactor(f.logits.to(device))
        z = z.to(device)
    return f, z


@pytest.mark.parametrize("kind", ["gaussian", "delta", "categorical"])
def test_likelihood_log_prob_on_cuda_equals_cpu(kind):
    value = torch.tensor([0, 3, 5, 1])
    f_cpu, z_cpu = _factors(kind, "cpu")
    f_gpu, z_gpu = _factors(kind, "cuda")
    lik_cpu, lik_gpu = RecognitionLikelihood(f_cpu, z_cpu), RecognitionLikelihood(f_gpu, z_gpu)
    out = lik_gpu.log_prob(value.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), lik_cpu.log_prob(value), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lik_gpu.logits.cpu(), lik_cpu.logits, rtol=1e-5, atol=1e-5)
    samples = lik_gpu.sample((10,))
    assert samples.device.type == "cuda" and samples.shape == (10, 4)


def test_interior_bound_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(1)
    q = GaussianFactor(torch.randn(4, D, generator=g, dtype=torch.float64), torch.full((4, D), 0.6, dtype=torch.float64))
    f = GaussianFactor(torch.randn(6, D, generator=g, dtype=torch.float64), torch.full((6, D), 0.5, dtype=torch.float64))
    index = torch.tensor([0, 2, 4, 5])
    ref = (torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64))
    cpu = interior_bound(q, f, index, ref)
    gpu = interior_bound(
        GaussianFactor(q.loc.cuda(), q.scale.cuda()),
        GaussianFactor(f.loc.cuda(), f.scale.cuda()),
        index.cuda(),
        (ref[0].cuda(), ref[1].cuda()),
    )
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_mismatched_devices_raise_value_errors():
    rec = GaussianRecognition(nn.Linear(3, 2 * D), D, name="cpu_module")
    with pytest.raises(ValueError, match="cpu_module.*cuda|cuda.*cpu_module"):
        rec(torch.randn(4, 3, device="cuda"))
    f_cpu, _ = _factors("gaussian", "cpu")
    with pytest.raises(ValueError, match="device|cuda"):
        RecognitionLikelihood(f_cpu, torch.zeros(6, D, device="cuda"))
    with pytest.raises(ValueError, match="device|cuda"):
        observe("x", f_cpu, torch.zeros(6, D, device="cuda"))


def test_run_demo_on_cuda(tmp_path):
    from pyro_rpm.cli.demo import run_demo

    result = run_demo(steps=20, n=128, batch_size=32, device="cuda", out=None, progress=False)
    assert result["device"].startswith("cuda")
    assert math.isfinite(result["final_loss"]) and 0.0 <= result["r2"] <= 1.0
