# SPDX-License-Identifier: Apache-2.0
r"""A video of balls moving in a square (Aitchison & Ganev, §5 and Appendix D).

:func:`moving_balls` simulates ``num_balls`` discs of diameter :math:`d` inside an
:math:`S \times S` pixel square, one continuous video of T frames:

* **start**: centres uniform on :math:`[r, S - r]^2` (:math:`r = d/2`), drawn again until no two
  discs overlap; headings :math:`\theta_k \sim U[0, 2\pi)`;
* **step** (each frame, ball by ball): the heading drifts, :math:`\theta_k \leftarrow \theta_k + u`,
  :math:`u \sim U[-a, a]` with :math:`a` = ``turn``, and the ball moves a full step :math:`s`
  (default :math:`s = d`) along it, :math:`p_k \leftarrow p_k + s(\cos\theta_k, \sin\theta_k)`;
* **collision**: if the new disc would leave the square (a centre outside :math:`[r, S - r]^2`) or
  overlap another ball (centres closer than :math:`d`; balls moved earlier in the frame are at
  their new places), the draw is rejected and redrawn with the noise range doubled
  (:math:`a \leftarrow 2a`, the paper's rule) until a valid move is found. Once :math:`2a \ge 2\pi`
  the heading is uniform. If no valid move turns up within ``max_tries`` draws (a ball boxed in by
  another ball and a corner: 0-2 of the 2697 moves of the default video, depending on the seed), the
  ball stays put for that frame and takes a uniform heading.

Frames have one channel per ball (ball k is drawn in channel k only, so a translation-equivariant
encoder can tell the balls apart), each an anti-aliased disc: pixel :math:`(i, j)` has centre
:math:`u = (j + \tfrac12, i + \tfrac12)` and value :math:`\operatorname{clip}(r + \tfrac12 -
\lVert u - p_k \rVert, 0, 1)`, a radially symmetric soft edge of one pixel, so the intensity-weighted
centre of mass of channel k is :math:`p_k` up to pixel-grid aliasing (a few hundredths of a pixel).

Positions are in pixel units, ``(x, y) = (column, row)`` measured from the image's top-left corner,
so a centre lies in :math:`[r, S - r]^2`. Everything is drawn from a private NumPy generator (the
global random state is untouched). :func:`ball_trajectories` runs the dynamics alone (no images).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import check_int as _positive_int
from .._validation import check_int_type
from .._validation import check_positive_number as _positive_float

__all__ = ["ball_trajectories", "moving_balls", "render_balls"]

_MAX_PLACEMENTS = 100_000


def render_balls(
    positions: torch.Tensor, image_size: int, diameter: float, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""Draw each ball as an anti-aliased disc in its own channel.

    Pixel :math:`(i, j)` of channel k is :math:`\operatorname{clip}(r + \tfrac12 - \lVert u_{ij} - p_k
    \rVert, 0, 1)` with :math:`u_{ij} = (j + \tfrac12, i + \tfrac12)` and :math:`r = d / 2`.

    :param torch.Tensor positions: centres ``(..., K, 2)`` in pixel units, ``(x, y) = (column, row)``.
    :param int image_size: S, the side of the square image in pixels.
    :param float diameter: d, in pixels.
    :param torch.dtype dtype: dtype of the frames.
    :returns: frames ``(..., K, S, S)`` with values in [0, 1].
    """
    if not isinstance(positions, torch.Tensor) or positions.dim() < 2 or positions.shape[-1] != 2:
        shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"positions must be a tensor of shape (..., K, 2), got {shape}")
    _positive_int(image_size, "image_size")
    radius = _positive_float(diameter, "diameter") / 2
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    grid = torch.arange(image_size, dtype=torch.float64, device=positions.device) + 0.5
    p = positions.to(torch.float64)
    dx = grid.view(1, -1) - p[..., 0, None, None]  # (..., K, 1, S): columns
    dy = grid.view(-1, 1) - p[..., 1, None, None]  # (..., K, S, 1): rows
    distance = torch.sqrt(dx * dx + dy * dy)
    return (radius + 0.5 - distance).clamp(0.0, 1.0).to(dtype)


def _overlaps(candidate: np.ndarray, others: np.ndarray, diameter: float) -> bool:
    if others.size == 0:
        return False
    return bool((((others - candidate) ** 2).sum(-1) < diameter * diameter).any())


def _check_seed_dtype(seed: object, dtype: object) -> None:
    check_int_type(seed, "seed")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")


