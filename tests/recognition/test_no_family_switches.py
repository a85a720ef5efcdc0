# SPDX-License-Identifier: Apache-2.0
"""Factor families are open: outside a family's own file, no module switches on a concrete family class.

A module may construct a concrete factor (e.g. an amortised guide returns a GaussianFactor), but it may
not branch on one: ``isinstance(x, GaussianFactor)``, ``type(x) is CategoricalFactor``, or duck-typing
a family's tensors with ``hasattr(x, "logits")``. What a module needs from a family goes through the
:class:`pyro_rpm.Factor` contract (``tensors``, ``with_tensors``, ``combine``, ``diagonal_gaussian``, ...).
"""

import ast
import inspect
from pathlib import Path

import pyro_rpm
import pyro_rpm.recognition as recognition
from pyro_rpm.recognition import Factor, Recognition

PACKAGE = Path(pyro_rpm.__file__).parent
#: the attributes through which one family's tensors are reached (duck-typed switches)
FAMILY_ATTRIBUTES = {"logits", "loc", "scale", "concentration", "probs", "natural_params", "precision", "eps"}


def _family_classes() -> dict[str, Path]:
    """Every concrete factor / recognition class of pyro_rpm.recognition, with the file it lives in."""
    found = {}
    for name in recognition.__all__:
        obj = getattr(recognition, name)
        if inspect.isclass(obj) and issubclass(obj, (Factor, Recognition)) and obj not in (Factor, Recognition):
            found[name] = Path(inspect.getsourcefile(obj)).resolve()
    return found


def _switches(path: Path, families: set[str], root: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
            target = node.args[1]
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            for n in names:
                label = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
                if label in families:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {node.func.id}(..., {label})")
        if node.func.id == "hasattr" and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
            if node.args[1].value in FAMILY_ATTRIBUTES:
                found.append(f"{path.relative_to(root)}:{node.lineno}: hasattr(..., {node.args[1].value!r})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot, ast.Eq)) for op in node.ops):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Call) and isinstance(s.func, ast.Name) and s.func.id == "type" for s in sides):
                for s in sides:
                    if isinstance(s, ast.Name) and s.id in families:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: type(...) is {s.id}")
    return found


def test_the_scan_knows_every_family():
    families = _family_classes()
    for name in ("GaussianFactor", "DeltaFactor", "CategoricalFactor", "GaussianRecognition"):
        assert name in families


def test_no_module_outside_a_family_file_switches_on_a_concrete_family():
    families = _family_classes()
    family_files = set(families.values())
    names = set(families)
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() in family_files:
            continue
        offenders += _switches(path, names)
    assert not offenders, "switches on a concrete recognition family outside its file:\n" + "\n".join(offenders)


def test_the_scan_finds_a_switch(tmp_path):
    """The scanner itself: a planted switch of each kind is found (so the test above can fail)."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "def f(x, y):\n"
        "    a = isinstance(x, (int, GaussianFactor))\n"
        "    b = hasattr(y, 'logits')\n"
        "    return a or b or type(x) is CategoricalFactor\n"
    )
    found = _switches(planted, {"GaussianFactor", "CategoricalFactor"}, root=tmp_path)
    assert len(found) == 3, found
