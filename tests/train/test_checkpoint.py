# SPDX-License-Identifier: Apache-2.0
"""Tests of pyro_rpm.train.checkpoint: weights_only files, constraints, optimiser and RNG state, exact
continuation, and refusal of missing, corrupted or foreign checkpoints without side effects."""

import functools
import os
import pickle
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import constraints

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.train.checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from pyro_rpm.train.optim import FusedAdam

CONSTRAINTS = {
    "real": constraints.real,
    "positive": constraints.positive,
    "unit_interval": constraints.unit_interval,
    "simplex": constraints.simplex,
    "lower_cholesky": constraints.lower_cholesky,
    "interval": constraints.interval(-2.0, 3.0),
    "greater_than": constraints.greater_than(1.5),
    "vector": constraints.independent(constraints.real, 1),
}


def init_value(name):
    torch.manual_seed(len(name))
    if name == "simplex":
        return torch.softmax(torch.randn(4), -1)
    if name == "lower_cholesky":
        return torch.eye(3) + torch.randn(3, 3).tril(-1)
    c = CONSTRAINTS[name]
    return constraints_transform(c)(torch.randn(2, 3))


def constraints_transform(c):
    return torch.distributions.transform_to(c)


def snapshot():
    return {n: (p, p.detach().clone()) for n, p in pyro.get_param_store().named_parameters()}


def assert_unchanged(before):
    after = dict(pyro.get_param_store().named_parameters())
    assert list(after) == list(before)
    for name, (tensor, value) in before.items():
        assert after[name] is tensor and torch.equal(after[name].detach(), value), name


def two_view(hidden=8, seed=0):
    torch.manual_seed(seed)
    r1, r2 = (
        GaussianRecognition(
            nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 4)), 2, prior_scale=1.0, name=name
        )
        for name in ("r1", "r2")
    )

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(x1.new_zeros(2), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model)


@pytest.fixture
def xs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 6, generator=g), torch.randn(32, 6, generator=g)


# ----------------------------------------------------------------------------------- contents
def test_round_trip_of_constrained_parameters(tmp_path):
    for name, c in CONSTRAINTS.items():
        pyro.param(name, init_value(name), constraint=c)
    store = pyro.get_param_store()
    saved = {n: p.detach().clone() for n, p in store.named_parameters()}
    path = save_checkpoint(tmp_path / "c.pt", step=3)
    raw = torch.load(path, weights_only=True)  # loads without unpickling arbitrary objects
    assert raw["format"] == "pyro_rpm.train.checkpoint" and raw["fingerprint"]["lower_cholesky"] == [3, 3]

    with torch.no_grad():  # in place: the loaded values land in the same tensors
        for _, p in store.named_parameters():
            p.add_(1.0)
    tensors = dict(store.named_parameters())
    assert load_checkpoint(path).step == 3
    for n, p in store.named_parameters():
        assert p is tensors[n] and torch.equal(p.detach(), saved[n])

    pyro.clear_param_store()  # into an empty store: created with their constraints
    load_checkpoint(path)
    state = pyro.get_param_store().get_state()
    for name, c in CONSTRAINTS.items():
        assert torch.equal(state["params"][name].detach(), saved[name])
        assert type(state["constraints"][name]) is type(c)
        assert state["params"][name].requires_grad
        torch.testing.assert_close(pyro.param(name).detach(), init_value(name))
    assert state["constraints"]["interval"].upper_bound == 3.0
    assert state["constraints"]["greater_than"].lower_bound == 1.5


def test_extra_and_rng_states_round_trip(tmp_path):
    pyro.param("w", torch.zeros(2))
    extra = {"note": "x", "values": [1, 2.5, (3, "a")], "tensor": torch.arange(3), "nested": {"k": None}}
    pyro.set_rng_seed(11)
    path = save_checkpoint(tmp_path / "r.pt", step=0, extra=extra)
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    pyro.set_rng_seed(99)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Checkpoint) and loaded.extra["values"] == [1, 2.5, (3, "a")]
    assert torch.equal(loaded.extra["tensor"], torch.arange(3)) and loaded.extra["nested"] == {"k": None}
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.array_equal(np.random.rand(2), expected[2])
    pyro.set_rng_seed(99)
    before = torch.get_rng_state()
    load_checkpoint(path, restore_rng=False)
    assert torch.equal(torch.get_rng_state(), before)


