# SPDX-License-Identifier: Apache-2.0
"""Tests of :func:`pyro_rpm.diagnostics.arviz.to_inference_data`.

* groups, dims, coords and shapes of the InferenceData of the canonical two-view model (and of a
  model with nested plates and a deterministic site, and of a discrete-latent model);
* values against independent references: the pointwise log-likelihood against a brute-force
  categorical over the support set with ``torch.distributions.Normal`` factors; ``lp`` and
  ``log_weight`` against the prior, that log-likelihood and the closed-form Gaussian product
  posterior; the posterior draws against that posterior's mean; the posterior predictive against
  the observed indices (``matching_accuracy``) and its expectation :math:`E[p(x = n \\mid z)]`;
* ``az.summary``, ``az.loo``, ``az.compare`` and ``az.plot_posterior`` run on the result;
* the PSIS attributes are finite; the ELBO history is stored; errors on bad input;
* ``import pyro_rpm`` does not import arviz or matplotlib.
"""

import math
import subprocess
import sys
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import two_view_model
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    CategoricalRecognition,
    GaussianRecognition,
    RecognitionGuide,
    observe,
)
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.diagnostics.arviz import to_inference_data

az = pytest.importorskip("arviz")

D = 2
N = 24
S = 64


def _two_view(seed=0, steps=30):
    torch.manual_seed(seed)
    r1 = GaussianRecognition(nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 2 * D)), D, prior_scale=1.0)
    r2 = GaussianRecognition(nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 2 * D)), D, prior_scale=1.0)
    r1.name, r2.name = f"r1_{seed}", f"r2_{seed}"
    model = two_view_model(r1, r2, D)
    guide = RecognitionGuide(model)
    x1, x2, _ = two_view_gaussian(N, seed=seed)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), RPM_ELBO())
    losses = [svi.step(x1, x2) / N for _ in range(steps)]
    return model, guide, (x1, x2), (r1, r2), losses


@pytest.fixture
def fitted():
    return _two_view()


def _khat_warnings_only(caught):
    """az.loo / az.compare may warn that some Pareto k are high (and arviz 0.23's az.compare calls a
    pandas method that pandas 3 deprecates); nothing else is expected."""
    for w in caught:
        message = str(w.message)
        khat = issubclass(w.category, UserWarning) and "shape parameter of Pareto" in message
        pandas_inplace = issubclass(w.category, DeprecationWarning) and "inplace keyword" in message
        assert khat or pandas_inplace, message


# ---------------------------------------------------------------------------------------------- structure
def test_groups_dims_coords_shapes(fitted, tmp_path):
    model, guide, (x1, x2), _, losses = fitted
    idata = to_inference_data(model, guide, x1, x2, num_samples=S, elbo_history=losses, psis_particles=200)
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "sample_stats",
        "observed_data",
        "elbo_history",
    }
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data", "z_dim_0") and z.shape == (1, S, N, D)
    np.testing.assert_array_equal(idata.posterior["data"].values, np.arange(N))
    for name in ("x1", "x2"):
        lik = idata.log_likelihood[name]
        assert lik.dims == ("chain", "draw", "data") and lik.shape == (1, S, N)
        assert lik.dtype == np.float64 and (lik.values <= 0).all()
        rep = idata.posterior_predictive[name]
        assert rep.dims == ("chain", "draw", "data") and rep.shape == (1, S, N)
        assert np.issubdtype(rep.dtype, np.integer) and rep.values.min() >= 0 and rep.values.max() < N
        assert idata.observed_data[name].dims == ("data",)
        np.testing.assert_array_equal(idata.observed_data[name].values, np.arange(N))
        assert lik.attrs["support_size"] == N
        assert lik.attrs["chance_log_prob"] == pytest.approx(-math.log(N))
    stats = idata.sample_stats
    assert stats["lp"].dims == ("chain", "draw") and stats["log_weight"].shape == (1, S)
    assert stats["pointwise_log_weight"].dims == ("chain", "draw", "data")
    history = idata.elbo_history["loss"]
    assert history.dims == ("step",) and np.allclose(history.values, losses)
    attrs = idata.attrs
    assert attrs["inference_library"] == "pyro" and attrs["num_draws"] == S
    for key in ("psis_khat", "psis_khat_pointwise_max", "psis_khat_pointwise_median", "elbo", "elbo_se"):
        assert math.isfinite(attrs[key]), key
    assert 0 <= attrs["psis_khat_pointwise_fraction_bad"] <= 1
    assert attrs["psis_particles"] == 200

    idata.to_netcdf(str(tmp_path / "idata.nc"))  # every group and attribute serialises
    loaded = az.from_netcdf(str(tmp_path / "idata.nc"))
    assert set(loaded.groups()) == set(idata.groups())
    pp = idata.posterior_predictive["x1"]
    assert loaded.posterior_predictive["x1"].attrs["matching_accuracy"] == pp.attrs["matching_accuracy"]
    np.testing.assert_array_equal(loaded.log_likelihood["x2"].values, idata.log_likelihood["x2"].values)


