"""Synthetic micro-expressions: generated raw frames, then the same path as the real datasets."""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from data_builders import common, parsing
from data_builders.skips import SkipLog

log = logging.getLogger("data_builders")

CLASS_NAMES = common.THREE_CLASSES
IDENTITY = {name: name for name in CLASS_NAMES}
# Default size of the generated set: 108 clips; builds in well under 2 minutes on 2 CPU cores.
DEFAULTS = {"num_subjects": 12, "clips_per_subject": 9, "seed": 0, "frame_size": 128}


def subject_id(cell: Any) -> str | None:
    """'s1', 's01' -> 'synthetic/s01'."""
    match = re.search(r"\d+", str(cell if cell is not None else ""))
    return f"synthetic/s{int(match.group()):02d}" if match else None


def generate(cache: Path, **params: Any) -> Path:
    """Generates the raw layout once per parameter set (cached); returns the folder.

    Builds of several configs share the cache: a lock per parameter set (held while one
    generates, released by the kernel if it dies) makes the others wait and reuse its frames,
    instead of deleting its half-written folder as stale."""
    from mjfn_jax.synthetic import GENERATOR_VERSION, generate_raw

    # The generator's version is part of the key: a changed generator never reuses stale frames.
    name = f"v{GENERATOR_VERSION}_" + "_".join(f"{k}{v}" for k, v in sorted(params.items()))
    target = cache / name
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another build to generate %s", target)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "annotations.csv").is_file():
            partial = cache / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # a killed build's, with the lock held
            generate_raw(partial, **params)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)  # Atomic: an interrupted run never leaves a half cache.
    return target


def list_synthetic(root: Path, skips: SkipLog) -> list[common.ClipSpec]:
    """Parses root/annotations.csv with the row rules of the real sets; frames are img<k>.png."""
    sheet = root / "annotations.csv"
    with open(sheet, newline="") as f:
        records = list(csv.DictReader(f))
    rows = (  # The real sets' column names, so that the same row rules apply.
        (
            number,
            {
                "subject": r.get("subject"),
                "filename": r.get("clip"),
                "onsetframe": r.get("onset_frame"),
                "apexframe": r.get("apex_frame"),
                "offsetframe": r.get("offset_frame"),
                "estimatedemotion": r.get("emotion"),
            },
        )
        for number, r in enumerate(records, start=2)
    )
    annotated = parsing.parse_annotation_rows(
        rows, where=str(sheet), subject_id=subject_id, label_map=IDENTITY, skips=skips
    )
    clips = []
    for row in annotated:
        clip_dir = parsing.inside(
            root, root / "frames" / row.subject.split("/")[1] / row.clip, row.where
        )
        frame = lambda n, d=clip_dir, k=f"{row.subject}/{row.clip}": parsing.existing_frame(
            d / f"img{n}.png", k, n
        )
        clips.append(
            row.to_spec(
                source="synthetic",
                onset_path=frame(row.onset),
                apex_path=frame(row.apex),
                crop="center",  # Generated faces fill the frame's centre.
            )
        )
    return clips


class Builder(common.FlowBuilder):
    """Synthetic optical-flow images from generated frames (no manual download), 3 classes."""

    CLASS_NAMES = CLASS_NAMES
    DEFAULT_BUILDER_CONFIG_NAME = "tvl1_48"

    def __init__(self, *, synthetic: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = set(synthetic or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown synthetic parameter(s) {sorted(unknown)}; known: {DEFAULTS}")
        # generate_raw arguments; the raw frames are cached under <download_dir>/synthetic_raw.
        self.synthetic = {**DEFAULTS, **(synthetic or {})}

    def list_clips(self, dl_manager) -> list[common.ClipSpec]:
        root = generate(Path(dl_manager.download_dir) / "synthetic_raw", **self.synthetic)
        self.info.metadata["synthetic"] = dict(self.synthetic)
        return list_synthetic(root, self.skips)
