# SPDX-License-Identifier: Apache-2.0
r"""Command-line programs: the demo (:mod:`~pyro_rpm.cli.demo`) and the shared contract of the
example and benchmark scripts (:mod:`~pyro_rpm.cli.scripts`: ``--quick``, ``--seed``,
``--device``, progress bars, figures, a JSON last line).
"""
