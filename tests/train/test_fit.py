# SPDX-License-Identifier: Apache-2.0
"""Tests of pyro_rpm.fit: recovery on the two-view data, exact resume, both optimiser routes,
validation, early stopping, schedulers, callbacks, data forms and bad input."""

import functools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.train.data import epoch_permutation
from pyro_rpm.train.fit import fit
from pyro_rpm.train.results import EarlyStopping, FitResult, StepInfo


def build(hidden=16, seed=0, full=False, names=("r1", "r2")):
    """The canonical two-view RPM (in-batch support, or whole-data-set support via ``subsample``)."""
    torch.manual_seed(seed)
    r1, r2 = (
        GaussianRecognition(
            nn.Sequential(nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, 4)), 2, prior_scale=1.0, name=name
        )
        for name in names
    )

    if full:

        def model(x1, x2, subsample=None):
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", x1.shape[0], subsample=subsample) as idx:
                z = pyro.sample("z", dist.Normal(x1.new_zeros(2), 1.0).to_event(1))
                observe("x1", f1, z, index=idx)
                observe("x2", f2, z, index=idx)

    else:

        def model(x1, x2):
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", x1.shape[0]):
                z = pyro.sample("z", dist.Normal(x1.new_zeros(2), 1.0).to_event(1))
                observe("x1", f1, z)
                observe("x2", f2, z)

    return model, RecognitionGuide(model), (r1, r2)


def store_snapshot():
    """Names, tensor identities and values of the parameter store."""
    return {n: (p, p.detach().clone()) for n, p in pyro.get_param_store().named_parameters()}


def assert_store_unchanged(before):
    after = dict(pyro.get_param_store().named_parameters())
    assert list(after) == list(before)
    for name, (tensor, value) in before.items():
        assert after[name] is tensor and torch.equal(after[name].detach(), value)


@pytest.fixture(scope="module")
def data():
    x1, x2, z = two_view_gaussian(256, seed=1)
    return x1, x2, z


# ----------------------------------------------------------------------------------- proofs
def test_fit_recovers_the_two_view_latent():
    """The core's synthetic two-view example reaches linear R^2 >= 0.9 of the true latent."""
    from sklearn.linear_model import LinearRegression

    x1, x2, z = two_view_gaussian(512, seed=0)
    model, guide, _ = build(hidden=32)
    result = fit(model, guide, (x1, x2), steps=300, batch_size=128, lr=1e-2, seed=0, progress=False)
    assert isinstance(result, FitResult) and result.step == 300 and len(result.losses) == 300
    assert result.epoch_ends == list(range(4, 301, 4)) and result.epoch == 75
    assert np.mean(result.losses[-30:]) < np.mean(result.losses[:30]) - 0.5
    with torch.no_grad():
        z_mean = poutine.trace(guide).get_trace(x1, x2).nodes["z"]["fn"].mean.numpy()
    r2 = LinearRegression().fit(z_mean, z.numpy()).score(z_mean, z.numpy())
    assert r2 >= 0.9, r2


RESUME_CASES = {
    "adam": dict(lr=1e-2),
    "torch-adam": dict(optim=torch.optim.Adam, lr=1e-2),
    "pyro-adam": dict(optim=pyro.optim.Adam({"lr": 1e-2})),
    "sgd-steplr": dict(
        optim="sgd", lr=0.05, lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2)
    ),
    "full-support": dict(support="full", lr=1e-2),
    "validation": dict(validate_every=3, early_stopping=EarlyStopping(patience=50)),
    "dataset": dict(lr=1e-2),  # a generic Dataset through the DataLoader path
}


