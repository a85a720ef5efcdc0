# SPDX-License-Identifier: Apache-2.0
"""The code of the documentation runs and gives what the pages say.

* ``examples/tutorial_markov_prior.py`` (the code of ``docs/tutorial-markov-prior.md``, which
  includes it block by block) trains the hand-written AR(1) prior with ``--quick`` and recovers the
  true latents of held-out sequences: affine R^2 >= 0.9 (measured 0.935, 0.941, 0.940 for seeds
  0, 1, 2), well above the untrained network's, and the learned AR coefficients rise from their
  initial 0.5; ``--loop svi`` runs the plain SVI loop the page shows.
* Every python block of the tutorial page (the page shows its code inline, readable as Markdown) is,
  verbatim, the dedented code between a ``# [name]`` / ``# [name-end]`` marker pair of the script.
* The page's two forms of the prior (one trajectory site with ``TrajectoryFactorGuide``, a
  ``pyro.markov`` loop with ``RecognitionGuide``), run from the page's blocks, are the same model and
  guide: equal model and guide log-densities at the same draws (float64). ``--time-priors`` prints
  the per-step cost of both, and ``--prior markov`` trains the loop.
* The code blocks of ``docs/training.md`` run in order in one namespace and print what the page
  shows (text exactly, numbers within a tolerance that allows other CPUs' rounding).
"""

import math
import re
import textwrap
from pathlib import Path

import pytest
from _pages import page_blocks, run_page
from _scripts import run_json

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "tutorial_markov_prior.py"


def _run(*args: str, timeout: float = 300) -> dict:
    return run_json(SCRIPT, *args, timeout=timeout)[0]


@pytest.mark.slow
def test_tutorial_quick_recovers_the_latents(tmp_path):
    result = _run("--quick", "--no-progress", "--out", str(tmp_path))
    assert result["r2"] >= 0.9, result
    assert result["r2"] > result["r2_initial"] + 0.2, result
    assert result["steps"] == 300 and result["sequences"] == 256 and result["loop"] == "fit"
    assert result["prior"] == "vectorised"
    learned = result["ar_learned"]
    assert len(learned) == 2 and all(-1 < a < 1 for a in learned)
    assert learned[0] > 0.6, learned  # the ELBO raised the prior's coefficient from its initial 0.5
    # held-out ELBO per frame above the -log 64 of a model that cannot tell the 64 frames apart
    assert -math.log(64) < result["elbo_per_frame"] < 0, result
    assert math.isfinite(result["final_loss"]) and result["psis_khat_pointwise_median"] > 0
    for name in ("elbo.png", "trajectories.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_tutorial_svi_loop_runs():
    result = _run("--quick", "--no-progress", "--loop", "svi", "--steps", "20", "--out", "")
    assert result["loop"] == "svi" and result["steps"] == 20 and result["figures"] == []
    assert math.isfinite(result["final_loss"]) and 0 <= result["r2"] <= 1


def _script_blocks() -> dict[str, str]:
    """The dedented code between each ``# [name]`` / ``# [name-end]`` pair of the script."""
    script = SCRIPT.read_text()
    blocks = {}
    for name in re.findall(r"^ *# \[([\w-]+)\]$", script, re.M):
        if name.endswith("-end"):
            continue
        assert script.count(f"# [{name}]\n") == 1 and script.count(f"# [{name}-end]") == 1, name
        body = script.split(f"# [{name}]\n")[1].split(f"# [{name}-end]")[0]
        blocks[name] = textwrap.dedent(body[: body.rfind("\n") + 1]).strip("\n") + "\n"
    return blocks


def _page_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "tutorial-markov-prior.md").read_text(), re.S)


def test_tutorial_page_shows_the_script_code_inline():
    page = (ROOT / "docs" / "tutorial-markov-prior.md").read_text()
    assert "literalinclude" not in page  # readable as Markdown: the code is on the page
    blocks = list(_script_blocks().values())
    shown = _page_blocks()
    assert len(shown) >= 10
    for code in shown:
        assert code in blocks, code


