# SPDX-License-Identifier: Apache-2.0
"""Deterministic synthetic data sets (seeded, no downloads), each returned with its true latents."""

from .synthetic import two_view_gaussian

__all__ = ["two_view_gaussian"]
