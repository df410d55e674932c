"""CASME II bad input: every problem is an error naming what was expected, or a counted skip."""

from __future__ import annotations

import openpyxl
import pytest

from data_builders.build import build_dataset
from data_builders.casme2 import casme2_dataset_builder as casme2
from data_builders.casme2.dummy_data import make_dummy_data
from data_builders.skips import SkipLog

FIVE = casme2.FIVE_CLASS


def test_missing_manual_folder_lists_expected_layout(tmp_path):
    with pytest.raises(Exception, match="CASME2-RAW") as err:
        build_dataset("casme2/farneback_32", data_dir=tmp_path / "d", manual_dir=tmp_path / "no")
    assert "xlsx" in str(err.value)


def test_misnamed_frames_folder_lists_expected_names(tmp_path):
    make_dummy_data.make(tmp_path, layout="raw")
    (tmp_path / "CASME2-RAW").rename(tmp_path / "CASME2_raw_frames")
    with pytest.raises(FileNotFoundError, match="CASME2-RAW.*Cropped.*CASME2_raw_frames"):
        casme2.list_casme2(tmp_path, FIVE, SkipLog())


def test_no_workbook_is_an_error(tmp_path):
    make_dummy_data.make(tmp_path, layout="raw")
    (tmp_path / "CASME2-coding-20140508.xlsx").unlink()
    with pytest.raises(FileNotFoundError, match=r"exactly one \*\.xlsx"):
        casme2.list_casme2(tmp_path, FIVE, SkipLog())


def test_missing_frame_names_clip_and_path(tmp_path):
    make_dummy_data.make(tmp_path, layout="raw")
    missing = tmp_path / "CASME2-RAW" / "sub01" / "EP01_02f" / "img22.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="casme2/sub01/EP01_02f") as err:
        casme2.list_casme2(tmp_path, FIVE, SkipLog())
    assert str(missing) in str(err.value)


def test_unreadable_image_names_the_file(tmp_path):
    make_dummy_data.make(tmp_path / "m", layout="raw")
    broken = tmp_path / "m" / "CASME2-RAW" / "sub01" / "EP01_01f" / "img12.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=str(broken)):
        build_dataset(
            "casme2/farneback_32",
            data_dir=tmp_path / "d",
            manual_dir=tmp_path / "m",
            workers=1,
            crop="center",
        )


def test_missing_header_column_is_named(tmp_path):
    make_dummy_data.make(tmp_path, layout="raw")
    path = tmp_path / "CASME2-coding-20140508.xlsx"
    workbook = openpyxl.load_workbook(path)
    workbook.active["E1"] = "Peak"  # was ApexFrame
    workbook.save(path)
    with pytest.raises(ValueError, match="apexframe"):
        casme2.list_casme2(tmp_path, FIVE, SkipLog())


def test_row_rules_count_every_skip(tmp_path):
    rows = make_dummy_data.make(tmp_path, layout="cropped")
    skips = SkipLog()
    clips = casme2.list_casme2(tmp_path, FIVE, skips)
    assert len(clips) + sum(skips.counts.values()) == len(rows)
    assert skips.counts["missing or invalid cell (subject, filename, onset or emotion)"] == 1
    assert {c.subject for c in clips} == {"casme2/sub01", "casme2/sub02", "casme2/sub03"}
    assert all(c.crop == "none" and "reg_img" in c.apex_path for c in clips)
    # Text and number cells give the same frame numbers.
    assert any(c.clip == "EP01_02f" and c.onset_frame == 20 and c.apex_frame == 22 for c in clips)
