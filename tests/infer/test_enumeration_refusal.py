# SPDX-License-Identifier: Apache-2.0
"""RPM_ELBO refuses a model whose enumerated latents the guide does not sample (it would draw them from
their prior instead of summing them out: a silently worse fit); TraceEnum_ELBO is the route."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_rpm import RPM_ELBO, CategoricalRecognition, RecognitionGuide, fit, observe


def _mixture(name):
    r = CategoricalRecognition(nn.Linear(3, 3), 3, name=name)

    def model(x):
        f = r(x)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})
            observe("x", f, c)

    return model, RecognitionGuide(model)


def test_rpm_elbo_refuses_unguided_enumerated_latents_and_leaves_the_store_alone():
    model, guide = _mixture("enum_refuse")
    x = torch.randn(8, 3)
    with pytest.raises(ValueError, match=r"marks \['c'\] for enumeration.*TraceEnum_ELBO"):
        RPM_ELBO().loss(model, guide, x)
    assert len(pyro.get_param_store()) == 0
    with pytest.raises(ValueError, match=r"marks \['c'\] for enumeration"):
        fit(model, guide, x, steps=2, progress=False)
    assert len(pyro.get_param_store()) == 0


def test_trace_enum_elbo_trains_the_same_model():
    model, guide = _mixture("enum_ok")
    x = torch.randn(8, 3)
    result = fit(model, guide, x, steps=3, progress=False, elbo=TraceEnum_ELBO(max_plate_nesting=1))
    assert all(torch.isfinite(torch.tensor(result.losses)))
