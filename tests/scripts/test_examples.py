# SPDX-License-Identifier: Apache-2.0
"""The example and benchmark scripts run end to end and report what they claim.

Each script runs as ``python <script> --quick ...`` in a subprocess (one OpenMP thread, Agg
backend); its last stdout line must be one JSON object with the documented keys. The InfoNCE
identity script must find ``loss / B = InfoNCE + log B`` to 1e-5 for every coupling while the
encoders train; the benchmark must report positive finite timings and agree with the torch step
at the initial parameters. Also covers the shared script helper :mod:`pyro_rpm.cli.scripts`.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _scripts import run_json, run_script

from pyro_rpm.cli.scripts import emit, script_parser, setup

ROOT = Path(__file__).resolve().parents[2]
COUPLINGS = ["bilinear", "rbf", "anisotropic_rbf", "cosine", "laplace"]


def _run(script: str, *args: str, timeout: float = 120) -> tuple[dict, str]:
    result, proc = run_json(script, *args, timeout=timeout)
    return result, proc.stdout


def test_infonce_identity_script(tmp_path):
    result, stdout = _run("examples/infonce_identity.py", "--quick", "--no-progress", "--out", str(tmp_path))
    for key in ("max_abs_diff", "max_grad_abs_diff", "max_grad_rel_diff", "batch_size", "couplings", "figures"):
        assert key in result
    assert result["couplings"] == COUPLINGS
    assert result["dtype"] == "float32"
    assert 0 <= result["max_abs_diff"] <= 1e-5
    assert 0 <= result["max_grad_rel_diff"] <= 1e-4
    assert result["log_batch_size"] == pytest.approx(math.log(result["batch_size"]))
    for name in COUPLINGS:
        summary = result["per_coupling"][name]
        assert summary["max_abs_diff"] <= 1e-5
        assert summary["infonce_last"] < summary["infonce_first"], f"{name}: training did not lower InfoNCE"
        assert f"{name} coupling" in stdout  # one table per coupling
    assert result["figures"] == [str(tmp_path / "identity.png")]
    assert (tmp_path / "identity.png").stat().st_size > 10_000


def test_elbo_step_benchmark(tmp_path):
    """Every side of every workload is timed; the RPM sides compute plain torch's loss and gradients
    (the compiled sides checked on a replayed step); the ratios are the ratios of the timed sides."""
    result, stdout = _run(
        "benchmarks/elbo_step.py",
        *("--quick", "--rounds", "2", "--block", "2", "--no-progress", "--out", str(tmp_path)),
        *("--batch-sizes", "16,64", "--conv-batch-size", "32", "--torch-compile-batch-sizes", "none"),
        *("--profile", "--profile-steps", "5"),
    )
    for b in (16, 64):
        for side in ("torch", "rpm", "rpm_compiled"):
            value = result[f"ms_{side}_b{b}"]
            assert math.isfinite(value) and value > 0, f"ms_{side}_b{b} = {value}"
        assert result[f"ratio_b{b}"] == pytest.approx(result[f"ms_rpm_b{b}"] / result[f"ms_torch_b{b}"])
        assert result[f"ratio_compiled_b{b}"] == pytest.approx(result[f"ms_rpm_compiled_b{b}"] / result[f"ms_torch_b{b}"])
        # the RPM loss is B (InfoNCE + log B); the gradients are the same
        assert result[f"initial_loss_abs_diff_b{b}"] <= 1e-5
        assert result[f"initial_grad_rel_diff_b{b}"] <= 1e-4
    assert result["initial_loss_abs_diff_b32"] <= 1e-5 and result["initial_grad_rel_diff_b32"] <= 1e-4  # conv
    assert result["ratio_conv_b32"] == pytest.approx(result["ms_conv_rpm_compiled"] / result["ms_conv_torch"])
    assert result["ratio_markov_loop_vs_vectorised"] == pytest.approx(
        result["ms_markov_loop_compiled"] / result["ms_markov_vectorised_compiled"]
    )
    assert "ratio_torch_compiled_b16" not in result and result["torch_compile_batch_sizes"] == []
    assert result["threads"] == 1
    assert "cProfile of 5 RPM steps" in stdout and "RPM_ELBO._fill_log_probs" in stdout
    assert "torch.profiler of 5 JitRPM_ELBO steps" in stdout and "aten::" in stdout
    assert (tmp_path / "elbo_step.png").stat().st_size > 5_000


def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu.py (written for CUDA) runs on the CPU with tiny sizes; every backend agrees with dense."""
    result, stdout = _run(
        "benchmarks/gpu.py",
        *("--quick", "--device", "cpu", "--sizes", "2000", "--repeats", "1", "--batch", "16"),
        *("--svi-steps", "2", "--full-sizes", "500", "--no-progress", "--out", str(tmp_path)),
        *("--steps-sides", "torch,rpm,rpm_compiled,rpm_compiled_bf16"),
    )
    assert result["device"] == "cpu" and result["device_name"].startswith("cpu")
    for workload in ("mlp", "conv"):  # part 3: the training step, mixed precision included
        assert result[f"step_ratio_{workload}_torch"] == 1.0
        for side in ("rpm", "rpm_compiled", "rpm_compiled_bf16"):
            ms = result[f"step_ms_{workload}_{side}"]
            assert math.isfinite(ms) and ms > 0, (workload, side)
            assert result[f"step_ratio_{workload}_{side}"] == pytest.approx(ms / result[f"step_ms_{workload}_torch"])
        assert f"step_ms_{workload}_rpm_cuda_graphs" not in result  # CUDA only
    for key in ("ms_2000", "mpairs_per_s_2000", "speedup_vs_dense_2000", "svi_inbatch_steps_per_s", "svi_full_steps_per_s_500"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert "normaliser_ms_1e6" not in result  # only reported when N = 1e6 ran
    for name, row in result["backends"].items():
        tolerance = 1e-3 if "fp32" in name else 1e-10
        assert row["value_rel_err"] <= tolerance and row["grad_rel_err"] <= tolerance, (name, row)
    assert (tmp_path / "gpu.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    "args",
    [
        ["--repeats", "0"], ["--svi-steps", "-1"], ["--sizes", "abc"], ["--full-sizes", "10"], ["--batch", "1"],
        ["--steps-sides", "rpm"], ["--steps-sides", "torch,warp"],
    ],  # fmt: skip
)
def test_gpu_benchmark_rejects_bad_arguments(args):
    proc = run_script("benchmarks/gpu.py", "--device", "cpu", *args, timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr and args[0] in proc.stderr, proc.stderr[-500:]


def test_script_parser_defaults_and_emit(capsys):
    parser = script_parser("demo", script="examples/some_script.py", steps_help="steps")
    args = parser.parse_args([])
    assert (args.quick, args.seed, args.device, args.steps, args.no_progress) == (False, 0, "cpu", None, False)
    assert args.out == os.path.join("outputs", "some_script")
    assert not hasattr(script_parser("demo", script="x.py").parse_args([]), "steps")
    assert setup(parser.parse_args(["--seed", "3"])) == torch.device("cpu")
    assert torch.get_num_threads() == 1
    emit({"a": 1.5, "b": [1, 2]})
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"a": 1.5, "b": [1, 2]}


def test_setup_rejects_unavailable_or_malformed_device():
    parser = script_parser("demo", script="x.py")
    with pytest.raises(ValueError, match="--device must name a torch device.*'nonsense'"):
        setup(parser.parse_args(["--device", "nonsense"]))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            setup(parser.parse_args(["--device", "cuda"]))


def test_script_reports_bad_device_as_usage_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples/infonce_identity.py"), "--quick", "--device", "cuda"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
