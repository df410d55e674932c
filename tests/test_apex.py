"""Apex spotting (mjfn_jax.preprocess.apex) on synthetic clips with a known apex."""

import dataclasses

import cv2
import numpy as np
import pytest

from mjfn_jax.preprocess import SpotSettings, spot_apex
from mjfn_jax.preprocess.apex import motion_score, smooth_curve
from mjfn_jax.synthetic import clip_labels, clip_spec, render_clip, render_neutral, subject_geometry
from mjfn_jax.synthetic.generate import APPEARANCE


@pytest.fixture(scope="module")
def clips():
    """Six generator clips (2 subjects x 3 classes, 64 px frames): (spec, frames)."""
    out = []
    for subject in range(2):
        geometry = subject_geometry(5, subject, 64)
        neutral = render_neutral(geometry, np.random.default_rng([5, APPEARANCE, subject]))
        for clip, label in enumerate(clip_labels(5, subject, 3)):
            spec = clip_spec(5, subject, clip, label)
            out.append((spec, render_clip(neutral, geometry, spec)))
    return out


def test_spots_the_synthetic_apex(clips):
    errors = []
    for spec, frames in clips:
        spot = spot_apex(frames, crop="center")
        assert spot.curve.shape == spot.smoothed.shape == (spec.num_frames,)
        assert spot.curve[0] == 0.0 and 1 <= spot.index < spec.num_frames
        assert spot.index == int(np.argmax(spot.smoothed[1:])) + 1
        errors.append(abs(spot.index - spec.apex_index))
    assert np.median(errors) <= 1 and max(errors) <= 2, errors


def test_detrending_removes_linear_head_drift(clips):
    """A strong head drift grows to the last frame; without detrending it wins the argmax."""
    spec, _ = clips[0]
    geometry = subject_geometry(5, 0, 64)
    neutral = render_neutral(geometry, np.random.default_rng([5, APPEARANCE, 0]))
    drift = dataclasses.replace(spec, head=(1.5, 1.0, 0.02, 0.02), noise_sigma=0.3)
    frames = render_clip(neutral, geometry, drift)
    assert abs(spot_apex(frames, crop="center").index - spec.apex_index) <= 1
    no_detrend = spot_apex(frames, crop="center", settings=SpotSettings(detrend=False))
    assert no_detrend.index == spec.num_frames - 1


def test_gray_and_rgb_frames_agree_and_dis_works(clips):
    spec, frames = clips[1]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    rgb_spot, gray_spot = spot_apex(frames, crop="center"), spot_apex(gray, crop="center")
    np.testing.assert_array_equal(rgb_spot.curve, gray_spot.curve)
    dis = spot_apex(frames, crop="none", settings=SpotSettings(flow_method="dis", work_size=32))
    assert dis.box == (0, 0, 64, 64) and abs(dis.index - spec.apex_index) <= 3


def test_smoothing_and_score():
    bump = np.array([0, 1, 3, 4, 3, 1, 0], np.float32)
    np.testing.assert_allclose(smooth_curve(np.full(9, 2.0), 1.0), 2.0, rtol=1e-6)
    assert int(np.argmax(smooth_curve(bump, 1.0))) == 3
    np.testing.assert_array_equal(smooth_curve(bump, 0.0), bump)
    flow = np.zeros((16, 16, 2), np.float32)
    flow[..., 0] = 0.7  # a translation: no strain, magnitude 0.7
    assert motion_score(flow, "strain", 0.5) == pytest.approx(0.0, abs=1e-6)
    assert motion_score(flow, "magnitude", 0.5) == pytest.approx(0.7)


def test_bad_input_is_refused(clips):
    _, frames = clips[0]
    with pytest.raises(ValueError, match="at least 2 frames"):
        spot_apex(frames[:1], crop="center")
    with pytest.raises(ValueError, match="frame 2 is 32x32 but frame 0 is 64x64"):
        spot_apex([frames[0], frames[1], frames[2][:32, :32]], crop="center")
    for bad in (
        dict(flow_method="sift"),
        dict(score="max"),
        dict(work_size=4),
        dict(top_fraction=0.0),
        dict(smooth_sigma=-1.0),
    ):
        with pytest.raises(ValueError):
            spot_apex(frames, crop="center", settings=SpotSettings(**bad))


def test_settings_parse():
    parsed = SpotSettings.parse("flow_method=dis, work_size=32,detrend=false,smooth_sigma=2")
    assert parsed == SpotSettings(flow_method="dis", work_size=32, detrend=False, smooth_sigma=2.0)
    assert SpotSettings.parse("") == SpotSettings()
    for bad, message in (
        ("foo=1", "expected NAME=VALUE"),
        ("work_size", "expected NAME=VALUE"),
        ("work_size=x", "not of type int"),
        ("detrend=maybe", "not of type bool"),
        ("work_size=2", "work_size must be in"),
    ):
        with pytest.raises(ValueError, match=message):
            SpotSettings.parse(bad)
