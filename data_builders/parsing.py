"""Annotation parsing shared by the builders: xlsx sheets (openpyxl), row rules, frame lookup.

Every rejected row is counted in a :class:`data_builders.skips.SkipLog` with its reason and
logged with its file and row; missing folders and frames raise, naming what was expected. A row
that cannot be a mistake of the licensed data (a clip name that is a path, a duplicated clip)
raises, naming the file, row and field: building it would read outside the manual folder or
silently pick one of two labels.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from data_builders.flow_worker import ClipSpec
from data_builders.skips import SkipLog


def parse_int(value: Any) -> int | None:
    """A frame number from an xlsx cell: 46, 46.0 and "46" give 46; "/", "" and None give None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip()
    return int(float(text)) if re.fullmatch(r"\d+(\.0+)?", text) else None


def normalise_header(cell: Any) -> str:
    """'Onset Frame', 'OnsetFrame' and 'onset_frame ' all give 'onsetframe'."""
    return re.sub(r"[^a-z0-9]", "", str(cell or "").lower())


def read_sheet(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(Excel row number, {normalised header: value}) for every data row of the first sheet.

    The header is found by content (the first row whose first non-empty cell is 'Subject'): CASME
    II has it in row 1, SAMM after ~13 rows of notes. Empty columns are ignored.
    """
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:
        raise ValueError(f"cannot read the annotation workbook {path}: {err}") from err
    rows = workbook.worksheets[0].iter_rows(values_only=True)
    header = None
    for number, row in enumerate(rows, start=1):
        cells = [c for c in row if c not in (None, "")]
        if header is None:
            if cells and normalise_header(cells[0]) == "subject":
                header = [normalise_header(c) for c in row]
                missing = [name for name in required if name not in header]
                if missing:
                    raise ValueError(
                        f"{path}: header row {number} lacks column(s) {missing}; found "
                        f"{[h for h in header if h]}"
                    )
                twice = [name for name in required if header.count(name) > 1]
                if twice:  # The row dict would silently keep the last of the two columns.
                    raise ValueError(f"{path}: header row {number} has column(s) {twice} twice")
            continue
        if cells:
            yield number, {h: v for h, v in zip(header, row, strict=False) if h}
    workbook.close()
    if header is None:
        raise ValueError(f"{path}: no header row starting with 'Subject' in the first sheet")


@dataclasses.dataclass(frozen=True)
class AnnotatedClip:
    """A usable annotation row, before its frames are looked up."""

    subject: str  # canonical, prefixed
    clip: str
    emotion: str  # lower case
    label: str
    onset: int
    apex: int
    offset: int  # -1 where the sheet has no usable offset (not needed for the flow)
    where: str  # "file row N", for error messages

    def to_spec(self, *, source: str, onset_path: Any, apex_path: Any, crop: str) -> ClipSpec:
        """The clip resolved to its onset and apex frame files (a flow worker's input)."""
        return ClipSpec(
            source=source,
            subject=self.subject,
            clip=self.clip,
            emotion=self.emotion,
            label=self.label,
            onset_frame=self.onset,
            apex_frame=self.apex,
            offset_frame=self.offset,
            onset_path=str(onset_path),
            apex_path=str(apex_path),
            crop=crop,
        )


def plain_name(value: Any, at: str, field: str) -> str:
    """A clip or subject folder name from a cell: one path component, or ValueError.

    The name is joined to the manual folder to find frames, and stored in the dataset: a cell
    like '../../../outside_clip' or '/etc' would read outside the manual folder (issue 10,
    case 6). Such a cell is an error naming the file, row and field, never a skip: it is not
    a known flaw of the licensed sheets.
    """
    name = str(value if value is not None else "").strip()
    if name in (".", "..") or any(c in name for c in ("/", "\\", "\0")):
        raise ValueError(
            f"{at}: {field} {name!r} is not a plain folder name (no '/', '\\', '.' or '..'): "
            "it must name a folder inside the manual folder"
        )
    return name


def inside(root: Path, path: Path, what: str) -> Path:
    """`path`, after checking that it lies lexically inside `root` (ValueError otherwise).

    Lexical ('..' collapsed, symlinks kept): a symlink the user placed inside the manual
    folder (e.g. frames on another disk) still works; what a cell names cannot climb out.
    """
    root_abs = os.path.normpath(os.path.abspath(root))
    path_abs = os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([root_abs, path_abs]) != root_abs:
        raise ValueError(f"{what}: {path} lies outside the manual folder {root}")
    return path


def parse_annotation_rows(
    rows: Iterator[tuple[int, dict[str, Any]]],
    *,
    where: str,
    subject_id: Callable[[Any], str | None],
    label_map: dict[str, str | None],
    skips: SkipLog,
) -> list[AnnotatedClip]:
    """Applies the row rules shared by CASME II and SAMM; every rejected row is counted.

    label_map: emotion (lower case) -> class name, or None for a known emotion the task drops.
    An emotion that is not a key is 'unknown' and counted separately: nothing is guessed.
    Frame rules: onset < apex, and where an offset is given, onset <= offset and apex <= offset;
    a row that breaks one is counted ("apex after offset"): which cell is wrong is unknowable.
    A (subject, filename) seen twice is a ValueError naming both rows: tfds would fail on the
    duplicate key with an unrelated TensorFlow import error, and keeping either row would pick
    a label silently.
    """
    clips = []
    seen: dict[tuple[str, str], int] = {}
    for number, row in rows:
        at = f"{where} row {number}"
        subject = subject_id(row.get("subject"))
        name = plain_name(row.get("filename"), at, "Filename")
        if subject is not None and name:
            if (subject, name) in seen:
                raise ValueError(
                    f"{where}: rows {seen[subject, name]} and {number} both annotate clip "
                    f"{subject}/{name}: remove or fix one of them"
                )
            seen[subject, name] = number
        emotion = str(row.get("estimatedemotion") or "").strip().lower()
        onset, apex = parse_int(row.get("onsetframe")), parse_int(row.get("apexframe"))
        offset = parse_int(row.get("offsetframe"))
        if subject is None or not name or not emotion or onset is None:
            skips.skip("missing or invalid cell (subject, filename, onset or emotion)", at)
        elif apex is None:
            skips.skip("apex not a number", f"{at} ({subject}/{name}: {row.get('apexframe')!r})")
        elif apex == onset:
            skips.skip("apex equals onset", f"{at} ({subject}/{name})")
        elif apex < onset:
            skips.skip("apex before onset", f"{at} ({subject}/{name})")
        elif offset is not None and offset < onset:
            skips.skip("offset before onset", f"{at} ({subject}/{name}: {onset=}, {offset=})")
        elif offset is not None and apex > offset:
            skips.skip("apex after offset", f"{at} ({subject}/{name}: {apex=}, {offset=})")
        elif emotion not in label_map:
            skips.skip(f"unknown emotion: {emotion}", f"{at} ({subject}/{name})")
        elif label_map[emotion] is None:
            skips.skip(f"emotion not in task: {emotion}", f"{at} ({subject}/{name})")
        else:
            offset = offset if offset is not None else -1
            clips.append(
                AnnotatedClip(subject, name, emotion, label_map[emotion], onset, apex, offset, at)
            )
    return clips


def find_one(folder: Path, pattern: str, what: str, instructions: str) -> Path:
    found = sorted(p for p in folder.glob(pattern) if not p.name.startswith("~$"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{what}: expected exactly one {pattern} in {folder}, found "
            f"{[p.name for p in found]}.\n{instructions}"
        )
    return found[0]


def require_dir(path: Path, what: str, instructions: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a folder at {path}, none found.\n{instructions}")
    return path


def frames_by_number(folder: Path, clip_key: str) -> dict[int, Path]:
    """Frame files of a clip folder by the integer after the last '_' (or the trailing digits).

    Used where zero padding is inconsistent (SAMM `006_0180.jpg` vs `006_05562.jpg`).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"clip {clip_key}: frame folder not found: {folder}")
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = re.search(r"(\d+)$", path.stem.rsplit("_", 1)[-1])
        if path.is_file() and match and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
            number = int(match.group(1))
            if number in frames:  # e.g. 006_0180.jpg and 006_00180.jpg, or .jpg and .png:
                raise ValueError(  # which one is the frame would follow the listing order.
                    f"clip {clip_key}: two files for frame {number}: {frames[number].name} and "
                    f"{path.name} in {folder}"
                )
            frames[number] = path
    return frames


def existing_frame(path: Path, clip_key: str, frame: int) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"clip {clip_key}: frame {frame} not found: {path}")
    return str(path)