OPTIMS = {
    "pyro-adam": lambda: pyro.optim.Adam({"lr": 0.02}),
    "fused-adam": lambda: FusedAdam({"lr": 0.02}),
    "pyro-scheduler": lambda: pyro.optim.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.02}, "step_size": 2, "gamma": 0.5}
    ),
}


@pytest.mark.parametrize("kind", sorted(OPTIMS))
def test_svi_continues_exactly_after_loading(kind, xs, tmp_path):
    """k steps, save, m more steps == k steps, save, (new networks, store, optimiser) load, m steps."""
    x1, x2 = xs
    elbo = RPM_ELBO()

    def run(optim, steps):
        svi = pyro.infer.SVI(model, guide, optim, elbo)
        out = []
        for _ in range(steps):
            out.append(svi.step(x1, x2))
            if kind == "pyro-scheduler":
                optim.step()
        return out

    pyro.set_rng_seed(0)
    model, guide = two_view()
    optim = OPTIMS[kind]()
    run(optim, 4)
    save_checkpoint(tmp_path / "s.pt", step=4, optim=optim)
    expected = run(optim, 4)
    final = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}

    pyro.clear_param_store()
    model, guide = two_view(seed=5)
    pyro.infer.SVI(model, guide, pyro.optim.SGD({"lr": 0.0}), elbo).evaluate_loss(x1, x2)  # register the networks
    optim = OPTIMS[kind]()
    load_checkpoint(tmp_path / "s.pt", optim=optim)
    assert run(optim, 4) == expected
    for n, p in pyro.get_param_store().named_parameters():
        assert torch.equal(p.detach(), final[n]), n


def test_torch_optimizer_and_scheduler_continue_exactly(xs, tmp_path):
    x1, x2 = xs
    elbo = RPM_ELBO()

    def make():
        params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
        optimizer = torch.optim.Adam(params, lr=0.05)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    def run(optimizer, scheduler, steps):
        out = []
        for _ in range(steps):
            loss = elbo.differentiable_loss(model, guide, x1, x2)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            out.append(loss.item())
        return out

    pyro.set_rng_seed(0)
    model, guide = two_view()
    elbo.loss(model, guide, x1, x2)
    optimizer, scheduler = make()
    run(optimizer, scheduler, 3)
    save_checkpoint(tmp_path / "t.pt", step=3, optim=optimizer, scheduler=scheduler)
    expected = run(optimizer, scheduler, 3)

    pyro.clear_param_store()
    model, guide = two_view(seed=3)
    elbo.loss(model, guide, x1, x2)
    optimizer, scheduler = make()
    load_checkpoint(tmp_path / "t.pt", optim=optimizer, scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.7**3)
    assert run(optimizer, scheduler, 3) == expected


def test_map_location_and_atomic_replacement(tmp_path):
    pyro.param("w", torch.ones(2))
    path = save_checkpoint(tmp_path / "deep" / "folder" / "a.pt", step=1)
    assert read_checkpoint(path, map_location="cpu").payload["params"]["w"].device.type == "cpu"
    with pytest.raises(ValueError, match="weights_only=True"):
        save_checkpoint(path, step=2, extra={"bad": functools.partial(print)})
    assert read_checkpoint(path).step == 1  # the earlier file survives a failed save
    assert os.listdir(os.path.dirname(path)) == ["a.pt"]  # no temporary file left behind


@pytest.mark.cuda
def test_checkpoint_from_cuda_loads_on_cpu(tmp_path):
    pyro.param("w", torch.arange(3.0, device="cuda"))
    path = save_checkpoint(tmp_path / "g.pt", step=1)
    pyro.clear_param_store()
    load_checkpoint(path, map_location="cpu")
    assert pyro.param("w").device.type == "cpu" and pyro.param("w").tolist() == [0.0, 1.0, 2.0]


