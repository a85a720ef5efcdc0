# SPDX-License-Identifier: Apache-2.0
"""arviz, matplotlib and scikit-learn are optional extras (issue 14, item 10): pyro_rpm imports without
them, and a function that needs one says which extra to install."""

import subprocess
import sys

import pytest
import torch

from pyro_rpm import linear_r2, plots, to_inference_data


@pytest.mark.parametrize(
    "blocked, call, extra",
    [
        ("arviz", lambda: to_inference_data(lambda: None, lambda: None), "arviz"),
        ("sklearn", lambda: linear_r2(torch.randn(10, 2), torch.randn(10, 2)), "metrics"),
        ("matplotlib", lambda: plots.plot_elbo([1.0, 0.5]), "plots"),
    ],
)
def test_a_missing_extra_names_its_install_command(monkeypatch, blocked, call, extra):
    for name in list(sys.modules):
        if name == blocked or name.startswith(blocked + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)  # import of it now raises ImportError
    with pytest.raises(ImportError, match=rf'pip install "pyro-rpm\[{extra}\]"'):
        call()


def test_the_package_imports_without_the_extras():
    code = (
        "import sys\n"
        "for name in ('arviz', 'matplotlib', 'sklearn', 'lightning'):\n"
        "    sys.modules[name] = None\n"
        "import pyro_rpm\n"
        "print(len(pyro_rpm.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) > 40
