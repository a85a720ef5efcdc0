# SPDX-License-Identifier: Apache-2.0
"""Determinism on the CPU: the same seed gives bit-identical losses and parameters.

* SVI on the canonical two-view model (and variants: vectorised particles, the interior
  estimator, whole-data-set support whose exact normaliser runs the fused/streamed kernels, the
  InfoNCE model) run twice in one process, with a cleared parameter store and
  :func:`pyro.set_rng_seed`: every loss and every final parameter is bit-identical (``==``,
  :func:`torch.equal`), while another seed gives other losses;
* :func:`pyro_rpm.fit` run twice with one ``seed``: identical loss histories and parameters;
* a fresh interpreter (another ``PYTHONHASHSEED``) prints the losses of this process to the last bit;
* the large-support normalisers return bit-identical values and gradients on repeated calls.

Resuming from a checkpoint reproduces the uninterrupted run bit for bit; that is tested where
checkpoints live, not repeated here: ``tests/train/test_fit.py::test_resume_reproduces_the_uninterrupted_run_exactly``
(seven optimiser/support/validation/data-loader cases) and
``tests/train/test_checkpoint.py::test_svi_continues_exactly_after_loading`` /
``::test_torch_optimizer_and_scheduler_continue_exactly`` (SVI and torch-optimiser loops).
This file adds the resume case of a whole-data-set support run on the fused normaliser.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import infonce_model
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    BilinearCoupling,
    DeltaRecognition,
    GaussianRecognition,
    RecognitionGuide,
    fit,
    observe,
)
from pyro_rpm.datasets.synthetic import two_view_gaussian
from pyro_rpm.normalisers import gaussian_logsumexp

STEPS = 4


def _mlp(obs: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(obs, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, out))


def two_view(full: bool = False, subsample_size: int | None = None):
    """The canonical model (networks initialised from the global torch stream, with dropout so the
    network evaluations consume random numbers too)."""
    D = 2
    r1 = GaussianRecognition(_mlp(10, 2 * D), D, prior_scale=1.0, name="r1")
    r2 = GaussianRecognition(_mlp(10, 2 * D), D, prior_scale=1.0, name="r2")

    if full:

        def model(x1, x2, subsample=None):
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", x1.shape[0], subsample=subsample, subsample_size=subsample_size) as idx:
                z = pyro.sample("z", dist.Normal(x1.new_zeros(D), 1.0).to_event(1))
                observe("x1", f1, z, index=idx)
                observe("x2", f2, z, index=idx)

    else:

        def model(x1, x2):
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", x1.shape[0]):
                z = pyro.sample("z", dist.Normal(x1.new_zeros(D), 1.0).to_event(1))
                observe("x1", f1, z)
                observe("x2", f2, z)

    return model, RecognitionGuide(model)


def infonce():
    D = 3
    e1, e2 = DeltaRecognition(_mlp(10, D), D, name="e1"), DeltaRecognition(_mlp(10, D), D, name="e2")
    coupling = BilinearCoupling(D, name="g")  # named: the default name counts instances per process

    model = infonce_model(e1, e2, coupling)

    return model, RecognitionGuide(model)


# name: (model factory, ELBO factory, number of data points); the full-support case has
# B x N = 64 x 2048 > 2^16 pairs, so its normaliser runs the streamed/fused kernel.
CASES = {
    "canonical": (two_view, RPM_ELBO, 64),
    "vectorised_particles": (
        two_view,
        lambda: RPM_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
        64,
    ),
    "interior_estimator": (two_view, lambda: RPM_ELBO(estimator="interior", reference="prior"), 64),
    "full_support_fused": (lambda: two_view(full=True, subsample_size=64), RPM_ELBO, 2048),
    "infonce": (infonce, RPM_ELBO, 64),
}


def _run_svi(case: str, seed: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    make_model, make_elbo, n = CASES[case]
    x1, x2, _ = two_view_gaussian(n, seed=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, guide = make_model()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), make_elbo())
    losses = [svi.step(x1, x2) for _ in range(STEPS)]
    params = {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}
    return losses, params


def _assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("case", list(CASES))
def test_svi_same_seed_gives_bit_identical_losses_and_parameters(case):
    losses, params = _run_svi(case, seed=0)
    again, params_again = _run_svi(case, seed=0)
    assert losses == again, (losses, again)  # exact float equality, step by step
    _assert_same_params(params, params_again)
    other, _ = _run_svi(case, seed=1)
    assert other != losses  # the seed does reach the result (initialisation, draws, dropout)


def _fit_once(seed: int, **kwargs):
    x1, x2, _ = two_view_gaussian(256, seed=1)
    pyro.clear_param_store()
    torch.manual_seed(0)  # the networks' initialisation; fit's seed drives everything after it
    model, guide = two_view(full=kwargs.get("support") == "full")
    result = fit(model, guide, (x1, x2), steps=8, batch_size=32, seed=seed, progress=False, **kwargs)
    return result, {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


@pytest.mark.parametrize("kwargs", [{}, {"support": "full"}], ids=["in_batch", "full_support"])
def test_fit_same_seed_gives_bit_identical_histories(kwargs):
    first, params = _fit_once(3, **kwargs)
    second, params_again = _fit_once(3, **kwargs)
    assert first.losses == second.losses and first.lrs == second.lrs
    assert len(first.losses) == 8
    _assert_same_params(params, params_again)
    other, _ = _fit_once(4, **kwargs)
    assert other.losses != first.losses


def test_fit_resume_on_the_fused_normaliser_equals_the_uninterrupted_run(tmp_path):
    """Whole-data-set support with N = 2048 and B = 64 (B x N > 2^16: the exact normaliser runs the
    fused/streamed kernel), interrupted after 5 of 10 steps and resumed in a fresh store."""
    x1, x2, _ = two_view_gaussian(2048, seed=1)
    kwargs = dict(batch_size=64, seed=5, support="full", progress=False, lr=1e-2)

    def build():
        pyro.clear_param_store()
        torch.manual_seed(0)
        return two_view(full=True)

    straight = fit(*build(), (x1, x2), steps=10, **kwargs)
    expected = {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}
    fit(*build(), (x1, x2), steps=5, checkpoint=tmp_path / "c.pt", **kwargs)
    pyro.set_rng_seed(99)  # disturb the global streams: the checkpoint must restore them
    resumed = fit(*build(), (x1, x2), steps=10, checkpoint=tmp_path / "c.pt", resume=True, **kwargs)
    assert resumed.resumed_from == 5 and resumed.losses == straight.losses
    _assert_same_params(expected, {n: p.detach() for n, p in pyro.get_param_store().named_parameters()})


SCRIPT = textwrap.dedent(
    """
    import torch, pyro, pyro.distributions as dist
    from torch import nn
    from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide, observe
    from pyro_rpm.datasets.synthetic import two_view_gaussian

    def run():
        torch.set_num_threads(1)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        D = 2
        nets = [nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 2 * D)) for _ in range(2)]
        r1 = GaussianRecognition(nets[0], D, prior_scale=1.0, name="r1")
        r2 = GaussianRecognition(nets[1], D, prior_scale=1.0, name="r2")
        def model(x1, x2):
            f1, f2 = r1(x1), r2(x2)
            with pyro.plate("data", x1.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
                observe("x1", f1, z)
                observe("x2", f2, z)
        x1, x2, _ = two_view_gaussian(64, seed=1)
        svi = pyro.infer.SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 3e-3}), RPM_ELBO())
        return " ".join(float(svi.step(x1, x2)).hex() for _ in range(4))

    if __name__ == "__main__":
        print(run())
    """
)


def test_a_fresh_process_reproduces_the_losses_of_this_one():
    """The canonical model in a fresh interpreter (another hash seed, nothing imported or run
    before) prints the losses of the same run in this process to the last bit: nothing depends on
    dict/set order, object ids or the earlier state of the process."""
    namespace = {"__name__": "in_process"}
    exec(SCRIPT, namespace)
    here = namespace["run"]()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    there = done.stdout.strip().splitlines()[-1]
    assert len(here.split()) == 4 and there == here, (there, here)


@pytest.mark.parametrize("backend", ["dense", "streamed", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_normaliser_repeats_bit_for_bit(backend, dtype):
    """Values and gradients of the exact normaliser (B = 32, N = 5000, several chunks) are identical
    on repeated calls (no order-dependent accumulation across calls)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 4, generator=g, dtype=dtype)
    loc = torch.randn(5000, 4, generator=g, dtype=dtype)
    scale = torch.rand(5000, 4, generator=g, dtype=dtype) + 0.1
    results = []
    for _ in range(2):
        zz, ll, ss = (t.clone().requires_grad_() for t in (z, loc, scale))
        value = gaussian_logsumexp(zz, ll, ss, backend=backend, chunk_size=1024)
        value.sum().backward()
        results.append([value.detach(), zz.grad, ll.grad, ss.grad])
    for a, b in zip(*results):
        assert torch.equal(a, b)
