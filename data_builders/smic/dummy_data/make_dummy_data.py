"""Generates a tiny SMIC-HS-like manual folder (labels as folder names, unpadded subject folders,
frames named by absolute index; pixels are noise).

Usage: python -m data_builders.smic.dummy_data.make_dummy_data OUT_DIR [--layout raw|cropped]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data_builders.dummy_frames import write_clip

SHORT = {"negative": "ne", "positive": "po", "surprise": "sur"}
# (subject folder, emotion folder, clip number, first frame, number of frames)
CLIPS = (
    ("s1", "negative", 1, 559740, 5),
    ("s1", "negative", 2, 559800, 6),
    ("s1", "positive", 1, 560100, 5),
    ("s1", "surprise", 1, 560300, 4),
    ("s3", "negative", 1, 12000, 5),
    ("s3", "positive", 1, 12100, 7),
    ("s3", "positive", 2, 12200, 1),  # a single frame: no pair, counted as skipped
    ("s12", "surprise", 1, 88000, 5),
    ("s12", "negative", 1, 88100, 5),
)


def make(out_dir: str | Path, *, layout: str = "raw", size: int = 64, seed: int = 0) -> list[dict]:
    """Writes the HS tree into out_dir; returns one dict per clip folder."""
    root = Path(out_dir) / {"raw": "HS", "cropped": "SMIC_all_cropped/HS"}[layout]
    prefix = {"raw": "image", "cropped": "reg_image"}[layout]
    rng = np.random.default_rng(seed)
    rows = []
    for subject, emotion, number, first, count in CLIPS:
        clip = f"{subject}_{SHORT[emotion]}_{number:02d}"
        frames = range(first, first + count)
        write_clip(
            root / subject / "micro" / emotion / clip,
            frames,
            lambda k, p=prefix: f"{p}{k}.bmp",
            rng,
            size=size,
        )
        sub = f"s{int(subject[1:]):02d}"
        rows.append(
            dict(
                subject=f"smic/{sub}",
                clip=clip.replace(f"{subject}_", f"{sub}_", 1),
                emotion=emotion,
                frames=list(frames),
            )
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--layout", choices=("raw", "cropped"), default="raw")
    args = parser.parse_args()
    print(f"{len(make(args.out_dir, layout=args.layout))} clips written to {args.out_dir}")
