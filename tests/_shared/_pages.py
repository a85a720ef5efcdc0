# SPDX-License-Identifier: Apache-2.0
"""Run the python blocks of a docs page as written, in order, in one namespace, and check what they print.

A python block followed by a ``text`` block must print that text: the same words exactly and the same
numbers within a tolerance that allows other CPUs' rounding (rel 3 %, abs 0.05). Used by the tests of
``docs/getting-started.md``, ``docs/core.md``, ``docs/training.md`` and ``docs/lightning.md``.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import pyro
import pytest

__all__ = ["DOCS", "check_output", "page_blocks", "parse_blocks", "run_page"]

DOCS = Path(__file__).resolve().parents[2] / "docs"
NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def parse_blocks(text: str) -> list[tuple[str, str | None]]:
    """(python code, the text block right after it or None) for every python block of a Markdown text."""
    out = []
    for match in re.finditer(r"```python\n(.*?)```\n(?:\n```text\n(.*?)```)?", text, re.S):
        out.append((match.group(1), match.group(2)))
    return out


def page_blocks(page: str) -> list[tuple[str, str | None]]:
    """:func:`parse_blocks` of ``docs/<page>``."""
    return parse_blocks((DOCS / page).read_text())


def check_output(got: str, want: str, where: str) -> None:
    """Assert that ``got`` has the words of ``want`` exactly and its numbers within rel 3 %, abs 0.05."""
    got_text, want_text = re.sub(NUMBER, "#", got), re.sub(NUMBER, "#", want)
    assert got_text == want_text, (where, got, want)
    for g, w in zip(re.findall(NUMBER, got), re.findall(NUMBER, want)):
        assert float(g) == pytest.approx(float(w), rel=0.03, abs=0.05), (where, got, want)


def run_page(page: str, select: Callable[[str], bool] = lambda code: True) -> dict:
    """Run the (selected) python blocks of ``docs/<page>`` in one namespace, each checked against the text
    block after it (if any), with a clear parameter store before and after; return the namespace."""
    pyro.clear_param_store()
    namespace: dict = {"__name__": f"__docs_{page}__"}
    blocks = [(c, t) for c, t in page_blocks(page) if select(c)]
    assert blocks, page
    for i, (code, expected) in enumerate(blocks):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, f"docs/{page} block {i}", "exec"), namespace)  # noqa: S102 - the docs' own code
        if expected is not None:
            check_output(buffer.getvalue(), expected, f"docs/{page} block {i}")
    pyro.clear_param_store()
    return namespace
