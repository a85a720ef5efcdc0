# SPDX-License-Identifier: Apache-2.0
r"""Couplings :math:`g(z, z')`: pairwise tables, closed-form expectations, parameters and checks.

Relative error: :math:`|a - b| / \max(|b|, 1)` against a float64 reference.
"""

import copy

import pyro
import pyro.poutine as poutine
import pytest
import torch

import pyro_rpm
from pyro_rpm import (
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CosineCoupling,
    DeltaFactor,
    GaussianFactor,
    LaplaceCoupling,
    RBFCoupling,
)

D = 3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b).abs() / b.abs().clamp(min=1.0)).max())


def make_coupling(kind: str, dim: int = D, learn: bool = True):
    if kind == "bilinear":
        coupling = BilinearCoupling(dim, learn=learn)
        with torch.no_grad():
            coupling.weight.copy_(torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=torch.Generator().manual_seed(9)))
        return coupling
    if kind == "rbf":
        return RBFCoupling(0.7, learn=learn)
    if kind == "anisotropic":
        return AnisotropicRBFCoupling(dim, torch.linspace(0.4, 1.6, dim), learn=learn)
    if kind == "cosine":
        return CosineCoupling(0.2, learn=learn)
    return LaplaceCoupling(0.5, learn=learn)


KINDS = ["bilinear", "rbf", "anisotropic", "cosine", "laplace"]
CLOSED_FORM = ["bilinear", "rbf", "anisotropic"]


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_equals_broadcast_forward(kind):
    coupling = make_coupling(kind)
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(2, 6, D, generator=g)
    atoms = 3 * torch.randn(7, D, generator=g)
    table = coupling.pairwise(z, atoms)
    assert table.shape == (2, 6, 7) and table.dtype == torch.float32
    reference = copy.deepcopy(coupling).double()(z.double().unsqueeze(-2), atoms.double())
    assert reference.shape == (2, 6, 7)
    assert rel_err(table, reference) < 1e-5
    # elementwise forward in float32 agrees too, and a batch-less latent gives (M,)
    assert rel_err(coupling(z.unsqueeze(-2), atoms), reference) < 1e-5
    assert coupling.pairwise(z[0, 0], atoms).shape == (7,)


@pytest.mark.parametrize("kind", ["rbf", "anisotropic"])
def test_rbf_pairwise_accurate_at_small_lengthscale(kind):
    """Narrow kernels: the expanded quadratic must not lose the table to cancellation."""
    coupling = RBFCoupling(1e-2) if kind == "rbf" else AnisotropicRBFCoupling(D, torch.tensor([1e-2, 1e-3, 0.1]))
    g = torch.Generator().manual_seed(2)
    atoms = torch.empty(20, D).uniform_(-10, 10, generator=g)
    z = torch.cat([torch.empty(10, D).uniform_(-10, 10, generator=g), atoms[:5]])
    reference = copy.deepcopy(coupling).double()(z.double().unsqueeze(-2), atoms.double())
    assert rel_err(coupling.pairwise(z, atoms), reference) < 1e-5


@pytest.mark.parametrize("kind", CLOSED_FORM)
def test_expected_pairwise_gaussian_matches_monte_carlo(kind):
    r"""log E_{z'~f_m}[exp g(z, z')] in closed form vs a float64 Monte Carlo average (2e5 draws, 5 s.e.)."""
    coupling = make_coupling(kind).double()
    g = torch.Generator().manual_seed(3)
    Bz, M, S = 3, 4, 200000
    z = 0.6 * torch.randn(Bz, D, generator=g, dtype=torch.float64)
    loc = 0.6 * torch.randn(M, D, generator=g, dtype=torch.float64)
    scale = torch.empty(M, D, dtype=torch.float64).uniform_(0.2, 0.8, generator=g)
    factors = GaussianFactor(loc, scale)
    closed = coupling.expected_pairwise(z, factors)
    assert closed.shape == (Bz, M) and closed.dtype == torch.float64

    draws = loc + scale * torch.randn(S, M, D, generator=g, dtype=torch.float64)  # (S, M, D)
    weights = coupling(z[:, None, None, :], draws).exp()  # (B, S, M)
    mean = weights.mean(1)
    standard_error = weights.std(1) / (S**0.5 * mean)  # of log mean, delta method
    monte_carlo = mean.log()
    assert (standard_error < 0.01).all()
    assert ((closed - monte_carlo).abs() < 5 * standard_error + 1e-4).all(), (closed - monte_carlo, standard_error)
    # the tilt matters: the closed form differs from plugging in the mean
    assert (closed - coupling.pairwise(z, loc)).abs().max() > 20 * standard_error.max()


