"""CASME II: 5-class task (happiness, surprise, disgust, repression, others) from raw frames."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from data_builders import common, parsing
from data_builders.skips import SkipLog

CLASS_NAMES = ("happiness", "surprise", "disgust", "repression", "others")
EMOTIONS = ("happiness", "surprise", "disgust", "repression", "others", "sadness", "fear")
# The usual 5-class task: fear and sadness (9 clips) are dropped, counted in the summary.
FIVE_CLASS = {emotion: (emotion if emotion in CLASS_NAMES else None) for emotion in EMOTIONS}
REQUIRED_COLUMNS = ("subject", "filename", "onsetframe", "apexframe", "estimatedemotion")
# (folder, frame file name, crop mode): raw frames are face-cropped with the Haar detector; the
# official cropped set is used as it is. Where both exist the raw frames win, so that every source
# of the composite goes through the same crop.
LAYOUTS = (("CASME2-RAW", "img{frame}.jpg", "haar"), ("Cropped", "reg_img{frame}.jpg", "none"))

INSTRUCTIONS = """\
CASME II (http://casme.psych.ac.cn/casme/e2, licence from the authors). Put in the manual folder:
  <manual_dir>/CASME2-coding-20140508.xlsx   the coding workbook (any one *.xlsx; header in row 1)
  <manual_dir>/CASME2-RAW/sub01/EP02_01f/img46.jpg ...   raw frames (face crop: Haar detector)
or, instead of CASME2-RAW, the official cropped frames (used without a further crop):
  <manual_dir>/Cropped/sub01/EP02_01f/reg_img46.jpg ...
"""


def subject_id(cell: Any) -> str | None:
    """1, 1.0, "01" and "sub01" -> "casme2/sub01"."""
    match = re.search(r"\d+", str(cell if cell is not None else ""))
    return f"casme2/sub{int(match.group()):02d}" if match else None


def list_casme2(
    root: Path, label_map: dict[str, str | None], skips: SkipLog
) -> list[common.ClipSpec]:
    """Parses the CASME II workbook under `root` and resolves each usable row to its frames."""
    parsing.require_dir(root, "CASME II manual folder", INSTRUCTIONS)
    sheet = parsing.find_one(root, "*.xlsx", "CASME II annotation", INSTRUCTIONS)
    layout = next(((d, f, c) for d, f, c in LAYOUTS if (root / d).is_dir()), None)
    if layout is None:
        raise FileNotFoundError(
            f"CASME II frames: neither {root / 'CASME2-RAW'} nor {root / 'Cropped'} exists "
            f"(found: {sorted(p.name for p in root.iterdir())}).\n{INSTRUCTIONS}"
        )
    folder, file_name, crop = layout
    rows = parsing.read_sheet(sheet, REQUIRED_COLUMNS)
    annotated = parsing.parse_annotation_rows(
        rows, where=str(sheet), subject_id=subject_id, label_map=label_map, skips=skips
    )
    clips = []
    for row in annotated:
        key = f"{row.subject}/{row.clip} ({row.where})"
        clip_dir = parsing.inside(root, root / folder / row.subject.split("/")[1] / row.clip, key)
        frame_path = lambda n, d=clip_dir, k=key: parsing.existing_frame(
            d / file_name.format(frame=n), k, n
        )
        clips.append(
            row.to_spec(
                source="casme2",
                onset_path=frame_path(row.onset),
                apex_path=frame_path(row.apex),
                crop=crop,
            )
        )
    return clips


class Builder(common.FlowBuilder):
    """CASME II optical-flow images (onset -> apex), 5 classes."""

    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "http://casme.psych.ac.cn/casme/e2"

    def list_clips(self, dl_manager) -> list[common.ClipSpec]:
        return list_casme2(Path(dl_manager.manual_dir), FIVE_CLASS, self.skips)
