# SPDX-License-Identifier: Apache-2.0
"""The documentation builds offline (``python -m sphinx -W -b html docs <dir>``) and its maths renders
without the network.

* The build passes with warnings as errors, and no intersphinx inventory is downloaded (they are
  committed under ``docs/_inventories/``; this machine and CI have no network).
* Every page with maths loads MathJax from the build's own ``_static/mathjax/`` (no ``https://`` script)
  and the bundled script is there; when Node.js is installed, the bundled MathJax typesets a formula
  of ``core.html`` into SVG with no file outside the build folder (so an offline reader sees maths,
  not raw LaTeX).
* torch, Pyro and ArviZ types in the API page are links to their projects' documentation.
* The API page shows no docstring inherited from ``torch.nn.Module`` (``forward``'s "Define the
  computation performed at every call").
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs_html")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(ROOT / "docs"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loading intersphinx inventory" not in proc.stderr  # -q hides the local loads; a download warns
    return out


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page)


@pytest.mark.slow
def test_maths_loads_a_local_mathjax(built):
    pages = sorted(built.rglob("*.html"))
    with_maths = [p for p in pages if 'class="math' in p.read_text()]
    assert {p.name for p in with_maths} >= {"core.html", "maths.html", "api.html"}
    for path in with_maths:
        sources = [s for s in _scripts(path.read_text()) if "mathjax" in s.lower()]
        assert len(sources) == 1, (path, sources)
        assert not re.match(r"[a-z]+://|//", sources[0]), (path, sources)  # no CDN
        assert (path.parent / sources[0]).resolve().is_file(), (path, sources)
    for path in pages:  # no page loads any script from the network
        assert not [s for s in _scripts(path.read_text()) if re.match(r"[a-z]+://|//", s)], path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run MathJax")
def test_bundled_mathjax_renders_a_formula_of_the_core_page_offline(built, tmp_path):
    page = (built / "core.html").read_text()
    formulas = re.findall(r'<div class="math[^"]*">\s*\\\[(.*?)\\\]\s*</div>', page, re.S)
    assert formulas, "core.html has no display maths"
    formula = html.unescape(formulas[0]).strip()
    script = tmp_path / "render.js"
    script.write_text(
        "const dir = process.argv[2];\n"
        "require(dir + '/node-main.js').init({loader: {load: ['input/tex', 'output/svg']}})\n"
        "  .then((MathJax) => { const n = MathJax.tex2svg(process.argv[3], {display: true});\n"
        "    console.log(MathJax.startup.adaptor.outerHTML(n)); })\n"
        "  .catch((e) => { console.error(e); process.exit(1); });\n"
    )
    mathjax = built / "_static" / "mathjax"
    proc = subprocess.run(
        ["node", str(script), str(mathjax), formula], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    svg = proc.stdout
    assert '<mjx-container class="MathJax" jax="SVG"' in svg and "<path" in svg
    assert "merror" not in svg and "noundefined" not in svg  # every macro of the formula is known


@pytest.mark.slow
def test_api_page_links_torch_pyro_and_arviz_types(built):
    page = (built / "api.html").read_text()
    assert 'href="https://pytorch.org/docs/stable/tensors.html#torch.Tensor"' in page
    assert 'href="https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module"' in page
    assert 'href="https://docs.pyro.ai/en/stable/inference_algos.html#pyro.infer.svi.SVI"' in page
    assert 'href="https://python.arviz.org/en/stable/api/generated/arviz.InferenceData.html' in page
    # every link into those projects goes to one of their own documented objects (no typing.Any)
    for url in re.findall(r'href="(https://(?:pytorch.org|docs.pyro.ai|python.arviz.org)[^"]*)"', page):
        anchor = url.rsplit("#", 1)[-1]
        assert anchor.startswith(("torch", "pyro", "arviz", "module-")), url


@pytest.mark.slow
def test_api_page_has_no_docstring_inherited_from_torch(built):
    page = (built / "api.html").read_text()
    assert "Define the computation performed at every call" not in page  # nn.Module.forward
