# SPDX-License-Identifier: Apache-2.0
"""Recognition modules: factor construction, parameter registration, caching and bad input."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_rpm import (
    CategoricalFactor,
    CategoricalRecognition,
    DeltaFactor,
    DeltaRecognition,
    GaussianFactor,
    GaussianRecognition,
    recognition_cache,
)


class Counting(nn.Module):
    """Wraps a network and counts its evaluations."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


class Constant(nn.Module):
    """Returns a fixed output (row-broadcast to the batch)."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("output", output)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.output.expand(x.shape[0], -1) + 0 * self.dummy


# ----------------------------------------------------------------------------------------------
# Output construction
# ----------------------------------------------------------------------------------------------


def test_gaussian_recognition_shapes_and_values():
    net = nn.Linear(5, 4)
    rec = GaussianRecognition(net, 2, min_scale=1e-3)
    x = torch.randn(7, 5)
    factor = rec(x)
    assert isinstance(factor, GaussianFactor)
    assert factor.batch_shape == (7,) and factor.event_shape == (2,)
    out = net(x)
    torch.testing.assert_close(factor.loc, out[:, :2])
    torch.testing.assert_close(factor.scale, F.softplus(out[:, 2:]) + 1e-3)
    factor.loc.sum().backward()
    assert net.weight.grad is not None


def test_gaussian_recognition_shared_scale():
    net = nn.Linear(5, 3)
    rec = GaussianRecognition(net, 3, shared_scale=True, init_scale=0.7)
    names = dict(rec.named_parameters())
    assert "raw_scale" in names and names["raw_scale"].shape == (3,)
    factor = rec(torch.randn(6, 5))
    assert factor.loc.shape == (6, 3) and factor.scale.shape == (6, 3)
    torch.testing.assert_close(factor.scale, torch.full((6, 3), 0.7))
    factor.scale.sum().backward()
    assert rec.raw_scale.grad is not None and (rec.raw_scale.grad != 0).all()
    with pytest.raises(ValueError, match="last dimension of size 3"):
        GaussianRecognition(nn.Linear(5, 6), 3, shared_scale=True)(torch.randn(2, 5))


def test_gaussian_recognition_prior_plus_network_form():
    D = 3
    net = nn.Linear(4, 2 * D)
    with torch.no_grad():
        net.weight.mul_(20.0)  # push the raw outputs to both extremes of the softplus
    prior_loc, prior_scale = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.5, 1.0, 3.0])
    rec = GaussianRecognition(net, D, prior_loc=prior_loc, prior_scale=prior_scale, min_scale=1e-3)
    x = torch.randn(64, 4)
    factor = rec(x)
    out = net(x)
    assert out[:, D:].min() < -20 and out[:, D:].max() > 20
    # precision never below the prior precision
    assert (factor.scale <= prior_scale).all()
    precision = prior_scale.pow(-2) + F.softplus(out[:, D:]) + 1e-3
    eta1 = prior_loc * prior_scale.pow(-2) + out[:, :D]
    torch.testing.assert_close(factor.precision, precision)
    torch.testing.assert_close(factor.loc, eta1 / precision)
    # scalar prior scale broadcasts over dimensions
    rec2 = GaussianRecognition(nn.Linear(4, 2 * D), D, prior_scale=2.0)
    assert (rec2(x).scale <= 2.0).all()


def test_delta_recognition():
    net = nn.Linear(5, 3)
    rec = DeltaRecognition(net, 3, eps=0.01)
    x = torch.randn(4, 5)
    factor = rec(x)
    assert isinstance(factor, DeltaFactor) and factor.is_point_mass and factor.eps == 0.01
    assert torch.equal(factor.rsample(), net(x))
    noisy = DeltaRecognition(net, 3, eps=0.01, sample_noise=True)(x)
    assert noisy.sample_noise and not noisy.is_point_mass


def test_categorical_recognition():
    net = nn.Linear(5, 4)
    rec = CategoricalRecognition(net, 4)
    x = torch.randn(6, 5)
    factor = rec(x)
    assert isinstance(factor, CategoricalFactor)
    assert factor.batch_shape == (6,) and factor.num_states == 4
    torch.testing.assert_close(factor.logits, net(x).log_softmax(-1))


def test_default_names_are_unique():
    a, b = GaussianRecognition(nn.Linear(2, 2), 1), GaussianRecognition(nn.Linear(2, 2), 1)
    assert a.name != b.name


# ----------------------------------------------------------------------------------------------
# Parameter store and caching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "delta", "categorical"])
def test_params_registered_in_param_store(kind):
    if kind == "gaussian":
        rec = GaussianRecognition(nn.Linear(5, 4), 2, shared_scale=False, name="enc_a")
    elif kind == "delta":
        rec = DeltaRecognition(nn.Linear(5, 2), 2, name="enc_a")
    else:
        rec = CategoricalRecognition(nn.Linear(5, 3), 3, name="enc_a")
    x = torch.randn(3, 5)
    assert len(pyro.get_param_store().keys()) == 0
    trace = poutine.trace(lambda: rec(x)).get_trace()
    keys = set(pyro.get_param_store().keys())
    assert keys == {f"enc_a$$${name}" for name, _ in rec.named_parameters()}
    assert all(key.startswith("enc_a") for key in keys)
    param_sites = [name for name, site in trace.nodes.items() if site["type"] == "param"]
    assert set(param_sites) == keys


def test_shared_scale_param_registered():
    rec = GaussianRecognition(nn.Linear(5, 2), 2, shared_scale=True, name="shared")
    poutine.trace(lambda: rec(torch.randn(3, 5))).get_trace()
    assert "shared$$$raw_scale" in pyro.get_param_store().keys()


def test_recognition_cache():
    net = Counting(nn.Linear(5, 4))
    rec = GaussianRecognition(net, 2)
    x = torch.randn(3, 5)
    with recognition_cache():
        first = rec(x)
        assert rec(x) is first
        assert net.calls == 1
        other = rec(x.clone())  # equal values, different tensor: re-evaluated
        assert other is not first and net.calls == 2
        torch.testing.assert_close(other.loc, first.loc)
        x.add_(1.0)  # an in-place change (new version) is re-evaluated too
        changed = rec(x)
        assert changed is not first and net.calls == 3
    # outside the cache every call evaluates the network
    assert rec(x) is not rec(x) and net.calls == 5
    with recognition_cache():
        assert rec(x) is not changed  # a fresh cache does not see the old entries


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_raises_naming_the_recognition(bad):
    rec = GaussianRecognition(nn.Linear(5, 4), 2, name="view_one")
    x = torch.randn(3, 5)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="view_one"):
        rec(x)


def test_non_finite_network_output_raises():
    output = torch.tensor([[0.0, float("nan"), 0.0, 0.0]])
    rec = GaussianRecognition(Constant(output), 2, name="bad_net")
    with pytest.raises(ValueError, match="network output") as info:
        rec(torch.randn(3, 5))
    assert "bad_net" in str(info.value)
    delta = DeltaRecognition(Constant(torch.tensor([[float("inf"), 0.0]])), 2, name="bad_delta")
    with pytest.raises(ValueError, match="network output"):
        delta(torch.randn(3, 5))
    # validate=False skips the checks (documented opt-out)
    GaussianRecognition(Constant(output), 2, validate=False)(torch.randn(3, 5))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianRecognition(nn.Linear(5, 3), 2),
        lambda: GaussianRecognition(nn.Linear(5, 2), 3, shared_scale=True),
        lambda: DeltaRecognition(nn.Linear(5, 4), 3),
        lambda: CategoricalRecognition(nn.Linear(5, 4), 3),
    ],
)
def test_wrong_output_width_raises(make):
    with pytest.raises(ValueError, match="last dimension"):
        make()(torch.randn(2, 5))


def test_constructor_checks():
    net = nn.Linear(2, 2)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="latent_dim"):
            GaussianRecognition(net, bad)
        with pytest.raises(ValueError, match="latent_dim"):
            DeltaRecognition(net, bad)
    for bad in (1, 0, True):
        with pytest.raises(ValueError, match="num_states"):
            CategoricalRecognition(net, bad)
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError, match="eps"):
            DeltaRecognition(net, 2, eps=bad)
        with pytest.raises(ValueError, match="init_scale"):
            GaussianRecognition(net, 1, shared_scale=True, init_scale=bad)
        with pytest.raises(ValueError, match="min_scale"):
            GaussianRecognition(net, 1, min_scale=bad)
        with pytest.raises(ValueError, match="prior_scale"):
            GaussianRecognition(net, 1, prior_scale=bad)
    with pytest.raises(TypeError, match="eps"):
        DeltaRecognition(net, 2, eps="small")
    with pytest.raises(ValueError, match="prior_scale"):
        GaussianRecognition(net, 1, prior_loc=0.0)
    for bad_net in (3, "net", None):
        with pytest.raises(TypeError, match="net"):
            GaussianRecognition(bad_net, 1)
    with pytest.raises(TypeError, match="name"):
        GaussianRecognition(net, 1, name=3)


def test_non_tensor_and_dtype_mismatch_inputs():
    rec = GaussianRecognition(nn.Linear(5, 4), 2, name="typed")
    with pytest.raises(TypeError, match="typed"):
        rec([[0.0] * 5])
    with pytest.raises(ValueError, match="dtype"):
        rec(torch.randn(3, 5, dtype=torch.float64))
