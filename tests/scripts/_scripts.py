# SPDX-License-Identifier: Apache-2.0
"""Run an example or benchmark script of the repository as a subprocess, as a user would.

One torch thread and matplotlib's Agg backend; the script's last stdout line must be one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "run_json", "run_script"]

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str | os.PathLike, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python <ROOT/script> *args`` from the repository root; the completed process, whatever its status."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_json(script: str | os.PathLike, *args: str, timeout: float) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the script, assert it succeeded, and return the JSON object of its last stdout line and the process."""
    proc = run_script(script, *args, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc
