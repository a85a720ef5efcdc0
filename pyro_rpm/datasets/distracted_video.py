# SPDX-License-Identifier: Apache-2.0
r"""Videos of a pendulum behind distractors, changing backgrounds and occlusions (structure vs pairs).

:func:`distracted_video` renders N sequences of T frames of an :math:`S \times S` one-channel image
of a swinging pendulum, whose bob position is the known latent, with three nuisances that a
per-frame encoder cannot undo on its own:

* **dynamics**: :math:`\ddot\theta = -\omega_0^2 \sin\theta`, integrated with a symplectic
  (semi-implicit) Euler step of ``dt``; initial angle :math:`\theta_0 \sim U[-\theta_{\max}, \theta_{\max}]`
  and angular velocity :math:`\dot\theta_0 \sim \mathcal N(0, 0.3^2)` per sequence. The latent is
  the bob position :math:`(\sin\theta, -\cos\theta)` (unit rod from the image centre), smooth in time;
* **frames**: the bob is a Gaussian blob of width ``blob_width`` pixels at
  :math:`c + 0.38\,S\,(\sin\theta, -\cos\theta)` (image centre :math:`c`, y pointing down);
  ``num_distractors`` blobs of the same shape (peak brightness ``distractor_brightness`` times the
  bob's; the same by default) move on straight lines with constant velocity and bounce off the borders; every frame gets its own background texture (white noise
  smoothed by a 3x3 box filter, amplitude ``background``);
* **occlusion**: each frame independently, with probability ``occlusion``, is replaced by pure
  noise (the same texture without the pendulum or the distractors), so it carries no information
  about the latent; ``mask`` marks these frames.

Everything is drawn from a private NumPy generator seeded by ``seed`` (the global random state is
untouched); the occlusion noise comes from its own stream, independent of the latent.

Example::

    >>> video = distracted_video(4, 20, size=16, occlusion=0.25, seed=0)
    >>> video.frames.shape, video.latent.shape, video.mask.shape
    (torch.Size([4, 20, 1, 16, 16]), torch.Size([4, 20, 2]), torch.Size([4, 20]))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .._validation import check_int, check_int_type, check_number

__all__ = ["DistractedVideo", "distracted_video"]


class DistractedVideo(NamedTuple):
    """What :func:`distracted_video` returns."""

    frames: torch.Tensor  #: ``(N, T, 1, S, S)`` float32 images
    latent: torch.Tensor  #: ``(N, T, 2)`` the bob position :math:`(\sin\theta, -\cos\theta)`
    mask: torch.Tensor  #: ``(N, T)`` bool, ``True`` where the frame is occluded (pure noise)


def _blobs(centres: np.ndarray, size: int, width: float) -> np.ndarray:
    """Sum of Gaussian blobs; ``centres`` ``(..., K, 2)`` as (x, y) pixels -> images ``(..., S, S)``."""
    grid = np.arange(size) + 0.5
    dx = grid[None, :] - centres[..., 0, None, None]  # (..., K, 1, S) broadcast over rows below
    dy = grid[:, None] - centres[..., 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * width**2)).sum(-3)


def _texture(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    noise = rng.standard_normal(shape)
    padded = np.pad(noise, [(0, 0)] * (len(shape) - 2) + [(1, 1), (1, 1)], mode="wrap")
    smooth = sum(
        padded[..., 1 + i : 1 + i + shape[-2], 1 + j : 1 + j + shape[-1]] for i in (-1, 0, 1) for j in (-1, 0, 1)
    )
    return amplitude * smooth / 3.0  # unit variance before the amplitude (9 terms / 3)


def distracted_video(
    num_sequences: int,
    num_steps: int,
    *,
    size: int = 16,
    occlusion: float = 0.25,
    num_distractors: int = 2,
    distractor_brightness: float = 1.0,
    background: float = 0.15,
    blob_width: float = 1.2,
    dt: float = 0.15,
    max_angle: float = 1.2,
    seed: int = 0,
) -> DistractedVideo:
    r"""Seeded pendulum videos with distractors, changing backgrounds and occluded frames (module docstring).

    :param int num_sequences: N.
    :param int num_steps: T frames per sequence.
    :param int size: S, the image side in pixels (at least 8).
    :param float occlusion: probability in [0, 1) that a frame is replaced by noise.
    :param int num_distractors: moving blobs that look like the bob (0 or more).
    :param float distractor_brightness: their peak brightness relative to the bob's (0 or more; 1:
        look-alikes that a per-frame encoder can tell from the bob only by where they are).
    :param float background: amplitude of the per-frame background texture (0 or more).
    :param float blob_width: standard deviation of each blob, in pixels.
    :param float dt: integration step of the pendulum (the natural frequency is 1).
    :param float max_angle: initial angles are uniform on ``[-max_angle, max_angle]`` radians.
    :param int seed: seed of the private generator.
    :returns: a :class:`DistractedVideo` ``(frames, latent, mask)``.
    """
    N = check_int(num_sequences, "num_sequences", integral=True)
    T = check_int(num_steps, "num_steps", integral=True)
    S = check_int(size, "size", 8, integral=True)
    K = check_int(num_distractors, "num_distractors", 0, integral=True)
    occlusion = check_number(occlusion, "occlusion", at_least=0.0, below=1.0)
    brightness = check_number(distractor_brightness, "distractor_brightness", at_least=0.0)
    background = check_number(background, "background", at_least=0.0)
    blob_width = check_number(blob_width, "blob_width", greater_than=0.0)
    dt = check_number(dt, "dt", greater_than=0.0)
    max_angle = check_number(max_angle, "max_angle", greater_than=0.0, below=float(np.pi))
    seed = check_int_type(seed, "seed")
    streams = np.random.SeedSequence(seed).spawn(3)
    rng, occluder, textures = (np.random.default_rng(s) for s in streams)

    theta = np.empty((N, T))
    theta[:, 0] = rng.uniform(-max_angle, max_angle, N)
    omega = rng.normal(0.0, 0.3, N)
    for t in range(1, T):
        omega = omega - dt * np.sin(theta[:, t - 1])
        theta[:, t] = theta[:, t - 1] + dt * omega
    latent = np.stack([np.sin(theta), -np.cos(theta)], -1)  # (N, T, 2)

    centre = S / 2.0
    bob = centre + 0.38 * S * np.stack([latent[..., 0], -latent[..., 1]], -1)  # y points down
    images = _blobs(bob[..., None, :], S, blob_width)  # (N, T, S, S)
    if K:
        low, high = 1.5, S - 1.5
        start = rng.uniform(low, high, (N, K, 2))
        velocity = rng.normal(0.0, 0.08 * S, (N, K, 2)) * dt / 0.15
        span = high - low
        raw = start[:, None] - low + velocity[:, None] * np.arange(T)[None, :, None, None]  # (N, T, K, 2)
        folded = np.abs((raw % (2 * span)) - span)  # reflection off both borders
        images = images + brightness * _blobs(low + span - folded, S, blob_width)
    images = images + _texture(textures, (N, T, S, S), background)
    mask = occluder.random((N, T)) < occlusion
    noise = _texture(occluder, (N, T, S, S), max(background, 0.3)) + occluder.random((N, T, S, S)) * 0.5
    images = np.where(mask[..., None, None], noise, images)
    return DistractedVideo(
        frames=torch.as_tensor(images[:, :, None], dtype=torch.float32),
        latent=torch.as_tensor(latent, dtype=torch.float32),
        mask=torch.as_tensor(mask),
    )
