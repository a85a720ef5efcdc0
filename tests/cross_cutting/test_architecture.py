# SPDX-License-Identifier: Apache-2.0
"""The package's layering rules, read from the source with :mod:`ast` (nothing is imported).

* no import cycle among the modules of ``pyro_rpm``: every ``import`` and ``from ... import`` counts, at
  module level or inside a function (a lazy import still closes the cycle in reading order);
* no upward import: a module does not import from the ``__init__`` of its own package or of a package
  above it (``from . import name``, ``from .. import name``, ``import pyro_rpm``); importing a sibling
  submodule (``from . import sibling``, ``from .sibling import name``) is fine;
* a private module (``_name.py``) of package ``P`` is imported only from inside ``P``; the top-level
  helpers ``pyro_rpm/_pyro.py``, ``_validation.py``, ``_learnable.py`` and ``_version.py`` serve the whole
  package; ``examples/``, ``benchmarks/`` and ``docs/`` (its Python files and the code in its pages)
  import no private module at all;
* no module longer than :data:`MAX_LINES` lines;
* ``tests/`` mirrors the package: a folder per subpackage (``cli`` excepted), and every test file in one
  of those folders or in a folder for checks that span the package.

Edges of the import graph: ``import a.b`` is an edge to ``a.b``; ``from a import b`` is an edge to the
submodule ``a.b`` when there is one (and ``a/__init__.py`` does not bind ``b`` to something else, as
``from .fit import fit`` does), else to ``a`` (for a package, its ``__init__``). The parent packages that
Python initialises on the way are not edges: they are already being imported when one of their
modules imports another. The last test runs every rule on a small package with one breach of each.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pyro_rpm"
MAX_LINES = 420
PACKAGE_WIDE_PRIVATE = frozenset(f"{PACKAGE}.{name}" for name in ("_pyro", "_validation", "_learnable", "_version"))
UNMIRRORED_SUBPACKAGES = frozenset({f"{PACKAGE}.cli"})
EXTRA_TEST_FOLDERS = frozenset({"cross_cutting", "scripts"})
OUTSIDE_FOLDERS = ("examples", "benchmarks", "docs")


@dataclass(frozen=True)
class Import:
    """``source`` (a module, or a file outside the package) imports ``target`` at ``line``."""

    source: str
    target: str
    line: int
    text: str


class Package:
    """The modules of one package, read from ``root / name``, and the imports among them."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.modules: dict[str, Path] = {}
        for path in sorted((root / name).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            self.modules[".".join(parts)] = path
        self._shadowed: dict[str, set[str]] = {}
        self.edges = [e for module in self.modules for e in self.imports_of(module)]

    def is_package(self, module: str) -> bool:
        return module in self.modules and self.modules[module].name == "__init__.py"

    def ours(self, module: str) -> bool:
        return module == self.name or module.startswith(self.name + ".")

    def subpackages(self) -> list[str]:
        return sorted(m for m in self.modules if m != self.name and self.is_package(m))

    def imports_of(self, module: str) -> list[Import]:
        path = self.modules[module]
        return self.resolve(ast.parse(path.read_text(), filename=str(path)), module, self.is_package(module))

    def resolve(self, tree: ast.AST, source: str, is_package: bool = False, line: int | None = None) -> list[Import]:
        """The imports of modules of the package anywhere in ``tree`` (in functions too), resolved."""
        found: dict[tuple[str, int], Import] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if self.ours(alias.name)]
            elif isinstance(node, ast.ImportFrom):
                base = _base(node, source, is_package)
                targets = [self._from_target(base, alias.name) for alias in node.names] if self.ours(base) else []
            else:
                continue
            for target in targets:
                edge = Import(source, target, line or node.lineno, ast.unparse(node))
                found.setdefault((target, edge.line), edge)
        return list(found.values())

    def _from_target(self, base: str, name: str) -> str:
        sub = f"{base}.{name}"
        if sub in self.modules and not (self.is_package(base) and name in self._shadowed_names(base)):
            return sub
        return base

    def _shadowed_names(self, package: str) -> set[str]:
        """Names that ``package/__init__.py`` binds to something other than its submodule of that name."""
        if package not in self._shadowed:
            names = set()
            for node in _module_level(ast.parse(self.modules[package].read_text()).body):
                if isinstance(node, ast.ImportFrom):
                    base = _base(node, package, True)
                    for alias in node.names:
                        bound = alias.asname or alias.name
                        if f"{base}.{alias.name}" != f"{package}.{bound}":
                            names.add(bound)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
            self._shadowed[package] = names
        return self._shadowed[package]


