# SPDX-License-Identifier: Apache-2.0
"""``examples/moving_balls.py --quick`` reproduces the finding of Aitchison & Ganev (§5): with the RBF
coupling the linearly decoded ball positions reach held-out R^2 >= 0.9 on every ball, while the
bilinear (InfoNCE) coupling loses or half-loses at least one ball at most seeds. The script runs as a subprocess (one thread, Agg backend); its last
stdout line must be one JSON object. About a minute of one idle CPU core per run."""

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest
from _scripts import run_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "moving_balls.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, timeout=timeout)


def _quick(tmp_path: Path, seed: int) -> dict:
    out = tmp_path / f"seed{seed}"
    proc = _run("--quick", "--seed", str(seed), "--no-progress", "--out", str(out))
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    for name in ("frames.png", "loss.png", "decoded.png", "maps.png"):
        assert (out / name).stat().st_size > 10_000
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_moving_balls_quick_reaches_the_target(tmp_path):
    """Seeds 0 and 2. The RBF targets hold at every seed; how badly the bilinear critic fails is chaotic
    (it depends on the CPU's rounding: seed 0 lost a ball on one machine, R^2 0.820, and only half of one
    on another, 0.933; docs/examples/moving_balls.md), so its failure is asserted at one of two seeds."""
    results = [_quick(tmp_path, seed) for seed in (0, 2)]
    for result in results:
        assert result["r2_rbf_coupling"] >= 0.9 and result["r2_rbf_coupling_all"] >= 0.9, result
        assert min(result["r2_rbf_coupling_per_ball"]) >= 0.9, result
        # the RBF prior is better on every run, overall and on its worst ball ...
        assert result["r2_rbf_coupling"] > result["r2_linear_coupling"], result
        assert min(result["r2_rbf_coupling_per_ball"]) > min(result["r2_linear_coupling_per_ball"]), result
        # ... and fits the data better: lower InfoNCE, well below chance (log B)
        assert result["infonce_rbf_coupling"] < result["infonce_linear_coupling"] < math.log(result["batch_size"])
        assert result["lengthscale"] > 0 and math.isfinite(result["bilinear_weight_norm"])
        assert result["steps"] == 600 and result["batch_size"] == 64 and result["frames"] == 900
        assert result["coords"] == "centred" and result["optimizer"] == "adam" and result["device"] == "cpu"
    # the bilinear critic loses or half-loses a ball (worst ball at least 0.2 below the RBF prior's),
    # 0.15 below overall, and below the untrained encoder (centres of mass of random conv maps are
    # near-affine in the ball positions): at one seed at least
    assert any(
        min(r["r2_rbf_coupling_per_ball"]) - min(r["r2_linear_coupling_per_ball"]) >= 0.2
        and r["r2_rbf_coupling"] - r["r2_linear_coupling"] >= 0.15
        and r["r2_initial"] > r["r2_linear_coupling"]
        for r in results
    ), results


@pytest.mark.slow
def test_moving_balls_quick_trains_through_the_compiled_step(tmp_path):
    """Issue 15 on a real encoder: the ball encoder's BatchNorm layers update their running statistics in
    place; JitRPM_ELBO records and replays those writes (before: it fell back to the eager path) and
    reaches the same target as without --compile."""
    proc = _run("--quick", "--no-progress", "--couplings", "rbf", "--compile", "fx", "--out", str(tmp_path))
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "CompileFallbackWarning" not in proc.stderr, proc.stderr[-4000:]  # replayed, not the eager path
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["compile"] == "fx"
    assert result["r2_rbf_coupling"] >= 0.9 and min(result["r2_rbf_coupling_per_ball"]) >= 0.9, result
    assert result["infonce_rbf_coupling"] < math.log(result["batch_size"]), result


def test_moving_balls_rejects_bad_arguments(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("moving_balls_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for args in (
        ["--batch-size", "1"],
        ["--steps", "0"],
        ["--image-size", "8"],
        ["--coords", "polar"],
        ["--lr", "-1"],
        ["--compile", "yes"],
    ):
        with pytest.raises(SystemExit) as error:
            module.main([*args, "--no-progress", "--out", str(tmp_path)])
        assert error.value.code == 2, args
        assert "error:" in capsys.readouterr().err, args
