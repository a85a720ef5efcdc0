# SPDX-License-Identifier: Apache-2.0
"""``pyro_rpm.lightning.RPMModule``: the RPM under PyTorch Lightning's Trainer, on the CPU.

A tiny Trainer run lowers the loss and logs ``loss`` and ``loss_constant_free`` (whose difference is
the support constant 2 log B of two views, computed here by hand); the module and Pyro's parameter
store share their tensors (a free ``pyro.param`` included, in its unconstrained space); a Lightning
checkpoint restores the recognition weights through ``load_from_checkpoint`` (``weights_only``) and
through ``trainer.fit(ckpt_path=)``; bad arguments are refused with the store unchanged; importing
``pyro_rpm.lightning`` does not import Lightning, and without Lightning the class access says which
extra to install.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import constraints, transform_to
from torch.utils.data import DataLoader, TensorDataset

from pyro_rpm import GaussianRecognition, RecognitionGuide, observe

lightning = pytest.importorskip("lightning")

B, IN, D = 16, 6, 2


@pytest.fixture(autouse=True)
def _lightning_quiet():
    """Lightning's benign warnings on a tiny CPU run (the suite turns warnings into errors): too few
    dataloader workers / no validation loader / small logging interval (PossibleUserWarning), and its
    use of a pytree API that torch 2.13 deprecates."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        pyro.clear_param_store()
        yield
        pyro.clear_param_store()


def _data(n: int = 96):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, D, generator=g)
    mix = torch.randn(D, IN, generator=g)
    x1 = torch.tanh(z @ mix) + 0.05 * torch.randn(n, IN, generator=g)
    x2 = torch.tanh(z @ mix.flip(0)) + 0.05 * torch.randn(n, IN, generator=g)
    return x1, x2


def _build(seed: int, learn_prior: bool = True):
    torch.manual_seed(seed)
    r1 = GaussianRecognition(nn.Sequential(nn.Linear(IN, 16), nn.Tanh(), nn.Linear(16, 2 * D)), D, name="r1")
    r2 = GaussianRecognition(nn.Sequential(nn.Linear(IN, 16), nn.Tanh(), nn.Linear(16, 2 * D)), D, name="r2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        scale = x1.new_ones(D)
        if learn_prior:
            scale = pyro.param("prior_scale", lambda: x1.new_ones(D), constraint=constraints.positive)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(x1.new_zeros(D), scale).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model, combine="product"), r1, r2


class TwoViewModel:
    """The two-view model as a picklable object (a spawned DDP process unpickles model and guide)."""

    def __init__(self, r1, r2):
        self.r1, self.r2 = r1, r2

    def __call__(self, x1, x2):
        f1, f2 = self.r1(x1), self.r2(x2)
        scale = pyro.param("prior_scale", lambda: x1.new_ones(D), constraint=constraints.positive)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(x1.new_zeros(D), scale).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)


