# SPDX-License-Identifier: Apache-2.0
"""Attach a tensor to a module as a learned parameter or as a fixed buffer, by one flag."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["set_learnable"]


def set_learnable(module: nn.Module, name: str, value: torch.Tensor, learn: bool) -> None:
    """Register ``value`` on ``module`` under ``name``: an :class:`~torch.nn.Parameter` if ``learn``,
    else a buffer (moved with the module, saved in its state dict, never optimised)."""
    if learn:
        setattr(module, name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)
