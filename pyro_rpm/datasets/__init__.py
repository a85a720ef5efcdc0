# SPDX-License-Identifier: Apache-2.0
"""Deterministic synthetic data sets (seeded, no downloads), each returned with its true latents."""

from .synthetic import two_view_gaussian
from .timeseries import bouncing_ball_poisson, linear_gaussian_ssm

__all__ = ["bouncing_ball_poisson", "linear_gaussian_ssm", "two_view_gaussian"]