@pytest.mark.parametrize("kind", KINDS)
def test_expected_pairwise_point_mass_equals_pairwise(kind):
    coupling = make_coupling(kind)
    loc = torch.randn(5, D)
    z = torch.randn(4, D)
    factors = DeltaFactor(loc, 0.3)  # point mass: eps only smooths densities
    torch.testing.assert_close(coupling.expected_pairwise(z, factors), coupling.pairwise(z, loc))


@pytest.mark.parametrize("kind", ["cosine", "laplace"])
def test_expected_pairwise_without_closed_form_uses_mean(kind):
    coupling = make_coupling(kind)
    factors = GaussianFactor(torch.randn(5, D), torch.full((5, D), 0.4))
    z = torch.randn(4, D)
    torch.testing.assert_close(coupling.expected_pairwise(z, factors), coupling.pairwise(z, factors.loc))


@torch.no_grad()
def test_rbf_parameterisation():
    coupling = RBFCoupling(0.7)
    assert float(coupling.lengthscale) == pytest.approx(0.7)
    assert float(coupling.precision) == pytest.approx(0.7**-2)
    z, z2 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5])
    assert float(coupling(z, z2)) == pytest.approx(-(1.0 + 2.25) / (2 * 0.49), rel=1e-6)
    aniso = AnisotropicRBFCoupling(2, torch.tensor([0.5, 2.0]))
    assert float(aniso(z, z2)) == pytest.approx(-0.5 * (1.0 / 0.25 + 2.25 / 4.0), rel=1e-6)
    assert float(CosineCoupling(0.5)(z, 2 * z)) == pytest.approx(2.0, rel=1e-6)
    assert float(LaplaceCoupling(0.5)(z, z2)) == pytest.approx(-(1.0 + 1.5) / 0.5, rel=1e-6)
    assert float(BilinearCoupling(2)(z, z2)) == pytest.approx(1.0, rel=1e-6)


def test_non_positive_hyperparameters_raise():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lengthscale"):
            RBFCoupling(bad)
        with pytest.raises(ValueError, match="temperature"):
            CosineCoupling(bad)
        with pytest.raises(ValueError, match="scale"):
            LaplaceCoupling(bad)
    with pytest.raises(ValueError, match="lengthscale"):
        AnisotropicRBFCoupling(2, torch.tensor([1.0, -1.0]))
    for bad_dim in (0, -2, 1.5):
        with pytest.raises(ValueError, match="dim"):
            BilinearCoupling(bad_dim)
        with pytest.raises(ValueError, match="dim"):
            AnisotropicRBFCoupling(bad_dim)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["pairwise", "forward", "expected_pairwise"])
def test_params_registered_in_param_store(kind, method):
    coupling = make_coupling(kind, learn=True)
    coupling.name = f"coupling_{kind}"
    z, atoms = torch.randn(3, D), torch.randn(4, D)
    calls = {
        "pairwise": lambda: coupling.pairwise(z, atoms),
        "forward": lambda: coupling(z, atoms[:3]),
        "expected_pairwise": lambda: coupling.expected_pairwise(z, GaussianFactor(atoms, torch.ones(4, D))),
    }
    trace = poutine.trace(calls[method]).get_trace()
    keys = set(pyro.get_param_store().keys())
    names = {f"coupling_{kind}$$${name}" for name, _ in coupling.named_parameters()}
    assert names and keys == names
    assert {name for name, site in trace.nodes.items() if site["type"] == "param"} == names


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_couplings_register_nothing(kind):
    coupling = make_coupling(kind, learn=False)
    assert not list(coupling.parameters())
    coupling.pairwise(torch.randn(3, D), torch.randn(4, D))
    assert len(pyro.get_param_store().keys()) == 0


