"""mjfn_jax.data: Dataset validation and helpers, load_dataset order and errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mjfn_jax.data import Dataset, load_dataset

NAMES = ("negative", "positive", "surprise")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arrays(n=6, size=8):
    rng = np.random.default_rng(0)
    return dict(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=np.arange(n, dtype=np.int32) % 3,
        subjects=np.asarray([f"smic/s{i % 2:02d}" for i in range(n)]),
        sources=np.asarray(["smic"] * n),
        clips=np.asarray([f"c{i}" for i in range(n)]),
        class_names=NAMES,
    )


def test_valid_dataset_and_helpers():
    data = Dataset(**arrays())
    assert len(data) == 6 and data.num_classes == 3
    assert list(data.unique_subjects()) == ["smic/s00", "smic/s01"]
    assert data.class_counts() == {"negative": 2, "positive": 2, "surprise": 2}
    part = data.take([5, 0])
    assert list(part.clips) == ["c5", "c0"] and part.images.shape == (2, 8, 8, 3)


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("images", np.zeros((6, 8, 8, 3), np.float32), TypeError, "uint8"),
        ("images", np.zeros((6, 8, 8), np.uint8), ValueError, r"\[N, H, W, 3\]"),
        ("labels", np.zeros(6, np.int64), TypeError, "int32"),
        ("labels", np.zeros(5, np.int32), ValueError, r"labels: expected shape \[6\]"),
        ("labels", np.full(6, 3, np.int32), ValueError, r"\[0, 3\)"),
        ("subjects", np.asarray(["a"] * 5), ValueError, "subjects"),
        ("clips", np.arange(6), TypeError, "clips"),
        ("class_names", ["a", "b", "c"], ValueError, "tuple"),
        ("class_names", ("a", "a", "b"), ValueError, "unique"),
    ],
)
def test_invalid_fields_are_named(field, value, error, message):
    with pytest.raises(error, match=message):
        Dataset(**{**arrays(), field: value})


def test_from_arrays_prefixes_and_converts():
    a = arrays()
    data = Dataset.from_arrays(
        a["images"],
        a["labels"].astype(np.int64),
        ["s01", "s02"] * 3,
        list(NAMES),
        source="synthetic",
    )
    assert data.labels.dtype == np.int32
    assert set(data.subjects) == {"synthetic/s01", "synthetic/s02"}
    assert set(data.sources) == {"synthetic"} and data.clips[0] == "clip0"
    with pytest.raises(TypeError, match="uint8"):
        Dataset.from_arrays(a["images"] / 255.0, a["labels"], a["subjects"], NAMES)


def test_missing_dataset_prints_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="mjfn-build build megc2019/tvl1_112"):
        load_dataset("megc2019", "tvl1_112", tmp_path)


def test_load_sorted_and_matches_records(tmp_path):
    from data_builders.build import build_dataset, make_builder

    build_dataset("synthetic/farneback_32", data_dir=tmp_path, workers=1,
                  builder_kwargs={"synthetic": {"num_subjects": 3, "clips_per_subject": 2,
                                                "frame_size": 64}})  # fmt: skip
    data = load_dataset("synthetic", "farneback_32", tmp_path)
    keys = list(zip(data.subjects, data.clips, strict=True))
    assert keys == sorted(keys) and len(keys) == 6
    assert list(data.unique_subjects()) == ["synthetic/s01", "synthetic/s02", "synthetic/s03"]
    source = make_builder("synthetic", builder_config="farneback_32", data_dir=tmp_path)
    for record in source.as_data_source("train"):
        row = keys.index((record["subject"].decode(), record["clip"].decode()))
        np.testing.assert_array_equal(data.images[row], record["flow_image"])  # same RGB image
        assert data.labels[row] == record["label"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_dataset("synthetic", "farneback_32", tmp_path, split="test")
    assert data.preprocessing["flow_method"] == "farneback" and data.preprocessing["size"] == 32
    assert data.preprocessing["crop"] == {"center": 6}

    # Copied elsewhere, it loads from another folder in a process that cannot import the
    # builders: the library reads what the builders wrote, by directory.
    copy = tmp_path / "elsewhere" / "tfds"
    shutil.copytree(tmp_path / "synthetic", copy / "synthetic")
    blocker = tmp_path / "blocked" / "data_builders"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('data_builders is blocked here')\n")
    code = (
        "import sys; from mjfn_jax.data import load_dataset\n"
        f"d = load_dataset('synthetic', 'farneback_32', {str(copy)!r})\n"
        "assert not any(m.startswith('data_builders') for m in sys.modules)\n"
        "print(len(d), d.subjects[0], d.images.sum())"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocked"), REPO]))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "elsewhere", env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["6", "synthetic/s01", str(data.images.sum())]


def test_from_synthetic_arrays_uses_canonical_subjects_and_keeps_clips():
    from mjfn_jax.synthetic import make_flow_arrays

    arrays = make_flow_arrays(2, 2, 16, 0)
    data = Dataset.from_synthetic_arrays(arrays)
    assert len(data) == len(arrays["labels"]) == 4
    assert set(data.subjects) == {"synthetic/s01", "synthetic/s02"}
    assert set(data.sources) == {"synthetic"}
    np.testing.assert_array_equal(data.clips, np.asarray(arrays["clips"]).astype(str))
    np.testing.assert_array_equal(data.labels, arrays["labels"])
    assert data.class_names == tuple(arrays["class_names"])
