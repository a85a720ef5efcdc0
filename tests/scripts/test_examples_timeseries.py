# SPDX-License-Identifier: Apache-2.0
"""The time-series examples run end to end with ``--quick`` and recover the true latents (R^2 >= 0.9).

Each script runs as a subprocess (one thread, Agg backend); its last stdout line must be one JSON
object. ``gp_time_series.py`` fits RP-GPFA to Poisson bouncing-ball data; ``state_space.py`` fits the
state-space RPM to multi-view linear-Gaussian data and must also recover the transition matrix's
eigenvalues. Together they take well under a minute on one CPU thread.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

from _scripts import run_json

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: float = 170) -> dict:
    return run_json(script, *args, timeout=timeout)[0]


def test_gp_time_series_quick(tmp_path):
    result = _run("examples/gp_time_series.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert result["r2"] >= 0.9, result
    assert result["r2"] > result["r2_initial"]  # training improves on the random network
    assert result["pooling"] == "ergodic" and result["steps"] == 400 and result["sequences"] == 20
    assert result["log_support"] == round(math.log(20 * 50), 4)
    assert len(result["lengthscale"]) == 1 and 1.0 < result["lengthscale"][0] < 20.0
    assert math.isfinite(result["final_loss"])
    for name in ("elbo.png", "trajectories.png", "counts.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_state_space_quick(tmp_path):
    result = _run("examples/state_space.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert result["r2"] >= 0.9, result
    assert result["r2"] > result["r2_initial"]
    assert result["eigenvalue_error"] < 0.1, result  # the learned dynamics match 0.95 exp(+-i pi/5)
    assert result["pooling"] == "data" and result["batch_size"] == 32
    for name in ("elbo.png", "latents.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_scripts_reject_bad_arguments():
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    for script, args in (
        ("examples/gp_time_series.py", ["--sequences", "1"]),
        ("examples/state_space.py", ["--batch-size", "1"]),
    ):
        proc = subprocess.run(
            [sys.executable, str(ROOT / script), *args, "--no-progress", "--out", ""],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "error:" in proc.stderr
