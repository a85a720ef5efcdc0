# SPDX-License-Identifier: Apache-2.0
"""Mixed precision (issue 14, item 5): ``torch.autocast`` end to end.

The rule: under autocast the user's network runs in low precision; a ``Recognition`` casts its output
back to the network's dtype (float32 here), and the head, the factors, the guide, the likelihood, the
normalisers and the ELBO terms run with autocast disabled, in float32.

* the canonical two-view model under CPU bfloat16 autocast: no dtype error, a float32 loss within
  1e-3 (relative) of the float32 loss under one seed (measured: 6e-6) and gradients within 3e-2 in
  relative norm (measured: 4e-3, bfloat16 keeps about 3 significant digits);
* a few SVI steps under autocast lower the loss;
* every normaliser backend (dense, streamed, fused, screened) under autocast gives the float64 dense
  normaliser of the same float32 factors to float32 accuracy, in float32;
* the network really ran in bfloat16 (its output dtype, seen by a hook), and the factors are float32;
* on CUDA (marked ``cuda``): float16 and bfloat16 autocast, the same checks against float32.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, RecognitionLikelihood, observe

D = 2


def _mlp(obs: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(obs, 32), nn.SiLU(), nn.Linear(32, 2 * D))


def _canonical(device: str = "cpu", n: int = 64):
    torch.manual_seed(0)
    r1 = GaussianRecognition(_mlp(), D, prior_scale=1.0, name="ac_r1").to(device)
    r2 = GaussianRecognition(_mlp(), D, prior_scale=1.0, name="ac_r2").to(device)
    z = torch.randn(n, D)
    x1 = (torch.tanh(z @ torch.randn(D, 10)) + 0.1 * torch.randn(n, 10)).to(device)
    x2 = (torch.tanh(z @ torch.randn(D, 10)) + 0.1 * torch.randn(n, 10)).to(device)
    zero = torch.zeros(D, device=device)

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model), (x1, x2), [*r1.parameters(), *r2.parameters()]


def _loss_and_grad(model, guide, args, params, device_type, dtype):
    pyro.set_rng_seed(3)
    for p in params:
        p.grad = None
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        loss = RPM_ELBO().differentiable_loss(model, guide, *args)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in params])


def _check_against_float32(device_type: str, dtype: torch.dtype) -> None:
    model, guide, args, params = _canonical(device_type)
    reference, grad_reference = _loss_and_grad(model, guide, args, params, device_type, None)
    loss, grad = _loss_and_grad(model, guide, args, params, device_type, dtype)
    assert loss.dtype == torch.float32
    assert math.isfinite(loss.item())
    assert abs(loss - reference).item() <= 1e-3 * abs(reference).item()
    assert ((grad - grad_reference).norm() / grad_reference.norm()).item() < 3e-2


def test_bfloat16_autocast_on_cpu_matches_float32():
    _check_against_float32("cpu", torch.bfloat16)


def test_the_network_runs_in_bfloat16_and_the_factors_in_float32():
    r = GaussianRecognition(_mlp(), D, prior_scale=1.0, name="ac_hook")
    seen = []
    r.net.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = r(torch.randn(8, 10))
        lik = RecognitionLikelihood(f, torch.randn(8, D))
        log_p = lik.log_prob(torch.arange(8))
    assert seen == [torch.bfloat16]
    assert f.loc.dtype == f.scale.dtype == torch.float32
    assert log_p.dtype == torch.float32


def test_svi_under_autocast_lowers_the_loss():
    model, guide, args, _ = _canonical()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    losses = []
    for _ in range(60):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(svi.step(*args))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0


@pytest.mark.parametrize("backend", ["dense", "streamed", "fused", "screened"])
def test_every_normaliser_backend_accumulates_in_float32_under_autocast(backend):
    torch.manual_seed(1)
    r = GaussianRecognition(_mlp(), D, name=f"ac_{backend}")
    x, z = torch.randn(300, 10), torch.randn(40, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = r(x)
        lse = RecognitionLikelihood(f, z, backend=backend, chunk_size=64).log_normaliser
    assert f.loc.dtype == torch.float32 and lse.dtype == torch.float32
    loc, scale = f.loc.detach().double(), f.scale.detach().double()
    table = torch.distributions.Normal(loc, scale).log_prob(z.double().unsqueeze(-2)).sum(-1)
    reference = torch.logsumexp(table, -1)
    assert torch.allclose(lse.detach().double(), reference, rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda_matches_float32(dtype):
    _check_against_float32("cuda", dtype)
