# SPDX-License-Identifier: Apache-2.0
"""The code blocks of ``docs/lightning.md`` run in order in one namespace and print what the page shows
(numbers to 3 %, text exactly), in a temporary folder (the page writes an encoder file and a checkpoint)."""

import contextlib
import io
import re
import warnings
from pathlib import Path

import pyro
import pytest

pytest.importorskip("lightning")

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def _numbers_and_text(output: str) -> tuple[list[float], str]:
    return [float(v) for v in re.findall(NUMBER, output)], re.sub(NUMBER, "#", output)


def test_lightning_page_code_runs_and_prints_what_the_page_shows(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "lightning.md").read_text()
    pairs = re.findall(r"```python\n(.*?)```\n\n```text\n(.*?)```", page, re.S)
    assert len(pairs) == len(re.findall(r"```python\n", page)) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__lightning_page__"}
    with warnings.catch_warnings():
        # torch 2.13 deprecates a pytree API that Lightning 2.6 uses on every fit (not ours to fix)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        for i, (code, expected) in enumerate(pairs):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, f"docs/lightning.md block {i}", "exec"), namespace)
            got_numbers, got_text = _numbers_and_text(buffer.getvalue())
            want_numbers, want_text = _numbers_and_text(expected)
            assert got_text == want_text, (i, buffer.getvalue(), expected)
            for got, want in zip(got_numbers, want_numbers):
                assert got == pytest.approx(want, rel=0.03, abs=0.05), (i, buffer.getvalue(), expected)
    assert (tmp_path / "encoder_r1.pt").exists() and (tmp_path / "rpm.ckpt").exists()
    pyro.clear_param_store()
