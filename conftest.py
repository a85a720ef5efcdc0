# SPDX-License-Identifier: Apache-2.0
"""Test configuration for ``tests/`` and the doctests in ``pyro_rpm/``.

One torch thread (the 2-core CI machine), Pyro validation on, a fresh parameter store and seed per
test, CUDA-marked tests skipped without a GPU, and the usual names in every doctest's namespace.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_rpm

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update({"torch": torch, "pyro": pyro, "dist": dist, "nn": torch.nn, "pyro_rpm": pyro_rpm})
    doctest_namespace.update({name: getattr(pyro_rpm, name) for name in pyro_rpm.__all__ if name != "__version__"})
