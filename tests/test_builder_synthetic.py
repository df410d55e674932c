"""Synthetic raw layout goes through the same row rules as the real sets."""

from __future__ import annotations

import csv

from data_builders.skips import SkipLog
from data_builders.synthetic.dummy_data import make_dummy_data
from data_builders.synthetic.synthetic_dataset_builder import list_synthetic


def test_rows_parsed_and_bad_rows_counted(tmp_path):
    sheet = make_dummy_data.make(tmp_path)
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["apex_frame"] = rows[0]["onset_frame"]  # a broken row must be skipped, not kept
    rows[1]["emotion"] = "contempt"  # not a class of this set: counted as unknown
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    skips = SkipLog()
    clips = list_synthetic(tmp_path, skips)
    assert len(clips) == len(rows) - 2
    assert skips.as_dict() == {"apex equals onset": 1, "unknown emotion: contempt": 1}
    assert {c.subject for c in clips} == {"synthetic/s01", "synthetic/s02"}
    assert all(c.crop == "center" and c.label == c.emotion for c in clips)
