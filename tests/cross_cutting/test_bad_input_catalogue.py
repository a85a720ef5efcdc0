# SPDX-License-Identifier: Apache-2.0
"""A catalogue of bad inputs across the public API (issue 7, item 1).

Every row of :data:`CATALOGUE` is one bad call, written as a small builder that sets up valid
objects and returns the bad call to make (plus the modules and optimisers whose state must survive
it). :func:`test_bad_input_is_refused_cleanly` then checks, for every row, that

1. the call raises the documented error type (:class:`ValueError` or :class:`TypeError`, or
   :class:`FileNotFoundError` for a missing file) -- never a silent NaN;
2. the message names the argument, site or module at fault (``pytest.raises(..., match=...)``);
3. nothing changed: Pyro's parameter store (names, values, constraints), every listed module's
   ``state_dict`` and gradients, and every listed optimiser's state are as they were just before
   the call (snapshots compared exactly).

The store starts empty in most rows (``tests/conftest.py`` clears it), so a check that runs only
after some module was registered with ``pyro.module`` fails point 3. Rows marked "warm" first
train or save, so the store holds values that a bad call must not touch.

Read the table as documentation: the ``id`` says what is wrong, the builder shows the call, the
pattern shows what the user is told.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import two_view_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_rpm import (
    RPM_ELBO,
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CategoricalRecognition,
    ContrastivePrior,
    CosineCoupling,
    DeltaFactor,
    DeltaRecognition,
    FullDataSupport,
    GaussianFactor,
    GaussianProcessPrior,
    GaussianRecognition,
    IndexedBankSupport,
    LaplaceCoupling,
    LinearGaussianStateSpacePrior,
    MarginalPrior,
    MemoryBankSupport,
    RBFCoupling,
    RecognitionGuide,
    RecognitionLikelihood,
    fit,
    load_checkpoint,
    observe,
    save_checkpoint,
)
from pyro_rpm.normalisers import gaussian_logsumexp
from pyro_rpm.priors.discrete import CategoricalPrior, HMMPrior

D, OBS, N = 2, 5, 8
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------ fixtures
@dataclass
class Bad:
    """A bad call and the state it must leave alone."""

    call: Callable[[], object]
    modules: tuple[nn.Module, ...] = ()
    optims: tuple[pyro.optim.PyroOptim, ...] = ()


def _data(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, OBS, generator=g), torch.randn(n, OBS, generator=g)


def _recognition(name: str, **kwargs) -> GaussianRecognition:
    kwargs.setdefault("prior_scale", 1.0)
    return GaussianRecognition(nn.Linear(OBS, 2 * D), D, name=name, **kwargs)


def _two_view():
    """The canonical two-view model of ``docs/core.md`` (in-batch support)."""
    r1, r2 = _recognition("r1"), _recognition("r2")
    return r1, r2, two_view_model(r1, r2, D)


def _svi(model, guide=None):
    guide = RecognitionGuide(model) if guide is None else guide
    optim = pyro.optim.Adam({"lr": 1e-2})
    return pyro.infer.SVI(model, guide, optim, RPM_ELBO()), optim


def _with_nan(x: torch.Tensor, value: float = NAN) -> torch.Tensor:
    x = x.clone()
    x[0, 0] = value
    return x


class _LogNet(nn.Module):
    """A user network that returns NaN for negative pre-activations (log of a negative number)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(OBS, 2 * D)

    def forward(self, x):
        return self.linear(x).log()