class Pairs(Dataset):
    """A map-style dataset of (x1[i], x2[i]) pairs (not a TensorDataset: goes through a DataLoader)."""

    def __init__(self, x1, x2):
        self.x1, self.x2 = x1, x2

    def __len__(self):
        return len(self.x1)

    def __getitem__(self, i):
        return self.x1[i], self.x2[i]


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_reproduces_the_uninterrupted_run_exactly(case, data, tmp_path):
    x1, x2, _ = data
    kwargs = dict(RESUME_CASES[case], batch_size=32, seed=7, progress=False)
    full = kwargs.get("support") == "full"
    if case == "validation":
        kwargs["validation"] = (x1[:64], x2[:64])
    path = tmp_path / "run.pt"
    source = Pairs(x1, x2) if case == "dataset" else (x1, x2)

    model, guide, _ = build(seed=0, full=full)
    straight = fit(model, guide, source, steps=30, **kwargs)
    expected = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}

    pyro.clear_param_store()
    model, guide, _ = build(seed=0, full=full)
    first = fit(model, guide, source, steps=15, checkpoint=path, **kwargs)
    assert first.step == 15 and first.losses == straight.losses[:15]

    pyro.clear_param_store()  # a fresh process: new networks with another initialisation
    pyro.set_rng_seed(123)
    model, guide, _ = build(seed=1, full=full)
    resumed = fit(model, guide, source, steps=30, checkpoint=path, resume=True, **kwargs)
    assert resumed.resumed_from == 15 and resumed.step == 30
    assert resumed.losses == straight.losses  # bit-identical trajectory
    assert resumed.lrs == straight.lrs and resumed.val_losses == straight.val_losses
    final = dict(pyro.get_param_store().named_parameters())
    assert sorted(final) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(final[name].detach(), value), name


def test_resume_auto_starts_fresh_without_a_file_and_stops_at_the_target(data, tmp_path):
    x1, x2, _ = data
    model, guide, _ = build()
    path = tmp_path / "auto.pt"
    run = fit(model, guide, (x1, x2), steps=5, batch_size=64, seed=0, progress=False, checkpoint=path, resume="auto")
    assert run.resumed_from is None and path.exists()
    again = fit(model, guide, (x1, x2), steps=5, batch_size=64, seed=0, progress=False, checkpoint=path, resume="auto")
    assert again.resumed_from == 5 and again.losses == run.losses  # target reached: nothing more to do


# ----------------------------------------------------------------------------------- batches and routes
def test_first_step_uses_the_seeded_minibatch_and_reports_loss_per_datum(data):
    """losses[0] is RPM_ELBO's loss on batch 0 of epoch 0 (the (seed, 0) permutation) divided by B."""
    x1, x2, _ = data
    model, guide, _ = build()
    idx = epoch_permutation(5, 0, 256)[:32]
    pyro.set_rng_seed(5)
    expected = RPM_ELBO().loss(model, guide, x1[idx], x2[idx]) / 32
    pyro.clear_param_store()
    result = fit(model, guide, (x1, x2), steps=1, batch_size=32, seed=5, progress=False)
    assert result.losses[0] == pytest.approx(expected, rel=1e-6)


def test_full_support_loss_estimates_the_full_data_loss_per_datum(data):
    """support='full': the mean minibatch loss / N matches the full-data loss / N (plate scale N/B)."""
    x1, x2, _ = data
    x1, x2 = x1[:128], x2[:128]
    model, guide, _ = build(full=True)
    result = fit(
        model, guide, (x1, x2), steps=96, batch_size=32, support="full", optim="sgd", lr=1e-9, seed=0, progress=False
    )
    exact = RPM_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(model, guide, x1, x2) / 128
    stderr = np.std(result.losses) / math.sqrt(len(result.losses))
    assert abs(np.mean(result.losses) - exact) < 4 * stderr + 0.02, (np.mean(result.losses), exact, stderr)
    assert exact > math.log(128) - 1.0  # the constant is log N, not log B


def test_dataset_input_gives_the_same_run_as_tensors(data):
    x1, x2, _ = data

    runs = []
    for source in [(x1, x2), TensorDataset(x1, x2), Pairs(x1, x2)]:
        pyro.clear_param_store()
        model, guide, _ = build()
        runs.append(fit(model, guide, source, steps=12, batch_size=64, seed=2, progress=False).losses)
    assert runs[0] == runs[1] == runs[2]


def test_dict_data_are_passed_as_keywords(data):
    x1, x2, _ = data
    model, guide, _ = build()
    result = fit(model, guide, {"x1": x1, "x2": x2}, epochs=2, batch_size=128, seed=0, progress=False)
    assert result.step == 4 and result.epoch_ends == [2, 4]


