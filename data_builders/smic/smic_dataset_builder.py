"""SMIC-HS: 3 classes (negative, positive, surprise); labels are folder names, apex = mid frame."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from data_builders import common, parsing
from data_builders.skips import SkipLog

CLASS_NAMES = common.THREE_CLASSES
# (frames root, crop mode): raw frames are face-cropped with the Haar detector; the cropped variant
# (same tree) is used as it is. Where both exist the raw frames win (same crop for every source).
LAYOUTS = (("HS", "haar"), ("SMIC_all_cropped/HS", "none"))

INSTRUCTIONS = """\
SMIC (https://www.oulu.fi/cmvs/node/41319, licence from the authors); the HS (high-speed) part.
Put in the manual folder the HS tree, labels are the folder names:
  <manual_dir>/HS/s1/micro/{negative,positive,surprise}/s1_ne_01/image559740.bmp ...
or, instead of HS, the cropped variant with the same tree (used without a further crop):
  <manual_dir>/SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/<frame>.bmp ...
Each clip folder holds its onset..offset frames named by absolute frame index; there is no apex
annotation: the apex is the frame at `apex_fraction` of the clip (0.5, the middle, by default).
"""


def canonical(subject_folder: str, clip_folder: str) -> tuple[str, str]:
    """('s1', 's1_ne_01') -> ('smic/s01', 's01_ne_01'): the official list pads subject numbers."""
    number = int(subject_folder[1:])
    return f"smic/s{number:02d}", re.sub(r"^s\d+_", f"s{number:02d}_", clip_folder)


def list_smic(
    root: Path,
    label_map: dict[str, str | None],
    skips: SkipLog,
    apex_fraction: float = 0.5,
) -> list[common.ClipSpec]:
    """Walks HS/s*/micro/<emotion>/<clip>/ under `root`; onset/offset = first/last frame."""
    if not 0.0 <= apex_fraction <= 1.0:
        raise ValueError(f"apex_fraction must be in [0, 1], got {apex_fraction}")
    parsing.require_dir(root, "SMIC manual folder", INSTRUCTIONS)
    layout = next(((d, c) for d, c in LAYOUTS if (root / d).is_dir()), None)
    if layout is None:
        raise FileNotFoundError(
            f"SMIC frames: neither {root / 'HS'} nor {root / 'SMIC_all_cropped/HS'} exists "
            f"(found: {sorted(p.name for p in root.iterdir())}).\n{INSTRUCTIONS}"
        )
    hs, crop = root / layout[0], layout[1]
    subjects = sorted(p for p in hs.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name))
    if not subjects:
        raise FileNotFoundError(f"SMIC: no subject folder s1, s2, ... in {hs}.\n{INSTRUCTIONS}")
    clips = []
    for subject_dir in subjects:
        micro = subject_dir / "micro"
        if not micro.is_dir():
            skips.skip("subject folder without micro/", str(subject_dir))
            continue
        for emotion_dir in sorted(p for p in micro.iterdir() if p.is_dir()):
            emotion = emotion_dir.name.lower()
            for clip_dir in sorted(p for p in emotion_dir.iterdir() if p.is_dir()):
                subject, clip = canonical(subject_dir.name, clip_dir.name)
                clips.extend(
                    _clip(subject, clip, emotion, clip_dir, crop, label_map, skips, apex_fraction)
                )
    return clips


def _clip(subject, clip, emotion, clip_dir, crop, label_map, skips, apex_fraction) -> list[Any]:
    if emotion not in label_map:
        skips.skip(f"unknown emotion: {emotion}", str(clip_dir))
        return []
    if label_map[emotion] is None:
        skips.skip(f"emotion not in task: {emotion}", str(clip_dir))
        return []
    frames = parsing.frames_by_number(clip_dir, f"{subject}/{clip}")
    numbers = sorted(frames)
    if len(numbers) < 2:
        skips.skip("fewer than 2 frames", str(clip_dir))
        return []
    # Rounded half up: with 0.5 this is frames[n // 2]; never the onset itself.
    apex = numbers[max(1, math.floor((len(numbers) - 1) * apex_fraction + 0.5))]
    spec = common.ClipSpec(
        source="smic",
        subject=subject,
        clip=clip,
        emotion=emotion,
        label=label_map[emotion],
        onset_frame=numbers[0],
        apex_frame=apex,
        offset_frame=numbers[-1],
        onset_path=str(frames[numbers[0]]),
        apex_path=str(frames[apex]),
        crop=crop,
    )
    return [spec]


class Builder(common.FlowBuilder):
    """SMIC-HS optical-flow images (first frame -> middle frame), 3 classes."""

    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://www.oulu.fi/cmvs/node/41319"

    def __init__(self, *, apex_fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.apex_fraction = apex_fraction  # Position of the apex within a clip (no annotation).

    def list_clips(self, dl_manager) -> list[common.ClipSpec]:
        self.info.metadata["apex_fraction"] = self.apex_fraction
        identity = {name: name for name in CLASS_NAMES}
        return list_smic(Path(dl_manager.manual_dir), identity, self.skips, self.apex_fraction)