def ball_trajectories(
    num_frames: int = 900,
    image_size: int = 32,
    diameter: float = 5.0,
    num_balls: int = 3,
    *,
    step: float | None = None,
    turn: float = math.pi / 6,
    max_tries: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""The ball centres of :func:`moving_balls` (same arguments, same draws), without rendering.

    :returns: positions ``(T, K, 2)`` in pixel units, ``(x, y) = (column, row)``.
    :raises ValueError: on a bad argument, or if the balls do not fit in the square.
    """
    _positive_int(num_frames, "num_frames")
    _positive_int(image_size, "image_size")
    diameter = _positive_float(diameter, "diameter")
    _positive_int(num_balls, "num_balls")
    step = diameter if step is None else _positive_float(step, "step")
    turn = _positive_float(turn, "turn")
    _positive_int(max_tries, "max_tries")
    _check_seed_dtype(seed, dtype)
    radius = diameter / 2
    low, high = radius, image_size - radius
    if high - low < step:
        raise ValueError(
            f"diameter {diameter} and step {step} leave no room to move in a {image_size}-pixel square "
            f"(need image_size >= diameter + step)"
        )
    # keep the square roomy enough for the rejection sampler (placement and moves)
    if num_balls * diameter * diameter > 0.3 * image_size * image_size:
        raise ValueError(
            f"{num_balls} balls of diameter {diameter} crowd a {image_size}-pixel square (need "
            f"num_balls * diameter^2 <= 0.3 * image_size^2)"
        )
    rng = np.random.default_rng(seed)

    pos = np.empty((num_balls, 2))
    for _ in range(_MAX_PLACEMENTS):
        pos[:] = rng.uniform(low, high, size=(num_balls, 2))
        if all(not _overlaps(pos[k], pos[:k], diameter) for k in range(num_balls)):
            break
    else:  # pragma: no cover - excluded by the crowding check above
        raise ValueError("could not place the balls without overlap")
    heading = rng.uniform(0.0, 2 * math.pi, size=num_balls)

    positions = np.empty((num_frames, num_balls, 2))
    positions[0] = pos
    for t in range(1, num_frames):
        for k in range(num_balls):
            others = np.delete(pos, k, axis=0)
            half_width = turn
            for _ in range(max_tries):
                theta = heading[k] + rng.uniform(-half_width, half_width)
                candidate = pos[k] + step * np.array([math.cos(theta), math.sin(theta)])
                inside = bool((candidate >= low).all() and (candidate <= high).all())
                if inside and not _overlaps(candidate, others, diameter):
                    pos[k], heading[k] = candidate, math.fmod(theta, 2 * math.pi)
                    break
                half_width = min(2 * half_width, math.pi)
            else:
                heading[k] = rng.uniform(0.0, 2 * math.pi)  # boxed in: stay for one frame
        positions[t] = pos
    return torch.from_numpy(positions).to(dtype)


def moving_balls(
    num_frames: int = 900,
    image_size: int = 32,
    diameter: float = 5.0,
    num_balls: int = 3,
    *,
    step: float | None = None,
    turn: float = math.pi / 6,
    max_tries: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One continuous video of balls moving in a square (see the module docstring).

    :param int num_frames: T, the number of frames (the paper's video has 900).
    :param int image_size: S, the side of the square in pixels (default 32).
    :param float diameter: d, the ball diameter in pixels (default 5).
    :param int num_balls: K, the number of balls (default 3), one channel each.
    :param float step: distance moved per frame in pixels (default: one diameter).
    :param float turn: half-width :math:`a` of the uniform heading noise, in radians (default
        :math:`\pi/6`); doubled after each rejected move.
    :param int max_tries: draws per ball and frame before the ball is left in place.
    :param int seed: seed of the private generator.
    :param torch.dtype dtype: dtype of the frames and positions.
    :returns: ``(frames, positions)`` of shapes ``(T, K, S, S)`` (values in [0, 1]) and ``(T, K, 2)``
        (pixel units, ``(x, y) = (column, row)``).
    :raises ValueError: on a bad argument, or if the balls do not fit in the square.

    >>> frames, positions = moving_balls(10, image_size=24, diameter=4.0)
    >>> tuple(frames.shape), tuple(positions.shape)
    ((10, 3, 24, 24), (10, 3, 2))
    """
    _check_seed_dtype(seed, dtype)
    positions = ball_trajectories(
        num_frames, image_size, diameter, num_balls, step=step, turn=turn, max_tries=max_tries, seed=seed,
        dtype=torch.float64,
    )  # fmt: skip
    frames = render_balls(positions, image_size, diameter, dtype=dtype)
    return frames, positions.to(dtype)