def _trainer(tmp_path, steps: int, **kwargs):
    options = dict(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return lightning.Trainer(**options)


def _module(seed: int = 0, **kwargs):
    from pyro_rpm.lightning import RPMModule

    x1, x2 = _data()
    model, guide, r1, r2 = _build(seed)
    return RPMModule(model, guide, (x1[:B], x2[:B]), **kwargs), (model, guide, r1, r2), (x1, x2)


def _loader(x1, x2, shuffle=True):
    return DataLoader(TensorDataset(x1, x2), batch_size=B, shuffle=shuffle, drop_last=True)


def test_the_module_and_the_param_store_share_their_tensors():
    module, (_, _, r1, r2), _ = _module()
    store = pyro.get_param_store()
    assert set(module.recognitions) == {"r1", "r2"} and module.recognitions["r1"] is r1
    for name, param in r1.named_parameters():
        assert dict(store.named_parameters())[f"r1$$${name}"] is param  # the same object, not a copy
    unconstrained = module.pyro_params["prior_scale"]
    assert dict(store.named_parameters())["prior_scale"] is unconstrained
    torch.testing.assert_close(transform_to(constraints.positive)(unconstrained), torch.ones(D))  # log-space
    keys = set(module.state_dict())
    assert {"recognitions.r1.net.0.weight", "recognitions.r2.net.2.bias", "pyro_params.prior_scale"} <= keys
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == sum(p.numel() for p in (*r1.parameters(), *r2.parameters())) + D
    with torch.no_grad():
        r1.net[0].weight.add_(1.0)  # a change through the module is seen by the store
    assert torch.equal(pyro.param("r1$$$net.0.weight"), r1.net[0].weight)


def test_a_tiny_trainer_run_lowers_the_loss_and_logs_both_objectives(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(1)
    module, (_, _, r1, _), (x1, x2) = _module(lr=1e-2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    scale_param = module.pyro_params["prior_scale"]
    trainer = _trainer(tmp_path, 60, logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=1)
    pyro.set_rng_seed(0)
    trainer.fit(module, _loader(x1, x2))
    with open(trainer.logger.log_dir + "/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = [r for r in rows if r.get("loss_step")]
    losses = [float(r["loss_step"]) for r in steps]
    free = [float(r["loss_constant_free_step"]) for r in steps]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5, losses
    for loss, value in zip(losses, free):  # two views, in-batch support of B points: 2 log B per datum
        assert loss - value == pytest.approx(2 * math.log(B), abs=1e-4)
    assert any(r.get("loss_epoch") for r in rows)
    # trained: every parameter moved, and the store still holds the trained tensors themselves
    after = module.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if "prior" not in k or k.startswith("pyro"))
    assert dict(pyro.get_param_store().named_parameters())["prior_scale"] is scale_param
    assert torch.equal(pyro.param("r1$$$net.0.weight"), r1.net[0].weight)


def test_validation_logs_the_validation_loss(tmp_path):
    module, _, (x1, x2) = _module()
    trainer = _trainer(tmp_path, 4, limit_val_batches=2, val_check_interval=2)
    trainer.fit(module, _loader(x1, x2), _loader(x1, x2, shuffle=False))
    metrics = trainer.callback_metrics
    assert {"val_loss", "val_loss_constant_free"} <= set(metrics)
    assert float(metrics["val_loss"] - metrics["val_loss_constant_free"]) == pytest.approx(2 * math.log(B), abs=1e-4)


def test_a_checkpoint_restores_the_recognition_weights(tmp_path):
    from pyro_rpm.lightning import RPMModule

    module, (_, _, r1, r2), (x1, x2) = _module(lr=1e-2)
    trainer = _trainer(tmp_path, 10)
    trainer.fit(module, _loader(x1, x2))
    path = tmp_path / "rpm.ckpt"
    trainer.save_checkpoint(path)
    trained = {k: v.clone() for k, v in module.state_dict().items()}
    scale = pyro.param("prior_scale").detach().clone()

    # a new process would start with an empty store and freshly initialised networks
    pyro.clear_param_store()
    model, guide, f1, f2 = _build(seed=1)
    assert not torch.equal(f1.net[0].weight, trained["recognitions.r1.net.0.weight"])
    restored = RPMModule.load_from_checkpoint(
        path, model=model, guide=guide, example_batch=(x1[:B], x2[:B]), weights_only=True
    )
    for key, value in restored.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert torch.equal(f1.net[0].weight, trained["recognitions.r1.net.0.weight"])  # in the user's module
    assert torch.equal(pyro.param("prior_scale"), scale)  # and in Pyro's store
    assert pyro.param("r2$$$net.2.bias") is f2.net[2].bias

    # resuming a fit starts from the checkpoint's weights and step
    pyro.clear_param_store()
    model, guide, g1, _ = _build(seed=2)
    resumed = RPMModule(model, guide, (x1[:B], x2[:B]), lr=1e-2)
    seen = {}

    class Capture(lightning.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["weight"] = g1.net[0].weight.detach().clone()

    trainer = _trainer(tmp_path, 13, callbacks=[Capture()])
    trainer.fit(resumed, _loader(x1, x2), ckpt_path=path)
    assert torch.equal(seen["weight"], trained["recognitions.r1.net.0.weight"])
    assert trainer.global_step == 13


class ReleaseGlooGroup(lightning.Callback):
    """Destroy the gloo process group in each spawned process once fit is over.

    Lightning destroys it at exit only for NCCL; a gloo group left to the interpreter's shutdown
    can abort the child ("terminate called without an active exception", SIGABRT) after training
    has finished, which failed a CI run. Nothing communicates after the trainer's teardown."""

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_spawned_ddp_processes_train_every_parameter(tmp_path):
    """``strategy="ddp_spawn"`` on 2 CPU processes (gloo): each child starts with an empty parameter
    store; the module binds its tensors before the first step, so the free ``pyro.param`` (not only the
    networks) is trained there, and the weights come back to the parent's modules and store."""
    from pyro_rpm.lightning import RPMModule

    x1, x2 = _data(64)
    torch.manual_seed(0)
    r1 = GaussianRecognition(nn.Linear(IN, 2 * D), D, name="r1")
    r2 = GaussianRecognition(nn.Linear(IN, 2 * D), D, name="r2")
    model = TwoViewModel(r1, r2)
    module = RPMModule(model, RecognitionGuide(model, combine="product"), (x1[:B], x2[:B]), lr=1e-2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer(tmp_path, 4, devices=2, strategy="ddp_spawn", callbacks=[ReleaseGlooGroup()])
    saved = os.environ.get("GLOO_SOCKET_IFNAME")
    if saved is None and sys.platform.startswith("linux") and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback, whatever the host name resolves to
    try:  # the spawned processes copy the environment at start
        trainer.fit(module, _loader(x1, x2, shuffle=False))
    finally:
        if saved is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
    after = module.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "a parameter was not trained"
    assert not torch.equal(before["pyro_params.prior_scale"], after["pyro_params.prior_scale"])
    assert torch.equal(pyro.param("r1$$$net.weight"), r1.net.weight)
    assert torch.isfinite(trainer.callback_metrics["loss"])


def test_bad_arguments_are_refused_and_leave_the_store_unchanged():
    from pyro_rpm.lightning import RPMModule

    x1, x2 = _data()
    model, guide, r1, _ = _build(0)
    batch = (x1[:B], x2[:B])
    cases = [
        (TypeError, "model must be callable", dict(model=3)),
        (TypeError, "guide must be callable", dict(guide="guide")),
        (TypeError, r"elbo must be a pyro.infer.ELBO", dict(elbo=object())),
        (ValueError, "lr must be a finite positive float, got -1", dict(lr=-1)),
        (ValueError, "lr must be a finite positive float, got nan", dict(lr=float("nan"))),
        (TypeError, "optimizer must be a callable", dict(optimizer="adam")),
        (TypeError, "optimizer_kwargs must be a dict", dict(optimizer_kwargs=[1])),
        (ValueError, "num_data must be a positive int or None, got 0", dict(num_data=0)),
        (TypeError, "example_batch must be a tensor, a tuple/list", dict(example_batch=3.0)),
        (ValueError, "inputs to recognition 'r1'", dict(example_batch=(x1[:B] * float("nan"), x2[:B]))),
    ]
    for error, message, override in cases:
        kwargs = dict(model=model, guide=guide, example_batch=batch) | override
        with pytest.raises(error, match=message):
            RPMModule(**kwargs)
        assert len(pyro.get_param_store()) == 0, override
    with pytest.raises(ValueError, match="touch no parameter"):
        RPMModule(lambda x: None, lambda x: None, torch.ones(2))
    # a stale store entry under a recognition parameter's name (pyro.module would keep it)
    pyro.param("r1$$$net.0.weight", torch.zeros(16, IN))
    with pytest.raises(ValueError, match="left over from an earlier model"):
        RPMModule(model, guide, batch)
    assert list(pyro.get_param_store().keys()) == ["r1$$$net.0.weight"]
    assert not torch.equal(r1.net[0].weight, torch.zeros(16, IN))


def test_importing_the_package_does_not_import_lightning():
    code = (
        "import sys, pyro_rpm, pyro_rpm.lightning, pyro_rpm.lightning.module, pyro_rpm.lightning.objective\n"
        "assert 'lightning' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lightning'))\n"
        "assert 'RPMModule' in dir(pyro_rpm.lightning)\n"
    )
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_lightning_the_class_says_which_extra_to_install(monkeypatch):
    import pyro_rpm.lightning
    import pyro_rpm.lightning.module as module

    monkeypatch.setattr(module, "_CLASS", [])  # not built yet in this "interpreter"
    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # `import` of a None entry raises ImportError
    with pytest.raises(ImportError, match=r"pip install pyro-rpm\[lightning\]"):
        pyro_rpm.lightning.RPMModule  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'Other'"):
        pyro_rpm.lightning.Other  # noqa: B018
