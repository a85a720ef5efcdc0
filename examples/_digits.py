# SPDX-License-Identifier: Apache-2.0
"""Shared part of ``peer_supervision.py`` and ``hmm.py``: augmentation of scikit-learn's 8x8 digits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_shift"]


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each ``(1, 8, 8)`` image by -1, 0 or +1 pixel in each direction (zero padding)."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 3, (n,), generator=generator).to(x.device)
    grid = torch.arange(8, device=x.device)
    rows = (dy[:, None] + grid)[:, :, None]
    cols = (dx[:, None] + grid)[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)
