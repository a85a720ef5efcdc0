# SPDX-License-Identifier: Apache-2.0
"""Importing ``pyro_rpm`` changes no global default, and the suite's warning filters are documented.

A fresh interpreter started with ``-W error`` (any warning raised at import fails the run)
imports torch and Pyro, records the global state, imports ``pyro_rpm``, then every module of the
package one by one, and records the state after each import. The state compared:

* torch: default dtype and device, intra-/inter-op thread counts, grad mode, inference mode,
  anomaly detection, deterministic-algorithm flags, float32 matmul precision and TF32/cuDNN flags,
  denormal flushing, ``torch.distributions.Distribution._validate_args``, print options, and the
  random state;
* Pyro: the three validation flags (``pyro.distributions``, ``pyro.infer``, ``pyro.poutine``),
  ``pyro.settings``, the parameter store contents and the handler stack;
* Python and NumPy: ``warnings.filters``, the root logger, ``os.environ``, the recursion limit,
  NumPy's error handling and random state, Python's ``random`` state;
* matplotlib: neither ``matplotlib.pyplot`` imported nor a backend chosen (``arviz`` and
  ``matplotlib`` are imported lazily, inside the functions that need them).

Also: every ``filterwarnings`` entry of ``pyproject.toml`` besides ``error`` is a documented
third-party filter (documented in ``docs/guarantees.md``), and the ArviZ filter matches the warning
ArviZ emits. (The one runtime helper that touches global state, the normalisers' denormal
flushing, restores it: ``tests/normalisers/test_normalisers.py::test_denormal_mode_is_restored``.)
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

SNAPSHOT_SCRIPT = textwrap.dedent(
    r"""
    import hashlib, importlib, importlib.util, json, logging, os, pathlib, random, sys, warnings
    import numpy as np
    import torch
    import pyro
    import pyro.distributions, pyro.infer.util, pyro.poutine.runtime, pyro.poutine.util


    def digest(obj):
        return hashlib.sha1(repr(obj).encode()).hexdigest()


    def snapshot():
        mpl = sys.modules.get("matplotlib")
        return {
            "torch.default_dtype": str(torch.get_default_dtype()),
            "torch.default_device": str(torch.get_default_device()),
            "torch.num_threads": torch.get_num_threads(),
            "torch.num_interop_threads": torch.get_num_interop_threads(),
            "torch.grad_enabled": torch.is_grad_enabled(),
            "torch.inference_mode": torch.is_inference_mode_enabled(),
            "torch.anomaly_enabled": torch.is_anomaly_enabled(),
            "torch.anomaly_check_nan": torch.is_anomaly_check_nan_enabled(),
            "torch.deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "torch.deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "torch.float32_matmul_precision": torch.get_float32_matmul_precision(),
            "torch.backends": [
                torch.backends.cudnn.benchmark,
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32,
            ],
            "torch.flush_denormal": bool(torch.tensor(1e-310, dtype=torch.float64) * 1.0 == 0),
            "torch.Distribution._validate_args": torch.distributions.Distribution._validate_args,
            "torch.print_options": repr(vars(torch._tensor_str.PRINT_OPTS)),
            "torch.rng_state": hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest(),
            "pyro.validation.distributions": pyro.distributions.is_validation_enabled(),
            "pyro.validation.infer": pyro.infer.util.is_validation_enabled(),
            "pyro.validation.poutine": pyro.poutine.util.is_validation_enabled(),
            "pyro.settings": repr(sorted(pyro.settings.get().items())),
            "pyro.param_store": sorted(pyro.get_param_store().keys()),
            "pyro.handler_stack": len(pyro.poutine.runtime._PYRO_STACK),
            "warnings.filters": [repr(f) for f in warnings.filters],
            "logging.root": [logging.root.level, [repr(h) for h in logging.root.handlers]],
            "os.environ": digest(sorted(os.environ.items())),
            "sys.recursion_limit": sys.getrecursionlimit(),
            "numpy.errstate": sorted(np.geterr().items()),
            "numpy.rng_state": digest(np.random.get_state()[1].tolist()),
            "random.state": digest(random.getstate()),
            "matplotlib.pyplot_imported": "matplotlib.pyplot" in sys.modules,
            "matplotlib.backend": None if mpl is None else mpl.rcParams._get_backend_or_none(),
        }


    root = pathlib.Path(importlib.util.find_spec("pyro_rpm").origin).parent
    modules = ["pyro_rpm"] + sorted(
        "pyro_rpm." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in root.rglob("*.py")
        if p.name != "__main__.py" and p != root / "__init__.py"
    )
    states = {"<before>": snapshot()}
    for name in modules:
        importlib.import_module(name)
        states[name] = snapshot()
    print(json.dumps(states))
    """
)


def test_importing_pyro_rpm_and_every_submodule_changes_no_global_state():
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", SNAPSHOT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"import under -W error failed:\n{done.stderr[-3000:]}"
    states = json.loads(done.stdout.strip().splitlines()[-1])
    before = states.pop("<before>")
    assert len(states) > 30 and "pyro_rpm.normalisers.fused" in states and "pyro_rpm.priors.gp" in states
    # sanity of the baseline: Pyro's and torch's documented defaults under a normal interpreter
    assert before["pyro.validation.distributions"] is True and before["torch.default_dtype"] == "torch.float32"
    assert before["pyro.param_store"] == [] and before["matplotlib.pyplot_imported"] is False
    changed = {
        module: {key: (before[key], value) for key, value in state.items() if value != before[key]}
        for module, state in states.items()
    }
    assert {module: diff for module, diff in changed.items() if diff} == {}


def _pytest_filters() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["pytest"]["ini_options"]["filterwarnings"]


def test_warnings_are_errors_and_every_exception_is_a_documented_third_party_filter():
    """``filterwarnings = error`` comes first; each other entry ignores a warning of a third-party
    package (never one of ``pyro_rpm``'s own) and is listed, with its reason, in docs/guarantees.md."""
    filters = _pytest_filters()
    assert filters[0] == "error"
    guarantees = (ROOT / "docs" / "guarantees.md").read_text()
    for entry in filters[1:]:
        action, message, category, module = (entry.split(":") + ["", "", "", ""])[:4]
        assert action == "ignore", entry
        assert "pyro_rpm" not in entry, f"{entry}: pyro_rpm's own warnings are not silenced"
        assert message or module, f"{entry}: an ignore filter must name a message or a module"
        assert f"`{entry}`" in guarantees, f"filter {entry!r} is not documented in docs/guarantees.md"


# The FutureWarning arviz 0.23 emits on its first import of each day (a stamp file in the user's
# cache decides), verbatim: note the leading newline.
ARVIZ_MESSAGE = (
    "\nArviZ is undergoing a major refactor to improve flexibility and extensibility "
    "while maintaining a user-friendly interface."
    "\nSome upcoming changes may be backward incompatible."
)


def _apply_filter(entry: str) -> None:
    """Install one ``action:message:category:module`` entry as pytest does for ini filters."""
    action, message, category, module = (entry.split(":") + ["", "", "", ""])[:4]
    classes = {"FutureWarning": FutureWarning, "DeprecationWarning": DeprecationWarning}
    warnings.filterwarnings(action, message, classes.get(category, Warning), module)


def test_the_arviz_filter_matches_the_warning_arviz_emits():
    """Without a matching filter the first ``import arviz`` of a day fails any test under -W error (the
    message starts with a newline, and filters match from the start: hence the leading ``\\s*``)."""
    entry = next(f for f in _pytest_filters() if "ArviZ" in f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _apply_filter(entry)
        warnings.warn(ARVIZ_MESSAGE, FutureWarning, stacklevel=1)  # raises unless the filter matches
