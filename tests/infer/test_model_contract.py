# SPDX-License-Identifier: Apache-2.0
"""The explicit model-to-ELBO contract: ``observe`` names the latent it observes in the site's ``infer``
dict; guides and RPM_ELBO read that name (not object identity); priors cancel by a protocol."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_rpm import RPM_ELBO, ContrastivePrior, DeltaRecognition, MarginalPrior, RBFCoupling, RecognitionGuide, observe
from pyro_rpm._pyro import LatentNames, observed_latent
from pyro_rpm.recognition import GaussianRecognition


def _two_view_model(r1, r2):
    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model


def test_observe_records_the_latent_name_inside_latent_names_and_none_outside():
    r1 = GaussianRecognition(nn.Linear(3, 4), 2, name="mc_r1")
    r2 = GaussianRecognition(nn.Linear(3, 4), 2, name="mc_r2")
    model = _two_view_model(r1, r2)
    x1, x2 = torch.randn(6, 3), torch.randn(6, 3)
    inside = poutine.trace(LatentNames()(model)).get_trace(x1, x2)
    assert observed_latent(inside.nodes["x1"]) == "z" and observed_latent(inside.nodes["x2"]) == "z"
    assert inside.nodes["x1"]["infer"]["rpm"]["factors"] is inside.nodes["x1"]["fn"].factors
    outside = poutine.trace(model).get_trace(x1, x2)
    assert observed_latent(outside.nodes["x1"]) is None


def test_a_transformed_latent_is_not_named_and_the_guide_says_so():
    r1 = GaussianRecognition(nn.Linear(3, 4), 2, name="mc_t1")

    def model(x1):
        f1 = r1(x1)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            observe("x1", f1, z * 1.0)  # a new tensor: not the value of any site

    with pytest.raises(ValueError, match="not the value of any sample site"):
        RecognitionGuide(model)(torch.randn(5, 3))


def test_the_elbo_cancels_by_site_name_and_never_computes_a_cancelled_normaliser(monkeypatch):
    """ContrastivePrior/MarginalPrior carry the factors of a likelihood site of their own latent:
    RPM_ELBO drops the shared log-sum-exp from both (the cancellation protocol), so computing it
    would be an error here; the ELBO value still equals the uncancelled one."""
    enc = DeltaRecognition(nn.Linear(3, 2), 2, name="mc_enc")
    coupling = RBFCoupling(0.5, learn=False)

    def model(x1, x2):
        f1, f2 = enc(x1), enc(x2)
        with pyro.plate("data", x1.shape[0]):
            z1 = pyro.sample("z1", MarginalPrior(f1))
            z2 = pyro.sample("z2", ContrastivePrior(f2, coupling, z1))
            observe("x1", f1, z1)
            observe("x2", f2, z2)

    guide = RecognitionGuide(model)
    x1, x2 = torch.randn(8, 3), torch.randn(8, 3)
    with torch.no_grad():
        pyro.set_rng_seed(0)
        reference = RPM_ELBO().loss(model, guide, x1, x2)
    calls = []
    factor_type = type(enc(x1))
    original = factor_type.pairwise_logsumexp

    def counting(self, z, **kwargs):
        calls.append(self.num_support)
        return original(self, z, **kwargs)

    monkeypatch.setattr(factor_type, "pairwise_logsumexp", counting)
    pyro.set_rng_seed(0)
    loss = RPM_ELBO().loss(model, guide, x1, x2)
    assert calls == [], "a cancelled normaliser was computed"
    assert loss == pytest.approx(reference, rel=1e-6)


def test_the_elbo_reads_the_name_not_the_tensor():
    """Renaming the latent a likelihood site claims (in its infer dict) breaks the tie: the ELBO then
    computes the site's own log f instead of cancelling it against the tied posterior."""
    r1 = GaussianRecognition(nn.Linear(3, 4), 2, prior_scale=1.0, name="mc_n1")
    r2 = GaussianRecognition(nn.Linear(3, 4), 2, prior_scale=1.0, name="mc_n2")
    model = _two_view_model(r1, r2)
    guide = RecognitionGuide(model)
    x1, x2 = torch.randn(6, 3), torch.randn(6, 3)
    elbo = RPM_ELBO()
    model_trace, guide_trace = elbo._get_trace(model, guide, (x1, x2), {})
    assert RPM_ELBO._can_cancel("z", guide_trace.nodes["z"], model_trace)
    model_trace.nodes["x1"]["infer"]["rpm"]["latent"] = "another"
    assert not RPM_ELBO._can_cancel("z", guide_trace.nodes["z"], model_trace)
