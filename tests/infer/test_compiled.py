# SPDX-License-Identifier: Apache-2.0
"""``JitRPM_ELBO`` (issue 15): the recorded-and-replayed step against the eager ``RPM_ELBO`` path.

Equality of loss and gradients under one seed (1e-6 relative in float32, 1e-12 in float64) on two
views, the InfoNCE identity model, a user-written Markov prior, the GP and state-space priors and the
whole-data support with subsampling; enumeration refused as by RPM_ELBO; re-recording on new shapes;
the fall-back warning for data-dependent control flow; the debug check of a stale graph; SVI
trajectories; no graph break when torch.compile compiles the replayed graph; ``fit(compile=True)``.
"""

import math
import shutil
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from _models import infonce_model, markov_loop_model
from torch import nn

from pyro_rpm import (
    RPM_ELBO,
    BilinearCoupling,
    ConjugateGaussianGuide,
    DeltaRecognition,
    GaussianProcessPrior,
    GaussianRecognition,
    JitRPM_ELBO,
    LinearGaussianStateSpacePrior,
    RBFCoupling,
    RecognitionGuide,
    fit,
    observe,
    observe_trajectories,
)
from pyro_rpm.infer import CompileFallbackWarning
from pyro_rpm.train.optim import FusedAdam

D = 2


def _mlp(i, o, dtype):
    return nn.Sequential(nn.Linear(i, 16), nn.SiLU(), nn.Linear(16, o)).to(dtype)


def _two_views(dtype, B=12):
    r1 = GaussianRecognition(_mlp(5, 2 * D, dtype), D, prior_scale=1.0, name="c_r1")
    r2 = GaussianRecognition(_mlp(5, 2 * D, dtype), D, prior_scale=1.0, name="c_r2")

    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=dtype), 1.0).to_event(1))
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model, RecognitionGuide(model), (torch.randn(B, 5, dtype=dtype), torch.randn(B, 5, dtype=dtype)), {}


def _infonce(dtype, B=12):
    coupling = BilinearCoupling(4, name="c_W").to(dtype)
    e1 = DeltaRecognition(_mlp(5, 4, dtype), 4, name="c_e1")
    e2 = DeltaRecognition(_mlp(5, 4, dtype), 4, name="c_e2")
    model = infonce_model(e1, e2, coupling)

    return model, RecognitionGuide(model), (torch.randn(B, 5, dtype=dtype), torch.randn(B, 5, dtype=dtype)), {}


def _markov(dtype, B=6, T=5):
    r = GaussianRecognition(_mlp(3, 2 * D, dtype), D, prior_scale=1.0, name="c_frames")
    model = markov_loop_model(r, T, D, dtype, "c_ar")
    return model, RecognitionGuide(model), (torch.randn(B, T, 3, dtype=dtype),), {}


def _gp(dtype, N=4, T=6):
    r = GaussianRecognition(_mlp(3, 2 * D, dtype), D, prior_scale=1.0, name="c_gp_r").to(dtype)
    gp = GaussianProcessPrior(D, "matern32", lengthscale=2.0, name="c_gp").to(dtype)
    times = torch.arange(T, dtype=dtype)

    def model(frames):
        factors = r(frames)
        with pyro.plate("sequences", frames.shape[0] // T):
            z = gp("z", times)
            observe_trajectories("x", factors, z)

    return model, ConjugateGaussianGuide(model), (torch.randn(N * T, 3, dtype=dtype),), {}


def _state_space(dtype, N=4, T=6):
    r = GaussianRecognition(_mlp(3, 2 * D, dtype), D, prior_scale=1.0, name="c_ss_r").to(dtype)
    prior = LinearGaussianStateSpacePrior(D, init_decay=0.5, name="c_ss").to(dtype)

    def model(frames):
        factors = r(frames)
        with pyro.plate("sequences", frames.shape[0] // T):
            z = prior("z", T)
            observe_trajectories("x", factors, z)

    return model, ConjugateGaussianGuide(model), (torch.randn(N * T, 3, dtype=dtype),), {}


def _full_data(dtype, N=20, B=6):
    r1 = GaussianRecognition(_mlp(5, 2 * D, dtype), D, prior_scale=1.0, name="c_fd1")
    r2 = GaussianRecognition(_mlp(5, 2 * D, dtype), D, prior_scale=1.0, name="c_fd2")

    def model(x1, x2, subsample=None):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=dtype), 1.0).to_event(1))
            observe("x1", f1, z, index=idx)
            observe("x2", f2, z, index=idx)

    x = (torch.randn(N, 5, dtype=dtype), torch.randn(N, 5, dtype=dtype))
    return model, RecognitionGuide(model), x, {"subsample": torch.randperm(N)[:B]}


