# SPDX-License-Identifier: Apache-2.0
"""MultiTensorOptim: one torch optimiser over all parameters, with a state that survives a restart."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.train.optim import FusedAdam, FusedSGD, MultiTensorOptim


def _build(seed: int):
    torch.manual_seed(seed)
    r1 = GaussianRecognition(nn.Linear(5, 4), 2, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(nn.Linear(5, 4), 2, prior_scale=1.0, name="r2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return (r1, r2), model


def _copy_weights(modules, weights):
    with torch.no_grad():
        for module in modules:
            for pname, param in module.named_parameters():
                param.copy_(weights[f"{module.name}$$${pname}"])


def test_fused_adam_equals_pyro_adam():
    x1, x2 = torch.randn(16, 5), torch.randn(16, 5)
    losses = []
    for optim in (pyro.optim.Adam({"lr": 0.01}), FusedAdam({"lr": 0.01})):
        pyro.clear_param_store()
        _, model = _build(0)
        svi = pyro.infer.SVI(model, RecognitionGuide(model), optim, RPM_ELBO())
        pyro.set_rng_seed(3)
        losses.append([svi.step(x1, x2) for _ in range(5)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("make_optim", [lambda: FusedAdam({"lr": 0.01}), lambda: FusedSGD({"lr": 0.01, "momentum": 0.9})])
def test_state_restored_after_a_restart_continues_exactly(make_optim):
    x1, x2 = torch.randn(16, 5), torch.randn(16, 5)
    _, model = _build(0)
    optim = make_optim()
    svi = pyro.infer.SVI(model, RecognitionGuide(model), optim, RPM_ELBO())
    for _ in range(3):
        svi.step(x1, x2)
    state = copy.deepcopy(optim.get_state())
    weights = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    pyro.set_rng_seed(5)
    uninterrupted = [svi.step(x1, x2) for _ in range(3)]

    pyro.clear_param_store()
    modules, model = _build(1)  # a different initialisation, overwritten by the saved weights
    _copy_weights(modules, weights)
    restored = make_optim()
    restored.set_state(state)
    svi = pyro.infer.SVI(model, RecognitionGuide(model), restored, RPM_ELBO())
    pyro.set_rng_seed(5)
    resumed = [svi.step(x1, x2) for _ in range(3)]
    assert resumed == uninterrupted
    assert restored._state_waiting_to_be_consumed == {}


def test_bad_arguments():
    with pytest.raises(TypeError, match="optim_args"):
        MultiTensorOptim(torch.optim.Adam, [("lr", 0.1)])
    with pytest.raises(ValueError, match="clip_norm"):
        FusedAdam({"lr": 0.1}, clip_norm=0.0)


def test_fused_adam_uses_the_fused_kernel_unless_told_otherwise():
    """torch's Adam on the CPU defaults to a per-tensor loop; FusedAdam asks for the fused kernel
    (issue 15, defect 2) and steps exactly as torch.optim.Adam(fused=True) does."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    w0 = torch.randn(4, 3)
    w = pyro.param("fused_w", w0.clone())
    w.grad = torch.ones_like(w)
    optim = FusedAdam({"lr": 0.1})
    optim([w])
    assert optim.optimizer.param_groups[0]["fused"] is True
    reference = w0.clone().requires_grad_()
    reference.grad = torch.ones_like(reference)
    torch.optim.Adam([reference], lr=0.1, fused=True).step()
    assert torch.equal(w.detach(), reference.detach())

    pyro.clear_param_store()
    v = pyro.param("foreach_w", w0.clone())
    v.grad = torch.ones_like(v)
    chosen = FusedAdam({"lr": 0.1, "foreach": True})
    chosen([v])
    assert not chosen.optimizer.param_groups[0]["fused"]
