# SPDX-License-Identifier: Apache-2.0
"""The python blocks of the docs pages run as written, in order, and print what the pages show.

* ``docs/getting-started.md``: the first model trains (seed 0, 1000 steps) and its last block prints
  posterior means and the linear R^2 of the true latent that the page shows (0.967 at one thread).
* ``docs/core.md``: the ``observe(index=)`` example with a ``(B, T)`` index inside nested plates runs,
  prints what the page shows, and its per-frame log-likelihood equals a float64 naive broadcast
  ``log f(z_nt | x_nt) - logsumexp_m log f(z_nt | x_m)`` over all B*T frames.

A python block followed by a ``text`` block must print that text: the same words exactly and the same
numbers within a tolerance that allows other CPUs' rounding (rel 3 %, abs 0.05); the runner is
``tests/_shared/_pages.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _pages import check_output, parse_blocks, run_page

ROOT = Path(__file__).resolve().parents[2]


def test_block_parser():
    text = "```python\na = 1\n```\n\n```text\n1\n```\n\n```python\nb = 2\n```\nprose\n"
    assert parse_blocks(text) == [("a = 1\n", "1\n"), ("b = 2\n", None)]
    with pytest.raises(AssertionError):
        check_output("r2 0.5\n", "r2 0.967\n", "x")
    check_output("r2 0.968\n", "r2 0.967\n", "x")


@pytest.mark.slow
def test_getting_started_first_model_prints_its_numbers():
    namespace = run_page("getting-started.md")
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert "linear R^2 of z_true from the posterior means: 0.967" in page
    r2 = namespace["linear_r2"](namespace["z_mean"], namespace["z_true"])
    assert r2 > 0.95, r2


def test_core_page_index_of_shape_b_t_in_nested_plates():
    import math

    import torch

    namespace = run_page("core.md", select=lambda code: "index = torch.arange(B * T).reshape(B, T)" in code)
    B, T, D = namespace["B"], namespace["T"], namespace["D"]
    trace, x, r = namespace["trace"], namespace["x"], namespace["r"]
    z = trace.nodes["z"]["value"].detach().double()  # (B, T, D)
    site = trace.nodes["x"]
    got = site["fn"].log_prob(site["value"]).detach().double()
    with torch.no_grad():
        f = r(x.reshape(B * T, -1))
    loc, scale = f.loc.double(), f.scale.double().expand_as(f.loc)  # (BT, D)
    zz = z.reshape(B * T, 1, D)
    table = (-((zz - loc) ** 2) / (2 * scale**2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)  # (BT, BT)
    want = (table.diagonal() - table.logsumexp(-1)).reshape(B, T)
    assert got.shape == (B, T)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