MODELS = {
    "two_views": _two_views,
    "infonce": _infonce,
    "markov": _markov,
    "gp": _gp,
    "state_space": _state_space,
    "full_data": _full_data,
}


def _params():
    store = pyro.get_param_store()
    return [store._params[name] for name in sorted(store.keys())]


def _loss_and_grads(elbo, model, guide, args, kwargs, seed):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
    params = _params()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _assert_close(a, b, rtol):
    scale = max(float(b.abs().max()), 1e-30) if b.numel() else 1.0
    assert float((a - b).abs().max()) <= rtol * scale, (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_replayed_step_gives_the_eager_loss_and_gradients(name, dtype):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, args, kwargs = MODELS[name](dtype)
    jit, eager = JitRPM_ELBO(), RPM_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        for _ in range(2):  # eager step (registers), then the recording
            jit.differentiable_loss(model, guide, *args, **kwargs)
        # float32: the recorded graph computes a repeated intermediate once (common subexpressions), so
        # autograd adds its gradient contributions in another order: equal to a few ulps, not to the bit
        rtol = 1e-5 if dtype == torch.float32 else 1e-12
        for seed in (3, 4):
            loss_j, grads_j = _loss_and_grads(jit, model, guide, args, kwargs, seed)
            loss_e, grads_e = _loss_and_grads(eager, model, guide, args, kwargs, seed)
            assert loss_j.dtype == loss_e.dtype
            assert math.isclose(float(loss_j), float(loss_e), rel_tol=rtol, abs_tol=rtol)
            for gj, ge in zip(grads_j, grads_e):
                _assert_close(gj, ge, rtol)
    assert jit.stats["traced"] == 1 and jit.stats["replayed"] >= 3 and jit.stats["fallbacks"] == 0


def test_svi_trajectories_agree_float64():
    losses = {}
    for kind in ("eager", "jit"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide, args, _ = _two_views(torch.float64)
        elbo = JitRPM_ELBO() if kind == "jit" else RPM_ELBO()
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        pyro.set_rng_seed(1)
        losses[kind] = [svi.step(*args) for _ in range(6)]
        if kind == "jit":
            assert elbo.stats["traced"] == 1 and elbo.stats["replayed"] == 5
    for a, b in zip(losses["jit"], losses["eager"]):
        assert math.isclose(a, b, rel_tol=1e-12)


def _batch_norm_infonce(dtype, B=12):
    """The InfoNCE model with one encoder, with batch norm, for both views (its running statistics
    are updated twice per step, in place)."""

    def net():
        return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 4)).to(dtype)

    encoder = DeltaRecognition(net(), 4, name="c_bn")
    model = infonce_model(encoder, encoder, RBFCoupling(1.0, name="c_rbf").to(dtype))
    return model, RecognitionGuide(model), encoder


