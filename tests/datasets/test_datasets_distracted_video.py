# SPDX-License-Identifier: Apache-2.0
"""distracted_video (issue 16): shapes, seeding, smooth latents, and occluded frames that carry no
information about the latent while visible frames do."""

import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from pyro_rpm.datasets import distracted_video


def test_shapes_dtypes_and_seeding():
    v = distracted_video(3, 15, size=12, occlusion=0.3, seed=4)
    assert v.frames.shape == (3, 15, 1, 12, 12) and v.frames.dtype == torch.float32
    assert v.latent.shape == (3, 15, 2) and v.mask.shape == (3, 15) and v.mask.dtype == torch.bool
    again = distracted_video(3, 15, size=12, occlusion=0.3, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(v, again))
    other = distracted_video(3, 15, size=12, occlusion=0.3, seed=5)
    assert not torch.equal(v.latent, other.latent)
    # The latent is the bob on the unit circle, and smooth in time.
    torch.testing.assert_close(v.latent.norm(dim=-1), torch.ones(3, 15))
    assert (v.latent[:, 1:] - v.latent[:, :-1]).norm(dim=-1).max() < 0.5
    assert torch.equal(distracted_video(3, 15, occlusion=0.0).mask, torch.zeros(3, 15, dtype=torch.bool))


def test_the_occluded_fraction_follows_the_argument():
    mask = distracted_video(40, 50, size=8, occlusion=0.3, seed=0).mask
    assert abs(mask.double().mean().item() - 0.3) < 0.03


def _held_out_r2(frames, latent):
    x = frames.reshape(len(frames), -1).numpy()
    y = latent.numpy()
    half = len(x) // 2
    model = Ridge(alpha=10.0).fit(x[:half], y[:half])
    return r2_score(y[half:], model.predict(x[half:]))


def test_occluded_frames_carry_no_information_about_the_latent():
    v = distracted_video(60, 40, size=12, occlusion=0.3, num_distractors=0, background=0.1, seed=1)
    frames, latent, mask = v.frames.flatten(0, 1), v.latent.flatten(0, 1), v.mask.flatten()
    visible = _held_out_r2(frames[~mask], latent[~mask])
    occluded = _held_out_r2(frames[mask], latent[mask])
    assert visible > 0.5, visible  # a linear read-out of the pixels finds the bob
    assert occluded < 0.02, occluded  # and finds nothing in an occluded frame


def test_distractor_brightness_scales_the_distractors_only():
    """Brightness 0 is the video without distractors; brightness b adds b times the distractors."""
    options = {"occlusion": 0.2, "background": 0.1, "seed": 3}
    none = distracted_video(3, 12, num_distractors=0, **options)
    off = distracted_video(3, 12, distractor_brightness=0.0, **options)
    full = distracted_video(3, 12, **options)
    half = distracted_video(3, 12, distractor_brightness=0.5, **options)
    visible = ~none.mask
    assert torch.equal(none.latent, off.latent) and torch.equal(none.mask, off.mask)
    assert torch.allclose(none.frames[visible], off.frames[visible], atol=1e-6)
    assert torch.allclose(
        half.frames[visible] - none.frames[visible], 0.5 * (full.frames - none.frames)[visible], atol=1e-5
    )
    assert (full.frames - none.frames)[visible].abs().max() > 0.5  # the distractors are there at brightness 1
    assert torch.equal(full.frames[~visible], none.frames[~visible])  # occluded frames carry no distractor either


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="distractor_brightness"):
        distracted_video(2, 5, distractor_brightness=-0.1)
    with pytest.raises(ValueError, match="occlusion"):
        distracted_video(2, 5, occlusion=1.0)
    with pytest.raises(ValueError, match="size"):
        distracted_video(2, 5, size=4)
    with pytest.raises(ValueError, match="num_steps"):
        distracted_video(2, 0)
    with pytest.raises(TypeError, match="seed"):
        distracted_video(2, 5, seed=1.5)
