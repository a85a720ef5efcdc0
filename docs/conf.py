# SPDX-License-Identifier: Apache-2.0
"""Sphinx configuration of the pyro_rpm documentation (Markdown pages through MyST, API from docstrings).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors, as in CI).
"""

import pyro_rpm

project = "pyro_rpm"
author = "the pyro_rpm developers"
copyright = "2026, the pyro_rpm developers"
release = version = pyro_rpm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False

html_theme = "alabaster"
html_static_path: list[str] = []
