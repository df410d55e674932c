"""SAMM parsing: header found by content, inconsistent frame padding, clear errors."""

from __future__ import annotations

import openpyxl
import pytest

from data_builders.samm import samm_dataset_builder as samm
from data_builders.samm.dummy_data import make_dummy_data
from data_builders.skips import SkipLog


def test_header_after_notes_and_padding(tmp_path):
    rows = make_dummy_data.make(tmp_path)
    skips = SkipLog()
    clips = samm.list_samm(tmp_path, samm.FIVE_CLASS, skips)
    assert len(clips) + sum(skips.counts.values()) == len(rows)
    by_clip = {c.clip: c for c in clips}
    assert by_clip["006_1_2"].onset_path.endswith("006_05562.jpg")  # 5-digit padding
    assert by_clip["006_1_3"].onset_path.endswith("006_0180.jpg")  # 4-digit padding
    assert by_clip["007_3_1"].subject == "samm/007"  # number cell 7
    assert skips.counts["emotion not in task: disgust"] == 1


def test_no_header_row_is_an_error(tmp_path):
    make_dummy_data.make(tmp_path)
    path = tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx"
    workbook = openpyxl.load_workbook(path)
    for row in workbook.active.iter_rows():
        if row[0].value == "Subject":
            row[0].value = "Participant"
    workbook.save(path)
    with pytest.raises(ValueError, match="no header row starting with 'Subject'"):
        samm.list_samm(tmp_path, samm.FIVE_CLASS, SkipLog())


def test_missing_frame_names_clip_and_folder(tmp_path):
    make_dummy_data.make(tmp_path)
    (tmp_path / "SAMM" / "007" / "007_3_1" / "007_03012.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"samm/007/007_3_1.*frame 3012.*007_3_1"):
        samm.list_samm(tmp_path, samm.FIVE_CLASS, SkipLog())


def test_missing_frames_folder_lists_expected(tmp_path):
    make_dummy_data.make(tmp_path)
    (tmp_path / "SAMM").rename(tmp_path / "samm_frames")
    with pytest.raises(FileNotFoundError, match="SAMM/006/006_1_2"):
        samm.list_samm(tmp_path, samm.FIVE_CLASS, SkipLog())
