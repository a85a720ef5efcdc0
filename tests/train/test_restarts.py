# SPDX-License-Identifier: Apache-2.0
"""fit_restarts (issue 14, item 13): independent fits, the lowest held-in loss kept, its parameters restored."""

import pyro
import pytest
import torch
from torch import nn

from pyro_rpm import RPM_ELBO, GaussianRecognition, MixturePrior, RecognitionGuide, fit_restarts, observe


def _build(seed):
    torch.manual_seed(seed)
    r1 = GaussianRecognition(nn.Linear(3, 4), 2, name="rs1")
    r2 = GaussianRecognition(nn.Linear(3, 4), 2, name="rs2")
    prior = MixturePrior(3, 2, loc=torch.randn(3, 2), name="rs_mix")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", prior.distribution())
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model)


def _data():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0], [0.0, -2.0, 2.0]])
    c = torch.arange(60) % 3
    x = centres[c] + 0.3 * torch.randn(60, 3, generator=g)
    return x, x + 0.1 * torch.randn(60, 3, generator=g)


def test_keeps_the_lowest_held_in_loss_and_restores_its_parameters():
    pyro.clear_param_store()
    data = _data()
    runs = fit_restarts(_build, data, restarts=3, seed=5, steps=30, lr=1e-2, progress=False)
    assert len(runs.results) == 3 and len(set(runs.held_in_losses)) == 3  # independent fits
    assert runs.best == min(range(3), key=runs.held_in_losses.__getitem__)
    tail = runs.result.losses[-3:]
    assert runs.held_in_losses[runs.best] == pytest.approx(sum(tail) / len(tail))
    # The store holds the kept restart's parameters: evaluating its model now (no training) gives a
    # loss near its last training losses, and the same tensors as its networks'.
    store = pyro.get_param_store()
    assert all(name.startswith(("rs1", "rs2", "rs_mix")) for name in store.keys())
    loss = RPM_ELBO(num_particles=50).loss(runs.model, runs.guide, *data) / 60
    assert abs(loss - runs.held_in_losses[runs.best]) < 0.3


def test_the_same_seed_gives_the_same_restarts_and_arguments_are_checked():
    data = _data()
    a = fit_restarts(_build, data, restarts=2, seed=1, steps=5, progress=False)
    b = fit_restarts(_build, data, restarts=2, seed=1, steps=5, progress=False)
    assert a.held_in_losses == b.held_in_losses
    with pytest.raises(ValueError, match="restarts"):
        fit_restarts(_build, data, restarts=0, steps=5)
    with pytest.raises(ValueError, match="checkpoint"):
        fit_restarts(_build, data, restarts=2, steps=5, checkpoint="x.pt")
    with pytest.raises(TypeError, match="build"):
        fit_restarts("not callable", data, restarts=2, steps=5)
