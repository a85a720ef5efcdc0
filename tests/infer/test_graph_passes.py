# SPDX-License-Identifier: Apache-2.0
"""The simplification passes of a recorded step (``pyro_rpm/infer/_graph.py``, ``_batching.py``): each keeps the
values, the dtypes and the gradients of the graph it shortens, checked against the unsimplified graph or eager SVI."""

import math

import pyro
import pytest
import torch
from _models import markov_loop_model
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_rpm import RPM_ELBO, GaussianRecognition, JitRPM_ELBO, RecognitionGuide
from pyro_rpm.infer._batching import batch_repeated_operations
from pyro_rpm.infer._graph import simplify
from pyro_rpm.normalisers.dense import clamped_logsumexp


def _ops(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def _recorded(fn, *inputs):
    plain = make_fx(fn)(*inputs)
    short = make_fx(fn)(*inputs)
    simplify(short)
    return plain, short


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_terms_added_one_by_one_become_one_addition(dtype):
    """An ELBO adds its constant terms (log N, log-normalisers of fixed factors) one at a time: the
    chain ``((x + c1) - c2) + 3`` becomes ``x + (c1 - c2 + 3)``, equal to rounding, same dtype, same gradient."""

    def fn(x):
        c1 = torch.tensor(2.5, dtype=torch.float64).log()  # folded to a 0-d constant
        c2 = torch.tensor(7.0, dtype=dtype).sqrt()
        return ((((x * x).sum(-1) + c1) - c2) + 3.0).sub(0.25)

    x = torch.randn(5, 3, dtype=dtype, requires_grad=True)
    plain, short = _recorded(fn, x)
    adds = [op for op in _ops(short) if op in ("aten.add.Tensor", "aten.sub.Tensor")]
    assert len(adds) == 1, _ops(short)
    assert len(_ops(plain)) > len(_ops(short))
    expected, got = plain(x), short(x)
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
    (g_plain,) = torch.autograd.grad(expected.sum(), x)
    (g_short,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_short, g_plain, rtol=0, atol=0)


def test_a_constant_that_changes_the_result_dtype_is_not_merged():
    """A 0-d float32 value plus a float64 0-d constant is float64 (both dimensionless): the chain whose
    steps change the dtype stays as it is."""

    def fn(x):
        return (x.sum() + torch.tensor(1.0, dtype=torch.float64)) - torch.tensor(0.5, dtype=torch.float64)

    x = torch.randn(4, requires_grad=True)
    plain, short = _recorded(fn, x)
    assert short(x).dtype == plain(x).dtype == torch.float64
    torch.testing.assert_close(short(x), plain(x), rtol=0, atol=0)


def test_a_term_read_twice_is_kept():
    """``y = x + c1`` used by two operations: merging ``y - c2`` into ``x + (c1 - c2)`` would compute ``y``
    twice; the pass leaves such chains alone."""

    def fn(x):
        y = x + 1.5
        return (y - 0.5) * y

    x = torch.randn(3, requires_grad=True)
    plain, short = _recorded(fn, x)
    assert _ops(short).count("aten.add.Tensor") + _ops(short).count("aten.sub.Tensor") == 2
    torch.testing.assert_close(short(x), plain(x), rtol=0, atol=0)


def test_the_clamped_logsumexp_records_without_branches():
    """:func:`clamped_logsumexp` records as 11 operations with no ``where`` (18 before: the finiteness test of
    every row maximum and two selections), with the values and gradients of ``torch.logsumexp``."""
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    gm = make_fx(lambda t: clamped_logsumexp(t, -1))(x)
    assert "aten.where.self" not in _ops(gm) and len(_ops(gm)) <= 11, _ops(gm)
    torch.testing.assert_close(gm(x), torch.logsumexp(x, -1), rtol=1e-15, atol=0)
    (g,) = torch.autograd.grad(gm(x).sum(), x)
    (ref,) = torch.autograd.grad(torch.logsumexp(x, -1).sum(), x)
    torch.testing.assert_close(g, ref, rtol=1e-14, atol=1e-16)
    inf, nan = float("inf"), float("nan")
    rows = torch.tensor([[1.0, 2.0, -900.0], [-inf, -inf, -inf], [inf, 1.0, 2.0], [nan, 1.0, 2.0]])
    torch.testing.assert_close(gm(rows), torch.logsumexp(rows, -1), equal_nan=True, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------- batching repeated operations


def _markov(dtype, sequences=6, steps=12):
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4)).to(dtype)
    model = markov_loop_model(GaussianRecognition(net, 2, prior_scale=1.0, name="b_frames"), steps, 2, dtype, "b_ar")
    return model, RecognitionGuide(model), torch.randn(sequences, steps, 3, dtype=dtype)


