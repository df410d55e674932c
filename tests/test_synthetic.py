"""Tests of mjfn_jax.synthetic: determinism, raw layout, flow sign convention, class structure."""

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mjfn_jax import synthetic as syn
from mjfn_jax.preprocess import encode_flow, read_frame, resize_flow
from mjfn_jax.synthetic.motion import expression_field


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    path = syn.generate_raw(out, num_subjects=3, clips_per_subject=3, seed=5, workers=1)
    return out, path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_and_annotations(raw):
    out, path = raw
    assert Path(path) == out / "annotations.csv"
    with open(path, newline="") as f:
        assert tuple(next(csv.reader(f))) == syn.ANNOTATION_COLUMNS
    rows = _rows(path)
    assert len(rows) == 9
    assert sorted({r["subject"] for r in rows}) == ["s01", "s02", "s03"]
    for r in rows:
        onset, apex, offset = (int(r[k]) for k in ("onset_frame", "apex_frame", "offset_frame"))
        assert onset < apex < offset and 9 <= offset - onset + 1 <= 15
        assert r["emotion"] in syn.CLASS_NAMES and r["clip"].startswith(r["subject"] + "_")
        frame_dir = out / "frames" / r["subject"] / r["clip"]
        names = sorted(p.name for p in frame_dir.iterdir())
        assert names == sorted(f"img{k}.png" for k in range(onset, offset + 1))  # unpadded
        frame = read_frame(frame_dir / f"img{apex}.png")
        assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
        flow = np.load(out / "true_flow" / r["subject"] / f"{r['clip']}.npy")
        assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    for subject in ("s01", "s02", "s03"):  # 3 clips per subject: one of each class
        emotions = sorted(r["emotion"] for r in rows if r["subject"] == subject)
        assert emotions == sorted(syn.CLASS_NAMES)


def test_true_flow_matches_frames(raw):
    # OpenCV's convention: apex(x + f(x)) = onset(x). Warping the apex back by the recorded flow
    # must explain the onset far better than no motion does.
    out, path = raw
    for r in _rows(path):
        frame_dir = out / "frames" / r["subject"] / r["clip"]
        onset = read_frame(frame_dir / f"img{r['onset_frame']}.png").astype(np.float32)
        apex = read_frame(frame_dir / f"img{r['apex_frame']}.png").astype(np.float32)
        flow = np.load(out / "true_flow" / r["subject"] / f"{r['clip']}.npy")
        grid = np.stack(np.meshgrid(np.arange(128), np.arange(128)), -1).astype(np.float32)
        warped = cv2.remap(apex, grid + flow, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        inner = (slice(8, -8), slice(8, -8))
        moved = np.abs(apex - onset)[inner].mean()
        explained = np.abs(warped - onset)[inner].mean()
        wrong_sign = np.abs(cv2.remap(apex, grid - flow, None, cv2.INTER_CUBIC) - onset)[inner]
        assert explained < moved and explained < wrong_sign.mean()


def test_deterministic_and_seed_dependent(raw, tmp_path):
    out, _ = raw
    again = syn.generate_raw(
        tmp_path / "again", num_subjects=3, clips_per_subject=3, seed=5, workers=2
    )  # the worker count must not change a byte
    assert _digest(Path(again).parent) == _digest(out)
    other = syn.generate_raw(
        tmp_path / "other", num_subjects=3, clips_per_subject=3, seed=6, workers=1
    )
    assert Path(other).read_bytes() != (out / "annotations.csv").read_bytes()
    first = Path(other).parent / "true_flow" / "s01" / "s01_01.npy"
    assert not np.array_equal(np.load(first), np.load(out / "true_flow" / "s01" / "s01_01.npy"))


def test_make_flow_arrays_encodes_the_raw_true_flows(raw):
    out, path = raw
    arrays = syn.make_flow_arrays(3, 3, size=48, seed=5)
    assert arrays["images"].shape == (9, 48, 48, 3) and arrays["images"].dtype == np.uint8
    assert arrays["labels"].dtype == np.int32 and arrays["class_names"] == syn.CLASS_NAMES
    for i, r in enumerate(_rows(path)):
        assert (arrays["subjects"][i], arrays["clips"][i]) == (r["subject"], r["clip"])
        assert syn.CLASS_NAMES[arrays["labels"][i]] == r["emotion"]
        flow = np.load(out / "true_flow" / r["subject"] / f"{r['clip']}.npy")
        np.testing.assert_array_equal(arrays["images"][i], encode_flow(resize_flow(flow, 48)))


def test_make_flow_arrays_uneven_composite_scale():
    arrays = syn.make_flow_arrays(68, None, size=32, seed=0, num_samples=442)
    assert arrays["images"].shape == (442, 32, 32, 3)
    subjects, counts = np.unique(arrays["subjects"], return_counts=True)
    assert len(subjects) == 68 and set(counts) == {6, 7} and subjects[0] == "s01"
    assert len(set(arrays["clips"])) == 442
    per_class = np.bincount(arrays["labels"], minlength=3)
    assert per_class.min() >= 140 and per_class.sum() == 442  # balanced-ish
    with pytest.raises(ValueError, match="num_samples"):
        syn.make_flow_arrays(10, None, size=32, num_samples=5)


def test_clip_amplitudes_and_profiles():
    for subject in range(6):
        for clip, label in enumerate(syn.clip_labels(0, subject, 9)):
            spec = syn.clip_spec(0, subject, clip, label)
            levels = np.array(list(spec.aus.values()))
            assert levels.min() >= 0.0 and levels.max() <= 2.0
            assert 9 <= spec.num_frames <= 15 and 0 < spec.apex_index < spec.num_frames - 1
            peak = np.linalg.norm(syn.true_flow(syn.subject_geometry(0, subject), spec), axis=-1)
            assert 0.05 < peak.max() < 3.0  # a few tenths of a pixel to ~2 px at 128 px


def test_classes_differ_by_where_motion_happens():
    upper = {c: [] for c in range(3)}
    for subject in range(8):
        geometry = syn.subject_geometry(1, subject)
        nose = int(geometry.nose_y) + geometry.size // 8  # canvas rows are frame rows + pad
        for clip, label in enumerate(syn.clip_labels(1, subject, 6)):
            energy = np.linalg.norm(
                expression_field(geometry, syn.clip_spec(1, subject, clip, label)), axis=-1
            )
            upper[label].append(energy[:nose].sum() / energy.sum())
    surprise, positive = np.mean(upper[2]), np.mean(upper[1])
    assert surprise > 0.6 and positive < 0.4  # brows vs mouth and cheeks


def _loso_nearest_centroid(images, labels, subjects):
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    predictions = np.empty_like(labels)
    for subject in np.unique(subjects):
        test = subjects == subject
        centroids = np.stack([x[~test & (labels == c)].mean(0) for c in range(3)])
        predictions[test] = ((x[test, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predictions == labels).mean())


def test_learnable_but_not_trivial():
    arrays = syn.make_flow_arrays(24, 6, size=32, seed=3)
    accuracy = _loso_nearest_centroid(arrays["images"], arrays["labels"], arrays["subjects"])
    assert 0.55 < accuracy < 0.97  # chance is 1/3; measured ~0.8 on true flows
