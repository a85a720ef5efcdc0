# SPDX-License-Identifier: Apache-2.0
r"""The InfoNCE identity (Aitchison & Ganev, §4.5).

With deterministic encoders (:class:`~pyro_rpm.DeltaRecognition`), the tied guide, the prior
:math:`z_1 \sim F_1` (:class:`~pyro_rpm.MarginalPrior`) and
:math:`p(z_2 \mid z_1) \propto F_2(z_2)\, e^{g(z_1, z_2)}` (:class:`~pyro_rpm.ContrastivePrior`),
both over the batch, the negative RPM ELBO per datum is InfoNCE plus :math:`\log B`:

.. math::

    -\mathcal L / B = -\frac1B \sum_n \Big[g(a_n, b_n) - \log\sum_m e^{g(a_n, b_m)}\Big] + \log B,

with :math:`a = e_1(x_1)` and :math:`b = e_2(x_2)`. The reference below writes :math:`g` for each
coupling by explicit broadcasting over the raw encoder outputs (not through the coupling's own
``pairwise``), and the gradients w.r.t. the encoder and coupling parameters are compared too.
"""

import math

import pyro
import pytest
import torch
from _models import infonce_model
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    AnisotropicRBFCoupling,
    BilinearCoupling,
    CosineCoupling,
    DeltaRecognition,
    LaplaceCoupling,
    RBFCoupling,
    RecognitionGuide,
)

B, OBS = 16, 5


def _pairwise_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _bilinear(c: BilinearCoupling, a, b):
    return a @ c.weight @ b.T


def _rbf(c: RBFCoupling, a, b):
    return -_pairwise_sq(a, b) / (2 * c.lengthscale**2)


def _aniso(c: AnisotropicRBFCoupling, a, b):
    diff = a[:, None, :] - b[None, :, :]
    return -(diff**2 / (2 * c.lengthscale**2)).sum(-1)


def _cosine(c: CosineCoupling, a, b):
    dots = (a[:, None, :] * b[None, :, :]).sum(-1)
    norms = a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :]
    return dots / norms / c.temperature


def _laplace(c: LaplaceCoupling, a, b):
    return -(a[:, None, :] - b[None, :, :]).abs().sum(-1) / c.scale


CASES = {
    "bilinear": (lambda: BilinearCoupling(3), 3, 3, _bilinear),
    "bilinear_rectangular": (lambda: BilinearCoupling(3, 2), 3, 2, _bilinear),
    "rbf": (lambda: RBFCoupling(0.7), 3, 3, _rbf),
    "anisotropic_rbf": (lambda: AnisotropicRBFCoupling(3, torch.tensor([0.5, 1.0, 2.0])), 3, 3, _aniso),
    "cosine": (lambda: CosineCoupling(0.3, learn=True), 3, 3, _cosine),
    "laplace": (lambda: LaplaceCoupling(0.8), 3, 3, _laplace),
}


def _encoder(out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(OBS, 16), nn.Tanh(), nn.Linear(16, out))


def _setup(name: str):
    make_coupling, d1, d2, reference_g = CASES[name]
    coupling = make_coupling()
    if isinstance(coupling, BilinearCoupling):
        with torch.no_grad():  # a generic (non-identity) W
            coupling.weight.add_(0.3 * torch.randn_like(coupling.weight))
    net1, net2 = _encoder(d1), _encoder(d2)
    e1 = DeltaRecognition(net1, d1, name="e1")
    e2 = DeltaRecognition(net2, d2, name="e2")

    model = infonce_model(e1, e2, coupling)

    def infonce(x1, x2):
        g = reference_g(coupling, net1(x1), net2(x2))
        return -(g.diagonal() - torch.logsumexp(g, dim=-1)).mean()

    params = list(net1.parameters()) + list(net2.parameters()) + list(coupling.parameters())
    return model, RecognitionGuide(model), infonce, params


@pytest.mark.parametrize("name", list(CASES))
def test_rpm_loss_is_infonce_plus_log_batch_size(name):
    model, guide, infonce, _ = _setup(name)
    elbo = RPM_ELBO()
    max_diff = 0.0
    for _ in range(3):
        x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)
        rpm = elbo.loss(model, guide, x1, x2) / B
        with torch.no_grad():
            reference = infonce(x1, x2).item() + math.log(B)
        max_diff = max(max_diff, abs(rpm - reference))
        assert rpm == pytest.approx(reference, abs=1e-5), f"{name}: RPM {rpm:.7f} vs InfoNCE + log B {reference:.7f}"
    print(f"{name}: max |loss/B - (InfoNCE + log B)| = {max_diff:.2e}")


@pytest.mark.parametrize("name", list(CASES))
def test_rpm_gradient_is_infonce_gradient(name):
    model, guide, infonce, params = _setup(name)
    x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)
    assert any(True for _ in CASES[name][0]().parameters()), "the coupling should have a learned parameter"

    loss = RPM_ELBO().differentiable_loss(model, guide, x1, x2)
    rpm_grads = torch.autograd.grad(loss, params)
    ref_grads = torch.autograd.grad(B * (infonce(x1, x2) + math.log(B)), params)

    torch.testing.assert_close(loss.detach(), (B * (infonce(x1, x2) + math.log(B))).detach(), rtol=1e-6, atol=1e-4)
    for p, a, b in zip(params, rpm_grads, ref_grads):
        assert bool((b != 0).any())
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= 1e-4 * scale + 1e-6, f"{name}: gradient of a {tuple(p.shape)} parameter off by {err:.2e}"


def test_identity_holds_with_loss_and_grads_in_svi():
    """One SVI step of RPM_ELBO on the identity model moves the parameters exactly as one SGD step on
    B * (InfoNCE + log B) would."""
    model, guide, infonce, params = _setup("bilinear")
    x1, x2 = torch.randn(B, OBS), torch.randn(B, OBS)
    lr = 1e-2
    expected = [p - lr * g for p, g in zip(params, torch.autograd.grad(B * (infonce(x1, x2) + math.log(B)), params))]
    svi = pyro.infer.SVI(model, guide, pyro.optim.SGD({"lr": lr}), RPM_ELBO())
    loss = svi.step(x1, x2)
    assert math.isfinite(loss)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_identity_is_exact_in_float64(name):
    """In float64 the identity holds to rounding (1e-10 per datum), values and gradients: the float32
    differences of ``examples/infonce_identity.py`` (~1e-6) are rounding, not a modelling gap."""
    model, guide, infonce, params = _setup(name)
    for p in params:
        p.data = p.data.double()
    x1, x2 = torch.randn(B, OBS, dtype=torch.float64), torch.randn(B, OBS, dtype=torch.float64)
    loss = RPM_ELBO().differentiable_loss(model, guide, x1, x2)
    reference = B * (infonce(x1, x2) + math.log(B))
    assert loss.dtype == torch.float64
    assert abs(loss.item() - reference.item()) <= 1e-10 * B
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