def test_torch_route_gradients_match_svi_and_training_lowers_the_loss(data):
    x1, x2, _ = data
    model, guide, (r1, r2) = build()
    elbo = RPM_ELBO()
    with poutine.trace(param_only=True) as capture:
        pyro.set_rng_seed(3)
        elbo.loss_and_grads(model, guide, x1[:64], x2[:64])
    params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
    svi_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    pyro.set_rng_seed(3)
    elbo.differentiable_loss(model, guide, x1[:64], x2[:64]).backward()
    assert len(params) == 8
    for p, g in zip(params, svi_grads):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad, g)

    for p in params:
        p.grad = None
    result = fit(
        model, guide, (x1, x2), steps=120, batch_size=64, optim=torch.optim.Adam, lr=1e-2, seed=0, progress=False
    )
    assert np.mean(result.losses[-20:]) < np.mean(result.losses[:20]) - 0.3


def test_torch_optimizer_instance_and_factory(data):
    x1, x2, _ = data
    model, guide, (r1, r2) = build()
    optimizer = torch.optim.SGD([*r1.parameters(), *r2.parameters()], lr=1e-2)
    before = r1.net[0].weight.detach().clone()
    fit(model, guide, (x1, x2), steps=3, batch_size=64, optim=optimizer, seed=0, progress=False)
    assert not torch.equal(before, r1.net[0].weight.detach())
    made = []

    def factory(params):
        made.append(len(params))
        return torch.optim.Adam(params, lr=1e-3)

    fit(model, guide, (x1, x2), steps=2, batch_size=64, optim=factory, seed=0, progress=False)
    assert made == [8]


# ----------------------------------------------------------------------------------- validation, schedules, callbacks
def test_early_stopping_on_a_plateau_restores_the_best_parameters(data):
    x1, x2, _ = data
    model, guide, _ = build()
    seen = {}

    def remember(info):
        if info.step == 2:
            seen.update({n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()})

    result = fit(
        model,
        guide,
        (x1, x2),
        steps=100,
        batch_size=64,
        optim="sgd",
        lr=1e-3,
        seed=0,
        progress=False,
        validation=(x1[:64], x2[:64]),
        validate_every=2,
        early_stopping=EarlyStopping(patience=3, min_delta=5.0),
        callbacks=[remember],
    )
    assert result.stopped_early and result.stop_reason == "early_stopping"
    assert result.val_steps == [2, 4, 6, 8] and result.step == 8 and result.best_step == 2
    assert result.best_val_loss == result.val_losses[0]
    for name, p in pyro.get_param_store().named_parameters():
        assert torch.equal(p.detach(), seen[name]), name


def test_early_stopping_waits_while_validation_improves(data):
    x1, x2, _ = data
    model, guide, _ = build()
    val = RPM_ELBO(estimator="interior", reference="prior")  # low-noise validation loss
    result = fit(
        model,
        guide,
        (x1, x2),
        steps=60,
        batch_size=64,
        lr=3e-2,
        seed=0,
        progress=False,
        validation=(x1[:128], x2[:128]),
        validation_elbo=val,
        validate_every=10,
        early_stopping=2,
    )
    assert not result.stopped_early and result.step == 60 and result.val_steps == [10, 20, 30, 40, 50, 60]
    assert result.val_losses[-1] < result.val_losses[0]


def test_validation_does_not_change_the_training_trajectory(data):
    x1, x2, _ = data
    model, guide, _ = build()
    plain = fit(model, guide, (x1, x2), steps=10, batch_size=64, seed=0, progress=False)
    pyro.clear_param_store()
    model, guide, _ = build()
    checked = fit(
        model,
        guide,
        (x1, x2),
        steps=10,
        batch_size=64,
        seed=0,
        progress=False,
        validation=(x1[:64], x2[:64]),
        validate_every=1,
    )
    assert checked.losses == plain.losses and len(checked.val_losses) == 10


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_lr_scheduler_changes_the_learning_rate(data, interval):
    x1, x2, _ = data
    model, guide, _ = build()
    halve = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    result = fit(
        model,
        guide,
        (x1[:128], x2[:128]),
        steps=6,
        batch_size=64,
        lr=0.1,
        lr_scheduler=halve,
        scheduler_interval=interval,
        seed=0,
        progress=False,
    )
    k = [0, 0, 1, 1, 2, 2] if interval == "epoch" else [0, 1, 2, 3, 4, 5]
    assert result.lrs == pytest.approx([0.1 * 0.5**i for i in k])


