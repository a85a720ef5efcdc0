# SPDX-License-Identifier: Apache-2.0
"""The collapse diagnostic (issue 14, item 13): factors that stopped depending on the data are reported
once, by fit() and by CollapseMonitor for SVI loops, without changing the training trajectory."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    CollapseMonitor,
    CollapseWarning,
    GaussianRecognition,
    RecognitionGuide,
    factor_spread,
    fit,
    observe,
)


def _two_views(name, *, collapsed):
    torch.manual_seed(0)
    nets = [nn.Linear(3, 4), nn.Linear(3, 4)]
    if collapsed:  # every point gets the same factor: the fixed point training can fall into
        for net in nets:
            nn.init.zeros_(net.weight)
    r1 = GaussianRecognition(nets[0], 2, name=f"{name}_1")
    r2 = GaussianRecognition(nets[1], 2, name=f"{name}_2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    x = torch.randn(32, 3)
    return model, RecognitionGuide(model), (x, x + 0.1 * torch.randn(32, 3))


def test_spread_is_zero_for_identical_factors_and_positive_otherwise():
    model, guide, data = _two_views("spread_c", collapsed=True)
    assert factor_spread(model, guide, *data) == {"x1": 0.0, "x2": 0.0}
    # The collapsed likelihood is exactly uniform: the loss per datum is 2 log M plus a KL >= 0.
    loss = RPM_ELBO().loss(model, guide, *data) / 32
    assert loss >= 2 * math.log(32) - 1e-5
    model, guide, data = _two_views("spread_h", collapsed=False)
    spread = factor_spread(model, guide, *data)
    assert min(spread.values()) > 0.05


def test_fit_warns_once_on_a_collapsed_model_and_not_on_a_healthy_one():
    model, guide, data = _two_views("fit_c", collapsed=True)
    with pytest.warns(CollapseWarning, match=r"'x1'.*learning rate") as record:
        fit(model, guide, data, steps=6, lr=1e-12, collapse_check=2, progress=False, seed=0)
    assert len([w for w in record if issubclass(w.category, CollapseWarning)]) == 1
    model, guide, data = _two_views("fit_h", collapsed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        fit(model, guide, data, steps=6, lr=1e-3, collapse_check=2, progress=False, seed=0)


def test_the_check_leaves_the_training_trajectory_unchanged():
    runs = []
    for check in (None, 1):
        pyro.clear_param_store()
        model, guide, data = _two_views("traj", collapsed=False)
        runs.append(fit(model, guide, data, steps=5, batch_size=16, collapse_check=check, progress=False, seed=3).losses)
    assert runs[0] == runs[1]


def test_monitor_for_svi_loops_checks_when_due_and_refuses_bad_arguments():
    model, guide, data = _two_views("svi_c", collapsed=True)
    monitor = CollapseMonitor(model, guide, every=10)
    assert monitor(5, *data) == []  # before the warm-up
    with pytest.warns(CollapseWarning):
        assert monitor(10, *data) == ["x1", "x2"]
    assert monitor(20, *data) == ["x1", "x2"]  # warned once only (a second warning would raise here)
    with pytest.raises(ValueError, match="every"):
        CollapseMonitor(model, guide, every=0)
    with pytest.raises(ValueError, match="tol"):
        CollapseMonitor(model, guide, tol=-1.0)
    with pytest.raises(ValueError, match="collapse_check"):
        fit(model, guide, data, steps=2, collapse_check=0, progress=False)
