# SPDX-License-Identifier: Apache-2.0
r"""Two-view demo: recover a 2-D latent from two noisy nonlinear views, without a decoder.

Model (the canonical two-view RPM): :math:`z \sim \mathcal N(0, I_2)`, Gaussian recognition factors
:math:`f_j(z \mid x_j)` in the "prior + network" form, observed through the in-batch support,
tied guide :math:`q \propto p f_1 f_2 / p`, :class:`pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI`.
After training, the linear :math:`R^2` of the true latent from the guide's posterior means.

Usage::

    python examples/two_views.py            # full run (N=2048, 3000 steps)
    python examples/two_views.py --quick    # shorter run for CI

Figures go to ``--out`` (default ``outputs/``); the last line of stdout is one JSON object with
``r2``, ``seconds`` and ``final_loss``. The same demo runs as ``python -m pyro_rpm demo``; the
training code lives in :mod:`pyro_rpm.cli.demo`.
"""

from pyro_rpm.cli.demo import main

if __name__ == "__main__":
    main(prog="python examples/two_views.py")