def test_pyro_scheduler_and_plateau_scheduler(data):
    x1, x2, _ = data
    model, guide, _ = build()
    optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.5})
    result = fit(model, guide, (x1[:128], x2[:128]), epochs=3, batch_size=64, optim=optim, seed=0, progress=False)
    assert result.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    plateau = functools.partial(
        torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, threshold=100.0, threshold_mode="abs", factor=0.1
    )
    result = fit(
        model,
        guide,
        (x1[:128], x2[:128]),
        steps=6,
        batch_size=64,
        lr=0.1,
        lr_scheduler=plateau,
        validation=(x1[:64], x2[:64]),
        validate_every=2,
        seed=0,
        progress=False,
    )
    assert result.lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="validation="):
        fit(model, guide, (x1, x2), steps=2, batch_size=64, lr_scheduler=plateau, progress=False)


def test_callbacks_receive_step_info_and_can_stop(data):
    x1, x2, _ = data
    model, guide, _ = build()
    infos = []
    result = fit(
        model,
        guide,
        (x1[:128], x2[:128]),
        steps=10,
        batch_size=64,
        lr=0.01,
        seed=0,
        progress=False,
        validation=(x1[:64], x2[:64]),
        callbacks=[infos.append, lambda info: info.step == 5],
    )
    assert result.stop_reason == "callback" and result.step == 5 and len(infos) == 5
    assert all(isinstance(i, StepInfo) and i.result is result for i in infos)
    assert [i.step for i in infos] == [1, 2, 3, 4, 5] and [i.epoch for i in infos] == [0, 0, 1, 1, 2]
    assert [i.epoch_end for i in infos] == [False, True, False, True, False]
    assert [i.loss for i in infos] == result.losses and [i.lr for i in infos] == result.lrs == [0.01] * 5
    assert [i.val_loss is not None for i in infos] == [False, True, False, True, False]
    assert [i.val_loss for i in infos if i.val_loss is not None] == result.val_losses


def test_progress_bar_shows_the_running_loss(data, capsys):
    x1, x2, _ = data
    model, guide, _ = build()
    fit(model, guide, (x1, x2), steps=25, batch_size=64, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "loss=" in err and "25/25" in err


def test_device_argument_moves_batches(data):
    x1, x2, _ = data
    model, guide, _ = build()
    result = fit(model, guide, (x1, x2), steps=2, batch_size=64, device="cpu", seed=0, progress=False)
    assert result.step == 2
    with pytest.raises(ValueError, match="device"):
        fit(model, guide, (x1, x2), steps=2, batch_size=64, device="nonsense", progress=False)


@pytest.mark.cuda
def test_fit_on_cuda_and_resume(data, tmp_path):
    x1, x2, _ = data
    model, guide, (r1, r2) = build()
    r1.cuda(), r2.cuda()
    result = fit(
        model,
        guide,
        (x1, x2),
        steps=6,
        batch_size=64,
        device="cuda",
        seed=0,
        progress=False,
        checkpoint=tmp_path / "gpu.pt",
        checkpoint_every=3,
    )
    assert all(p.is_cuda for _, p in pyro.get_param_store().named_parameters())
    resumed = fit(
        model,
        guide,
        (x1, x2),
        steps=9,
        batch_size=64,
        device="cuda",
        seed=0,
        progress=False,
        checkpoint=tmp_path / "gpu.pt",
        resume=True,
    )
    assert resumed.losses[:6] == result.losses and resumed.step == 9


# ----------------------------------------------------------------------------------- bad input
@pytest.fixture
def trained(data):
    """A model whose parameters are in the store, and a snapshot of the store."""
    x1, x2, _ = data
    model, guide, _ = build()
    fit(model, guide, (x1, x2), steps=2, batch_size=64, seed=0, progress=False)
    return model, guide, store_snapshot()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(data=[[1.0, 2.0], [3.0, 4.0]]), TypeError, "data"),
        (dict(data=np.zeros((8, 10))), TypeError, "data"),
        (dict(data="x"), TypeError, "data"),
        (dict(data=torch.zeros(0, 10)), ValueError, "data is empty"),
        (dict(data=(torch.zeros(8, 10), torch.zeros(7, 10))), ValueError, "leading size"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=-3), ValueError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(steps=None), ValueError, "steps= and epochs="),
        (dict(epochs=2), ValueError, "steps= and epochs="),
        (dict(batch_size=1), ValueError, "batch_size"),
        (dict(batch_size=10_000), ValueError, "batch_size"),
        (dict(optim="nadam-x"), ValueError, "optim"),
        (dict(optim=3), TypeError, "optim"),
        (dict(optim=pyro.optim.Adam), TypeError, "optim"),
        (dict(optim=pyro.optim.Adam({"lr": 1.0}), lr=0.1), ValueError, "lr="),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(elbo="elbo"), TypeError, "elbo"),
        (dict(support="all"), ValueError, "support"),
        (dict(support="full"), ValueError, "subsample"),
        (dict(early_stopping=3), ValueError, "validation="),
        (dict(callbacks=[1]), TypeError, r"callbacks\[0\]"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(resume=True), ValueError, "checkpoint="),
        (dict(validation=torch.zeros(1, 10)), ValueError, "validation"),
    ],
)
def test_bad_arguments_raise_and_leave_the_store_unchanged(trained, data, kwargs, error, match):
    model, guide, before = trained
    x1, x2, _ = data
    call = dict(data=(x1, x2), steps=2, batch_size=64, progress=False)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        fit(model, guide, **call)
    assert_store_unchanged(before)


