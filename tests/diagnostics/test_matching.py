# SPDX-License-Identifier: Apache-2.0
"""Posterior-predictive matching (issue 14, item 2): Predictive returns the conditioned indices at observe
sites (always "accuracy" 1.0); matching_accuracy draws from the likelihood's categorical instead."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, matching_accuracy, observe
from pyro_rpm.datasets import two_view_gaussian


def _model(tag):
    def net():
        return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))

    r1 = GaussianRecognition(net(), 2, prior_scale=1.0, name=f"m1_{tag}")
    r2 = GaussianRecognition(net(), 2, prior_scale=1.0, name=f"m2_{tag}")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model


def test_matching_accuracy_rises_with_training_and_predictive_only_echoes_the_indices():
    x1, x2, _ = two_view_gaussian(64, seed=0)
    model = _model("train")
    guide = RecognitionGuide(model)
    pyro.set_rng_seed(0)
    before = matching_accuracy(model, guide, x1, x2, num_samples=20)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    for _ in range(300):
        svi.step(x1, x2)
    pyro.set_rng_seed(0)
    after = matching_accuracy(model, guide, x1, x2, num_samples=20)
    assert set(after) == {"x1", "x2"}
    for site in ("x1", "x2"):
        assert before[site] < 0.15  # near chance 1/64 untrained
        assert after[site] > before[site] + 0.1
        assert after[site] < 1.0
    # Predictive conditions the observe sites: it returns the observed indices themselves
    samples = Predictive(model, guide=guide, num_samples=3, return_sites=["x1"])(x1, x2)
    assert torch.equal(samples["x1"], torch.arange(64).expand(3, 64))


def test_matching_accuracy_refuses_bad_arguments():
    x1, x2, _ = two_view_gaussian(8, seed=0)
    model = _model("bad")
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        matching_accuracy(model, RecognitionGuide(model), x1, x2, num_samples=0)

    def no_sites(x1, x2):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observe"):
        matching_accuracy(no_sites, pyro.infer.autoguide.AutoNormal(no_sites), x1, x2)
