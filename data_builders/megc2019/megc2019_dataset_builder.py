"""MEGC2019 composite ("3DB"): SMIC + CASME II + SAMM relabelled to negative/positive/surprise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_builders import common
from data_builders.casme2 import casme2_dataset_builder as casme2
from data_builders.samm import samm_dataset_builder as samm
from data_builders.skips import SkipLog
from data_builders.smic import smic_dataset_builder as smic

CLASS_NAMES = common.THREE_CLASSES
NEG, POS, SUR = CLASS_NAMES
# The composite rules (docs/datasets.md#megc2019-composite); None = a known emotion the
# composite drops (counted).
CASME2_MAP = {
    "disgust": NEG, "repression": NEG, "happiness": POS, "surprise": SUR,
    "others": None, "fear": None, "sadness": None,
}  # fmt: skip
SAMM_MAP = {
    "anger": NEG, "contempt": NEG, "disgust": NEG, "fear": NEG, "sadness": NEG,
    "happiness": POS, "surprise": SUR, "other": None,
}  # fmt: skip
SMIC_MAP = {NEG: NEG, POS: POS, SUR: SUR}
SOURCES = ("smic", "casme2", "samm")

INSTRUCTIONS = f"""\
MEGC2019 composite: one manual folder with one sub-folder per source, each laid out exactly as
that source's own manual folder:
  <manual_dir>/smic/HS/s1/micro/negative/s1_ne_01/...          (or smic/SMIC_all_cropped/HS/...)
  <manual_dir>/casme2/CASME2-coding-20140508.xlsx + casme2/CASME2-RAW/... (or casme2/Cropped/...)
  <manual_dir>/samm/SAMM_Micro_FACS_Codes_v2.xlsx + samm/SAMM/006/006_1_2/...
Composite rules: CASME II negative = disgust + repression, positive = happiness, surprise =
surprise (others, fear, sadness and the clips without a usable apex dropped); SAMM negative =
anger + contempt + disgust + fear + sadness, positive = happiness, surprise = surprise (other
dropped); SMIC as labelled. Expected: 442 clips (250 / 109 / 83), 68 subjects.

--- smic ---
{smic.INSTRUCTIONS}
--- casme2 ---
{casme2.INSTRUCTIONS}
--- samm ---
{samm.INSTRUCTIONS}"""


class PrefixedSkips(SkipLog):
    """Counts a source's skips in the composite's log with the source name in the reason."""

    def __init__(self, parent: SkipLog, source: str) -> None:
        super().__init__()
        self.parent, self.source = parent, source

    def skip(self, reason: str, where: str) -> None:
        self.parent.skip(f"{self.source}: {reason}", where)


def list_megc2019(root: Path, skips: SkipLog, apex_fraction: float = 0.5) -> list[common.ClipSpec]:
    if not root.is_dir():
        raise FileNotFoundError(f"MEGC2019 manual folder {root} does not exist.\n{INSTRUCTIONS}")
    missing = [name for name in SOURCES if not (root / name).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir())
        raise FileNotFoundError(
            f"MEGC2019 composite: missing source folder(s) {missing} in {root}; expected "
            f"{list(SOURCES)}, found {found}.\n{INSTRUCTIONS}"
        )
    return (
        smic.list_smic(root / "smic", SMIC_MAP, PrefixedSkips(skips, "smic"), apex_fraction)
        + casme2.list_casme2(root / "casme2", CASME2_MAP, PrefixedSkips(skips, "casme2"))
        + samm.list_samm(root / "samm", SAMM_MAP, PrefixedSkips(skips, "samm"))
    )


class Builder(common.FlowBuilder):
    """The MEGC2019 composite optical-flow images, 3 classes, subjects prefixed by source."""

    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://facial-micro-expressiongc.github.io/MEGC2019/"

    def __init__(self, *, apex_fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.apex_fraction = apex_fraction  # SMIC apex position within a clip.

    def list_clips(self, dl_manager) -> list[common.ClipSpec]:
        self.info.metadata["apex_fraction"] = self.apex_fraction
        return list_megc2019(Path(dl_manager.manual_dir), self.skips, self.apex_fraction)
