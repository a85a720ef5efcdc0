# SPDX-License-Identifier: Apache-2.0
"""Pyro's own parameter-store round trip restores trained recognition modules (issue 14, item 3):
``pyro.get_param_store().save(path)`` then, in a fresh set-up, ``load(path)`` and the next model call
computes with the trained weights."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.datasets import two_view_gaussian


def _build():
    torch.manual_seed(1)
    r1 = GaussianRecognition(nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4)), 2, prior_scale=1.0, name="ps_r1")
    r2 = GaussianRecognition(nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4)), 2, prior_scale=1.0, name="ps_r2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return r1, model


def test_param_store_save_and_load_restore_the_recognition_modules(tmp_path):
    x1, x2, _ = two_view_gaussian(64, latent_dim=2, obs_dim=5, seed=0)
    r1, model = _build()
    svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    for _ in range(20):
        svi.step(x1, x2)
    with torch.no_grad():
        trained = r1(x1).loc.clone()
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)

    pyro.clear_param_store()
    fresh, model = _build()  # new, untrained modules of the same names
    with torch.no_grad():
        untrained = fresh(x1).loc.clone()
    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    with torch.no_grad():
        restored = fresh(x1).loc
    assert not torch.allclose(untrained, trained)
    torch.testing.assert_close(restored, trained)
    # and training goes on from the restored weights: the module computes with the store's tensors
    svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    svi.step(x1, x2)
    name = "ps_r1$$$net.0.weight"
    assert torch.equal(fresh.net[0].weight.detach(), pyro.get_param_store()[name].detach())
