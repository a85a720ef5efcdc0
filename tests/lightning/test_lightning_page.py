# SPDX-License-Identifier: Apache-2.0
"""The code blocks of ``docs/lightning.md`` run in order in one namespace and print what the page shows
(numbers to 3 %, text exactly), in a temporary folder (the page writes an encoder file and a checkpoint)."""

import warnings

import pytest
from _pages import page_blocks, run_page

pytest.importorskip("lightning")


def test_lightning_page_code_runs_and_prints_what_the_page_shows(tmp_path, monkeypatch):
    blocks = page_blocks("lightning.md")
    assert len(blocks) == 3 and all(expected is not None for _, expected in blocks)  # every block prints
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        # torch 2.13 deprecates a pytree API that Lightning 2.6 uses on every fit (not ours to fix)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        run_page("lightning.md")
    assert (tmp_path / "encoder_r1.pt").exists() and (tmp_path / "rpm.ckpt").exists()