@pytest.mark.parametrize("check_every", [None, 2])
def test_batch_norm_running_statistics_follow_the_eager_steps(check_every):
    """Before: a step writing into BatchNorm's running statistics was never recorded (eager fallback).
    Now the statistics are part of the replayed step: after 6 SVI steps (1 eager, 1 recorded, 4 replayed;
    with ``check_every=2`` some of them eager under the same random state) losses, parameters, running
    means/variances and batch counts equal the eager run's."""
    runs = {}
    for kind in ("eager", "jit"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide, encoder = _batch_norm_infonce(torch.float64)
        elbo = JitRPM_ELBO(check_every=check_every) if kind == "jit" else RPM_ELBO()
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        pyro.set_rng_seed(1)
        data = [(torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 5, dtype=torch.float64)) for _ in range(6)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            losses = [svi.step(*batch) for batch in data]
        if kind == "jit":
            assert elbo.stats["traced"] == 1 and elbo.stats["fallbacks"] == 0
        runs[kind] = losses, {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    (jit_losses, jit_state), (losses, state) = runs["jit"], runs["eager"]
    for a, b in zip(jit_losses, losses):
        assert math.isclose(a, b, rel_tol=1e-10)
    (count,) = [v for k, v in state.items() if k.endswith("num_batches_tracked")]
    assert int(count) == 12  # two views per step
    for name, value in state.items():
        assert torch.allclose(jit_state[name], value, rtol=1e-10, atol=1e-12), name


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="needs a C++ compiler")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by inductor
def test_batch_norm_running_statistics_under_the_inductor_backend():
    """The compiled (inductor) replay writes the running statistics too: batch counts equal the eager
    run's exactly, running variances and losses to float32 rounding. (In float64 the RBF coupling's
    Gaussian table keeps its value-dependent refinement, which inductor does not compile: see
    ``test_inductor_replays_a_step_with_value_dependent_shapes_as_fx``.)"""
    losses, state, _ = _batch_norm_svi(torch.float32, RPM_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # compiled, not replayed as fx
        compiled, compiled_state, _ = _batch_norm_svi(torch.float32, JitRPM_ELBO(backend="inductor"))
    for a, b in zip(compiled, losses):
        assert math.isclose(a, b, rel_tol=1e-5)
    for name, value in state.items():
        assert torch.allclose(compiled_state[name], value, rtol=1e-5, atol=1e-6), name


def test_inductor_replays_a_step_with_value_dependent_shapes_as_fx(monkeypatch):
    """A float64 step with a Gaussian table records the table's refinement, whose shapes depend on values
    (``nonzero``): ``backend="inductor"`` says so once and replays the fx graph, which matches eager SVI."""
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)  # a compiler is not needed to refuse
    losses, _, _ = _batch_norm_svi(torch.float64, RPM_ELBO())
    with pytest.warns(CompileFallbackWarning, match="shapes depend on values; replaying the fx graph"):
        replayed, _, elbo = _batch_norm_svi(torch.float64, JitRPM_ELBO(backend="inductor"))
    assert elbo.stats["traced"] == 1 and elbo.stats["replayed"] == 3
    for a, b in zip(replayed, losses):
        assert math.isclose(a, b, rel_tol=1e-12)


def _batch_norm_svi(dtype, elbo, steps=4):
    """Losses and the encoder's final state of ``steps`` SGD steps of the batch-norm InfoNCE model, and ``elbo``."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, encoder = _batch_norm_infonce(dtype)
    svi = pyro.infer.SVI(model, guide, pyro.optim.SGD({"lr": 1e-2}), elbo)
    pyro.set_rng_seed(1)
    data = [(torch.randn(12, 5, dtype=dtype), torch.randn(12, 5, dtype=dtype)) for _ in range(steps)]
    losses = [svi.step(*batch) for batch in data]
    return losses, {k: v.clone() for k, v in encoder.state_dict().items()}, elbo


def test_in_place_writes_into_a_closed_over_tensor_follow_the_eager_steps():
    """A memory bank written in place by the model: before, the recording wrote it once more than the
    eager steps (5 against 4 after 3 steps, the first step's guide also runs the model) and then fell back;
    now the recording's write is undone and the replays write the bank as the eager steps do."""
    counts = {}
    for kind in ("eager", "jit"):
        bank = torch.zeros(4, dtype=torch.float64)
        pyro.clear_param_store()
        model, *_ = _infonce(torch.float64)

        def writing_model(x1, x2, model=model, bank=bank):
            bank.add_(x1[0, 0].detach())  # a value of this step's data
            model(x1, x2)

        elbo = JitRPM_ELBO() if kind == "jit" else RPM_ELBO()
        svi = pyro.infer.SVI(writing_model, RecognitionGuide(writing_model), pyro.optim.Adam({"lr": 1e-2}), elbo)
        torch.manual_seed(3)
        batches = [(torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 5, dtype=torch.float64)) for _ in range(4)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            for batch in batches:
                svi.step(*batch)
        if kind == "jit":
            assert elbo.stats["replayed"] == 3  # the recorded step and the two after it
        counts[kind] = bank
    assert torch.allclose(counts["jit"], counts["eager"], rtol=1e-12, atol=0), counts


def test_new_shapes_record_again_and_match_eager():
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, _, _ = _two_views(torch.float64)
    jit, eager = JitRPM_ELBO(), RPM_ELBO()
    for B in (8, 12, 8):
        args = (torch.randn(B, 5, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64))
        for _ in range(2):
            jit.differentiable_loss(model, guide, *args)
        loss_j, _ = _loss_and_grads(jit, model, guide, args, {}, 7)
        loss_e, _ = _loss_and_grads(eager, model, guide, args, {}, 7)
        assert math.isclose(float(loss_j), float(loss_e), rel_tol=1e-12)
    assert jit.stats["traced"] == 2  # B = 8 recorded once, kept while B = 12 was recorded


def test_markov_loop_of_other_length_is_recorded_again():
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, (x,), _ = _markov(torch.float64, T=5)
    jit = JitRPM_ELBO()
    for _ in range(3):
        jit.differentiable_loss(model, guide, x)
    # another batch size changes every site's shape: a new structure
    x2 = torch.randn(4, 5, 3, dtype=torch.float64)
    loss_j = [jit.differentiable_loss(model, guide, x2) for _ in range(3)][-1]
    pyro.set_rng_seed(0)
    assert jit.stats["traced"] == 2
    assert torch.isfinite(loss_j)


def test_data_dependent_control_flow_falls_back_once_with_a_warning():
    pyro.clear_param_store()
    torch.manual_seed(0)
    r1 = GaussianRecognition(_mlp(5, 2 * D, torch.float64), D, prior_scale=1.0, name="c_dd1")

    def model(x):
        f = r1(x)
        scale = 2.0 if float(x.sum()) > 0 else 1.0  # reads a value: cannot be one graph
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=x.dtype), scale).to_event(1))
            observe("x", f, z)

    guide = RecognitionGuide(model)
    jit, eager = JitRPM_ELBO(), RPM_ELBO()
    x = torch.randn(8, 5, dtype=torch.float64)
    jit.differentiable_loss(model, guide, x)
    with pytest.warns(CompileFallbackWarning, match="cannot record this step.*data-dependent"):
        jit.differentiable_loss(model, guide, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # said once only
        loss_j, _ = _loss_and_grads(jit, model, guide, (x,), {}, 2)
    loss_e, _ = _loss_and_grads(eager, model, guide, (x,), {}, 2)
    assert float(loss_j) == float(loss_e)
    assert jit.stats["traced"] == 0 and jit.stats["replayed"] == 0


def test_a_structure_outside_the_key_is_caught_by_the_debug_check():
    pyro.clear_param_store()
    torch.manual_seed(0)
    r1 = GaussianRecognition(_mlp(5, 2 * D, torch.float64), D, prior_scale=1.0, name="c_stale")
    views = {"n": 1}  # Python state the structural key cannot see

    def model(x):
        f = r1(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=x.dtype), 1.0).to_event(1))
            for j in range(views["n"]):
                observe(f"x{j}", f, z)

    guide = RecognitionGuide(model)
    jit, eager = JitRPM_ELBO(check_every=1), RPM_ELBO()
    x = torch.randn(8, 5, dtype=torch.float64)
    for _ in range(3):
        jit.differentiable_loss(model, guide, x)
    views["n"] = 2
    with pytest.warns(CompileFallbackWarning, match="no longer matches"):
        loss_j, _ = _loss_and_grads(jit, model, guide, (x,), {}, 5)
    loss_e, _ = _loss_and_grads(eager, model, guide, (x,), {}, 5)
    assert math.isclose(float(loss_j), float(loss_e), rel_tol=1e-12)  # the stale graph was not used


