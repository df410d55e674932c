"""The five TFDS builders on dummy data made by their own scripts: build, read back, check.

Each dummy dataset is built once per session (tiny frames, small configs). Expected counts are
derived here from the rows each fixture script wrote, with the rules written out again below.
"""

from __future__ import annotations

import collections
import csv
import re

import numpy as np
import pytest

from data_builders.build import build_dataset, make_builder
from data_builders.casme2.dummy_data import make_dummy_data as casme2_dummy
from data_builders.megc2019.dummy_data import make_dummy_data as megc2019_dummy
from data_builders.samm.dummy_data import make_dummy_data as samm_dummy
from data_builders.smic.dummy_data import make_dummy_data as smic_dummy
from mjfn_jax.data import load_dataset

CONFIG = "farneback_32"
SIZE = 32
SYNTHETIC = {"num_subjects": 2, "clips_per_subject": 3, "frame_size": 64}
CASME2_5 = ("happiness", "surprise", "disgust", "repression", "others")
SAMM_5 = ("anger", "contempt", "happiness", "surprise", "other")
# The composite rules of docs/datasets.md#megc2019-composite, restated independently of the
# builder code.
CASME2_3 = {"disgust": "negative", "repression": "negative", "happiness": "positive",
            "surprise": "surprise"}  # fmt: skip
SAMM_3 = {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
          "sadness": "negative", "happiness": "positive", "surprise": "surprise"}  # fmt: skip


def usable_sheet_rows(rows, label_map):
    """Rows with an emotion of the task and a usable apex (a number, not the onset)."""
    return [
        (r, label_map[r["emotion"]])
        for r in rows
        if r["emotion"] in label_map and r["apex"] is not None and r["apex"] != r["onset"]
    ]


def usable_smic(rows):
    return [(r, r["emotion"]) for r in rows if len(r["frames"]) >= 2]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """name -> (rows written by the dummy script, build summary, data_dir); built once."""
    root = tmp_path_factory.mktemp("builders")
    data_dir = root / "tfds"
    out = {}
    rows = casme2_dummy.make(root / "casme2", layout="cropped")
    out["casme2"] = (
        rows,
        build_dataset(f"casme2/{CONFIG}", data_dir=data_dir, manual_dir=root / "casme2", workers=1),
    )
    rows = samm_dummy.make(root / "samm")
    out["samm"] = (
        rows,
        build_dataset(
            "samm",
            builder_config=CONFIG,
            data_dir=data_dir,
            manual_dir=root / "samm",
            workers=1,
            crop="center",
        ),
    )
    rows = smic_dummy.make(root / "smic", layout="raw")
    out["smic"] = (
        rows,
        build_dataset(
            f"smic/{CONFIG}", data_dir=data_dir, manual_dir=root / "smic", workers=2, crop="center"
        ),
    )
    rows = megc2019_dummy.make(root / "megc2019")
    out["megc2019"] = (
        rows,
        build_dataset(
            f"megc2019/{CONFIG}",
            data_dir=data_dir,
            manual_dir=root / "megc2019",
            workers=1,
            crop="center",
        ),
    )
    summary = build_dataset(
        f"synthetic/{CONFIG}", data_dir=data_dir, workers=1, builder_kwargs={"synthetic": SYNTHETIC}
    )
    annotation = next((data_dir / "downloads" / "synthetic_raw").glob("*/annotations.csv"))
    with open(annotation) as f:
        out["synthetic"] = (list(csv.DictReader(f)), summary)
    return {name: (rows, summary, data_dir) for name, (rows, summary) in out.items()}


def check_dataset(name, built, expected):
    """expected: [(row, class name)]; checks counts per class, subjects and clip ids."""
    _, summary, data_dir = built[name]
    data = load_dataset(name, CONFIG, data_dir)
    want = collections.Counter(label for _, label in expected)
    assert data.class_counts() == {c: want.get(c, 0) for c in data.class_names}
    assert summary["class_counts"]["train"] == data.class_counts()
    assert summary["num_examples"]["train"] == len(expected)
    assert sorted(zip(data.subjects, data.clips, strict=True)) == sorted(
        (r["subject"], r["clip"]) for r, _ in expected
    )
    assert data.images.shape == (len(expected), SIZE, SIZE, 3) and data.images.dtype == np.uint8
    return data


def test_casme2_counts_skips_and_crop(built):
    rows, summary, _ = built["casme2"]
    expected = usable_sheet_rows(rows, {c: c for c in CASME2_5})
    data = check_dataset("casme2", built, expected)
    assert data.class_names == CASME2_5
    assert all(re.fullmatch(r"casme2/sub\d\d", s) for s in data.subjects)
    assert summary["crop"] == {"none": len(expected)}  # the official Cropped/ set: no re-crop
    skipped = summary["skipped"]
    assert skipped["apex not a number"] == sum(r["apex"] is None for r in rows)
    assert skipped["apex equals onset"] == sum(r["apex"] == r["onset"] for r in rows)
    assert skipped["emotion not in task: fear"] == 1
    assert skipped["unknown emotion: boredom"] == 1
    assert sum(skipped.values()) == len(rows) - len(expected)


def test_samm_counts_padding_and_subjects(built):
    rows, summary, _ = built["samm"]
    expected = usable_sheet_rows(rows, {c: c for c in SAMM_5})
    data = check_dataset("samm", built, expected)
    assert data.class_names == SAMM_5
    assert set(data.unique_subjects()) == {"samm/006", "samm/007", "samm/008"}
    assert "samm/006" in set(data.subjects[data.clips == "006_1_3"])  # 4-digit padded frames
    assert sum(summary["skipped"].values()) == len(rows) - len(expected)