class _HugeNet(nn.Module):
    """A user prior network whose finite outputs overflow float32 in the log-density."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(OBS, D)

    def forward(self, x):
        return self.linear(x) * 1e30


# ------------------------------------------------------------------------------------------ data
def nan_in_data_svi():
    r1, r2, model = _two_view()
    svi, optim = _svi(model)
    x1, x2 = _data()
    return Bad(lambda: svi.step(_with_nan(x1), x2), (r1, r2))


def nan_in_data_after_training():  # warm: trained parameters and Adam state must survive
    r1, r2, model = _two_view()
    svi, optim = _svi(model)
    x1, x2 = _data()
    svi.step(x1, x2)
    return Bad(lambda: svi.step(x1, _with_nan(x2)), (r1, r2), (optim,))


def inf_in_data_recognition():
    r1 = _recognition("r1")
    x1, _ = _data()
    return Bad(lambda: r1(_with_nan(x1, INF)), (r1,))


def nan_in_fit_data():
    r1, r2, model = _two_view()
    x1, x2 = _data()
    return Bad(lambda: fit(model, RecognitionGuide(model), (_with_nan(x1), x2), steps=1, progress=False), (r1, r2))


def nan_in_full_data_support():
    r1 = _recognition("r1")
    x1, _ = _data()
    return Bad(lambda: FullDataSupport(r1, _with_nan(x1)), (r1,))


def nan_from_user_network():
    torch.manual_seed(0)
    r = GaussianRecognition(_LogNet(), D, prior_scale=1.0, name="r_log")
    x1, _ = _data()
    return Bad(lambda: r(x1), (r,))


def non_finite_term_from_prior_network():
    r1 = _recognition("r1")
    prior_net = _HugeNet()

    def model(x1):
        f1 = r1(x1)
        pyro.module("prior_net", prior_net)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(prior_net(x1), 1.0).to_event(1))
            observe("x1", f1, z)

    svi, optim = _svi(model)
    x1, _ = _data()
    return Bad(lambda: svi.step(x1), (r1, prior_net))


def nan_latent_observed():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.full((N, D), NAN)), (r1,))


# ------------------------------------------------------------------------------------------ shapes
def batch_lengths_differ_between_views_svi():
    r1, r2, model = _two_view()
    svi, _ = _svi(model)
    x1, x2 = _data()
    return Bad(lambda: svi.step(x1, x2[:6]), (r1, r2))


def batch_lengths_differ_between_views_fit():
    r1, r2, model = _two_view()
    x1, x2 = _data()
    return Bad(lambda: fit(model, RecognitionGuide(model), (x1, x2[:6]), steps=1, progress=False), (r1, r2))


def support_of_one_point():
    r1 = _recognition("r1")
    f1 = r1(_data()[0][:1])
    return Bad(lambda: observe("x1", f1, torch.zeros(1, D)), (r1,))


def support_of_one_point_likelihood():
    f = GaussianFactor(torch.zeros(1, D), torch.ones(1, D))
    return Bad(lambda: RecognitionLikelihood(f, torch.zeros(1, D)))


def fit_batch_of_one():
    r1, r2, model = _two_view()
    return Bad(lambda: fit(model, RecognitionGuide(model), _data(), steps=1, batch_size=1, progress=False), (r1, r2))


def latent_of_wrong_event_shape():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(N, D + 1)), (r1,))


def latent_without_event_dim():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(N)), (r1,))


def network_output_of_wrong_width():
    r = GaussianRecognition(nn.Linear(OBS, 2 * D - 1), D, name="r_narrow")
    return Bad(lambda: r(_data()[0]), (r,))


def scale_not_broadcastable():
    return Bad(lambda: GaussianFactor(torch.zeros(3, D), torch.ones(4, D)))


def lengthscale_of_wrong_shape():
    return Bad(lambda: AnisotropicRBFCoupling(D, torch.ones(D + 1)))


def index_out_of_support():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(4, D), index=torch.arange(4) + 6), (r1,))


def bank_index_out_of_range():
    r1 = _recognition("r1")
    bank = IndexedBankSupport(r1, _data()[0], chunk_size=4)
    return Bad(lambda: bank(torch.tensor([0, N])), (r1,))


# ------------------------------------------------------------------------------------------ scales
def zero_scale():
    return Bad(lambda: GaussianFactor(torch.zeros(3, D), torch.zeros(3, D)))


def negative_scale():
    return Bad(lambda: GaussianFactor(torch.zeros(3, D), -torch.ones(3, D)))


def infinite_scale():
    return Bad(lambda: GaussianFactor(torch.zeros(3, D), torch.full((3, D), INF)))


def zero_min_scale():
    return Bad(lambda: GaussianRecognition(nn.Linear(OBS, 2 * D), D, min_scale=0.0))


def negative_prior_scale():
    return Bad(lambda: GaussianRecognition(nn.Linear(OBS, 2 * D), D, prior_scale=-1.0))


def infinite_init_scale():
    return Bad(lambda: GaussianRecognition(nn.Linear(OBS, D), D, shared_scale=True, init_scale=INF))


def zero_scale_normaliser():
    return Bad(lambda: gaussian_logsumexp(torch.zeros(3, D), torch.zeros(4, D), torch.zeros(4, D)))


def zero_rbf_lengthscale():
    return Bad(lambda: RBFCoupling(0.0))


def negative_temperature():
    return Bad(lambda: CosineCoupling(-0.1))


def infinite_laplace_scale():
    return Bad(lambda: LaplaceCoupling(INF))


# ------------------------------------------------------------------------------------------ devices and dtypes
def latent_on_another_device():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(N, D, device="meta")), (r1,))


def data_on_another_device():
    r1 = _recognition("r1")
    return Bad(lambda: r1(torch.zeros(N, OBS, device="meta")), (r1,))


def scale_on_another_device():
    return Bad(lambda: GaussianFactor(torch.zeros(3, D), torch.ones(3, D, device="meta")))


def normaliser_inputs_on_two_devices():
    return Bad(lambda: gaussian_logsumexp(torch.zeros(3, D, device="meta"), torch.zeros(4, D), torch.ones(4, D)))


def data_of_another_dtype():
    r1 = _recognition("r1")
    return Bad(lambda: r1(_data()[0].double()), (r1,))


def latent_of_another_dtype():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(N, D, dtype=torch.float64)), (r1,))


def scale_of_another_dtype():
    return Bad(lambda: GaussianFactor(torch.zeros(3, D), torch.ones(3, D, dtype=torch.float64)))


def float_index():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(4, D), index=torch.zeros(4)), (r1,))


# ------------------------------------------------------------------------------------------ the tied guide
def latent_not_tied_to_any_factor():
    r1 = _recognition("r1")

    def model(x1):
        f1 = r1(x1)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z)

    svi, _ = _svi(model)
    return Bad(lambda: svi.step(_data()[0]), (r1,))


def two_factors_claiming_one_view():
    r1, r2 = _recognition("r1"), _recognition("r2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x1", f2, z)  # the same view name for a second factor

    svi, _ = _svi(model)
    return Bad(lambda: svi.step(*_data()), (r1, r2))


def one_view_observed_twice():
    r1 = _recognition("r1")

    def model(x1):
        f1 = r1(x1)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x1_again", f1, z)

    guide = RecognitionGuide(model)
    return Bad(lambda: guide(_data()[0]), (r1,))


def transformed_latent_observed():
    r1 = _recognition("r1")

    def model(x1):
        f1 = r1(x1)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, 2 * z)

    svi, _ = _svi(model)
    return Bad(lambda: svi.step(_data()[0]), (r1,))


def prior_product_without_normal_prior():
    r1, r2 = _recognition("r1"), _recognition("r2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Laplace(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    svi, _ = _svi(model, RecognitionGuide(model, combine="prior_product"))
    return Bad(lambda: svi.step(*_data()), (r1, r2))


def unknown_combine():
    _, _, model = _two_view()
    return Bad(lambda: RecognitionGuide(model, combine="bogus"))


def amortiser_not_a_module():
    _, _, model = _two_view()
    return Bad(lambda: RecognitionGuide(model, amortiser=lambda t: t))


# ------------------------------------------------------------------------------------------ priors and time
def unsorted_time_points():
    gp = GaussianProcessPrior(D, name="gp")
    return Bad(lambda: gp.distribution(torch.tensor([0.0, 2.0, 1.0])), (gp,))


def duplicate_time_points():
    gp = GaussianProcessPrior(D, name="gp")
    return Bad(lambda: gp.distribution(torch.tensor([0.0, 1.0, 1.0])), (gp,))


def duplicate_time_points_in_model():
    gp = GaussianProcessPrior(D, name="gp")

    def model():
        with pyro.plate("sequences", 3):
            gp("z", torch.tensor([0.0, 1.0, 1.0]))

    return Bad(model, (gp,))


def state_space_prior_of_zero_steps():
    prior = LinearGaussianStateSpacePrior(D, name="lgssm")
    return Bad(lambda: prior("z", 0), (prior,))


def hmm_with_one_state():
    return Bad(lambda: HMMPrior(1))


def categorical_prior_with_one_state():
    return Bad(lambda: CategoricalPrior(1))


def categorical_recognition_with_one_state():
    return Bad(lambda: CategoricalRecognition(nn.Linear(OBS, 1), 1))


def non_stochastic_transition_rows():
    return Bad(lambda: HMMPrior(2, transition=torch.tensor([[0.5, 0.6], [0.5, 0.5]])))


def negative_transition_entries():
    return Bad(lambda: HMMPrior(2, transition=torch.tensor([[1.5, -0.5], [0.5, 0.5]])))


def non_stochastic_initial_distribution():
    return Bad(lambda: HMMPrior(3, init=torch.tensor([0.2, 0.2, 0.2])))


def marginal_prior_of_a_tensor():
    return Bad(lambda: MarginalPrior(torch.zeros(N, D)))


def contrastive_prior_with_a_string_coupling():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: ContrastivePrior(f1, "bilinear", torch.zeros(N, D)), (r1,))


# ------------------------------------------------------------------------------------------ fit
def empty_data():
    r1, r2, model = _two_view()
    empty = (torch.zeros(0, OBS), torch.zeros(0, OBS))
    return Bad(lambda: fit(model, RecognitionGuide(model), empty, steps=1, progress=False), (r1, r2))


def empty_dataset():
    r1, r2, model = _two_view()
    empty = TensorDataset(torch.zeros(0, OBS), torch.zeros(0, OBS))
    return Bad(lambda: fit(model, RecognitionGuide(model), empty, steps=1, progress=False), (r1, r2))


def empty_data_loader():
    r1, r2, model = _two_view()
    loader = DataLoader(TensorDataset(torch.zeros(0, OBS), torch.zeros(0, OBS)), batch_size=4)
    return Bad(lambda: fit(model, RecognitionGuide(model), loader, steps=1, progress=False), (r1, r2))


def empty_validation_data():
    r1, r2, model = _two_view()
    val = (torch.zeros(0, OBS), torch.zeros(0, OBS))
    return Bad(
        lambda: fit(model, RecognitionGuide(model), _data(), validation=val, steps=1, progress=False), (r1, r2)
    )


def unknown_optimiser():
    r1, r2, model = _two_view()
    return Bad(lambda: fit(model, RecognitionGuide(model), _data(), steps=1, optim="bogus", progress=False), (r1, r2))


def unknown_support():
    r1, r2, model = _two_view()
    return Bad(
        lambda: fit(model, RecognitionGuide(model), _data(), steps=1, support="bogus", progress=False), (r1, r2)
    )


def zero_steps():
    r1, r2, model = _two_view()
    return Bad(lambda: fit(model, RecognitionGuide(model), _data(), steps=0, progress=False), (r1, r2))


# ------------------------------------------------------------------------------------------ checkpoints
def _saved_two_view(tmp_path) -> str:
    """Train the canonical model one step and save it; returns the file."""
    r1, r2, model = _two_view()
    svi, _ = _svi(model)
    svi.step(*_data())
    return save_checkpoint(os.path.join(tmp_path, "two_view.pt"), step=1)


def checkpoint_from_another_model(tmp_path):  # warm: the other model's parameters must survive
    path = _saved_two_view(tmp_path)
    pyro.clear_param_store()
    other = GaussianRecognition(nn.Linear(OBS, 2 * (D + 1)), D + 1, name="r1")  # same name, other shape
    other(_data()[0])
    return Bad(lambda: load_checkpoint(path), (other,))


def checkpoint_from_another_model_fit(tmp_path):
    r1, r2, model = _two_view()
    fit(model, RecognitionGuide(model), _data(), steps=1, progress=False, checkpoint=os.path.join(tmp_path, "a.pt"))
    pyro.clear_param_store()
    other = GaussianRecognition(nn.Linear(OBS, 2 * (D + 1)), D + 1, name="r1")

    def other_model(x1, x2):
        f = other(x1)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D + 1), 1.0).to_event(1))
            observe("x1", f, z)

    path = os.path.join(tmp_path, "a.pt")
    guide = RecognitionGuide(other_model)
    return Bad(
        lambda: fit(other_model, guide, _data(), steps=2, checkpoint=path, resume=True, progress=False), (other,)
    )


def truncated_checkpoint(tmp_path):  # warm: the trained store must survive
    path = _saved_two_view(tmp_path)
    with open(path, "rb") as handle:
        head = handle.read(300)
    bad = os.path.join(tmp_path, "truncated.pt")
    with open(bad, "wb") as handle:
        handle.write(head)
    return Bad(lambda: load_checkpoint(bad))


def garbage_checkpoint(tmp_path):
    bad = os.path.join(tmp_path, "garbage.pt")
    with open(bad, "wb") as handle:
        handle.write(b"not a checkpoint" * 8)
    return Bad(lambda: load_checkpoint(bad))


def foreign_torch_file(tmp_path):
    bad = os.path.join(tmp_path, "foreign.pt")
    torch.save({"weights": torch.ones(3)}, bad)
    return Bad(lambda: load_checkpoint(bad))


def checkpoint_with_nan_parameter(tmp_path):
    path = _saved_two_view(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["params"]["r1$$$net.weight"][0, 0] = NAN
    torch.save(payload, path)
    return Bad(lambda: load_checkpoint(path))


def missing_checkpoint(tmp_path):
    return Bad(lambda: load_checkpoint(os.path.join(tmp_path, "nowhere.pt")))


def corrupted_checkpoint_fit(tmp_path):
    r1, r2, model = _two_view()
    bad = os.path.join(tmp_path, "corrupt.pt")
    with open(bad, "wb") as handle:
        handle.write(b"\x00" * 64)
    guide = RecognitionGuide(model)
    return Bad(lambda: fit(model, guide, _data(), steps=1, checkpoint=bad, resume=True, progress=False), (r1, r2))


# ------------------------------------------------------------------------------------------ RPM_ELBO
def zero_particles():
    return Bad(lambda: RPM_ELBO(num_particles=0))


def negative_particles():
    return Bad(lambda: RPM_ELBO(num_particles=-3))


def fractional_particles():
    return Bad(lambda: RPM_ELBO(num_particles=2.5))


def unknown_estimator():
    return Bad(lambda: RPM_ELBO(estimator="bogus"))


def unknown_reference():
    return Bad(lambda: RPM_ELBO(estimator="interior", reference="bogus"))


def interior_estimator_with_point_masses():
    e1 = DeltaRecognition(nn.Linear(OBS, D), D, name="e1")

    def model(x1):
        f1 = e1(x1)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z)

    guide = RecognitionGuide(model)
    return Bad(lambda: RPM_ELBO(estimator="interior").loss(model, guide, _data()[0]), (e1,))


# ------------------------------------------------------------------------------------------ backends
def unknown_backend_observe():
    r1 = _recognition("r1")
    f1 = r1(_data()[0])
    return Bad(lambda: observe("x1", f1, torch.zeros(N, D), backend="bogus"), (r1,))


def unknown_backend_normaliser():
    return Bad(lambda: gaussian_logsumexp(torch.zeros(3, D), torch.zeros(4, D), torch.ones(4, D), backend="bogus"))


def zero_chunk_size():
    return Bad(lambda: gaussian_logsumexp(torch.zeros(3, D), torch.zeros(4, D), torch.ones(4, D), chunk_size=0))


# ------------------------------------------------------------------------ DeltaRecognition and couplings
def delta_eps_zero():
    return Bad(lambda: DeltaRecognition(nn.Linear(OBS, D), D, eps=0.0))


def delta_eps_negative():
    return Bad(lambda: DeltaRecognition(nn.Linear(OBS, D), D, eps=-1e-3))


def delta_eps_nan():
    return Bad(lambda: DeltaRecognition(nn.Linear(OBS, D), D, eps=NAN))


def delta_eps_string():
    return Bad(lambda: DeltaRecognition(nn.Linear(OBS, D), D, eps="1e-3"))


def delta_factor_eps_zero():
    return Bad(lambda: DeltaFactor(torch.zeros(3, D), 0.0))


def bilinear_dim_zero():
    return Bad(lambda: BilinearCoupling(0))


def bilinear_dim2_zero():
    return Bad(lambda: BilinearCoupling(D, 0))


def memory_bank_of_size_zero():
    r1 = _recognition("r1")
    return Bad(lambda: MemoryBankSupport(r1, 0), (r1,))


def momentum_of_one_and_a_half():
    r1 = _recognition("r1")
    return Bad(lambda: MemoryBankSupport(r1, 4, momentum=1.5), (r1,))


def integer_data_for_a_float_network():
    r1, r2, model = _two_view()
    svi, optim = _svi(model)
    x1, x2 = _data()
    return Bad(lambda: svi.step(x1.long(), x2), (r1, r2), (optim,))


def boolean_data_for_a_float_network():
    r1, r2, model = _two_view()
    svi, optim = _svi(model)
    x1, x2 = _data()
    return Bad(lambda: svi.step(x1 > 0, x2), (r1, r2), (optim,))


def network_input_width_mismatch():
    r1, r2, model = _two_view()
    svi, optim = _svi(model)
    x1, x2 = _data()
    return Bad(lambda: svi.step(x1[:, :3], x2), (r1, r2), (optim,))


def empty_batch():
    r1, r2, model = _two_view()
    svi, optim = _svi(model)
    x1, x2 = _data()
    return Bad(lambda: svi.step(x1[:0], x2[:0]), (r1, r2), (optim,))


def site_name_not_a_string():
    r1 = _recognition("r1")
    x1, _ = _data()

    def model():
        f = r1(x1)
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe(7, f, z)

    svi, optim = _svi(model)
    return Bad(svi.step, (r1,), (optim,))


def boolean_mask_as_index():
    r1 = _recognition("r1")
    x1, _ = _data()
    mask = torch.arange(N) % 2 == 0

    def model():
        f = r1(x1)
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f, z, index=mask)

    svi, optim = _svi(model)
    return Bad(svi.step, (r1,), (optim,))


def bilinear_anchor_of_the_wrong_width():
    factors = DeltaFactor(torch.randn(N, D))
    return Bad(lambda: ContrastivePrior(factors, BilinearCoupling(D + 1, D), torch.randn(N, D)))


def contrastive_anchor_of_the_wrong_width():
    factors = DeltaFactor(torch.randn(N, D))
    return Bad(lambda: ContrastivePrior(factors, RBFCoupling(1.0), torch.randn(N, D + 1)))


def _far_latent_likelihood(dtype: torch.dtype, magnitude: float) -> RecognitionLikelihood:
    """Per-point-scale factors of a recognition and a latent ``magnitude`` away from all of them."""
    r1 = _recognition("r1", prior_scale=None).to(dtype)
    factors = r1(_data()[0].to(dtype))
    return r1, RecognitionLikelihood(factors, torch.full((N, D), magnitude, dtype=dtype))


def overflowing_latent_float32():
    r1, likelihood = _far_latent_likelihood(torch.float32, 1e25)  # exact log p about -1e50: not a float32
    return Bad(lambda: likelihood.log_prob(torch.arange(N)), (r1,))


def overflowing_latent_float64():
    r1, likelihood = _far_latent_likelihood(torch.float64, 1e160)  # (z - mu)^2 overflows float64
    return Bad(lambda: likelihood.log_prob(torch.arange(N)), (r1,))


def overflowing_latent_in_a_model_float32():
    r1 = _recognition("r1", prior_scale=None)
    f1 = r1(_data()[0])

    def model():  # scored by Pyro's own log_prob_sum (Trace_ELBO, Predictive): the likelihood's log_prob
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(torch.full((D,), 1e25), 1.0).to_event(1))
            observe("x1", f1, z)

    return Bad(lambda: pyro.poutine.trace(model).get_trace().log_prob_sum(), (r1,))


def overflowing_anchor_rbf_float64():
    factors = DeltaFactor(torch.randn(N, D, dtype=torch.float64))
    return Bad(lambda: ContrastivePrior(factors, RBFCoupling(1.0), torch.full((N, D), 1e20, dtype=torch.float64)))


def overflowing_anchor_laplace_float32():
    factors = GaussianFactor(torch.randn(N, D), torch.ones(N, D))
    return Bad(lambda: ContrastivePrior(factors, LaplaceCoupling(1.0), torch.full((N, D), 1e25)))


def svi_step_arguments_swapped():
    r1, r2 = _recognition("r1"), GaussianRecognition(nn.Linear(3, 2 * D), D, name="r2", prior_scale=1.0)
    model = two_view_model(r1, r2, D)
    svi, optim = _svi(model)
    x1, x2 = _data()[0], torch.randn(N, 3)
    return Bad(lambda: svi.step(x2, x1), (r1, r2), (optim,))


# ------------------------------------------------------------------------------------------ the table
def case(build, error, match, id, marks=()):
    return pytest.param(build, error, match, id=id, marks=marks)


CATALOGUE = [
    # data
    case(nan_in_data_svi, ValueError, r"inputs to recognition 'r1' must be finite.*1 NaN", "nan-in-data-svi-step"),
    case(nan_in_data_after_training, ValueError, r"inputs to recognition 'r2' must be finite", "nan-after-training"),
    case(inf_in_data_recognition, ValueError, r"inputs to recognition 'r1' .*1 infinite", "inf-in-data"),
    case(nan_in_fit_data, ValueError, r"inputs to recognition 'r1' must be finite", "nan-in-fit-data"),
    case(nan_in_full_data_support, ValueError, r"data of FullDataSupport\('r1'\) must be finite", "nan-full-support"),
    case(nan_from_user_network, ValueError, r"network output of recognition 'r_log' must be finite", "nan-from-net"),
    case(non_finite_term_from_prior_network, ValueError, r"non-finite ELBO term at model site 'z'", "overflow-prior"),
    case(nan_latent_observed, ValueError, r"observe\('x1'\): latent must be finite", "nan-latent"),
    # shapes
    case(batch_lengths_differ_between_views_svi, ValueError, r"observe\('x2'\).*support set has 6", "views-8-vs-6-svi"),
    case(batch_lengths_differ_between_views_fit, ValueError, r"data must share .* sizes \[8, 6\]", "views-8-vs-6-fit"),
    case(support_of_one_point, ValueError, r"observe\('x1'\): the support set must have at least 2", "support-of-1"),
    case(support_of_one_point_likelihood, ValueError, r"support set must have at least 2 points, got 1", "lik-support-1"),
    case(fit_batch_of_one, ValueError, r"batch_size must be >= 2, got 1", "fit-batch-of-1"),
    case(latent_of_wrong_event_shape, ValueError, r"latent must end with .* event shape \(2,\), got .*\(8, 3\)", "event-3"),
    case(latent_without_event_dim, ValueError, r"latent must end with .* event shape \(2,\), got shape \(8,\)", "event-0"),
    case(network_output_of_wrong_width, ValueError, r"recognition 'r_narrow' must output .* size 4", "net-width"),
    case(scale_not_broadcastable, ValueError, r"scale of shape \(4, 2\) does not broadcast", "scale-shape"),
    case(lengthscale_of_wrong_shape, ValueError, r"lengthscale must be a scalar or have shape \(2,\)", "ls-shape"),
    case(index_out_of_support, ValueError, r"index must lie in \[0, 8\)", "index-out-of-range"),
    case(bank_index_out_of_range, ValueError, r"idx must lie in \[0, 8\)", "bank-index-out-of-range"),
    # scales
    case(zero_scale, ValueError, r"scale must be finite and strictly positive", "scale-zero"),
    case(negative_scale, ValueError, r"scale must be finite and strictly positive", "scale-negative"),
    case(infinite_scale, ValueError, r"scale must be finite and strictly positive.*first: inf", "scale-inf"),
    case(zero_min_scale, ValueError, r"min_scale must be finite and strictly positive", "min-scale-zero"),
    case(negative_prior_scale, ValueError, r"prior_scale must be finite and strictly positive", "prior-scale-neg"),
    case(infinite_init_scale, ValueError, r"init_scale must be finite and strictly positive", "init-scale-inf"),
    case(zero_scale_normaliser, ValueError, r"scale must be finite and strictly positive", "normaliser-scale-0"),
    case(zero_rbf_lengthscale, ValueError, r"lengthscale must be finite and strictly positive", "rbf-lengthscale-0"),
    case(negative_temperature, ValueError, r"temperature must be finite and strictly positive", "temperature-neg"),
    case(infinite_laplace_scale, ValueError, r"scale must be finite and strictly positive", "laplace-scale-inf"),
    # devices and dtypes
    case(latent_on_another_device, ValueError, r"observe\('x1'\): latent is on meta but factors is on cpu", "dev-latent"),
    case(data_on_another_device, ValueError, r"recognition 'r1' are on meta but .*'net.weight' is on cpu", "dev-data"),
    case(scale_on_another_device, ValueError, r"loc is on cpu but scale is on meta", "dev-scale"),
    case(normaliser_inputs_on_two_devices, ValueError, r"z is on meta but loc is on cpu", "dev-normaliser"),
    case(data_of_another_dtype, ValueError, r"recognition 'r1' have dtype torch.float64 but .* torch.float32", "dtype-data"),
    case(latent_of_another_dtype, ValueError, r"latent has dtype torch.float64 but factors has dtype torch.float32", "dtype-latent"),
    case(scale_of_another_dtype, ValueError, r"loc has dtype torch.float32 but scale has dtype torch.float64", "dtype-scale"),
    case(float_index, TypeError, r"index must be an integer tensor, got dtype torch.float32", "dtype-index"),
    # the tied guide
    case(latent_not_tied_to_any_factor, ValueError, r"latent site\(s\) \['w'\] are not observed", "untied-latent"),
    case(two_factors_claiming_one_view, ValueError, r"two sample sites named 'x1'", "two-factors-one-view"),
    case(one_view_observed_twice, ValueError, r"sites 'x1' and 'x1_again' both observe latent 'z'", "view-twice"),
    case(transformed_latent_observed, ValueError, r"likelihood site 'x1' observes a latent that is not", "transformed"),
    case(prior_product_without_normal_prior, ValueError, r"latent 'z': combine='prior_product' needs", "prior-product"),
    case(unknown_combine, ValueError, r"combine must be 'auto', 'prior_product' or 'product', got 'bogus'", "combine"),
    case(amortiser_not_a_module, TypeError, r"amortiser must be a torch.nn.Module", "amortiser-type"),
    # priors and time
    case(unsorted_time_points, ValueError, r"times must be strictly increasing", "times-unsorted"),
    case(duplicate_time_points, ValueError, r"times must be strictly increasing", "times-duplicate"),
    case(duplicate_time_points_in_model, ValueError, r"times must be strictly", "times-dup-model"),
    case(state_space_prior_of_zero_steps, ValueError, r"num_steps must be an int >= 1", "lgssm-0"),
    case(hmm_with_one_state, ValueError, r"num_states must be an int >= 2, got 1", "hmm-K-1"),
    case(categorical_prior_with_one_state, ValueError, r"num_states must be an int >= 2, got 1", "categorical-K-1"),
    case(categorical_recognition_with_one_state, ValueError, r"num_states must be an int >= 2, got 1", "recog-K-1"),
    case(non_stochastic_transition_rows, ValueError, r"transition must be stochastic", "transition-rows"),
    case(negative_transition_entries, ValueError, r"transition must be non-negative", "transition-negative"),
    case(non_stochastic_initial_distribution, ValueError, r"init must be stochastic", "init-not-stochastic"),
    case(marginal_prior_of_a_tensor, TypeError, r"factors must be a pyro_rpm Factor", "marginal-prior-tensor"),
    case(contrastive_prior_with_a_string_coupling, TypeError, r"coupling must be a pyro_rpm Coupling", "coupling-str"),
    # fit
    case(empty_data, ValueError, r"data is empty \(a data set of 0 points\)", "empty-data"),
    case(empty_dataset, ValueError, r"data is empty \(a data set of 0 points\)", "empty-dataset"),
    case(empty_data_loader, TypeError, r"data must be a Dataset or tensors, not a DataLoader", "data-loader"),
    case(empty_validation_data, ValueError, r"validation is empty", "empty-validation"),
    case(unknown_optimiser, ValueError, r"optim must be one of .* got 'bogus'", "optim-name"),
    case(unknown_support, ValueError, r"support must be 'batch', 'full', a Support or a Support class, got 'bogus'", "support-name"),
    case(zero_steps, ValueError, r"steps must be >= 1, got 0", "zero-steps"),
    # checkpoints
    case(checkpoint_from_another_model, ValueError, r"is from another model: .*shape mismatch", "ckpt-other-model"),
    case(checkpoint_from_another_model_fit, ValueError, r"is from another model", "ckpt-other-model-fit"),
    case(truncated_checkpoint, ValueError, r"truncated.pt' is not a pyro_rpm checkpoint", "ckpt-truncated"),
    case(garbage_checkpoint, ValueError, r"garbage.pt' is not a pyro_rpm checkpoint", "ckpt-garbage"),
    case(foreign_torch_file, ValueError, r"foreign.pt' is not a pyro_rpm checkpoint \(no .* format marker", "ckpt-foreign"),
    case(checkpoint_with_nan_parameter, ValueError, r"parameter 'r1\$\$\$net.weight' holds NaN", "ckpt-nan"),
    case(missing_checkpoint, FileNotFoundError, r"nowhere.pt' does not exist", "ckpt-missing"),
    case(corrupted_checkpoint_fit, ValueError, r"corrupt.pt' is not a pyro_rpm checkpoint", "ckpt-corrupt-fit"),
    # RPM_ELBO
    case(zero_particles, ValueError, r"num_particles must be a positive int, got 0", "particles-0"),
    case(negative_particles, ValueError, r"num_particles must be a positive int, got -3", "particles-neg"),
    case(fractional_particles, ValueError, r"num_particles must be a positive int, got 2.5", "particles-float"),
    case(unknown_estimator, ValueError, r"estimator must be one of \('mc', 'interior'\), got 'bogus'", "estimator"),
    case(unknown_reference, ValueError, r"reference must be 'flat' or 'prior', got 'bogus'", "reference"),
    case(interior_estimator_with_point_masses, ValueError, r"estimator='interior' needs Gaussian", "interior-delta"),
    # backends
    case(unknown_backend_observe, ValueError, r"observe\('x1'\): backend must be one of .* got 'bogus'", "backend-lik"),
    case(unknown_backend_normaliser, ValueError, r"backend must be one of .* got 'bogus'", "backend-normaliser"),
    case(zero_chunk_size, ValueError, r"chunk_size must be a positive int or None, got 0", "chunk-size-0"),
    # DeltaRecognition and couplings
    case(delta_eps_zero, ValueError, r"eps must be finite and strictly positive, got min 0", "delta-eps-0"),
    case(delta_eps_negative, ValueError, r"eps must be finite and strictly positive, got min -0.001", "delta-eps-neg"),
    case(delta_eps_nan, ValueError, r"eps must be finite and strictly positive, got min nan", "delta-eps-nan"),
    case(delta_eps_string, TypeError, r"eps must be a float, got str", "delta-eps-str"),
    case(delta_factor_eps_zero, ValueError, r"eps must be finite and strictly positive", "delta-factor-eps-0"),
    case(bilinear_dim_zero, ValueError, r"dim must be a positive int, got 0", "bilinear-dim-0"),
    case(bilinear_dim2_zero, ValueError, r"dim2 must be a positive int or None, got 0", "bilinear-dim2-0"),
    case(memory_bank_of_size_zero, ValueError, r"size must be a positive int, got 0", "bank-size-0"),
    case(momentum_of_one_and_a_half, ValueError, r"momentum must be None or a float in \[0, 1\)", "momentum"),
    # kinds of issue 14, item 7
    case(integer_data_for_a_float_network, TypeError, r"inputs to recognition 'r1' have dtype torch.int64 but its network computes in torch.float32", "int-data-float-net"),
    case(boolean_data_for_a_float_network, TypeError, r"inputs to recognition 'r1' have dtype torch.bool but its network computes in torch.float32", "bool-data-float-net"),
    case(network_input_width_mismatch, ValueError, r"inputs to recognition 'r1' of shape \(8, 3\) do not fit its network", "net-input-width"),
    case(empty_batch, ValueError, r"inputs to recognition 'r1' are an empty batch \(shape \(0, 5\)\)", "empty-batch"),
    case(site_name_not_a_string, TypeError, r"observe: name must be a str", "site-name-not-str"),
    case(boolean_mask_as_index, TypeError, r"observe\('x1'\): index must be an integer tensor .* boolean", "bool-mask-index"),
    case(contrastive_anchor_of_the_wrong_width, ValueError, r"anchor must end with the factors' latent dimension \(2,\)", "anchor-width"),
    case(bilinear_anchor_of_the_wrong_width, ValueError, r"anchor must have width 3 and the factors width 2 for BilinearCoupling", "bilinear-anchor-width"),
    case(overflowing_latent_float32, ValueError, r"latent \(at distance 1e\+25 .*\) lies so far .* beyond the range of torch.float32 .*use float64", "overflow-latent-f32"),
    case(overflowing_latent_float64, ValueError, r"latent \(at distance 1e\+160 .*\) lies so far .* beyond the range of torch.float64", "overflow-latent-f64"),
    case(overflowing_latent_in_a_model_float32, ValueError, r"latent \(at distance 1e\+25 .* beyond the range of torch.float32", "overflow-latent-model-f32"),
    case(overflowing_anchor_rbf_float64, ValueError, r"anchor lies 1e\+20 from the support's centre, beyond what torch.float64 resolves .* RBFCoupling cannot", "overflow-anchor-rbf-f64"),
    case(overflowing_anchor_laplace_float32, ValueError, r"anchor lies 1e\+25 .* torch.float32 .* LaplaceCoupling cannot", "overflow-anchor-laplace-f32"),
    case(svi_step_arguments_swapped, ValueError, r"inputs to recognition 'r1' of shape \(8, 3\) do not fit its network", "svi-step-arguments-swapped"),
]


# ------------------------------------------------------------------------------------------ the test
def _copy(value):
    """A deep copy of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def _assert_same(before, after, where: str) -> None:
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor), where
        assert before.shape == after.shape and before.dtype == after.dtype, where
        assert torch.equal(before, after) or torch.allclose(before, after, rtol=0, atol=0, equal_nan=True), (
            f"{where} changed"
        )
    elif isinstance(before, dict):
        assert list(before) == list(after), f"{where}: keys {list(before)} became {list(after)}"
        for k in before:
            _assert_same(before[k], after[k], f"{where}[{k!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after)):
            _assert_same(b, a, f"{where}[{i}]")
    else:
        assert before == after, f"{where}: {before!r} became {after!r}"


def _state(bad: Bad) -> dict:
    store = pyro.get_param_store()
    return _copy(
        {
            "store": {name: store[name] for name in store.keys()},
            "constraints": {name: repr(c) for name, c in store.get_state()["constraints"].items()},
            "modules": [m.state_dict() for m in bad.modules],
            "grads": [{n: p.grad for n, p in m.named_parameters()} for m in bad.modules],
            "training": [[s.training for s in m.modules()] for m in bad.modules],
            "optims": [o.get_state() for o in bad.optims],
        }
    )


def _build(build, tmp_path) -> Bad:
    return build(str(tmp_path)) if build.__code__.co_argcount else build()


def test_catalogue_has_at_least_20_cases_with_unique_ids():
    ids = [p.id for p in CATALOGUE]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(("build", "error", "match"), CATALOGUE)
def test_bad_input_is_refused_cleanly(build, error, match, tmp_path):
    bad = _build(build, tmp_path)
    before = _state(bad)
    with pytest.raises(error, match=match) as raised:
        bad.call()
    assert type(raised.value) in (ValueError, TypeError, FileNotFoundError)
    _assert_same(before, _state(bad), "state")


def test_a_failed_call_leaves_no_half_registered_parameters():
    """After a failing SVI step the same model trains normally and registers its modules once."""
    r1, r2, model = _two_view()
    svi, _ = _svi(model)
    x1, x2 = _data()
    with pytest.raises(ValueError, match="observe"):
        svi.step(x1, x2[:6])
    assert len(pyro.get_param_store()) == 0
    loss = svi.step(x1, x2)
    assert torch.isfinite(torch.tensor(loss))
    assert sorted(pyro.get_param_store().keys()) == sorted(
        f"{r.name}$$${n}" for r in (r1, r2) for n, _ in r.named_parameters()
    )