def test_a_cleared_param_store_is_never_replayed_with_stale_parameters():
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, args, _ = _two_views(torch.float64)
    jit = JitRPM_ELBO()
    for _ in range(3):
        jit.differentiable_loss(model, guide, *args)
    pyro.clear_param_store()
    for p in _all_module_params(model):
        p.data.mul_(0.5)  # new values registered on the next step
    pyro.set_rng_seed(0)
    jit_loss = jit.differentiable_loss(model, guide, *args)
    pyro.set_rng_seed(0)
    eager_loss = RPM_ELBO().differentiable_loss(model, guide, *args)
    assert math.isclose(float(jit_loss.detach()), float(eager_loss.detach()), rel_tol=1e-12)


def _all_module_params(model):
    cells = [c.cell_contents for c in model.__closure__ if isinstance(c.cell_contents, nn.Module)]
    return [p for m in cells for p in m.parameters()]


def test_enumeration_is_refused_as_by_rpm_elbo():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        pass

    with pytest.raises(ValueError, match="TraceEnum_ELBO"):
        JitRPM_ELBO().differentiable_loss(model, guide, torch.randn(4))


def _grads_against_eager(jit, model, guide, args):
    """Loss and gradients of a replay (after the eager and the recording call) and of RPM_ELBO."""
    for _ in range(2):
        jit.differentiable_loss(model, guide, *args)
    return _loss_and_grads(jit, model, guide, args, {}, 0), _loss_and_grads(RPM_ELBO(), model, guide, args, {}, 0)


