# SPDX-License-Identifier: Apache-2.0
"""Shared parts of the benchmark scripts: device synchronisation, resident-memory readings, size labels,
measurements in fresh processes."""

from __future__ import annotations

import json
import math
import os
import subprocess

import torch

__all__ = ["reset_peak", "rss_mb", "run_json_child", "sync", "tag"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU. Call around every timed region."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tag(n: int) -> str:
    """``10000 -> '1e4'``; other sizes verbatim (the suffix of the JSON keys)."""
    k = round(math.log10(n)) if n > 0 else 0
    return f"1e{k}" if 10**k == n else str(n)


def rss_mb() -> tuple[float, float]:
    """Current and peak resident set size in MB (``VmRSS``, ``VmHWM`` of ``/proc/self/status``)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak() -> bool:
    """Reset the peak resident set size (``/proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_json_child(cmd: list[str], what: str, *, fixed_mmap: bool) -> dict:
    """Run ``cmd`` (a measurement in a fresh process) and return the JSON object on its last stdout line.

    With ``fixed_mmap`` glibc's mmap threshold is fixed at 128 KiB, so every freed block of that size
    or more is unmapped at once and the resident set follows the live allocations (it also makes
    every large allocation fault in fresh pages: time such runs separately).

    :raises RuntimeError: naming ``what``, with the end of the child's stderr, if it fails.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if fixed_mmap else None
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
