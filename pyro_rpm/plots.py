# SPDX-License-Identifier: Apache-2.0
"""Alias of :mod:`pyro_rpm.diagnostics.plots` (kept so that ``import pyro_rpm.plots`` works)."""

from .diagnostics.plots import *  # noqa: F403
from .diagnostics.plots import __all__  # noqa: F401
