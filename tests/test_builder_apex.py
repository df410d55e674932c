"""Builders' --apex annotated|spotted|middle (data_builders.apex) on generated synthetic frames."""

from __future__ import annotations

import dataclasses

import pytest

from data_builders.apex import choose_apexes, clip_frames, format_apex
from data_builders.build import build_dataset, format_summary
from data_builders.skips import SkipLog
from data_builders.synthetic.synthetic_dataset_builder import generate, list_synthetic

SYNTHETIC = {"num_subjects": 2, "clips_per_subject": 3, "frame_size": 64, "seed": 0}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The synthetic builder's clip specs (onset..offset frames on disk, annotated apex)."""
    root = generate(tmp_path_factory.mktemp("raw"), **SYNTHETIC)
    return list_synthetic(root, SkipLog())


def test_annotated_is_the_default_and_changes_nothing(clips):
    assert choose_apexes(clips, "annotated") == (clips, {"mode": "annotated"})
    with pytest.raises(ValueError, match="apex must be one of"):
        choose_apexes(clips, "peak")


def test_middle_and_spotted(clips):
    middle, info = choose_apexes(clips, "middle", workers=1)
    assert info == {"mode": "middle"}
    for clip, new in zip(clips, middle, strict=True):
        numbers = [n for n, _ in clip_frames(clip)]
        assert numbers == list(range(clip.onset_frame, clip.offset_frame + 1))
        assert new.apex_frame == numbers[len(numbers) // 2]
        assert new.apex_path.endswith(f"img{new.apex_frame}.png")
    spotted, info = choose_apexes(clips, "spotted", workers=1)
    stats = info["spotted_vs_annotated"]
    assert stats["clips"] == len(clips) and stats["median"] <= 1 and stats["max"] <= 3
    errors = [abs(s.apex_frame - c.apex_frame) for s, c in zip(spotted, clips, strict=True)]
    assert max(errors) == stats["max"]
    # A source without annotated apexes (SMIC) is spotted but not compared.
    smic = [dataclasses.replace(c, source="smic") for c in clips]
    _, info = choose_apexes(smic, "spotted", workers=1)
    assert info["spotted_vs_annotated"] == {"clips": 0}
    assert "no annotated apex to compare with" in format_apex(info)


def test_spotted_build_reports_the_error(tmp_path):
    name, kwargs = "synthetic/farneback_32", {"synthetic": SYNTHETIC}
    summary = build_dataset(
        name, data_dir=tmp_path, workers=1, apex="spotted", builder_kwargs=kwargs
    )
    assert summary["num_examples"]["train"] == 6
    stats = summary["apex"]["spotted_vs_annotated"]
    assert stats["clips"] == 6 and stats["median"] <= 1
    text = format_summary(summary)
    assert "apex: spotted; |spotted - annotated| over 6 clips: median" in text
    with pytest.raises(ValueError, match="built with --apex spotted, not annotated"):
        build_dataset(name, data_dir=tmp_path, workers=1, builder_kwargs=kwargs)


def test_cli_accepts_apex():
    from data_builders.__main__ import parse_args

    assert parse_args(["build", "smic", "--data_dir", "d"]).apex == "annotated"
    assert parse_args(["build", "smic", "--data_dir", "d", "--apex", "spotted"]).apex == "spotted"
    with pytest.raises(SystemExit):
        parse_args(["build", "smic", "--data_dir", "d", "--apex", "peak"])


def test_real_layouts_are_spotted_or_kept(tmp_path):
    """CASME II (jpg frames, official crop): spotted and compared. SMIC raw frames with the
    Haar crop on the dummy textures: no face, so the clips keep their apex and are counted."""
    from data_builders.casme2.casme2_dataset_builder import FIVE_CLASS, list_casme2
    from data_builders.casme2.dummy_data import make_dummy_data as casme2_dummy
    from data_builders.smic.dummy_data import make_dummy_data as smic_dummy
    from data_builders.smic.smic_dataset_builder import CLASS_NAMES, list_smic

    casme2_dummy.make(tmp_path / "casme2", layout="cropped")
    casme2 = list_casme2(tmp_path / "casme2", FIVE_CLASS, SkipLog())
    spotted, info = choose_apexes(casme2, "spotted", workers=1)
    assert info["spotted_vs_annotated"]["clips"] == len(casme2) and info["not_spotted"] == 0
    for clip, new in zip(casme2, spotted, strict=True):
        assert clip.onset_frame < new.apex_frame <= clip.offset_frame
    smic_dummy.make(tmp_path / "smic", layout="raw")
    smic = list_smic(tmp_path / "smic", {c: c for c in CLASS_NAMES}, SkipLog())
    kept, info = choose_apexes(smic, "spotted", workers=1)
    assert kept == smic and info["not_spotted"] == len(smic)
    assert f"{len(smic)} clip(s) kept their apex" in format_apex(info)
