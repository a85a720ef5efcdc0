# SPDX-License-Identifier: Apache-2.0
"""``examples/lightning_two_views.py``: the two-view RPM trained through ``lightning.Trainer``.

The ``--quick`` run (a subprocess, as a user runs it) recovers the latent from the encoder API's
embeddings of held-out inputs with linear R^2 >= 0.9 (the issue's target); its constant-free loss
is the loss minus 2 log B; the encoder saved alone reloads (``weights_only``) to the same embeddings;
the figures, the Lightning checkpoint and the CSV log are written.
"""

import math

import pytest
import torch
from _scripts import run_json

pytest.importorskip("lightning")


@pytest.mark.slow
def test_lightning_two_views_quick_reaches_r2(tmp_path):
    result, proc = run_json("examples/lightning_two_views.py", "--quick", "--no-progress", "--out", str(tmp_path), timeout=300)
    assert result["r2"] >= 0.9, result
    assert result["r2_view2"] >= 0.9, result
    assert result["steps"] == 1200 and result["device"] == "cpu"
    for key in ("seconds", "final_loss", "final_loss_constant_free"):
        assert math.isfinite(result[key])
    assert result["final_loss"] - result["final_loss_constant_free"] == pytest.approx(2 * math.log(256), abs=2e-3)
    assert result["reload_max_abs_diff"] == 0.0
    saved = torch.load(result["encoder"], weights_only=True)
    assert saved["name"] == "r1" and saved["output_size"] == 4
    assert result["figures"] == [str(tmp_path / "elbo.png"), str(tmp_path / "latents.png")]
    for path in (*result["figures"], result["checkpoint"]):
        assert (tmp_path / path).stat().st_size > 10_000
    assert list(tmp_path.glob("lightning_logs/version_*/metrics.csv"))
