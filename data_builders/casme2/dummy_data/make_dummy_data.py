"""Generates a tiny CASME II-like manual folder (layout and workbook quirks; pixels are noise).

Usage: python -m data_builders.casme2.dummy_data.make_dummy_data OUT_DIR [--layout raw|cropped]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import openpyxl

from data_builders.dummy_frames import write_clip

HEADER = ("Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
          "Action Units", "Estimated Emotion")  # fmt: skip
# (subject cell, clip, onset cell, apex cell, offset cell, AUs, emotion cell): subjects as text
# or number, frames as number or text, apex "/" and apex == onset, AUs mixed, an emotion outside
# the task (fear, sadness), an unknown one and a missing one.
ROWS = (
    ("01", "EP01_01f", 10, 12, 14, 12, "happiness"),
    ("01", "EP01_02f", "20", "22", "24", "1+2", "surprise"),
    ("01", "EP01_03f", 5, 7, 9, "4+7", "disgust"),
    ("01", "EP01_04f", 30, 32, 34, "R2+15", "repression"),
    ("01", "EP01_05f", 40, 42, 44, 4, "others"),
    (2, "EP02_01f", 11, 13, 15, "6+12", "happiness"),
    (2, "EP02_02f", 50, "/", 54, "4+7", "disgust"),
    (2, "EP02_03f", 60, 60, 64, 14, "repression"),
    (2, "EP02_04f", 70, 72, 74, "4+9", "fear"),
    (2, "EP02_05f", 80, 82, 84, 15, "sadness"),
    (3.0, "EP03_01f", 90, 92, 94, "1+2", "surprise"),
    ("03", "EP03_02f", 100, 102, 104, "L10", "others"),
    ("03", "EP03_03f", 110, 112, 114, 12, "boredom"),
    ("03", "EP03_04f", 120, 122, 124, 12, None),
    ("03", "EP03_05f", 130, 132, 134, "9", "Disgust"),
)


def _int(cell) -> int | None:
    text = str(cell).strip()
    return int(float(text)) if text.replace(".", "", 1).isdigit() else None


def make(out_dir: str | Path, *, layout: str = "raw", size: int = 64, seed: int = 0) -> list[dict]:
    """Writes the workbook and frames into out_dir; returns the rows as plain dicts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(HEADER)
    for subject, clip, onset, apex, offset, aus, emotion in ROWS:
        sheet.append((subject, clip, None, onset, apex, offset, None, aus, emotion))
    sheet.append((None,) * len(HEADER))  # trailing empty row, as spreadsheets often have
    workbook.save(out / "CASME2-coding-20140508.xlsx")
    folder, prefix = {"raw": ("CASME2-RAW", "img"), "cropped": ("Cropped", "reg_img")}[layout]
    rng = np.random.default_rng(seed)
    rows = []
    for subject, clip, onset, apex, offset, _, emotion in ROWS:
        sub = f"sub{int(float(subject)):02d}"
        first, last = _int(onset), _int(offset)
        write_clip(
            out / folder / sub / clip,
            range(first, last + 1),
            lambda k, p=prefix: f"{p}{k}.jpg",
            rng,
            size=size,
        )
        rows.append(
            dict(
                subject=f"casme2/{sub}",
                clip=clip,
                onset=first,
                apex=_int(apex),
                offset=last,
                emotion=(emotion or "").lower() or None,
            )
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--layout", choices=("raw", "cropped"), default="raw")
    args = parser.parse_args()
    print(f"{len(make(args.out_dir, layout=args.layout))} rows written to {args.out_dir}")
