# SPDX-License-Identifier: Apache-2.0
"""The package version (a module of its own, so that submodules need not import the package)."""

__version__ = "0.1.0"
