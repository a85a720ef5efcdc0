# SPDX-License-Identifier: Apache-2.0
"""Sphinx configuration of the pyro_rpm documentation (Markdown pages through MyST, API from docstrings).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors, as in CI). The
build needs no network: MathJax comes from the ``sphinx-mathjax-offline`` package (copied into
``_static/mathjax``) and the torch, Pyro and ArviZ inventories from ``docs/_inventories/``.
"""

import pyro_rpm

project = "pyro_rpm"
author = "the pyro_rpm developers"
copyright = "2026, the pyro_rpm developers"
release = version = pyro_rpm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # PyPI sphinx-mathjax-offline: MathJax 3 copied into _static/mathjax
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_inventories"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Our classes subclass torch.nn.Module and torch distributions: an undocumented override
# (``forward``, ``expand``, ...) must not show the docstring of the torch method it overrides.
autodoc_inherit_docstrings = False
napoleon_numpy_docstring = True
napoleon_google_docstring = False

# Links to torch, Pyro and ArviZ from committed inventories (docs/_inventories/make_inventories.py):
# the build never downloads one, so it works offline and in CI.
intersphinx_mapping = {
    "torch": ("https://pytorch.org/docs/stable/", "_inventories/torch.inv"),
    "pyro": ("https://docs.pyro.ai/en/stable/", "_inventories/pyro.inv"),
    "arviz": ("https://python.arviz.org/en/stable/", "_inventories/arviz.inv"),
}

html_theme = "alabaster"
html_static_path: list[str] = []


def setup(app):
    # After sphinx-mathjax-offline (which points at its tex-chtml.js, whose web fonts its wheel lacks):
    # the SVG output draws every glyph from the JavaScript, so no font file and no network is needed.
    app.config.mathjax_path = "mathjax/tex-svg.js"