def _recorded_graph(elbo: JitRPM_ELBO) -> torch.fx.GraphModule:
    (graph,) = [g for g in elbo._graphs.values() if g is not None]
    return graph.fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_markov_loop_replays_batched_with_the_eager_trajectory(dtype):
    """The tutorial's ``pyro.markov`` loop over 12 steps: in float32 the recorded step's per-site copies become
    batched operations (about 60 operations per step before; now a few hundred in all, the 12 random draws kept
    apart); in float64 the recording keeps the dense tables' value-dependent refinement and is not simplified.
    Six SVI steps follow eager SVI: the same losses and parameters (float64 to 1e-12)."""
    results = {}
    for kind in ("eager", "jit"):
        model, guide, x = _markov(dtype)
        elbo = JitRPM_ELBO() if kind == "jit" else RPM_ELBO()
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        pyro.set_rng_seed(1)
        losses = [svi.step(x) for _ in range(6)]
        store = pyro.get_param_store()
        results[kind] = losses, {name: store[name].detach().clone() for name in store.keys()}
        if kind == "jit":
            assert elbo.stats["traced"] == 1 and elbo.stats["replayed"] == 5
            ops = _ops(_recorded_graph(elbo))
            assert ops.count("aten.randn.default") == 12
            if dtype == torch.float32:
                assert len(ops) < 12 * 20, len(ops)
            else:  # the float64 tables' refinement selects entries by value (nonzero): not simplified
                assert "aten.nonzero.default" in ops
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(results["jit"][0], results["eager"][0]):
        assert math.isclose(a, b, rel_tol=tol), (a, b)
    for name, value in results["eager"][1].items():
        torch.testing.assert_close(results["jit"][1][name], value, rtol=tol, atol=tol)


def test_repeated_independent_chains_become_one_batched_chain():
    """Eight copies of ``exp(a_i @ w) * b_i`` summed one by one: one ``bmm`` (or ``mm``), one ``exp``, one ``mul``,
    one reduction; the same value and gradients; a member also read alone reads ``batched[i]``."""

    def fn(a, b, w):
        total, kept = a.new_zeros(()), []
        for i in range(8):
            y = (a[i] @ w).exp() * b[i]
            kept.append(y)
            total = total + y.sum()
        return total + kept[3].mean()

    a, b = torch.randn(8, 5, 3, dtype=torch.float64), torch.randn(8, 5, 4, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    plain, short = _recorded(fn, a, b, w)
    assert _ops(plain).count("aten.exp.default") == 8 and _ops(short).count("aten.exp.default") == 1, _ops(short)
    assert len(_ops(short)) < len(_ops(plain)) / 3
    torch.testing.assert_close(short(a, b, w), plain(a, b, w), rtol=1e-13, atol=0)
    (g_short,) = torch.autograd.grad(short(a, b, w), w)
    (g_plain,) = torch.autograd.grad(plain(a, b, w), w)
    torch.testing.assert_close(g_short, g_plain, rtol=1e-13, atol=0)


def test_a_random_draw_fed_by_other_operations_keeps_the_graph_as_it_is():
    """``torch.normal(mean, std)`` draws in the graph's order only if the graph keeps its order: no batching."""

    def fn(x):
        return sum((torch.normal(x[i].exp(), 1.0) * x[i]).sum() for i in range(6))

    x = torch.randn(6, 3)
    gm = make_fx(fn)(x)
    assert not batch_repeated_operations(gm)