def test_a_batch_past_the_dense_table_records_the_dense_table():
    """B = 300: 90000 (latent, atom) pairs, where RPM_ELBO's "auto" normaliser runs the chunked
    autograd function. Its backward cannot be recorded (replays gave wrong gradients at B = 1024),
    so while recording "auto" takes the dense table, and the replay has the eager gradients."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, args, _ = _infonce(torch.float32, B=300)
    jit = JitRPM_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        (loss_j, grads_j), (loss_e, grads_e) = _grads_against_eager(jit, model, guide, args)
    assert jit.stats["traced"] == 1 and jit.stats["fallbacks"] == 0
    assert math.isclose(float(loss_j), float(loss_e), rel_tol=1e-5)
    scale = max(float(g.abs().max()) for g in grads_e)  # a bias whose gradient is 0 in exact arithmetic
    assert max(float((gj - ge).abs().max()) for gj, ge in zip(grads_j, grads_e)) <= 1e-5 * scale


def test_a_step_with_a_custom_autograd_function_is_not_replayed(monkeypatch):
    """Where the chunked normaliser must run while recording (here: the dense limit set to 0), the
    step is not recorded: one warning, and every step is the eager one with the eager gradients."""
    import pyro_rpm.normalisers as normalisers

    monkeypatch.setattr(normalisers, "RECORDED_DENSE_MAX_PAIRS", 0)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, args, _ = _infonce(torch.float32, B=300)
    jit = JitRPM_ELBO()
    with pytest.warns(CompileFallbackWarning, match="autograd functions whose backward is not recorded"):
        (loss_j, grads_j), (loss_e, grads_e) = _grads_against_eager(jit, model, guide, args)
    assert jit.stats["traced"] == 0 and jit.stats["replayed"] == 0 and jit.stats["fallbacks"] >= 1
    assert float(loss_j) == float(loss_e)
    for gj, ge in zip(grads_j, grads_e):
        assert torch.equal(gj, ge)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        JitRPM_ELBO(backend="xla")
    with pytest.raises(ValueError, match="check_every"):
        JitRPM_ELBO(check_every=0)
    with pytest.raises(ValueError, match="cuda_graphs=True needs backend='inductor'"):
        JitRPM_ELBO(cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        JitRPM_ELBO(backend="inductor", cuda_graphs="yes")


def _infonce_svi(device, elbo, seed=0, B=32):
    """An InfoNCE RPM on ``device`` under SVI with FusedAdam, from the initialisation of ``seed``."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    coupling = BilinearCoupling(4, name="g_W").to(device)
    e1 = DeltaRecognition(_mlp(5, 4, torch.float32).to(device), 4, name="g_e1")
    e2 = DeltaRecognition(_mlp(5, 4, torch.float32).to(device), 4, name="g_e2")
    model = infonce_model(e1, e2, coupling)

    x = torch.randn(B, 5, device=device)
    args = (x, x + 0.1 * torch.randn(B, 5, device=device))
    return pyro.infer.SVI(model, RecognitionGuide(model), FusedAdam({"lr": 1e-2}), elbo), args


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by inductor
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["inductor", "cuda_graphs"])
def test_compiled_step_on_cuda_follows_the_eager_trajectory(cuda_graphs):
    """On CUDA the recorded step compiles with inductor and, with ``cuda_graphs=True``, is captured in
    CUDA graphs (one launch per step); 20 SVI steps follow the eager RPM_ELBO's losses."""
    device = torch.device("cuda")
    svi, args = _infonce_svi(device, RPM_ELBO())
    eager = [svi.step(*args) for _ in range(20)]
    jit = JitRPM_ELBO(backend="inductor", cuda_graphs=cuda_graphs)
    svi, args = _infonce_svi(device, jit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = [svi.step(*args) for _ in range(20)]
    assert jit.stats["traced"] == 1 and jit.stats["replayed"] == 19  # step 1 eager, step 2 records
    for a, b in zip(compiled, eager):
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3), (compiled, eager)
    assert compiled[-1] < compiled[0]
    assert all(p.device.type == "cuda" for p in pyro.get_param_store().values())


