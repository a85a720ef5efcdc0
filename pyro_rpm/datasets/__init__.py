# SPDX-License-Identifier: Apache-2.0
"""Deterministic synthetic data sets (seeded, no downloads), each returned with its true latents."""

from .distracted_video import DistractedVideo, distracted_video
from .gaussian_pairs import correlated_gaussian_pairs, gaussian_pairs_mi, rho_for_mi
from .identifiability import (
    InvertibleMLP,
    anisotropic_sphere,
    anisotropic_sphere_pairs,
    bimodal_precision,
    box_laplace_pairs,
    sphere_vmf_pairs,
    truncated_laplace,
    uniform_box,
    uniform_sphere,
    von_mises_fisher,
)
from .moving_balls import ball_trajectories, moving_balls, render_balls
from .synthetic import two_view_gaussian
from .timeseries import bouncing_ball_poisson, linear_gaussian_ssm

__all__ = [
    "DistractedVideo",
    "InvertibleMLP",
    "anisotropic_sphere",
    "anisotropic_sphere_pairs",
    "ball_trajectories",
    "bimodal_precision",
    "bouncing_ball_poisson",
    "box_laplace_pairs",
    "correlated_gaussian_pairs",
    "distracted_video",
    "gaussian_pairs_mi",
    "linear_gaussian_ssm",
    "moving_balls",
    "render_balls",
    "rho_for_mi",
    "sphere_vmf_pairs",
    "truncated_laplace",
    "two_view_gaussian",
    "uniform_box",
    "uniform_sphere",
    "von_mises_fisher",
]
