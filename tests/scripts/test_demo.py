# SPDX-License-Identifier: Apache-2.0
"""End to end: :func:`pyro_rpm.cli.demo.run_demo` recovers the latent of the two-view data set, and the
command line (``python -m pyro_rpm``) lists the scripts, prints the version and rejects bad options."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

import pyro_rpm
from pyro_rpm import __main__ as cli
from pyro_rpm.cli.demo import QUICK, run_demo


def test_quick_demo_recovers_the_latent_within_a_minute(tmp_path):
    """Quick settings (N = 1024, 1000 SVI steps, B = 256) on one CPU thread: linear R^2 of the true
    latent from the tied posterior means >= 0.9, wall time < 60 s, finite loss, both figures written."""
    start = time.perf_counter()
    result = run_demo(quick=True, seed=0, out=tmp_path, progress=False)
    seconds = time.perf_counter() - start
    print(f"quick demo: R^2 {result['r2']:.4f} in {seconds:.1f} s (final loss/datum {result['final_loss']:.3f})")
    assert result["r2"] >= 0.9, f"R^2 {result['r2']} < 0.9"
    assert seconds < 60, f"demo took {seconds:.1f} s"
    assert math.isfinite(result["final_loss"])
    # The loss per datum of the in-batch support is -ELBO/B; its categorical likelihood terms lie
    # in [0, log B] per view, and training should move well below two views' worth of log B.
    assert result["final_loss"] < 2 * result["log_batch_size"]
    assert (result["steps"], result["n"], result["batch_size"]) == (QUICK["steps"], QUICK["n"], QUICK["batch_size"])
    assert result["device"] == "cpu" and result["seed"] == 0
    assert sorted(os.path.basename(p) for p in result["figures"]) == ["elbo.png", "latents.png"]
    for path in result["figures"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    json.dumps(result)  # the CLI prints it as one JSON line


def test_short_run_without_figures_is_reproducible_under_a_seed():
    kwargs = dict(steps=5, n=64, batch_size=16, seed=3, out=None, progress=False)
    a, b = run_demo(**kwargs), run_demo(**kwargs)
    assert a["figures"] == []
    assert a["r2"] == b["r2"] and a["final_loss"] == b["final_loss"]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 100, "n": 50}, "batch_size"),
        ({"n": 0}, "n"),
        ({"n": -5}, "n"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"seed": "zero"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"device": "not-a-device"}, "device"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        run_demo(out=None, progress=False, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_device_without_cuda_raises():
    with pytest.raises(ValueError, match="device"):
        run_demo(steps=1, device="cuda", out=None, progress=False)


# --------------------------------------------------------------------------- command line
def test_module_help_lists_the_example_scripts():
    """``python -m pyro_rpm --help`` in a subprocess: exit 0, the commands and every script listed."""
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_rpm", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "version"):
        assert command in proc.stdout
    assert cli.SCRIPTS
    for path, _ in cli.SCRIPTS:
        assert f"python {path}" in proc.stdout
    assert "examples/two_views.py" in proc.stdout


def test_version_command_prints_the_package_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == pyro_rpm.__version__


def test_listed_scripts_exist_in_the_repository():
    """Every script the help lists is a file of this checkout (skipped for an installed package)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(root, "examples")):
        pytest.skip("not a clone of the repository")
    missing = [path for path, _ in cli.SCRIPTS if not os.path.isfile(os.path.join(root, path))]
    assert not missing, f"listed in `python -m pyro_rpm --help` but missing: {missing}"


def test_no_command_prints_help_and_unknown_command_fails(capsys):
    assert cli.main([]) == 0
    assert "examples/two_views.py" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bogus"])
    assert exit_info.value.code == 2


def test_demo_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--seed", "--device", "--out", "--steps", "--batch-size"):
        assert flag in out


def test_demo_command_rejects_bad_options_naming_them(capsys):
    """A bad value reaches run_demo's ValueError, which the CLI reports as a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--steps", "0", "--no-progress", "--out", os.devnull])
    assert exit_info.value.code == 2
    assert "steps" in capsys.readouterr().err


def test_demo_command_prints_one_json_line(tmp_path, capsys):
    """A tiny run through the CLI: the last stdout line is one JSON object with r2 and seconds."""
    torch_threads = torch.get_num_threads()
    try:
        cli.main(["demo", "--steps", "3", "--n", "32", "--batch-size", "8", "--no-progress", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(torch_threads)  # demo.main pins one thread, as a script should
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert {"r2", "seconds", "final_loss"} <= set(result)
    assert result["steps"] == 3 and result["n"] == 32


def test_version_flag_and_program_name(capsys):
    """``--version`` works like ``version``; the usage line names the program as it was invoked."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"], prog="pyro-rpm")
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-rpm {pyro_rpm.__version__}"
    assert cli._program_name("/usr/local/bin/pyro-rpm") == "pyro-rpm"
    assert cli._program_name("/site-packages/pyro_rpm/__main__.py") == "python -m pyro_rpm"
    cli.main([], prog="pyro-rpm")
    assert capsys.readouterr().out.startswith("usage: pyro-rpm")


def test_default_demo_trains_on_the_quick_data_set_with_a_decaying_learning_rate():
    """The default trains on the same data set as ``--quick`` (the view maps of two_view_gaussian depend
    on N) for more steps with the learning rate decayed to a tenth (measured, seed 0, one thread:
    R^2 0.9698 against --quick's 0.9697; the former N = 2048, constant-lr default gave 0.928)."""
    from pyro_rpm.cli.demo import DEFAULTS, build_parser

    assert DEFAULTS["n"] == QUICK["n"] and DEFAULTS["steps"] > QUICK["steps"]
    assert DEFAULTS["lr_decay"] == 0.1 and QUICK["lr_decay"] == 1.0
    result = run_demo(steps=4, n=64, batch_size=16, out=None, progress=False)
    assert result["lr_decay"] == 0.1 and result["n"] == 64
    help_text = build_parser().format_help()
    assert "under 2 minutes (default)" in " ".join(help_text.split()) and "outputs" in help_text


@pytest.mark.slow
def test_default_demo_is_not_worse_than_quick():
    """Issue 14, item 14: the default demo (``python -m pyro_rpm demo``, one CPU thread) used to score a lower
    R^2 than ``--quick`` (0.926 against 0.970 at seed 0). Measured now: 0.9698 against 0.9697, under 2 minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        result = run_demo(seed=0, out=None, progress=False)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    print(f"default demo: R^2 {result['r2']:.4f} in {seconds:.1f} s")
    assert result["r2"] >= 0.965, f"R^2 {result['r2']} < 0.965"
    assert seconds < 240, f"the default demo took {seconds:.0f} s"


def test_demo_command_prints_where_it_wrote_the_figures(tmp_path, capsys):
    torch_threads = torch.get_num_threads()
    try:
        cli.main(["demo", "--steps", "2", "--n", "32", "--batch-size", "8", "--no-progress", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(torch_threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:2] == [f"wrote {tmp_path / 'elbo.png'}", f"wrote {tmp_path / 'latents.png'}"]
