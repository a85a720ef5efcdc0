# SPDX-License-Identifier: Apache-2.0
"""The moving-balls video: its stated dynamics (walls, step length, heading drift, no overlaps),
its rendering (each channel's centre of mass is its ball's centre), determinism and bad arguments."""

import math

import pytest
import torch
from scipy import stats

from pyro_rpm.datasets.moving_balls import ball_trajectories, moving_balls, render_balls


def _headings(positions: torch.Tensor) -> torch.Tensor:
    move = positions[1:] - positions[:-1]  # (T-1, K, 2)
    return torch.atan2(move[..., 1], move[..., 0])


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def _centres_of_mass(frames: torch.Tensor) -> torch.Tensor:
    size = frames.shape[-1]
    grid = torch.arange(size, dtype=frames.dtype) + 0.5
    mass = frames.sum((-1, -2))
    x = (frames.sum(-2) * grid).sum(-1) / mass
    y = (frames.sum(-1) * grid).sum(-1) / mass
    return torch.stack([x, y], -1)


def test_shapes_dtype_range_and_determinism():
    state = torch.random.get_rng_state()
    frames, positions = moving_balls(50, image_size=24, diameter=4.0, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    assert frames.shape == (50, 3, 24, 24) and positions.shape == (50, 3, 2)
    assert frames.dtype == torch.float32 and positions.dtype == torch.float32
    assert float(frames.min()) == 0.0 and float(frames.max()) == 1.0
    again = moving_balls(50, image_size=24, diameter=4.0, seed=3)
    assert torch.equal(frames, again[0]) and torch.equal(positions, again[1])
    assert not torch.equal(moving_balls(50, image_size=24, diameter=4.0, seed=4)[1], positions)
    frames64, positions64 = moving_balls(5, image_size=24, diameter=4.0, num_balls=2, dtype=torch.float64)
    assert frames64.dtype == positions64.dtype == torch.float64 and frames64.shape == (5, 2, 24, 24)


def test_default_video_is_the_papers_length_with_three_balls():
    frames, positions = moving_balls()
    assert frames.shape == (900, 3, 32, 32) and positions.shape == (900, 3, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_balls_stay_inside_the_square_and_never_overlap(seed):
    size, diameter = 32, 5.0
    _, positions = moving_balls(900, size, diameter, seed=seed, dtype=torch.float64)
    radius = diameter / 2
    assert bool((positions >= radius - 1e-9).all()) and bool((positions <= size - radius + 1e-9).all())
    gaps = torch.cdist(positions, positions) + 1e9 * torch.eye(3, dtype=torch.float64)
    assert float(gaps.min()) >= diameter - 1e-9
    # the balls use the whole square: every coordinate comes within a diameter of both walls
    assert float(positions.min()) < radius + diameter and float(positions.max()) > size - radius - diameter


@pytest.mark.parametrize("seed", [0, 2])
def test_every_frame_moves_each_ball_by_one_step(seed):
    _, positions = moving_balls(900, 32, 5.0, seed=seed, dtype=torch.float64)
    lengths = (positions[1:] - positions[:-1]).norm(dim=-1)
    moved = (lengths - 5.0).abs() < 1e-9
    stayed = lengths < 1e-12  # a ball boxed in by another ball and a corner waits one frame
    assert bool((moved | stayed).all())
    assert int(stayed.sum()) <= 3  # of 2697 moves
    positions = ball_trajectories(300, 32, 5.0, step=2.5, seed=seed, dtype=torch.float64)
    lengths = (positions[1:] - positions[:-1]).norm(dim=-1)
    assert bool((((lengths - 2.5).abs() < 1e-9) | (lengths < 1e-12)).all())
    assert float(lengths.mean()) > 2.49


def test_trajectories_are_the_videos_positions():
    _, positions = moving_balls(40, 24, 4.0, turn=0.3, seed=5)
    assert torch.equal(ball_trajectories(40, 24, 4.0, turn=0.3, seed=5), positions)


def test_heading_drifts_by_uniform_noise_away_from_walls():
    # a lone small ball in a large square rarely meets a wall: its turns are draws of U[-a, a]
    turn = math.pi / 6
    positions = ball_trajectories(3000, 2000, 2.0, num_balls=1, turn=turn, seed=0, dtype=torch.float64)
    turns = _wrap(_headings(positions)[1:, 0] - _headings(positions)[:-1, 0])
    assert float(turns.abs().max()) <= turn + 1e-9
    result = stats.kstest(turns.numpy(), stats.uniform(loc=-turn, scale=2 * turn).cdf)
    assert result.pvalue > 1e-3, result
    # headings persist (a drift, not a fresh direction per frame) ...
    headings = _headings(positions)[:, 0]
    assert float(torch.cos(headings[1:] - headings[:-1]).mean()) > 0.9
    # ... and wander: over 3000 frames the heading visits every quadrant
    quadrants = torch.floor(torch.remainder(headings, 2 * math.pi) / (math.pi / 2))
    assert set(quadrants.long().tolist()) == {0, 1, 2, 3}


def test_collisions_redraw_the_heading_with_a_wider_range():
    # in the default (crowded) square most turns stay within a, the rest are redraws at 2a, 4a, ...
    turn = math.pi / 6
    _, positions = moving_balls(900, 32, 5.0, turn=turn, seed=0, dtype=torch.float64)
    turns = _wrap(_headings(positions)[1:] - _headings(positions)[:-1]).abs()
    within = float((turns <= turn + 1e-9).double().mean())
    assert 0.5 < within < 1.0  # collisions happen, but most frames drift
    assert float((turns > 2 * turn + 1e-9).double().mean()) > 0.0  # some needed the range doubled twice


@pytest.mark.parametrize("seed", [0, 3])
def test_wide_turns_happen_only_next_to_an_obstacle(seed):
    # a turn wider than a means the first draw was rejected: the undrifted move of one step s would
    # have left the square or hit a ball, so the ball was within s of a wall or within d + s of a ball
    # (earlier balls at their new places, later ones at their old places)
    size, diameter, turn = 32, 5.0, math.pi / 6
    radius = diameter / 2
    _, positions = moving_balls(900, size, diameter, turn=turn, seed=seed, dtype=torch.float64)
    turns = _wrap(_headings(positions)[1:] - _headings(positions)[:-1]).abs()  # turn at frame t+1 -> t+2
    steps = (positions[1:] - positions[:-1]).norm(dim=-1) > 1e-12
    moved = steps[1:] & steps[:-1]  # both moves real (a boxed-in ball that waits has no heading)
    wide = (turns > turn + 1e-9) & moved
    assert int(wide.sum()) > 20
    for t, k in wide.nonzero().tolist():
        before = positions[t + 1]  # the frame the ball moved from
        after = positions[t + 2]
        p = before[k]
        wall = float(torch.minimum(p - radius, size - radius - p).min())
        others = torch.cat([after[:k], before[k + 1 :]])
        ball = float((others - p).norm(dim=-1).min())
        assert wall < diameter + 1e-9 or ball < 2 * diameter + 1e-9, (t, k, wall, ball)
    # ... while free balls (far from walls and balls) only drift within a
    free_turns = []
    for t in range(turns.shape[0]):
        for k in range(3):
            p = positions[t + 1, k]
            wall = float(torch.minimum(p - radius, size - radius - p).min())
            others = torch.cat([positions[t + 2, :k], positions[t + 1, k + 1 :]])
            if wall >= diameter and float((others - p).norm(dim=-1).min()) >= 2 * diameter and bool(moved[t, k]):
                free_turns.append(float(turns[t, k]))
    assert len(free_turns) > 100 and max(free_turns) <= turn + 1e-9


def test_rendering_puts_each_balls_centre_of_mass_at_its_position():
    frames, positions = moving_balls(300, 32, 5.0, seed=1, dtype=torch.float64)
    torch.testing.assert_close(_centres_of_mass(frames), positions, rtol=0, atol=0.06)
    # each channel holds one disc of area ~ pi r^2 (the one-pixel soft edge is radially symmetric)
    mass = frames.sum((-1, -2))
    torch.testing.assert_close(mass, torch.full_like(mass, math.pi * 2.5**2), rtol=0.03, atol=0)


def test_render_balls_matches_a_brute_force_disc():
    position = torch.tensor([[[7.3, 4.9]]], dtype=torch.float64)
    image = render_balls(position, 12, 4.0, dtype=torch.float64)[0, 0]
    for row in range(12):
        for col in range(12):
            distance = math.hypot(col + 0.5 - 7.3, row + 0.5 - 4.9)
            assert float(image[row, col]) == pytest.approx(min(1.0, max(0.0, 2.5 - distance)), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"image_size": 2.5}, "image_size"),
        ({"diameter": -1.0}, "diameter"),
        ({"diameter": float("nan")}, "diameter"),
        ({"num_balls": True}, "num_balls"),
        ({"step": 0.0}, "step"),
        ({"turn": 0.0}, "turn"),
        ({"max_tries": 0}, "max_tries"),
        ({"image_size": 8, "diameter": 5.0}, "no room"),
        ({"image_size": 16, "diameter": 5.0, "num_balls": 4}, "crowd"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moving_balls(**{"num_frames": 5, **kwargs})


def test_bad_seed_and_dtype_raise_type_errors():
    with pytest.raises(TypeError, match="seed"):
        moving_balls(5, seed="0")
    with pytest.raises(TypeError, match="dtype"):
        moving_balls(5, dtype=torch.int64)
    with pytest.raises(ValueError, match="positions"):
        render_balls(torch.zeros(3), 8, 2.0)
