# SPDX-License-Identifier: Apache-2.0
"""Shared parts of the benchmark scripts: device synchronisation, resident-memory readings, size labels."""

from __future__ import annotations

import math

import torch

__all__ = ["reset_peak", "rss_mb", "sync", "tag"]


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
