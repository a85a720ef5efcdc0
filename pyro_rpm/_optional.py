# SPDX-License-Identifier: Apache-2.0
"""Optional dependencies: imported when a function needs them, with an install hint when missing.

=============  ====================  ===========================================
extra          packages              used by
=============  ====================  ===========================================
``arviz``      arviz (< 1)           :func:`pyro_rpm.to_inference_data`
``plots``      matplotlib            :mod:`pyro_rpm.plots`, the examples' figures
``metrics``    scikit-learn          :func:`pyro_rpm.linear_r2`, the examples
``lightning``  lightning             :mod:`pyro_rpm.lightning`
=============  ====================  ===========================================

``pip install "pyro-rpm[all]"`` installs every extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

#: The PyPI distribution and the extra that provide each optional top-level module.
_PROVIDERS = {
    "arviz": ("arviz", "arviz"),
    "matplotlib": ("matplotlib", "plots"),
    "sklearn": ("scikit-learn", "metrics"),
    "lightning": ("lightning", "lightning"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.pyplot"``), or raise an :class:`ImportError` that names
    ``purpose`` and the ``pip install`` command of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        distribution, extra = _PROVIDERS.get(top, (top, "all"))
        raise ImportError(
            f"{purpose} needs {distribution}, which is not installed: pip install \"pyro-rpm[{extra}]\" "
            f"(or pip install {distribution})"
        ) from error
