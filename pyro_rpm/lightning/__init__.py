# SPDX-License-Identifier: Apache-2.0
r"""PyTorch Lightning integration (optional extra: ``pip install pyro-rpm[lightning]``).

``RPMModule`` is a :class:`lightning.pytorch.LightningModule` that trains a Pyro model and guide
with :class:`~pyro_rpm.RPM_ELBO` and logs the loss per datum and the constant-free loss
(:class:`~pyro_rpm.lightning.module.RPMModuleBase` documents it):

.. code-block:: python

    from pyro_rpm.lightning import RPMModule

    module = RPMModule(model, guide, example_batch=(x1[:256], x2[:256]), lr=3e-3)
    lightning.Trainer(max_steps=1000).fit(module, DataLoader(TensorDataset(x1, x2), batch_size=256))
    z = module.recognitions["r1"].transform(x1)      # embeddings of new inputs (the encoder API)

Importing this package does not import Lightning: ``RPMModule`` is built on first access
(:func:`~pyro_rpm.lightning.module.rpm_module_class`), and without Lightning that access raises an
:class:`ImportError` naming the extra.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RPMModule"]


def __getattr__(name: str) -> Any:
    if name == "RPMModule":
        from .module import rpm_module_class

        return rpm_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
