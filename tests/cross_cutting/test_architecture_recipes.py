# SPDX-License-Identifier: Apache-2.0
"""The recipes of ``docs/architecture.md`` run as written and do what the page says.

Each recipe is the ``python`` blocks under its ``### Recipe ...`` heading, run in order in a fresh
namespace (a missing heading, a recipe without code or a block that raises fails the test). Then:

* **A, a recognition family**: the toy ``IsotropicGaussianFactor`` keeps the ``Factor`` contract
  (the pairwise table against a naive broadcast of an independent reference density, the
  logsumexp hook, ``index`` / ``cat`` / ``with_tensors`` / ``detach`` / ``to`` round trips,
  broadcasting ``log_prob``, reparameterised samples, ``combine``'s residual
  ``log q - sum_j log f_j``), its module keeps the ``Recognition`` contract, and the two-view SVI
  run lowers the loss, with the closed-form tied posterior and the interior estimator reached
  through ``diagonal_gaussian``;
* **B, a prior**: the Student-t program is the model's prior site, its learned parameters move,
  and the loss goes down;
* **C, a support**: ``AnchoredSupport`` is a ``pyro_rpm.Support`` whose factors are the batch
  (with gradients) then the anchors (no gradient reaches the network through them), the
  likelihood sites normalise over all B + K points and observe ``arange(B)``, and the loss goes down.
"""

import math
import re
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_rpm

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
RECIPES = {
    "family": "Recipe A: add a recognition family",
    "prior": "Recipe B: add a prior",
    "support": "Recipe C: add a support",
}
SECONDS = 30  # each recipe takes a few seconds on one thread; this only catches a runaway


def _section(page: str, heading: str) -> str:
    """The text under ``### heading`` up to the next heading of level 1-3 (headings inside code fences ignored)."""
    lines = page.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == f"### {heading}"]
    assert len(starts) == 1, f"docs/architecture.md must have exactly one heading '### {heading}'"
    body, in_fence = [], False
    for line in lines[starts[0] + 1 :]:
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,3} ", line):
            break
        body.append(line)
    return "".join(body)


def _blocks(heading: str) -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", _section(PAGE.read_text(), heading), re.M | re.S)
    assert blocks, f"the recipe '{heading}' of docs/architecture.md has no python block"
    return blocks


def _run(key: str) -> dict:
    """Run the recipe's blocks in order in a fresh namespace; returns the namespace."""
    heading = RECIPES[key]
    namespace: dict = {"__name__": f"architecture_recipe_{key}"}
    start = time.perf_counter()
    for i, code in enumerate(_blocks(heading)):
        exec(compile(code, f"docs/architecture.md ({heading}, block {i + 1})", "exec"), namespace)
    assert time.perf_counter() - start < SECONDS, f"{heading} took more than {SECONDS} s"
    return namespace


def _assert_loss_goes_down(losses: list[float], steps: int) -> None:
    assert len(losses) == steps
    assert all(math.isfinite(v) for v in losses), losses
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.95 * first, (first, last)


def test_the_page_has_every_recipe_inline_and_the_figure():
    page = PAGE.read_text()
    for heading in RECIPES.values():
        assert _blocks(heading)
    assert "literalinclude" not in page  # the page must read as plain markdown
    assert "](figures/architecture.png)" in page
    assert (ROOT / "docs" / "figures" / "architecture.png").stat().st_size > 10_000
    assert (ROOT / "docs" / "figures" / "draw_architecture.py").is_file()


def test_section_stops_at_the_next_heading_and_not_at_code_comments():
    page = "### Recipe X\n\n```python\n# a comment\nx = 1\n```\n\n### Next\n\n```python\ny = 2\n```\n"
    section = _section(page, "Recipe X")
    assert "x = 1" in section and "y = 2" not in section
    with pytest.raises(AssertionError, match="exactly one heading"):
        _section(page, "Recipe Y")