# ---------------------------------------------------------------------------------------------- values
def _reference_log_lik(z, factors):
    """log f(z | x_n) - logsumexp_m log f(z | x_m), by brute force: (S, N) from z (S, N, D)."""
    table = torch.distributions.Normal(factors.loc.double(), factors.scale.double()).log_prob(z[:, :, None, :]).sum(-1)
    return table.diagonal(dim1=-2, dim2=-1) - table.logsumexp(-1)


@pytest.mark.parametrize("draws_per_batch", [None, 7])
def test_values_against_brute_force(fitted, draws_per_batch):
    model, guide, (x1, x2), (r1, r2), _ = fitted
    idata = to_inference_data(model, guide, x1, x2, num_samples=S, draws_per_batch=draws_per_batch, psis_particles=None)
    z = torch.as_tensor(idata.posterior["z"].values[0], dtype=torch.float64)  # (S, N, D)
    with torch.no_grad():
        f1, f2 = r1(x1), r2(x2)
    lik1, lik2 = _reference_log_lik(z, f1), _reference_log_lik(z, f2)
    np.testing.assert_allclose(idata.log_likelihood["x1"].values[0], lik1.numpy(), atol=2e-4)
    np.testing.assert_allclose(idata.log_likelihood["x2"].values[0], lik2.numpy(), atol=2e-4)

    # the tied posterior q = p f1 f2 / p for a N(0, 1) prior: precision l1 + l2 - 1, mean (m1 l1 + m2 l2) / precision
    l1, l2 = f1.scale.double() ** -2, f2.scale.double() ** -2
    precision = l1 + l2 - 1.0
    mean = (f1.loc.double() * l1 + f2.loc.double() * l2) / precision
    log_q = torch.distributions.Normal(mean, precision**-0.5).log_prob(z).sum(-1)  # (S, N)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    pointwise = log_prior + lik1 + lik2 - log_q
    stats = idata.sample_stats
    np.testing.assert_allclose(stats["lp"].values[0], (log_prior + lik1 + lik2).sum(-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats["log_weight"].values[0], pointwise.sum(-1).numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stats["pointwise_log_weight"].values[0], pointwise.numpy(), atol=1e-3)
    assert idata.attrs["elbo"] == pytest.approx(pointwise.sum(-1).mean().item(), rel=1e-5)

    # the draws come from q: their mean is within 5 standard errors of q's mean for every datum
    se = precision**-0.5 / math.sqrt(S)
    assert ((z.mean(0) - mean).abs() < 5 * se).all()

    # posterior predictive: matching accuracy = share of draws that return the observed index
    for name, lik in (("x1", lik1), ("x2", lik2)):
        rep = idata.posterior_predictive[name]
        hits = (rep.values[0] == np.arange(N)).mean()
        assert rep.attrs["matching_accuracy"] == pytest.approx(hits)
        expected = lik.exp().mean().item()  # E[p(x = n | z)]: the expected share
        assert abs(hits - expected) < 5 * math.sqrt(expected * (1 - expected) / (S * N)) + 1e-3


def test_nested_plates_and_deterministic_site():
    torch.manual_seed(0)
    G = 3
    r = GaussianRecognition(nn.Linear(4, 2 * D), D, name="r_nested")
    x = torch.randn(N, 4)

    def model(x):
        f = r(x)
        with pyro.plate("group", G, dim=-2), pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.deterministic("radius", z.norm(dim=-1))
            observe("x", f, z)

    idata = to_inference_data(model, RecognitionGuide(model), x, num_samples=10, psis_particles=None)
    assert idata.posterior["z"].dims == ("chain", "draw", "group", "data", "z_dim_0")
    assert idata.posterior["z"].shape == (1, 10, G, N, D)
    radius = idata.posterior["radius"]
    assert radius.dims == ("chain", "draw", "group", "data")
    np.testing.assert_allclose(radius.values, np.linalg.norm(idata.posterior["z"].values, axis=-1), rtol=1e-5)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "group", "data")
    assert idata.observed_data["x"].shape == (G, N)
    assert idata.sample_stats["pointwise_log_weight"].dims == ("chain", "draw", "data")  # the rightmost shared plate
    np.testing.assert_array_equal(idata.posterior["group"].values, np.arange(G))


def test_discrete_latent():
    K = 3
    torch.manual_seed(0)
    r = CategoricalRecognition(nn.Linear(4, K), K, name="r_cat")
    x = torch.randn(N, 4)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Categorical(torch.ones(K) / K))
            observe("x", f, k)

    idata = to_inference_data(model, RecognitionGuide(model), x, num_samples=20, psis_particles=None)
    k = idata.posterior["k"]
    assert k.dims == ("chain", "draw", "data") and np.issubdtype(k.dtype, np.integer)
    assert set(np.unique(k.values)) <= set(range(K))
    assert np.isfinite(idata.log_likelihood["x"].values).all()