# ----------------------------------------------------------------------------------- bad input
def test_missing_corrupted_and_foreign_files_raise_without_side_effects(tmp_path):
    pyro.param("w", torch.ones(2))
    pyro.param("s", torch.ones(3), constraint=constraints.positive)
    good = save_checkpoint(tmp_path / "good.pt", step=1)
    before, rng = snapshot(), torch.get_rng_state()

    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(TypeError, match="path"):
        load_checkpoint(3)
    (tmp_path / "noise.pt").write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="is not a pyro_rpm checkpoint"):
        load_checkpoint(tmp_path / "noise.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a pyro_rpm checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="is not a pyro_rpm checkpoint"):
        load_checkpoint(tmp_path / "state_dict.pt")
    payload = torch.load(good, weights_only=True)
    torch.save(dict(payload, version=99), tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save(dict(payload, params={**payload["params"], "w": torch.tensor([float("nan"), 0.0])}), tmp_path / "n.pt")
    with pytest.raises(ValueError, match="NaN"):
        load_checkpoint(tmp_path / "n.pt")
    assert_unchanged(before)
    assert torch.equal(torch.get_rng_state(), rng)


class Exploit:
    ran = False

    def __reduce__(self):
        return (Exploit._trigger, ())

    @staticmethod
    def _trigger():
        Exploit.ran = True
        return "pwned"


def test_unsafe_pickles_are_refused_unexecuted(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_rpm.train.checkpoint", "payload": Exploit()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    Exploit.ran = False
    with pytest.raises(ValueError, match="is not a pyro_rpm checkpoint.*weights_only"):
        load_checkpoint(path)
    assert Exploit.ran is False


def test_checkpoint_of_another_model_is_refused(xs, tmp_path):
    x1, x2 = xs
    model, guide = two_view(hidden=8)
    RPM_ELBO().loss(model, guide, x1, x2)
    path = save_checkpoint(tmp_path / "small.pt", step=1)
    pyro.clear_param_store()
    model, guide = two_view(hidden=16)
    RPM_ELBO().loss(model, guide, x1, x2)
    pyro.param("extra", torch.zeros(1))
    before = snapshot()
    with pytest.raises(ValueError, match=r"another model.*not in the checkpoint|another model.*missing") as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "['extra']" in message and "r1$$$net.0.weight' [8, 6] in the checkpoint vs [16, 6]" in message
    with pytest.raises(ValueError, match="shape mismatch"):
        load_checkpoint(path, strict=False)
    assert_unchanged(before)


def test_incompatible_optimizer_state_is_refused(xs, tmp_path):
    x1, x2 = xs
    model, guide = two_view()
    optim = pyro.optim.Adam({"lr": 0.01})
    pyro.infer.SVI(model, guide, optim, RPM_ELBO()).step(x1, x2)
    path = save_checkpoint(tmp_path / "o.pt", step=1, optim=optim)
    before = snapshot()
    torch_optim = torch.optim.Adam([p for _, p in pyro.get_param_store().named_parameters()])
    with pytest.raises(ValueError, match="'pyro' optimiser state"):
        load_checkpoint(path, optim=torch_optim)
    with pytest.raises(ValueError, match="scheduler"):
        load_checkpoint(path, optim=optim, scheduler=torch.optim.lr_scheduler.StepLR(torch_optim, 1))
    assert_unchanged(before)


def test_save_checks_its_arguments(tmp_path):
    pyro.param("w", torch.ones(1))
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "x.pt", step=-1)
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(tmp_path / "x.pt", step=0, extra=[1])
    with pytest.raises(ValueError, match="names"):
        save_checkpoint(tmp_path / "x.pt", step=0, names=["missing"])
    with pytest.raises(TypeError, match="optim"):
        save_checkpoint(tmp_path / "x.pt", step=0, optim="adam")
    assert not (tmp_path / "x.pt").exists()
