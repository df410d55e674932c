"""Generates a tiny SAMM-like manual folder (notes rows before the header, inconsistent frame
zero padding, grayscale frames; pixels are noise).

Usage: python -m data_builders.samm.dummy_data.make_dummy_data OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import openpyxl

from data_builders.dummy_frames import write_clip

HEADER = (
    "Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
    "Duration", "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes",
)  # fmt: skip
# (subject cell, clip, onset, apex, offset, emotion, frame-number padding in the file names)
ROWS = (
    ("006", "006_1_2", 5562, 5564, 5566, "Anger", 5),
    ("006", "006_1_3", 180, 182, 184, "Contempt", 4),
    ("006", "006_2_1", 1200, 1202, 1204, "Happiness", 4),
    (7, "007_3_1", 3010, 3012, 3014, "Surprise", 5),
    (7, "007_3_2", 90, 92, 94, "Other", 4),
    (7, "007_4_1", 400, 402, 404, "Disgust", 5),
    ("008", "008_1_1", 700, 702, 704, "Fear", 4),
    ("008", "008_2_1", 800, 802, 804, "Sadness", 4),
    ("008", "008_3_1", 900, 902, 904, "Anger", 5),
    ("008", "008_4_1", 1000, 1002, 1004, "Happiness", 4),
    ("008", "008_5_1", 1100, 1100, 1104, "Anger", 4),
)


def make(out_dir: str | Path, *, size: int = 64, seed: int = 0) -> list[dict]:
    """Writes the workbook and frames into out_dir; returns the rows as plain dicts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(("SAMM: Spontaneous Micro-Facial Movement dataset",))
    for i in range(12):  # about 13 rows of notes come before the header
        sheet.append((f"Note {i + 1}: coding conventions ...",) if i % 3 else (None,))
    sheet.append(HEADER)
    rng = np.random.default_rng(seed)
    rows = []
    for subject, clip, onset, apex, offset, emotion, pad in ROWS:
        aus = "R14" if onset % 2 else "4+7"
        sheet.append(
            (
                subject,
                clip,
                "2_1",
                onset,
                apex,
                offset,
                offset - onset + 1,
                "Micro",
                aus,
                emotion,
                "IV",
                None,
            )
        )
        sub = f"{int(subject):03d}"
        write_clip(
            out / "SAMM" / sub / clip,
            range(onset, offset + 1),
            lambda k, s=sub, p=pad: f"{s}_{k:0{p}d}.jpg",
            rng,
            size=size,
            gray=True,
        )
        rows.append(
            dict(
                subject=f"samm/{sub}",
                clip=clip,
                onset=onset,
                apex=apex,
                offset=offset,
                emotion=emotion.lower(),
            )
        )
    workbook.save(out / "SAMM_Micro_FACS_Codes_v2.xlsx")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    print(f"{len(make(args.out_dir))} rows written to {args.out_dir}")
