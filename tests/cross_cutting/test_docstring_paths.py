# SPDX-License-Identifier: Apache-2.0
"""Every file that the package, the examples, the benchmarks and the docs pages cite exists in the
repository.

A citation is a path-like token ending in a file suffix (``docs/core.md``, ``tests/scripts/test_demo.py``,
``examples/hmm.py``, ``benchmarks/*.py``) anywhere in a ``.py`` file of ``pyro_rpm/``, ``examples/``,
``benchmarks/`` or a page of ``docs/``. It must name a file relative to the repository root, to
``pyro_rpm/``, to ``docs/`` or to the citing file's folder; a bare name (``elbo.py``) must be a file
somewhere in the repository. Wildcards must match at least one file. Outputs the scripts write
(``outputs/...``), other projects' files (``pyro/infer/svi.py``, ``luyug/GradCache``) and the
placeholders ``script.py`` (of a ``torchrun`` command line) and ``_name.py`` are not citations.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = "md|py|txt|toml|rst|ipynb|yaml|yml|cfg"  # not the figures and JSON files the scripts write
TOKEN = re.compile(rf"(?<![\w./*-])((?:[\w*.-]+/)*[\w*-]+(?:\.[\w*-]+)*\.(?:{SUFFIXES}))\b")
NOT_OURS = ("outputs/", "pyro/", "torch/", "luyug/", "site-packages/", "/usr/", "script.py", "_name.py")
NOT_OURS += ("demo_rp_gpfa_poisson_ball.ipynb",)  # a notebook of the RP-GPFA authors' code, named as such
# Reported to the lead, not this test's to fix: profiler paths of a benchmark, stale since the refactor
# (pyro_rpm/guides/recognition.py, pyro_rpm/infer/elbo.py, pyro_rpm/train/optim.py). Delete once fixed.
REPORTED: dict[str, tuple[str, ...]] = {}  # file -> cited paths known to be missing (none now)


def _sources() -> list[Path]:
    files = [p for d in ("pyro_rpm", "examples", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    files += list((ROOT / "docs").rglob("*.md")) + list((ROOT / "docs").rglob("*.py"))
    return sorted(p for p in files if "_build" not in p.parts)


def _exists(token: str, where: Path) -> bool:
    token = token.removeprefix("./")
    bases = (ROOT, ROOT / "pyro_rpm", ROOT / "docs", where.parent)
    if any(list(base.glob(token)) for base in bases):
        return True
    if "/" not in token:  # a module or script named by its file name
        return any(p for p in ROOT.rglob(token) if ".git" not in p.parts)
    return False


def _missing(paths: list[Path]) -> list[str]:
    missing = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for token in TOKEN.findall(line):
                if token.startswith(NOT_OURS) or "://" in line and f"/{token}" in line:
                    continue
                if token in REPORTED.get(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else "", ()):
                    continue
                if not _exists(token, path):
                    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    missing.append(f"{name}:{number}: {token}")
    return missing


def test_cited_files_exist():
    sources = _sources()
    assert len(sources) > 50
    assert not _missing(sources), "\n".join(_missing(sources))


def test_the_check_sees_a_missing_citation(tmp_path):
    """The scan flags a cited file that is not there (the two citations of ``rpm-theory.md`` in the
    example docstrings were of this kind) and passes real ones."""
    page = tmp_path / "page.md"
    page.write_text(
        "See rpm-theory.md §9.4 and `docs/reference/notes.md`.\n"
        "Run `python examples/hmm.py`; tests in `tests/scripts/test_examples*.py`; see docs/core.md.\n"
        "Figures go to outputs/hmm/states.png; `torchrun --nproc-per-node 2 script.py`.\n"
    )
    missing = [m.rsplit(": ", 1)[1] for m in _missing([page])]
    assert missing == ["rpm-theory.md", "docs/reference/notes.md"]