def test_smic_counts_apex_and_canonical_ids(built):
    rows, summary, data_dir = built["smic"]
    expected = usable_smic(rows)
    data = check_dataset("smic", built, expected)
    assert set(data.unique_subjects()) == {"smic/s01", "smic/s03", "smic/s12"}
    assert "s01_ne_01" in set(data.clips) and "s12_sur_01" in set(data.clips)
    assert summary["skipped"] == {"fewer than 2 frames": 1}
    records = make_builder("smic", builder_config=CONFIG, data_dir=data_dir).as_data_source("train")
    frames = {(r["subject"], r["clip"]): r["frames"] for r, _ in expected}
    for record in records:
        numbers = frames[(record["subject"].decode(), record["clip"].decode())]
        assert record["onset_frame"] == numbers[0] and record["offset_frame"] == numbers[-1]
        assert record["apex_frame"] == numbers[len(numbers) // 2]  # the middle frame


def test_megc2019_composite_rules(built):
    rows, summary, _ = built["megc2019"]
    expected = (
        usable_smic(rows["smic"])
        + usable_sheet_rows(rows["casme2"], CASME2_3)
        + usable_sheet_rows(rows["samm"], SAMM_3)
    )
    data = check_dataset("megc2019", built, expected)
    assert data.class_names == ("negative", "positive", "surprise")
    assert set(data.sources) == {"smic", "casme2", "samm"}
    assert all(s.startswith(f"{src}/") for s, src in zip(data.subjects, data.sources, strict=True))
    assert summary["skipped"]["casme2: emotion not in task: others"] == 2
    assert summary["skipped"]["samm: emotion not in task: other"] == 1


def test_synthetic_counts(built):
    rows, summary, _ = built["synthetic"]
    expected = [
        (dict(subject=f"synthetic/{r['subject']}", clip=r["clip"]), r["emotion"]) for r in rows
    ]
    data = check_dataset("synthetic", built, expected)
    assert len(data) == SYNTHETIC["num_subjects"] * SYNTHETIC["clips_per_subject"]
    assert summary["crop"] == {"center": len(data)} and summary["skipped"] == {}


def test_features_shapes_dtypes_and_ids(built):
    rows, _, data_dir = built["casme2"]
    by_clip = {(r["subject"], r["clip"]): r for r in rows}
    source = make_builder("casme2", builder_config=CONFIG, data_dir=data_dir).as_data_source()
    for record in source["train"]:
        for key in ("flow_image", "onset", "apex"):
            assert record[key].shape == (SIZE, SIZE, 3) and record[key].dtype == np.uint8
        assert record["flow"].shape == (SIZE, SIZE, 2) and record["flow"].dtype == np.float32
        row = by_clip[(record["subject"].decode(), record["clip"].decode())]
        assert (record["onset_frame"], record["apex_frame"]) == (row["onset"], row["apex"])
        assert record["emotion"].decode() == row["emotion"]
        assert record["source"].decode() == "casme2"
        # Dummy frames drift right by 0.5 px per frame: the mean u flow must be positive.
        assert record["flow"][..., 0].mean() > 0.2


def test_second_build_is_reused(built):
    _, first, data_dir = built["casme2"]
    again = build_dataset(f"casme2/{CONFIG}", data_dir=data_dir)  # no --manual_dir: reused
    assert again["status"].startswith("already built")
    assert again["class_counts"] == first["class_counts"]
    assert again["skipped"] == first["skipped"]


def test_no_face_found_is_a_counted_skip(tmp_path):
    from data_builders.common import generate_examples
    from data_builders.dummy_frames import write_clip
    from data_builders.flow_worker import ClipSpec
    from data_builders.skips import SkipLog

    write_clip(tmp_path, [1, 2], lambda k: f"img{k}.png", np.random.default_rng(0))
    clip = ClipSpec(
        "casme2",
        "casme2/sub01",
        "EP01",
        "happiness",
        "happiness",
        1,
        2,
        2,
        str(tmp_path / "img1.png"),
        str(tmp_path / "img2.png"),
        crop="haar",
    )
    skips = SkipLog()
    examples = list(
        generate_examples(
            [clip], flow_method="farneback", size=32, workers=1, skips=skips, desc="test"
        )
    )
    assert examples == []
    assert list(skips.counts) == ["no face found"]


def test_parse_int_cells():
    from data_builders.parsing import parse_int

    assert [parse_int(v) for v in (46, 46.0, "46", " 46 ", "46.0")] == [46] * 5
    assert [parse_int(v) for v in ("/", "", None, 4.5, "12+3", True)] == [None] * 6


def test_unknown_names_are_errors(tmp_path):
    with pytest.raises(ValueError, match="tvl1_112"):
        build_dataset("casme2/tvl1_999", data_dir=tmp_path)
    with pytest.raises(ValueError, match="megc2019"):
        build_dataset("casme3", data_dir=tmp_path)


def test_cli_prints_the_summary(built, capsys):
    from data_builders.__main__ import main

    _, summary, data_dir = built["smic"]
    assert main(["build", f"smic/{CONFIG}", "--data_dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"train: {summary['num_examples']['train']} examples" in printed
    assert "1  fewer than 2 frames" in printed
