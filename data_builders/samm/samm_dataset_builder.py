"""SAMM: 5-class task (anger, contempt, happiness, surprise, other) from raw grayscale frames."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from data_builders import common, parsing
from data_builders.skips import SkipLog

CLASS_NAMES = ("anger", "contempt", "happiness", "surprise", "other")
EMOTIONS = (
    "anger", "contempt", "disgust", "fear", "happiness", "other", "sadness", "surprise"
)  # fmt: skip
# The usual 5-class task: disgust, fear and sadness (23 clips) are dropped, counted.
FIVE_CLASS = {emotion: (emotion if emotion in CLASS_NAMES else None) for emotion in EMOTIONS}
REQUIRED_COLUMNS = ("subject", "filename", "onsetframe", "apexframe", "estimatedemotion")

INSTRUCTIONS = """\
SAMM (http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php, licence from the authors). Put in the
manual folder:
  <manual_dir>/SAMM_Micro_FACS_Codes_v2.xlsx   the coding workbook (any one *.xlsx; notes rows
                                               first, the header row starts with 'Subject')
  <manual_dir>/SAMM/006/006_1_2/006_05562.jpg ...   frames (face crop: Haar detector); the zero
                                               padding of frame numbers may vary per clip
"""


def subject_id(cell: Any) -> str | None:
    """6, 6.0, "6" and "006" -> "samm/006"."""
    match = re.search(r"\d+", str(cell if cell is not None else ""))
    return f"samm/{int(match.group()):03d}" if match else None


def list_samm(
    root: Path, label_map: dict[str, str | None], skips: SkipLog
) -> list[common.ClipSpec]:
    """Parses the SAMM workbook under `root` and resolves each usable row to its frames."""
    parsing.require_dir(root, "SAMM manual folder", INSTRUCTIONS)
    sheet = parsing.find_one(root, "*.xlsx", "SAMM annotation", INSTRUCTIONS)
    frames_root = parsing.require_dir(root / "SAMM", "SAMM frames", INSTRUCTIONS)
    rows = parsing.read_sheet(sheet, REQUIRED_COLUMNS)
    annotated = parsing.parse_annotation_rows(
        rows, where=str(sheet), subject_id=subject_id, label_map=label_map, skips=skips
    )
    clips = []
    for row in annotated:
        key = f"{row.subject}/{row.clip} ({row.where})"
        clip_dir = parsing.inside(root, frames_root / row.subject.split("/")[1] / row.clip, key)
        frames = parsing.frames_by_number(clip_dir, key)
        for frame in (row.onset, row.apex):
            if frame not in frames:
                raise FileNotFoundError(
                    f"clip {key}: frame {frame} not found in {clip_dir} "
                    f"({len(frames)} numbered frames there)"
                )
        clips.append(
            row.to_spec(
                source="samm",
                onset_path=frames[row.onset],
                apex_path=frames[row.apex],
                crop="haar",
            )
        )
    return clips


class Builder(common.FlowBuilder):
    """SAMM optical-flow images (onset -> apex), 5 classes."""

    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php"

    def list_clips(self, dl_manager) -> list[common.ClipSpec]:
        return list_samm(Path(dl_manager.manual_dir), FIVE_CLASS, self.skips)
