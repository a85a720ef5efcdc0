# SPDX-License-Identifier: Apache-2.0
"""``docs/api.md`` says only true things about where names live.

* Every ``automodule`` / ``autoclass`` / ``autofunction`` target of the page imports (a module moved in
  a refactor and left on the page would otherwise only show up as a Sphinx warning).
* Every name of ``pyro_rpm.__all__`` is documented on the page: it is a documented module, or the
  same object is listed in the ``__all__`` of a module the page documents with its members.
* Every ``from X import a, b`` of the page, and of every other docs page, runs: a name claimed to be
  importable from a module is importable from it; the page's counter-example
  (``from pyro_rpm import map_path``) is not.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import pyro_rpm

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "api.md"


def _directives(text: str) -> list[tuple[str, str, bool]]:
    """(kind, target, documents members) of every autodoc directive of an api.md text."""
    found = []
    pattern = r"^\.\. auto(module|class|function|data|exception):: *(\S+)\n((?:   :[^\n]*\n)*)"
    for kind, target, options in re.findall(pattern, text, re.M):
        found.append((kind, target, ":no-members:" not in options))
    return found


def _resolve(target: str):
    """Import a dotted path that names a module or an attribute of a module."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError:
        module, _, attr = target.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def _imports(text: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``from pyro_rpm... import ...`` statement in the code blocks of a
    Markdown text (prose may quote an import that fails, as the API page's counter-example does)."""
    out = []
    code = "\n".join(re.findall(r"^```(?:python|py|pycon)?\n(.*?)^```", text, re.S | re.M))
    for module, body in re.findall(r"from (pyro_rpm[\w.]*) import (\([^)]*\)|[^\n]+)", code):
        names = [n.split(" as ")[0].strip() for n in body.strip("()").replace("\n", " ").split(",")]
        out.append((module, [n for n in names if n and not n.startswith("#")]))
    return out


def test_parsers_on_a_small_page():
    text = (
        ".. automodule:: pkg.a\n   :no-members:\n.. automodule:: pkg.b\n.. autoclass:: pkg.b.C\n"
        "```python\nfrom pyro_rpm.x import (a,\n    b as c)\nfrom pyro_rpm import d\n```\n"
        "Not `from pyro_rpm import e`.\n"
    )
    assert _directives(text) == [
        ("module", "pkg.a", False),
        ("module", "pkg.b", True),
        ("class", "pkg.b.C", True),
    ]
    assert _imports(text) == [("pyro_rpm.x", ["a", "b"]), ("pyro_rpm", ["d"])]


def test_every_autodoc_target_of_the_page_imports():
    directives = _directives(PAGE.read_text())
    assert len(directives) >= 40
    broken = []
    for _, target, _ in directives:
        try:
            _resolve(target)
        except (ImportError, AttributeError) as error:
            broken.append(f"{target}: {error}")
    assert not broken, broken


def test_every_top_level_name_is_documented_on_the_page():
    directives = _directives(PAGE.read_text())
    modules = {target for kind, target, _ in directives if kind == "module"}
    documented: list[object] = []
    for kind, target, members in directives:
        obj = _resolve(target)
        if kind == "module" and members:
            documented += [getattr(obj, name) for name in getattr(obj, "__all__", [])]
        elif kind != "module":
            documented.append(obj)
    missing = []
    for name in pyro_rpm.__all__:
        obj = getattr(pyro_rpm, name)
        if name == "__version__":
            ok = "pyro_rpm.__version__" in PAGE.read_text()
        elif hasattr(obj, "__path__") or type(obj).__name__ == "module":
            ok = obj.__name__ in modules
        else:
            ok = any(obj is d for d in documented)
        if not ok:
            missing.append(name)
    assert not missing, f"in pyro_rpm.__all__ but not documented in docs/api.md: {missing}"


def test_new_modules_are_on_the_page():
    """The modules of the collapse check, the smoother, the restarts, the trajectory guide and the
    distracted-video data set (added after the page was written) are documented."""
    modules = {target for kind, target, _ in _directives(PAGE.read_text()) if kind == "module"}
    for name in (
        "pyro_rpm.diagnostics.collapse",
        "pyro_rpm.diagnostics.smoothing",
        "pyro_rpm.train.restarts",
        "pyro_rpm.guides.trajectory",
        "pyro_rpm.datasets.distracted_video",
        "pyro_rpm.infer.posterior",
        "pyro_rpm.support.sequences",
        "pyro_rpm.likelihood.trajectory",
    ):
        assert name in modules, name


@pytest.mark.parametrize("page", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")))
def test_every_import_statement_of_the_docs_runs(page):
    failures = []
    for module, names in _imports((ROOT / page).read_text()):
        for name in names:
            try:
                mod = importlib.import_module(module)
                if not hasattr(mod, name):
                    importlib.import_module(f"{module}.{name}")
            except ImportError as error:
                failures.append(f"from {module} import {name}: {error}")
    assert not failures, failures


def test_names_the_page_says_are_not_top_level_are_not():
    text = PAGE.read_text()
    assert "`from pyro_rpm import map_path` is an `ImportError`" in text
    for name in ("map_path", "discrete_marginals", "SequenceSupport", "observe_sequence", "lgssm_smooth"):
        assert name not in pyro_rpm.__all__ and not hasattr(pyro_rpm, name), name
