# SPDX-License-Identifier: Apache-2.0
"""Alias of :mod:`pyro_rpm.diagnostics.metrics` (kept so that ``import pyro_rpm.metrics`` works)."""

from .diagnostics.metrics import *  # noqa: F403
from .diagnostics.metrics import __all__  # noqa: F401