def test_tutorial_page_forms_of_the_prior_agree():
    """The page's vectorised and pyro.markov models and guides, run from the page's own blocks, give
    equal log-densities at the same latent draws."""
    import types

    import pyro
    import torch
    from pyro import poutine

    by_name = _script_blocks()
    namespace: dict = {"args": types.SimpleNamespace(seed=0), "N": 6, "HELD_OUT": 2, "device": "cpu"}
    for name in ("imports", "data", "ar1", "setup", "vectorised", "model", "guide"):
        assert by_name[name] in _page_blocks(), name
        exec(compile(by_name[name], f"tutorial block {name}", "exec"), namespace)  # noqa: S102 - the docs' code
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ns = types.SimpleNamespace(**namespace)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the models' torch.zeros(...) follow it; restored below
    try:
        _compare_forms(ns, pyro, torch, poutine)
    finally:
        torch.set_default_dtype(default_dtype)
        pyro.clear_param_store()


def _compare_forms(ns, pyro, torch, poutine) -> None:
    with torch.no_grad():
        pyro.param("ar_coef", torch.tensor([0.9, -0.3]))
        batch = ns.x_train.double()
        ns.recognition.double()
        guide_trace = poutine.trace(ns.guide).get_trace(batch)
        T = batch.shape[1]
        values = {f"z_{t}": guide_trace.nodes[f"z_{t}"]["value"] for t in range(T)}
        trajectory = torch.stack([values[f"z_{t}"] for t in range(T)], dim=1)
        vec_guide = poutine.trace(poutine.condition(ns.guide_vectorised, {"z": trajectory})).get_trace(batch)
        markov = poutine.trace(poutine.condition(ns.model, values)).get_trace(batch)
        vectorised = poutine.trace(poutine.condition(ns.model_vectorised, {"z": trajectory})).get_trace(batch)
        assert trajectory.dtype == torch.float64 and trajectory.shape == (6, T, 2)
        assert vectorised.log_prob_sum().item() == pytest.approx(markov.log_prob_sum().item(), rel=1e-10)
        assert vec_guide.log_prob_sum().item() == pytest.approx(guide_trace.log_prob_sum().item(), rel=1e-10)
        # the prior alone: AR1Trajectory against the per-step conditionals
        prior_markov = sum(markov.nodes[f"z_{t}"]["log_prob_sum"] for t in range(T))
        prior_vec = vectorised.nodes["z"]["log_prob_sum"]
        assert prior_vec.item() == pytest.approx(prior_markov.item(), rel=1e-10)


def test_tutorial_times_both_forms_of_the_prior():
    result = _run("--time-priors", "--quick", "--no-progress", timeout=120)
    assert result["steps_per_sequence"] == 50 and result["batch_size"] == 64 and result["threads"] == 1
    assert result["seconds_per_step_markov"] > 0 and result["seconds_per_step_vectorised"] > 0
    ratio = result["seconds_per_step_markov"] / result["seconds_per_step_vectorised"]
    assert result["ratio_markov_loop_vs_vectorised"] == pytest.approx(ratio, rel=0.01)
    assert ratio > 1.5, result  # measured 5 to 6 on a shared 2-core CPU


def test_tutorial_markov_form_trains():
    result = _run("--quick", "--no-progress", "--prior", "markov", "--loop", "svi", "--steps", "20", "--out", "")
    assert result["prior"] == "markov" and result["steps"] == 20
    assert math.isfinite(result["final_loss"]) and 0 <= result["r2"] <= 1


def test_training_page_code_runs_and_prints_what_the_page_shows():
    blocks = page_blocks("training.md")
    assert len(blocks) >= 5 and all(expected is not None for _, expected in blocks)  # every block prints
    run_page("training.md")