def _base(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    """The absolute module of ``from <base> import ...`` written in module ``source``."""
    if not node.level:
        return node.module or ""
    here = source.split(".") if is_package else source.split(".")[:-1]
    up = node.level - 1
    assert up < len(here), f"{source} line {node.lineno}: {ast.unparse(node)} climbs out of the package"
    return ".".join(here[: len(here) - up] + ([node.module] if node.module else []))


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements run on import: into ``if``/``try``/``with`` blocks, not into functions or classes."""
    for node in body:
        yield node
        if isinstance(node, ast.Try):
            yield from _module_level(node.body + [s for h in node.handlers for s in h.body] + node.orelse)
            yield from _module_level(node.finalbody)
        elif isinstance(node, (ast.If, ast.For, ast.While)):
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            yield from _module_level(node.body)


# ---------------------------------------------------------------------------------------------- the rules


def find_cycles(nodes: list[str], edges: list[Import]) -> list[list[Import]]:
    """One shortest cycle (its edges, in order) through the smallest module of each strongly connected
    component that has one (Tarjan's algorithm, then a breadth-first search inside the component)."""
    succ: dict[str, dict[str, Import]] = {n: {} for n in nodes}
    for e in edges:
        succ[e.source].setdefault(e.target, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:  # the depth is at most the number of modules (about 80)
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            components.append(component)

    for v in nodes:
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        members, start = set(component), min(component)
        if len(component) == 1 and start not in succ[start]:
            continue
        via: dict[str, Import] = {}
        frontier, closing = [start], succ[start].get(start)
        while closing is None and frontier:
            frontier = [w for v in frontier for w in _step(v, succ, members, via, start)]
            closing = next((succ[v][start] for v in via if start in succ[v]), None)
        assert closing is not None, f"no cycle through {start} in its component {sorted(members)}"
        cycle = [closing]
        while cycle[0].source != start:
            cycle.insert(0, via[cycle[0].source])
        cycles.append(cycle)
    return cycles


def _step(v: str, succ: dict, members: set[str], via: dict[str, Import], start: str) -> list[str]:
    new = [w for w in succ[v] if w in members and w not in via and w != start]
    for w in new:
        via[w] = succ[v][w]
    return new


def upward_imports(package: Package) -> list[str]:
    """Imports from the ``__init__`` of a package that contains the importing module."""
    bad = []
    for e in package.edges:
        parts = e.source.split(".")
        if e.target in {".".join(parts[:i]) for i in range(1, len(parts))}:
            bad.append(f"  {e.source} line {e.line}: {e.text}  (upward: imports from the __init__ of {e.target})")
    return bad


def private_owner(module: str) -> str | None:
    """The package whose private module ``module`` is (``P`` for ``P._name``), else None."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:i])
    return None


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_imports(package: Package, package_wide: frozenset[str] = frozenset()) -> list[str]:
    """Imports of a private module of ``P`` from a module outside ``P`` (``package_wide`` excepted)."""
    bad = []
    for e in package.edges:
        owner = private_owner(e.target)
        if owner is not None and e.target not in package_wide and not _inside(e.source, owner):
            bad.append(f"  {e.source} line {e.line}: {e.text}  (private module {e.target} of {owner})")
    return bad


_IMPORT_LINE = re.compile(r"^\s*(?:(?:>>>|\.\.\.)\s*)?((?:from\s+\S+\s+)?import\s.*)$")


def _page_imports(package: Package, path: Path, source: str) -> list[Import]:
    """The imports in the code of a Markdown page (fenced blocks, doctest prompts), line by line."""
    found = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        match = _IMPORT_LINE.match(line)
        if not match or package.name not in match.group(1):
            continue
        statement, rest = match.group(1).split("#")[0], iter(lines[number:])
        while statement.count("(") > statement.count(")"):  # from x import (a,\n    b)
            statement += " " + re.sub(r"^\s*(?:\.\.\.)?", "", next(rest, ")")).split("#")[0]
        try:
            tree = ast.parse(statement.strip())
        except SyntaxError:
            continue  # prose that starts with "import"
        found += package.resolve(tree, source, line=number)
    return found


def outside_private_imports(package: Package, folders: tuple[str, ...]) -> list[str]:
    """Imports of any private module of the package from the Python files and pages under ``folders``."""
    bad = []
    for folder in folders:
        for path in sorted((package.root / folder).rglob("*")):
            source = str(path.relative_to(package.root))
            if path.suffix == ".py":
                edges = package.resolve(ast.parse(path.read_text(), filename=str(path)), source)
            elif path.suffix == ".md":
                edges = _page_imports(package, path, source)
            else:
                continue
            bad += [
                f"  {source} line {e.line}: {e.text}  (private module {e.target})"
                for e in edges
                if private_owner(e.target) is not None
            ]
    return bad


def oversized_modules(package: Package, limit: int) -> list[str]:
    too_long = []
    for module, path in package.modules.items():
        lines = len(path.read_text().splitlines())
        if lines > limit:
            too_long.append(f"  {path.relative_to(package.root)} ({module}): {lines} lines > {limit}")
    return too_long


def unmirrored_subpackages(package: Package, tests: Path, skip: frozenset[str]) -> list[str]:
    missing = []
    for sub in package.subpackages():
        if any(_inside(sub, s) for s in skip):
            continue
        folder = tests.joinpath(*sub.split(".")[1:])
        if not folder.is_dir():
            missing.append(f"  {sub}: no test folder {folder.relative_to(package.root)}/")
    return missing


def stray_test_files(package: Package, tests: Path, extra: frozenset[str]) -> list[str]:
    mirrored = {tuple(sub.split(".")[1:]) for sub in package.subpackages()}
    stray = []
    for path in sorted(tests.rglob("test_*.py")):
        parts = path.relative_to(tests).parts[:-1]
        if not parts:
            stray.append(f"  {path.relative_to(package.root)}: at the top of {tests.name}/, not in a folder")
        elif parts[0] not in extra and parts not in mirrored:
            where = "/".join(parts)
            stray.append(f"  {path.relative_to(package.root)}: {where}/ mirrors no subpackage of {package.name}")
    return stray


def _describe(cycle: list[Import]) -> str:
    chain = " -> ".join([cycle[0].source] + [e.target for e in cycle])
    return f"  {chain}\n" + "\n".join(f"      {e.source} line {e.line}: {e.text}" for e in cycle)


def _check(problems: list[str], rule: str) -> None:
    if problems:
        pytest.fail(f"{rule}:\n" + "\n".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def package() -> Package:
    package = Package(ROOT, PACKAGE)
    unknown = sorted(f"{e.source} line {e.line}: {e.text}" for e in package.edges if e.target not in package.modules)
    assert not unknown, "imports of modules that do not exist:\n" + "\n".join(unknown)
    return package


def test_the_import_graph_has_no_cycle(package):
    cycles = find_cycles(sorted(package.modules), package.edges)
    _check([_describe(c) for c in cycles], "import cycles (rule: no module imports itself through others)")


def test_no_module_imports_from_the_init_of_its_own_or_an_enclosing_package(package):
    _check(
        upward_imports(package),
        "upward imports (rule: import from submodules, never from the __init__ of a package that contains you)",
    )


def test_private_modules_are_imported_only_from_inside_their_package(package):
    _check(
        private_imports(package, PACKAGE_WIDE_PRIVATE),
        "private modules imported from outside their package (rule: P._x is for P and its subpackages)",
    )


def test_examples_benchmarks_and_docs_import_no_private_module(package):
    _check(
        outside_private_imports(package, OUTSIDE_FOLDERS),
        f"private modules imported from {', '.join(OUTSIDE_FOLDERS)} (rule: they use the public API only)",
    )


def test_no_module_exceeds_the_line_limit(package):
    _check(oversized_modules(package, MAX_LINES), f"modules over {MAX_LINES} lines (rule: split them)")


def test_every_subpackage_has_a_test_folder(package):
    _check(
        unmirrored_subpackages(package, ROOT / "tests", UNMIRRORED_SUBPACKAGES),
        "subpackages without a test folder (rule: tests/ mirrors the package)",
    )


def test_every_test_file_is_in_a_folder_that_mirrors_a_subpackage_or_spans_the_package(package):
    _check(
        stray_test_files(package, ROOT / "tests", EXTRA_TEST_FOLDERS),
        f"test files outside tests/<subpackage>/ and tests/{{{','.join(sorted(EXTRA_TEST_FOLDERS))}}}/",
    )


def test_test_module_names_are_unique():
    """The folders of tests/ have no __init__.py, so pytest imports each file under its basename."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        seen.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    _check(
        [f"  {name}: {', '.join(paths)}" for name, paths in seen.items() if len(paths) > 1],
        "test modules that share a name",
    )


def test_every_rule_finds_its_breach_in_a_small_package(tmp_path):
    files = {
        "pkg/__init__.py": "from .a import f\nfrom .sub import g\n",
        "pkg/_util.py": "",
        "pkg/a.py": "def f():\n    from .sub import b  # lazy, still a cycle\n",
        "pkg/long.py": "x = 1\n" * 11,
        "pkg/sub/__init__.py": "from .b import g\n",
        "pkg/sub/_inner.py": "from .. import _util\n",  # inside pkg: allowed
        "pkg/sub/b.py": "from ..a import f\nfrom . import _inner\n\ndef g(): ...\n",
        "pkg/other/__init__.py": "name = 1\n",
        "pkg/other/d.py": "from . import name\nimport pkg\nfrom .c import x\n",
        "pkg/other/c.py": "from pkg.sub._inner import x\nfrom pkg.sub import b\nfrom .. import _util\n",
        "tests/sub/test_b.py": "",
        "tests/test_flat.py": "",
        "tests/misc/test_misc.py": "",
        "examples/run.py": "import pkg._util\n",
        "docs/page.md": "```python\n>>> from pkg.sub import (g,\n...     _inner)\n```\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    toy = Package(tmp_path, "pkg")

    (cycle,) = find_cycles(sorted(toy.modules), toy.edges)
    assert [e.source for e in cycle] == ["pkg.a", "pkg.sub.b"] and cycle[-1].target == "pkg.a"
    assert [line.split("  (")[0].strip() for line in upward_imports(toy)] == [
        "pkg.other.d line 1: from . import name",
        "pkg.other.d line 2: import pkg",
    ]
    assert [line.split("  (")[0].strip() for line in private_imports(toy)] == [
        "pkg.other.c line 1: from pkg.sub._inner import x"
    ]
    assert [line.split(":")[0].strip() for line in outside_private_imports(toy, ("examples", "docs"))] == [
        "examples/run.py line 1",
        "docs/page.md line 2",
    ]
    assert [line.split(" (")[0].strip() for line in oversized_modules(toy, 10)] == ["pkg/long.py"]
    assert unmirrored_subpackages(toy, tmp_path / "tests", frozenset()) == ["  pkg.other: no test folder tests/other/"]
    assert unmirrored_subpackages(toy, tmp_path / "tests", frozenset({"pkg.other"})) == []
    assert [line.split(":")[0].strip() for line in stray_test_files(toy, tmp_path / "tests", frozenset())] == [
        "tests/misc/test_misc.py",
        "tests/test_flat.py",
    ]
    assert find_cycles(["x", "y"], [Import("x", "y", 1, "")]) == []
    ((loop,),) = find_cycles(["x", "y"], [Import("x", "y", 1, ""), Import("y", "y", 2, "")])
    assert loop.source == loop.target == "y"
