# SPDX-License-Identifier: Apache-2.0
"""The identifiability examples reach their ``--quick`` targets (each run as a subprocess, as a user would).

* ``examples/identifiability.py --quick``: Zimmermann et al.'s sphere/vMF benchmark with a matched cosine
  prior recovers the latents up to an affine map (R2 >= 0.85 and >= the identity baseline + 0.2), and so
  does the model with von Mises-Fisher recognition factors (R2 >= 0.9); the
  box/Laplace benchmark with an L1 prior beats the identity baseline's MCC;
* ``examples/anisotropic.py --quick``: the learned anisotropic prior (AnInfoNCE) recovers the latents
  (R2 >= 0.95, MCC >= 0.65, learned precisions split >= 2x between the true groups) where the isotropic one
  mixes them (MCC <= 0.55).

Plus the command-line contract: flags, errors, figures and one JSON object on the last stdout line.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from _scripts import run_json

from pyro_rpm import RPM_ELBO, AnisotropicRBFCoupling, CosineCoupling, LaplaceCoupling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script: str, *args: str, timeout: float = 900) -> tuple[dict, subprocess.CompletedProcess]:
    return run_json(os.path.join("examples", script), "--no-progress", *args, timeout=timeout)


@pytest.mark.slow
def test_identifiability_quick_reaches_its_targets(tmp_path):
    result, _ = _run("identifiability.py", "--quick", "--out", str(tmp_path))
    print(json.dumps(result))
    assert result["r2"] >= 0.85, result
    assert result["r2"] >= result["r2_identity"] + 0.2, result
    assert result["r2_vmf"] >= 0.9, result  # the same sphere data through VonMisesFisherRecognition factors
    # the box/Laplace setting has no published CPU-budget number; it must beat the raw observations
    assert result["mcc_box"] >= result["mcc_box_identity"] + 0.1, result
    assert result["r2_box"] > result["r2_box_identity"], result
    for name in ("sphere_latents.png", "box_latents.png", "sphere_loss.png", "box_loss.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert result["seconds"] < 600


@pytest.mark.slow
def test_anisotropic_quick_reaches_its_targets(tmp_path):
    result, _ = _run("anisotropic.py", "--quick", "--out", str(tmp_path))
    print(json.dumps(result))
    assert result["r2_aniso"] >= 0.95, result
    assert result["mcc_aniso"] >= 0.65, result
    assert result["mcc_iso"] <= 0.55, result
    assert result["lambda_ratio"] >= 2, result
    assert result["r2_aniso"] > result["r2_iso"], result
    assert result["true_precision"] == [25.0] * 5 + [5.0] * 5
    assert len(result["learned_precision"]) == 10
    for name in ("precisions.png", "loss.png", "latents_aniso.png", "latents_iso.png"):
        assert (tmp_path / name).stat().st_size > 1000


def _load(script: str):
    """Import an example script as a module (its ``main(argv)`` then runs in-process, without a new interpreter)."""
    name = "example_" + script.removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", script))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_identifiability_short_run_emits_the_json_contract(tmp_path, capsys):
    result = _load("identifiability.py").main(
        ["--quick", "--no-progress", "--steps", "3", "--setting", "sphere", "--out", str(tmp_path)]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for key in ("r2", "mcc", "r2_identity", "mcc_identity", "r2_vmf", "mcc_vmf", "seconds", "steps_sphere", "batch_size"):
        assert key in result
    assert "mcc_box" not in result and result["steps_sphere"] == 3
    # the identity baseline (raw x = g(z)) is far from the truth, as in Zimmermann et al. (about 0.6-0.7)
    assert 0.4 <= result["r2_identity"] <= 0.8
    assert (tmp_path / "sphere_latents.png").exists()


def test_identifiability_box_short_run(tmp_path):
    result = _load("identifiability.py").main(
        ["--quick", "--no-progress", "--steps", "3", "--setting", "box", "--batch-size", "64", "--out", str(tmp_path)]
    )
    for key in ("r2_box", "mcc_box", "r2_box_identity", "mcc_box_identity", "learned_scale_box"):
        assert key in result
    assert "r2" not in result and result["batch_size"] == 64
    assert (tmp_path / "box_latents.png").exists()


def test_anisotropic_short_run_emits_the_json_contract(tmp_path, capsys):
    result = _load("anisotropic.py").main(
        ["--quick", "--no-progress", "--steps", "3", "--batch-size", "64", "--out", str(tmp_path)]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for key in ("r2_aniso", "mcc_aniso", "r2_iso", "mcc_iso", "lambda_ratio", "learned_precision", "true_precision"):
        assert key in result
    assert result["steps"] == 3 and result["batch_size"] == 64
    assert (tmp_path / "precisions.png").exists()


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("identifiability.py", ["--steps", "0"], "--steps"),
        ("identifiability.py", ["--kappa", "-1"], "--kappa"),
        ("identifiability.py", ["--setting", "torus"], "--setting"),
        ("identifiability.py", ["--device", "gpu0"], "--device"),
        ("anisotropic.py", ["--batch-size", "1"], "--batch-size"),
        ("anisotropic.py", ["--threshold", "0"], "--threshold"),
        ("anisotropic.py", ["--lr-precision", "nan"], "--lr-precision"),
    ],
)
def test_bad_flags_exit_with_a_message(script, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load(script).main(["--quick", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("coupling_name", ["cosine", "laplace", "anisotropic"])
def test_example_model_is_infonce_with_a_shared_encoder(coupling_name):
    """The examples' RPM (one DeltaRecognition shared by both views, sphere-normalised for cosine/anisotropic)
    has loss / B = InfoNCE + log B, with InfoNCE written here by hand on the encoder outputs."""
    helpers = _load("_contrastive_rpm.py")
    torch.manual_seed(0)
    sphere = coupling_name != "laplace"
    net = helpers.encoder_mlp(4, (16,), sphere=sphere)
    if coupling_name == "cosine":
        coupling = CosineCoupling(0.2)
    elif coupling_name == "laplace":
        coupling = LaplaceCoupling(0.3)
    else:
        coupling = AnisotropicRBFCoupling(4, torch.tensor([0.3, 0.5, 1.0, 2.0]))
    model, guide = helpers.infonce_rpm(net, 4, coupling)
    x1, x2 = torch.randn(32, 4), torch.randn(32, 4)
    a, b = net(x1), net(x2)
    if sphere:
        torch.testing.assert_close(a.norm(dim=-1), torch.ones(32))
    if coupling_name == "cosine":
        logits = a @ b.T / 0.2
    elif coupling_name == "laplace":
        logits = -(a[:, None] - b[None]).abs().sum(-1) / 0.3
    else:
        prec = torch.tensor([0.3, 0.5, 1.0, 2.0]) ** -2
        logits = -0.5 * ((a[:, None] - b[None]) ** 2 * prec).sum(-1)
    infonce = -(logits.diagonal() - logits.logsumexp(-1)).mean()
    loss = RPM_ELBO().loss(model, guide, x1, x2) / 32
    assert loss == pytest.approx(infonce.item() + math.log(32), abs=1e-4)
