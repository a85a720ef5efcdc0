# SPDX-License-Identifier: Apache-2.0
"""One support object: a Support carries its points, the normaliser's backend and chunk size, and the
calling convention; observe, the likelihood and the empirical priors read the normaliser from the factors
it returns; backend=/chunk_size= and the strings "batch"/"full" remain as shorthands."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_rpm import (
    DeltaRecognition,
    FullDataSupport,
    GaussianRecognition,
    InBatchSupport,
    IndexedBankSupport,
    MarginalPrior,
    MemoryBankSupport,
    Normaliser,
    RecognitionLikelihood,
    Support,
    observe,
)
from pyro_rpm.support import support_calling


def _recognition(name, dtype=torch.float64):
    return GaussianRecognition(nn.Linear(3, 4).to(dtype), 2, name=name)


def test_normaliser_validates_and_overrides():
    assert Normaliser() == Normaliser("auto", None)
    assert Normaliser.coerce("fused") == Normaliser("fused")
    assert Normaliser("fused", 64).replace(chunk_size=8) == Normaliser("fused", 8)
    assert Normaliser("fused", 64).replace(Normaliser("dense")) == Normaliser("dense", None)
    with pytest.raises(ValueError, match="backend must be one of"):
        Normaliser("fast")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        Normaliser("streamed", 0)
    with pytest.raises(TypeError, match="normaliser must be a Normaliser"):
        Normaliser.coerce(3)
    with pytest.raises(TypeError, match="backend must be a backend name or a Normaliser"):
        Normaliser().replace(backend=3)


def test_a_support_attaches_its_normaliser_and_observe_uses_it():
    r = _recognition("so_full")
    data = torch.randn(40, 3, dtype=torch.float64)
    support = FullDataSupport(r, data, chunk_size=None, normaliser=Normaliser("streamed", 7))

    def model(idx, backend=None):
        f = support()
        with pyro.plate("data", 40, subsample=idx) as i:
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            observe("x", f, z, index=i, backend=backend)

    idx = torch.arange(0, 40, 5)
    site = poutine.trace(model).get_trace(idx).nodes["x"]
    assert (site["fn"].backend, site["fn"].chunk_size) == ("streamed", 7)
    assert support().normaliser == Normaliser("streamed", 7)
    # an explicit backend= is a shorthand that overrides the support's choice (and keeps its chunk size)
    site = poutine.trace(model).get_trace(idx, backend="dense").nodes["x"]
    assert (site["fn"].backend, site["fn"].chunk_size) == ("dense", 7)


def test_the_normaliser_choice_changes_how_not_what_is_computed():
    r = _recognition("so_values")
    data, z = torch.randn(30, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    values = {}
    for backend in ("dense", "streamed", "fused", "screened"):
        f = FullDataSupport(r, data, chunk_size=None, normaliser=backend)()
        lik = RecognitionLikelihood(f, z)
        assert lik.backend == backend
        values[backend] = lik.log_normaliser
        prior = MarginalPrior(f)
        assert prior.backend == backend
    for backend, value in values.items():
        torch.testing.assert_close(value, values["dense"], rtol=1e-12, atol=1e-12, msg=backend)


def test_default_normaliser_keeps_the_recognition_output_itself():
    """With the default normaliser the in-batch support returns the module's own factors (no copy), so the
    guide plan and the recognition cache see the same object."""
    r = _recognition("so_batch")
    x = torch.randn(6, 3, dtype=torch.float64)
    from pyro_rpm import recognition_cache

    with recognition_cache():
        assert InBatchSupport(r)(x) is r(x)
        other = InBatchSupport(r, normaliser="dense")(x)
        assert other is not r(x) and other.normaliser == Normaliser("dense")
        torch.testing.assert_close(other.tensors()[0], r(x).tensors()[0])


def test_banks_carry_the_normaliser():
    enc = DeltaRecognition(nn.Linear(3, 2).double(), 2, name="so_bank")
    x = torch.randn(5, 3, dtype=torch.float64)
    bank = MemoryBankSupport(enc, 8, normaliser="streamed")
    assert bank(x).normaliser.backend == "streamed"
    bank.update()
    assert bank(x).normaliser.backend == "streamed" and bank(x).num_support == 10
    indexed = IndexedBankSupport(enc, torch.randn(12, 3, dtype=torch.float64), normaliser=Normaliser("fused", 4))
    assert indexed(torch.arange(3)).normaliser == Normaliser("fused", 4)


def test_calling_conventions():
    r = _recognition("so_calling")
    assert support_calling("batch") == "batch" and support_calling("full") == "full"
    assert support_calling(InBatchSupport(r)) == "batch" and support_calling(MemoryBankSupport) == "batch"
    assert support_calling(FullDataSupport(r, torch.randn(4, 3, dtype=torch.float64))) == "full"
    assert support_calling(IndexedBankSupport) == "full"
    with pytest.raises(ValueError, match="support must be 'batch', 'full'"):
        support_calling("everything")
    with pytest.raises(TypeError, match="support must be 'batch', 'full'"):
        support_calling(3)


def test_support_is_a_contract():
    with pytest.raises(TypeError, match="abstract"):

        class Incomplete(Support):
            pass

        Incomplete(_recognition("so_abstract"))

    class Anchored(Support):
        """The batch followed by fixed anchor points (a support in one class)."""

        def __init__(self, recognition, anchors, **kwargs):
            super().__init__(recognition, **kwargs)
            self.anchors = anchors

        def __call__(self, x):
            batch = self.recognition(x)
            return self.cached((id(x),), lambda: self.attach(type(batch).cat([batch, self.recognition(self.anchors)])), x)

    r = _recognition("so_anchored")
    s = Anchored(r, torch.randn(4, 3, dtype=torch.float64), normaliser="streamed")
    f = s(torch.randn(3, 3, dtype=torch.float64))
    assert f.num_support == 7 and f.normaliser.backend == "streamed"


def test_bad_normaliser_arguments_name_the_argument():
    r = _recognition("so_bad")
    with pytest.raises(ValueError, match="backend must be one of"):
        FullDataSupport(r, torch.randn(4, 3, dtype=torch.float64), normaliser="fastest")
    with pytest.raises(TypeError, match="normaliser must be"):
        InBatchSupport(r, normaliser=1.5)


def test_fit_follows_the_calling_convention_of_a_support_object():
    """fit(support=s) for a FullDataSupport s trains exactly as support="full" (same calls, same losses)."""
    from pyro_rpm import RecognitionGuide, fit
    from pyro_rpm.datasets import two_view_gaussian

    x1, x2, _ = two_view_gaussian(48, latent_dim=2, obs_dim=5, seed=3)
    x1, x2 = x1.double(), x2.double()

    def build(tag):
        r1 = GaussianRecognition(nn.Linear(5, 4).double(), 2, prior_scale=1.0, name=f"so_fit1_{tag}")
        r2 = GaussianRecognition(nn.Linear(5, 4).double(), 2, prior_scale=1.0, name=f"so_fit2_{tag}")
        s1 = FullDataSupport(r1, x1, chunk_size=None, normaliser="streamed")
        s2 = FullDataSupport(r2, x2, chunk_size=None)

        def model(a, b, subsample=None):
            f1, f2 = s1(), s2()
            with pyro.plate("data", a.shape[0], subsample=subsample) as idx:
                z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
                observe("x1", f1, z, index=idx)
                observe("x2", f2, z, index=idx)

        return model, s1

    losses = {}
    for tag, support in (("name", "full"), ("object", None), ("class", FullDataSupport)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, s1 = build(tag)
        result = fit(
            model, RecognitionGuide(model), (x1, x2), steps=6, batch_size=16, support=support or s1,
            seed=0, progress=False, lr=1e-2,
        )
        losses[tag] = result.losses
    assert losses["object"] == losses["name"] == losses["class"]
    assert all(torch.isfinite(torch.tensor(losses["name"])))
