"""Builder-side cases of issue 10: bad input gives one line naming the file, row and field (or a
counted, logged skip where the data is known to be broken); a killed build leaves no workers
behind; two builds of the same data give the same bytes.

Fixtures come from the builders' own dummy-data scripts; builds are tiny (farneback_32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openpyxl
import pytest

from data_builders.__main__ import main as cli
from data_builders.casme2 import casme2_dataset_builder as casme2
from data_builders.casme2.dummy_data import make_dummy_data as casme2_dummy
from data_builders.skips import SkipLog

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "farneback_32"
TINY = {"num_subjects": 2, "clips_per_subject": 2, "frame_size": 64}
WORKBOOK = "CASME2-coding-20140508.xlsx"
# Columns of the CASME II dummy workbook (1-based, as openpyxl counts).
FILENAME, ONSET, APEX, OFFSET = 2, 4, 5, 6


def edit_workbook(folder: Path, edits: dict[tuple[int, int], object], append=None) -> Path:
    """Sets cells {(row, column): value} of the dummy CASME II workbook; appends a row."""
    path = folder / WORKBOOK
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.active
    for (row, column), value in edits.items():
        sheet.cell(row=row, column=column, value=value)
    if append is not None:
        sheet.insert_rows(len(casme2_dummy.ROWS) + 2)
        for column, value in enumerate(append, start=1):
            sheet.cell(row=len(casme2_dummy.ROWS) + 2, column=column, value=value)
    workbook.save(path)
    return path


def run_cli(argv: list[str], capsys) -> tuple[str, str]:
    """Runs the build CLI expecting an expected error: (its one error line, stderr before it)."""
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in message
    return message, capsys.readouterr().err


# Case 5: frame numbers that contradict each other are counted skips with their reason.


def test_inconsistent_frame_numbers_are_counted_skips(tmp_path):
    rows = casme2_dummy.make(tmp_path, layout="cropped")
    # Rows 2..: EP01_01f 10/12/14, EP01_02f 20/22/24, EP01_03f 5/7/9 (onset/apex/offset).
    edit_workbook(tmp_path, {(2, OFFSET): 11, (3, OFFSET): 19, (4, APEX): 4})
    skips = SkipLog()
    clips = casme2.list_casme2(tmp_path, casme2.FIVE_CLASS, skips)
    assert skips.counts["apex after offset"] == 1  # EP01_01f: apex 12 > offset 11
    assert skips.counts["offset before onset"] == 1  # EP01_02f: offset 19 < onset 20
    assert skips.counts["apex before onset"] == 1  # EP01_03f: apex 4 < onset 5
    built = {c.clip for c in clips}
    assert not built & {"EP01_01f", "EP01_02f", "EP01_03f"}
    assert len(clips) + sum(skips.counts.values()) == len(rows)


# Case 6: a clip name that is a path never leaves the manual folder.


@pytest.mark.parametrize("cell", ["../../../outside_clip", "/tmp/outside_clip", "..", "a\\b"])
def test_filename_cell_cannot_leave_the_manual_folder(tmp_path, cell):
    manual = tmp_path / "manual"
    casme2_dummy.make(manual, layout="raw")
    # <manual>/CASME2-RAW/sub01/../../../outside_clip is <tmp_path>/outside_clip: it exists.
    casme2_dummy.write_clip(
        tmp_path / "outside_clip", range(10, 15), lambda k: f"img{k}.jpg", np.random.default_rng()
    )
    sheet = edit_workbook(manual, {(2, FILENAME): cell})
    with pytest.raises(ValueError, match="Filename") as err:
        casme2.list_casme2(manual, casme2.FIVE_CLASS, SkipLog())
    assert f"{sheet} row 2" in str(err.value) and repr(cell) in str(err.value)


def test_path_outside_the_manual_folder_is_refused(tmp_path):
    from data_builders.parsing import inside

    assert inside(tmp_path, tmp_path / "a" / ".." / "b", "x") == tmp_path / "a" / ".." / "b"
    with pytest.raises(ValueError, match="outside the manual folder"):
        inside(tmp_path / "m", tmp_path / "m" / ".." / "other", "clip x")