# ----------------------------------------------------------------- couplings follow the model's dtype (issue 14, 12)
def _float64_references():
    return [
        (lambda: pyro_rpm.RBFCoupling(0.1), "lengthscale", 0.1),
        (lambda: pyro_rpm.AnisotropicRBFCoupling(2, torch.tensor([0.1, 0.3], dtype=torch.float64)), "lengthscale", [0.1, 0.3]),
        (lambda: pyro_rpm.CosineCoupling(0.07), "temperature", 0.07),
        (lambda: pyro_rpm.LaplaceCoupling(0.3), "scale", 0.3),
        (lambda: pyro_rpm.CosineCoupling(0.07, learn=True), "temperature", 0.07),
        (lambda: pyro_rpm.RBFCoupling(0.1, learn=False), "lengthscale", 0.1),
    ]


@pytest.mark.parametrize("case", range(6))
def test_to_float64_recovers_the_float64_value_exactly(case):
    """``.to(torch.float64)`` of an untrained coupling gives its value to float64 rounding (it gave float32's,
    3.2e-8 relative off for RBFCoupling(0.1)); ``.double()`` too."""
    make, attr, value = _float64_references()[case]
    want = torch.tensor(value, dtype=torch.float64)
    for convert in (lambda c: c.to(torch.float64), lambda c: c.double()):
        coupling = convert(make())
        got = getattr(coupling, attr).detach()
        assert got.dtype == torch.float64
        assert float(((got - want).abs() / want).max()) <= 4e-16


def test_a_float32_coupling_in_a_float64_model_uses_the_float64_value():
    """RBFCoupling(0.1) left in float32 inside float64 computations: g(z, z'), the table and the contrastive
    normaliser equal float64 references with lengthscale 0.1 to 1e-15 (they were 6e-8 off), and the
    gradient still reaches the (float32) parameter."""
    torch.manual_seed(0)
    coupling = pyro_rpm.RBFCoupling(0.1)
    z, z2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    want = -((z - z2) ** 2).sum(-1) / (2 * 0.1**2)
    got = coupling(z, z2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
    atoms = torch.randn(7, 3, dtype=torch.float64)
    table = -((z[:, None] - atoms) ** 2).sum(-1) / (2 * 0.1**2)
    torch.testing.assert_close(coupling.pairwise(z, atoms), table, rtol=1e-14, atol=1e-14)
    factors = pyro_rpm.DeltaFactor(atoms)
    lse = coupling.expected_logsumexp(z, factors, backend="dense")
    torch.testing.assert_close(lse, table.logsumexp(-1), rtol=1e-14, atol=1e-14)
    lse.sum().backward()
    assert coupling.log_lengthscale.grad is not None and coupling.log_lengthscale.dtype == torch.float32


def test_a_trained_coupling_converts_like_any_module():
    """Once the parameter moved, ``.to(float64)`` converts the current value (no reset to the initial one)."""
    coupling = pyro_rpm.RBFCoupling(0.1)
    with torch.no_grad():
        coupling.log_lengthscale.add_(0.25)
    current = coupling.log_lengthscale.detach().clone()
    coupling = coupling.to(torch.float64)
    assert torch.equal(coupling.log_lengthscale.detach(), current.double())
    z = torch.randn(4, 1, dtype=torch.float64)
    want = -0.5 * (-2 * coupling.log_lengthscale.detach()).exp().expand(4)
    torch.testing.assert_close(coupling(z, z + 1).detach(), want, rtol=1e-15, atol=0)
