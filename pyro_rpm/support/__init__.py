# SPDX-License-Identifier: Apache-2.0
r"""Support sets: the points :math:`x^{(m)}` over which each likelihood site normalises.

In-batch (:class:`InBatchSupport`), the whole data set (:class:`FullDataSupport`, exact, with
GradCache re-encoding), memory banks (:class:`MemoryBankSupport`, :class:`IndexedBankSupport`) and
time-series supports (:class:`SequenceSupport`). Bias and cost of each choice: ``docs/support.md``.
"""

from .banks import IndexedBankSupport, MemoryBankSupport
from .base import InBatchSupport, Support, support_calling
from .full_data import FullDataSupport
from .sequences import POOLINGS, SequenceSupport, observe_sequence

__all__ = [
    "POOLINGS",
    "FullDataSupport",
    "InBatchSupport",
    "IndexedBankSupport",
    "MemoryBankSupport",
    "SequenceSupport",
    "Support",
    "observe_sequence",
    "support_calling",
]
