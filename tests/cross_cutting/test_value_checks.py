# SPDX-License-Identifier: Apache-2.0
"""The package-wide value checks (``pyro_rpm/_validation.py``) against an entry-wise reference: the one-reduction
fast path (a finite sum, a positive minimum with a finite maximum) accepts and refuses exactly what the
entry-wise tests do, including finite values whose sum overflows."""

import pytest
import torch

from pyro_rpm._validation import check_finite, check_positive, value_checks

CASES = {
    "ordinary": lambda: torch.rand(50, 3) + 0.1,
    "nan": lambda: torch.rand(50, 3).index_put_((torch.tensor([7]), torch.tensor([1])), torch.tensor(float("nan"))),
    "inf": lambda: torch.rand(50, 3).index_put_((torch.tensor([3]), torch.tensor([0])), torch.tensor(float("inf"))),
    "inf_and_minus_inf": lambda: torch.tensor([float("inf"), -float("inf"), 1.0]),
    "sum_overflows": lambda: torch.full((8,), 3e38),
    "sum_overflows_with_nan": lambda: torch.tensor([3e38, 3e38, float("nan")]),
    "zero": lambda: torch.tensor([1.0, 0.0]),
    "negative": lambda: torch.tensor([1.0, -1e-30]),
    "tiny": lambda: torch.tensor([1e-38, 1e-45]),
    "half": lambda: torch.tensor([6e4, 6e4, 6e4], dtype=torch.float16),
    "bfloat16_nan": lambda: torch.tensor([1.0, float("nan")], dtype=torch.bfloat16),
    "float64_huge": lambda: torch.tensor([1e308, 1e308], dtype=torch.float64),
}


@pytest.mark.parametrize("name", list(CASES))
def test_checks_agree_with_the_entry_wise_reference(name):
    value = CASES[name]()
    finite = bool(torch.isfinite(value).all())
    positive = finite and bool((value > 0).all())
    with value_checks("always"):
        if finite:
            check_finite(value, "x")
        else:
            with pytest.raises(ValueError, match="x must be finite"):
                check_finite(value, "x")
    if positive:
        check_positive(value, "x")
    else:
        with pytest.raises(ValueError, match="x must be finite and strictly positive"):
            check_positive(value, "x")


def test_integer_and_empty_values():
    check_positive(torch.tensor([1, 2, 3]), "n")
    with pytest.raises(ValueError, match="n must be finite and strictly positive"):
        check_positive(torch.tensor([1, 0]), "n")
    check_finite(torch.empty(0, 3), "e")