# ---------------------------------------------------------------------------------------------- arviz
def test_summary_loo_compare_and_plot_posterior(fitted):
    model, guide, (x1, x2), _, _ = fitted
    idata = to_inference_data(model, guide, x1, x2, num_samples=S, psis_particles=None)
    summary = az.summary(idata, var_names=["z"], kind="stats")
    assert summary.shape[0] == N * D
    np.testing.assert_allclose(summary["mean"].values, idata.posterior["z"].values[0].mean(0).ravel(), atol=1e-3)

    with pytest.raises(TypeError, match="var_name"):
        az.loo(idata)  # two likelihood sites: az.loo needs var_name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loo = az.loo(idata, var_name="x1", pointwise=True)
    _khat_warnings_only(caught)
    assert loo.loo_i.shape == (N,) and math.isfinite(loo.elpd_loo)
    # leave-one-out cannot beat the in-sample (posterior-averaged) log predictive density
    lppd = np.log(np.exp(idata.log_likelihood["x1"].values[0]).mean(0)).sum()
    assert loo.elpd_loo <= lppd + 1e-9

    other = to_inference_data(*_two_view(seed=1, steps=5)[:2], x1, x2, num_samples=S, psis_particles=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = az.compare({"trained": idata, "other": other}, var_name="x1")
    _khat_warnings_only(caught)
    assert set(table.index) == {"trained", "other"} and table["rank"].min() == 0

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import MatplotlibDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        axes = az.plot_posterior(idata, var_names=["z"], coords={"data": [0, 1]})
    # arviz 0.23 calls a matplotlib helper that matplotlib 3.11 deprecates; nothing else is expected
    assert all(issubclass(w.category, MatplotlibDeprecationWarning) for w in caught), [str(w.message) for w in caught]
    assert np.asarray(axes).size == 2 * D
    assert {ax.get_title() for ax in np.ravel(axes)} == {f"z\n{n}, {d}" for n in (0, 1) for d in range(D)}
    plt.close("all")


# ---------------------------------------------------------------------------------------------- options and errors
def test_elbo_history_mapping(fitted):
    model, guide, args, _, losses = fitted
    history = {"train": losses, "held_out": torch.tensor(losses[:10])}
    idata = to_inference_data(model, guide, *args, num_samples=4, psis_particles=None, elbo_history=history)
    assert idata.elbo_history["train"].dims == ("train_step",)
    assert idata.elbo_history["held_out"].shape == (10,)


def test_errors(fitted):
    model, guide, (x1, x2), (r1, r2), _ = fitted
    with pytest.raises(ValueError, match="num_samples"):
        to_inference_data(model, guide, x1, x2, num_samples=0)
    with pytest.raises(ValueError, match="psis_particles"):
        to_inference_data(model, guide, x1, x2, num_samples=4, psis_particles=10)
    with pytest.raises(ValueError, match="draws_per_batch"):
        to_inference_data(model, guide, x1, x2, num_samples=4, draws_per_batch=0)
    with pytest.raises(TypeError, match="elbo_history"):
        to_inference_data(model, guide, x1, x2, num_samples=4, elbo_history="loss")
    with pytest.raises(ValueError, match="elbo_history"):
        to_inference_data(model, guide, x1, x2, num_samples=4, elbo_history=[])
    with pytest.raises(TypeError, match="guide must be callable"):
        to_inference_data(model, None, x1, x2)

    def subsampled(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0], subsample_size=8) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

    with pytest.raises(ValueError, match="plate 'data' subsamples 8 of 24"):
        to_inference_data(subsampled, RecognitionGuide(subsampled), x1, x2, num_samples=4)


def test_import_is_lazy():
    code = (
        "import sys, pyro_rpm, pyro_rpm.diagnostics, pyro_rpm.diagnostics.plots, pyro_rpm.diagnostics.metrics; "
        "print(sorted(m for m in ('arviz', 'matplotlib', 'xarray', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.cuda
def test_cuda_model():
    device = torch.device("cuda")
    r = GaussianRecognition(nn.Linear(4, 2 * D), D, prior_scale=1.0, name="r_cuda").to(device)
    x = torch.randn(N, 4, device=device)
    zero = torch.zeros(D, device=device)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0], device=device):
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            observe("x", f, z)

    idata = to_inference_data(model, RecognitionGuide(model), x, num_samples=8, psis_particles=100)
    assert idata.posterior["z"].shape == (1, 8, N, D)
    assert np.isfinite(idata.log_likelihood["x"].values).all() and math.isfinite(idata.attrs["psis_khat"])
