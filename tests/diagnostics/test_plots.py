# SPDX-License-Identifier: Apache-2.0
"""Tests of :mod:`pyro_rpm.diagnostics.plots` (Agg backend).

Each function returns a Figure that saves to PNG; the drawn data are checked against independent
computations (moving averages, the least-squares affine map, the R^2 per dimension); bad input
raises errors naming the argument.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pyro_rpm.diagnostics.metrics import linear_r2
from pyro_rpm.diagnostics.plots import plot_elbo, plot_latent_scatter, plot_latent_trajectories, plot_latents_vs_truth


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _saved(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000
    return path


# ---------------------------------------------------------------------------------------------- ELBO
def test_plot_elbo_raw_and_smoothed(tmp_path):
    losses = 10.0 * np.exp(-np.arange(400) / 100) + np.random.default_rng(0).normal(size=400)
    fig = plot_elbo(list(losses), smooth=25)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    raw, smoothed = ax.lines
    np.testing.assert_allclose(raw.get_ydata(), losses)
    reference = np.array([losses[i : i + 25].mean() for i in range(400 - 24)])
    np.testing.assert_allclose(smoothed.get_ydata(), reference, rtol=1e-12)
    np.testing.assert_array_equal(smoothed.get_xdata(), np.arange(25, 401))
    _saved(fig, tmp_path, "elbo")


def test_plot_elbo_inputs():
    losses = torch.linspace(100.0, 10.0, 50)
    fig = plot_elbo(losses, smooth=None, per_datum=10)
    (line,) = fig.axes[0].lines
    np.testing.assert_allclose(line.get_ydata(), losses.numpy() / 10, rtol=1e-6)
    assert "per datum" in fig.axes[0].get_ylabel()

    fig, ax = plt.subplots()
    out = plot_elbo({"seed 0": losses, "seed 1": losses + 1}, ax=ax, smooth=5)
    assert out is fig and len(ax.lines) == 4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0 (mean of 5)", "seed 1 (mean of 5)"]


def test_plot_elbo_from_inference_data():
    az = pytest.importorskip("arviz")
    import xarray as xr

    idata = az.InferenceData(elbo_history=xr.Dataset({"loss": ("step", np.arange(30.0))}))
    fig = plot_elbo(idata, smooth=None)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), np.arange(30.0))
    with pytest.raises(ValueError, match="without an 'elbo_history' group"):
        plot_elbo(az.InferenceData(posterior=xr.Dataset({"z": (("chain", "draw"), np.zeros((1, 3)))})))


def test_plot_elbo_errors():
    with pytest.raises(ValueError, match="1 non-finite value.*step 2"):
        plot_elbo([3.0, 2.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        plot_elbo([])
    with pytest.raises(TypeError, match="history must be a sequence"):
        plot_elbo("loss")
    with pytest.raises(ValueError, match="smooth must be an int"):
        plot_elbo([1.0, 2.0], smooth=0)
    with pytest.raises(TypeError, match="ax must hold matplotlib Axes"):
        plot_elbo([1.0, 2.0], ax="axes")


# ---------------------------------------------------------------------------------------------- latents vs truth
def test_plot_latents_vs_truth(tmp_path):
    rng = np.random.default_rng(0)
    z_true = rng.normal(size=(300, 2))
    z_hat = np.tanh(z_true @ np.array([[1.0, 0.5], [-0.3, 2.0]])) + 0.1 * rng.normal(size=(300, 2))
    fig = plot_latents_vs_truth(torch.as_tensor(z_hat), z_true)
    r2, fitted = linear_r2(z_hat, z_true, multioutput="raw_values", return_prediction=True)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for d, ax in enumerate(axes):
        assert ax.get_title() == f"z[{d}]: R\u00b2 = {r2[d]:.3f}"
        points = ax.collections[0].get_offsets()
        np.testing.assert_allclose(points, np.c_[z_true[:, d], fitted[:, d]])
    assert any(f"{r2.mean():.3f}" in text.get_text() for text in fig.texts)  # the suptitle
    _saved(fig, tmp_path, "latents")

    fig = plot_latents_vs_truth(z_hat, z_true, max_points=50)
    assert fig.axes[0].collections[0].get_offsets().shape == (50, 2)

    with pytest.raises(ValueError, match="same number of samples"):
        plot_latents_vs_truth(z_hat[:10], z_true)
    with pytest.raises(ValueError, match="axes must hold at least 2"):
        plot_latents_vs_truth(z_hat, z_true, axes=[plt.subplots()[1]])


# ---------------------------------------------------------------------------------------------- trajectories
def test_plot_latent_trajectories(tmp_path):
    t = np.linspace(0, 4 * np.pi, 120)
    z_true = np.c_[np.sin(t), np.cos(t)]
    z_hat = z_true @ np.array([[0.0, 2.0], [-1.0, 0.0]]) + 3.0  # a rotation, scaling and shift
    fig = plot_latent_trajectories(z_hat, t=t, z_true=z_true)
    assert len(fig.axes) == 2
    for d, ax in enumerate(fig.axes):
        truth, estimate = ax.lines
        np.testing.assert_allclose(truth.get_ydata(), z_true[:, d])
        np.testing.assert_allclose(estimate.get_ydata(), z_true[:, d], atol=1e-9)  # the affine map undoes it
        np.testing.assert_allclose(estimate.get_xdata(), t)
        assert "R\u00b2 = 1.000" in ax.get_title()
    _saved(fig, tmp_path, "trajectories")

    # several series, no truth: raw learned dimensions against 0..T-1
    fig = plot_latent_trajectories(np.stack([z_hat, -z_hat]))
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    np.testing.assert_array_equal(fig.axes[1].lines[1].get_ydata(), -z_hat[:, 1])

    with pytest.raises(ValueError, match=r"t must have shape \(T,\)"):
        plot_latent_trajectories(z_hat, t=t[:-1])
    with pytest.raises(ValueError, match="z_true must have the same series and times"):
        plot_latent_trajectories(z_hat, z_true=z_true[:-1])
    with pytest.raises(ValueError, match="z must be finite"):
        plot_latent_trajectories(np.full((5, 2), np.nan))


# ---------------------------------------------------------------------------------------------- scatter
def test_plot_latent_scatter(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 3))
    labels = rng.integers(0, 3, size=200)
    fig = plot_latent_scatter(z, labels)
    assert len(fig.axes) == 3  # pairs (0, 1), (0, 2), (1, 2)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    np.testing.assert_allclose(ax.collections[1].get_offsets(), z[labels == 1][:, [0, 1]])
    assert fig.axes[2].get_xlabel() == "z[1]" and fig.axes[2].get_ylabel() == "z[2]"
    _saved(fig, tmp_path, "scatter")

    fig = plot_latent_scatter(z, labels=z[:, 0], dims=[2, 1])  # continuous labels: a colour bar
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "z[2]"
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array(), z[:, 0])

    fig = plot_latent_scatter(torch.as_tensor(z[:, :2]))
    assert len(fig.axes) == 1

    with pytest.raises(ValueError, match="at least 2 dimensions"):
        plot_latent_scatter(z[:, :1])
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
        plot_latent_scatter(z, labels[:10])
    with pytest.raises(ValueError, match="dims must be at least 2 distinct"):
        plot_latent_scatter(z, dims=[1, 1])
    with pytest.raises(ValueError, match="dims must be at least 2 distinct"):
        plot_latent_scatter(z, dims=[0, 3])