def test_dataloader_and_empty_dataset_are_refused(trained, data):
    model, guide, before = trained
    x1, x2, _ = data

    class Empty(Dataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    loader = torch.utils.data.DataLoader(TensorDataset(x1, x2), batch_size=8)
    with pytest.raises(TypeError, match="DataLoader"):
        fit(model, guide, loader, steps=1, progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        fit(model, guide, Empty(), steps=1, progress=False)
    assert_store_unchanged(before)


def test_bad_checkpoints_raise_and_leave_the_store_unchanged(data, tmp_path):
    x1, x2, _ = data
    other, other_guide, _ = build(hidden=8)
    fit(other, other_guide, (x1, x2), steps=2, batch_size=64, seed=0, progress=False, checkpoint=tmp_path / "o.pt")
    pyro.clear_param_store()
    model, guide, _ = build()
    fit(model, guide, (x1, x2), steps=2, batch_size=64, seed=0, progress=False, checkpoint=tmp_path / "m.pt")
    before = store_snapshot()
    rng = torch.get_rng_state()
    kwargs = dict(steps=4, batch_size=64, progress=False, resume=True)

    with pytest.raises(ValueError, match="another model.*shape mismatch.*r1\\$\\$\\$net.0.weight"):
        fit(model, guide, (x1, x2), checkpoint=tmp_path / "o.pt", **kwargs)
    (tmp_path / "bad.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="is not a pyro_rpm checkpoint"):
        fit(model, guide, (x1, x2), checkpoint=tmp_path / "bad.pt", **kwargs)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:300])
    with pytest.raises(ValueError, match="is not a pyro_rpm checkpoint"):
        fit(model, guide, (x1, x2), checkpoint=tmp_path / "cut.pt", **kwargs)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fit(model, guide, (x1, x2), checkpoint=tmp_path / "missing.pt", **kwargs)
    with pytest.raises(ValueError, match="batch_size=32"):
        fit(model, guide, (x1, x2), checkpoint=tmp_path / "m.pt", **dict(kwargs, batch_size=32))
    with pytest.raises(ValueError, match="optimiser"):
        fit(model, guide, (x1, x2), checkpoint=tmp_path / "m.pt", optim=torch.optim.Adam, **kwargs)
    assert_store_unchanged(before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_stale_parameter_store_is_refused(data):
    x1, x2, _ = data
    model, guide, _ = build()
    fit(model, guide, (x1, x2), steps=1, batch_size=64, seed=0, progress=False)
    before = store_snapshot()
    new_model, new_guide, _ = build(seed=4)  # same names, new networks, store not cleared
    with pytest.raises(ValueError, match="clear_param_store"):
        fit(new_model, new_guide, (x1, x2), steps=1, batch_size=64, progress=False)
    assert_store_unchanged(before)