@pytest.mark.filterwarnings("ignore::UserWarning:torch._dynamo")
def test_torch_compile_of_the_replayed_graph_has_no_graph_break():
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide, args, _ = _two_views(torch.float32)
    jit = JitRPM_ELBO()
    for _ in range(2):
        jit.differentiable_loss(model, guide, *args)
    graph = next(g for g in jit._graphs.values() if hasattr(g, "fn"))
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(graph.fn)(graph.params, list(args))
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_fit_compile_reaches_the_default_metric_on_the_two_views_demo():
    from pyro_rpm.cli.demo import run_demo

    default = run_demo(steps=150, n=256, batch_size=64, out=None, quick=True, progress=False)
    compiled = run_demo(steps=150, n=256, batch_size=64, out=None, quick=True, progress=False, compile=True)
    assert compiled["final_loss"] == pytest.approx(default["final_loss"], abs=1e-3)
    assert compiled["r2"] == pytest.approx(default["r2"], abs=1e-3)


def test_fit_compile_matches_the_default_losses():
    results = {}
    for compile_ in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide, _, _ = _two_views(torch.float64)
        data = (torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 5, dtype=torch.float64))
        results[compile_] = fit(model, guide, data, steps=12, batch_size=16, seed=0, progress=False, compile=compile_)
    for a, b in zip(results[True].losses, results[False].losses):
        assert math.isclose(a, b, rel_tol=1e-10)


def test_fit_compile_refuses_other_elbos():
    model, guide, args, _ = _two_views(torch.float32)
    with pytest.raises(ValueError, match="compile= records RPM_ELBO steps"):
        fit(model, guide, args, steps=1, elbo=pyro.infer.Trace_ELBO(), compile=True, progress=False)
