# SPDX-License-Identifier: Apache-2.0
"""The discrete examples run end to end with ``--quick`` and meet their accuracy targets.

Each script runs as a subprocess (one thread, Agg backend); its last stdout line must be one JSON
object. ``peer_supervision.py`` clusters scikit-learn digits from same-digit pairs (target: held-out
accuracy >= 0.95); ``hmm.py`` recovers a 6-state Markov chain from the digit images it emits (target:
Viterbi-path accuracy >= 0.9 on a held-out trajectory).
"""

from pathlib import Path

import numpy as np
import pytest
from _scripts import run_json, run_script

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: float = 400) -> dict:
    return run_json(script, *args, timeout=timeout)[0]


@pytest.mark.slow
def test_peer_supervision_quick(tmp_path):
    result = _run("examples/peer_supervision.py", "--quick", "--no-progress", "--out", str(tmp_path), timeout=300)
    assert result["accuracy"] >= 0.95, result
    assert result["accuracy_pairs"] >= 0.95, result
    assert result["steps"] == 600 and result["batch_size"] == 256
    # the held-out log-likelihood per pair beats the uninformative -2 log M (M = held-out pairs) by
    # most of log K = log 10, the most a K-state latent can explain (measured: 0.93-0.97 log K, seeds 0-3)
    M = result["num_heldout_images"]
    assert result["heldout_log_likelihood"] > -2 * np.log(M) + 0.8 * np.log(10), result
    # the training loss per pair approaches its floor 2 log B - log K (every pair certain of its own cluster)
    assert result["final_loss"] < 2 * np.log(256) - 0.8 * np.log(10), result
    for name in ("loss.png", "confusion.png", "clusters.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.slow
def test_hmm_quick(tmp_path):
    result = _run("examples/hmm.py", "--quick", "--no-progress", "--out", str(tmp_path), timeout=600)
    assert result["accuracy"] >= 0.9, result
    assert result["accuracy_train"] >= 0.9, result
    assert result["transition_error"] < 0.25, result  # the learned matrix has the banded RBF structure
    assert result["restarts"] == 2 and result["exact_loss"] == min(result["restart_losses"])
    learned = np.array(result["transition_learned"])
    assert np.allclose(learned.sum(1), 1, atol=1e-2)
    for name in ("loss.png", "transitions.png", "path.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_scripts_reject_bad_arguments():
    for script, args in (
        ("examples/peer_supervision.py", ["--batch-size", "1"]),
        ("examples/hmm.py", ["--window", "7", "--length", "100"]),
        ("examples/hmm.py", ["--restarts", "0"]),
    ):
        proc = run_script(script, *args, timeout=120)
        assert proc.returncode == 2 and "error:" in proc.stderr, (script, proc.stderr[-500:])