def test_recipe_a_family_keeps_the_factor_contract():
    ns = _run("family")
    Family, Module = ns["IsotropicGaussianFactor"], ns["IsotropicGaussianRecognition"]
    assert issubclass(Family, pyro_rpm.Factor) and issubclass(Module, pyro_rpm.Recognition)

    torch.manual_seed(1)
    M, D = 7, 3
    loc = torch.randn(M, D, requires_grad=True)
    scale = torch.rand(M) + 0.5
    f = Family(loc, scale)
    assert f.batch_shape == (M,) and f.event_shape == (D,) and f.num_support == M

    # the table against a naive broadcast of an independent reference density
    z = torch.randn(2, 5, D)
    reference = dist.Normal(loc.detach(), scale[:, None]).to_event(1).log_prob(z.unsqueeze(-2))
    table = f.pairwise_log_prob(z)
    assert table.shape == (2, 5, M)
    assert torch.allclose(table, reference, atol=1e-5)
    assert torch.allclose(f.pairwise_logsumexp(z), torch.logsumexp(reference, -1), atol=1e-5)
    assert f.log_prob(z[0].unsqueeze(-2)).shape == (5, M)

    # index / cat / with_tensors / detach / to round trips, through the tensors
    perm = torch.randperm(M)
    picked = f.index(perm)
    assert type(picked) is Family and all(torch.equal(a, b[perm]) for a, b in zip(picked.tensors(), f.tensors()))
    whole = Family.cat([f.index(torch.arange(3)), f.index(torch.arange(3, M))])
    assert whole.num_support == M and all(torch.equal(a, b) for a, b in zip(whole.tensors(), f.tensors()))
    again = f.with_tensors(f.tensors())
    assert type(again) is Family and torch.equal(again.pairwise_log_prob(z), table)
    assert not any(t.requires_grad for t in f.detach().tensors())
    assert f.to(dtype=torch.float64).dtype == torch.float64

    # reparameterised samples with gradients to the parameters
    draws = f.rsample((4,))
    assert draws.shape == (4, M, D)
    (grad,) = torch.autograd.grad(draws.sum(), loc)
    assert torch.allclose(grad, torch.full_like(grad, 4.0))

    # combine's residual is log q - sum_j log f_j, with and without the Normal prior
    g = Family(torch.randn(M, D), torch.rand(M) + 0.5)
    prior = (torch.zeros(D), torch.full((D,), 2.0))
    for p in (None, prior):
        q, residual = Family.combine([f.detach(), g], p)
        value = q.sample()
        expected = q.log_prob(value) - f.log_prob(value) - g.log_prob(value)
        assert torch.allclose(residual(value), expected, atol=1e-4)

    # the module: output width, head, and the factors of a batch
    r1, x1, x2 = ns["r1"], ns["x1"], ns["x2"]
    assert r1.output_size == 3
    factors = r1(x1)
    assert type(factors) is Family and factors.batch_shape == (64,) and factors.event_shape == (2,)

    # training: the loss goes down; the tied posterior is the closed form of combine
    _assert_loss_goes_down(ns["losses"], 60)
    model, guide = ns["model"], ns["guide"]
    guide_trace = poutine.trace(guide).get_trace(x1, x2)
    posterior = guide_trace.nodes["z"]["fn"]
    assert isinstance(posterior, pyro_rpm.TiedPosterior)
    assert posterior.likelihood_sites == ("x1", "x2") and posterior._residual is not None
    assert guide_trace.nodes["z"]["value"].shape == (64, 2)
    # diagonal_gaussian() opens the interior estimator to the new family
    assert math.isfinite(pyro_rpm.RPM_ELBO(estimator="interior").loss(model, guide, x1, x2))


def test_recipe_b_prior_is_a_pyro_program_with_learned_parameters():
    ns = _run("prior")
    _assert_loss_goes_down(ns["losses"], 60)
    df, scale = pyro.param("prior_df").detach(), pyro.param("prior_scale").detach()
    assert float(df) > 1.0 and abs(float(df) - 5.0) > 0.1  # learned, within its constraint
    assert scale.shape == (2,) and not torch.allclose(scale, torch.ones(2))

    x1, x2 = ns["x1"], ns["x2"]
    model_trace = poutine.trace(ns["model"]).get_trace(x1, x2)
    prior = model_trace.nodes["z"]["fn"]
    while isinstance(prior, (dist.Independent, dist.ExpandedDistribution)):
        prior = prior.base_dist
    assert isinstance(prior, dist.StudentT)
    assert isinstance(model_trace.nodes["x1"]["fn"], pyro_rpm.RecognitionLikelihood)
    guide_trace = poutine.trace(ns["guide"]).get_trace(x1, x2)
    assert guide_trace.nodes["z"]["value"].shape == (64, 2)


def test_recipe_c_support_puts_the_batch_first_and_detaches_the_anchors():
    ns = _run("support")
    _assert_loss_goes_down(ns["losses"], 40)
    s1, x1, x2, anchors1 = ns["s1"], ns["x1"], ns["x2"], ns["anchors1"]
    assert isinstance(s1, pyro_rpm.Support)

    f = s1(x1)
    B, K = x1.shape[0], anchors1.shape[0]
    assert f.num_support == B + K
    batch, anchors = s1.recognition(x1), s1.recognition.encode_detached(anchors1)
    for t, b, a in zip(f.tensors(), batch.tensors(), anchors.tensors()):
        assert torch.allclose(t[:B], b) and torch.allclose(t[B:], a)
    params = list(s1.recognition.parameters())
    grads = torch.autograd.grad(f.tensors()[0][B:].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)  # no gradient through the anchors
    grads = torch.autograd.grad(f.tensors()[0][:B].sum(), params, allow_unused=True)
    assert any(g is not None and g.any() for g in grads)  # the batch keeps its gradients

    model_trace = poutine.trace(ns["model"]).get_trace(x1, x2)
    for name in ("x1", "x2"):
        site = model_trace.nodes[name]
        assert isinstance(site["fn"], pyro_rpm.RecognitionLikelihood) and site["fn"].num_support == B + K
        assert torch.equal(site["value"], torch.arange(B))
