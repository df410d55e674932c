"""Published flow-image folders: precomputed (u, v, optical strain) images of the MEGC2019
composite, imported as a dataset with the features of our other builders.

Several public micro-expression repositories distribute the composite as one 3-channel PNG
per clip, e.g. the 28x28 images of STSTNet/HTNet (`datasets/STSNet_whole_norm_u_v_os/` beside
`combined_3_class2_for_optical_flow.csv` in github.com/wangzhifengharrison/HTNet). Manual
folder layout (the images' folder may have any name; exactly one CSV)::

    <manual_dir>/combined_3_class2_for_optical_flow.csv   columns dataset, sub, filename_o, label
    <manual_dir>/<images>/<sub>_<filename_o> .png          (the space before .png is the
                                                            repositories' naming; also without)

`dataset` is casme2, samm or smic; `label` 0/1/2 (negative, positive, surprise) or the class
name. Subjects get our canonical ids ('casme2/sub01', 'samm/006', 'smic/s01'), so folds have
the names of the composite we build from raw frames. How the images were made (their flow
method, crop, normalisation) is the publishers': predict on raw clips is not possible with
such a dataset, only on flow images made the same way.

Multi-view folders (configs ``imported_<size>_4views``): CausalNet's
``datasets/STSNet_whole_norm_u_v_os/`` (github.com/tony19980810/CausalNet) holds four PNGs per
row, ``<sub>_<filename_o><suffix> .png`` with suffixes '', '_1', '_2', '_3': the onset->apex flow,
the apex->offset flow and the two flows' direction maps (mjfn_jax.views.DATASET_VIEWS), stored
as the features ``flow_image``, ``flow_image_1``, ``flow_image_2``, ``flow_image_3``. A row
missing one of them is an error naming the row, the clip, the view and the file expected.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_builders import common
from data_builders.flow_worker import encode_png
from mjfn_jax.views import DATASET_VIEWS, View, builder_suffix

CLASS_NAMES = common.THREE_CLASSES
SIZES = (28, 32, 48, 64, 112)
IMPORTED = "imported"  # the flow method of a config: the images' own, not ours
SOURCES = ("casme2", "samm", "smic")
INSTRUCTIONS = """
    <manual_dir>/<one>.csv                     columns dataset, sub, filename_o, label
    <manual_dir>/<images>/<sub>_<filename_o> .png   one 3-channel PNG per row (or without the
                                                    space before .png)
    (imported_<size>_4views: four PNGs per row, <sub>_<filename_o><view> .png with <view> '',
     _1, _2, _3: onset->apex flow, apex->offset flow, their two direction maps)
"""
MULTI_VIEW = 4  # the views of the multi-view configs (CausalNet's folder)


@dataclasses.dataclass
class ViewsConfig(common.FlowConfig):
    """A multi-view config: ``views`` flow images per clip (mjfn_jax.views.DATASET_VIEWS)."""

    views: int = 1


def subject_id(source: str, cell: str) -> str | None:
    """('casme2', 'sub01') -> 'casme2/sub01'; ('samm', '6') -> 'samm/006'; ('smic', 's1') ->
    'smic/s01': the ids of our casme2, samm and smic builders."""
    match = re.search(r"\d+", cell)
    if not match:
        return None
    number = int(match.group())
    return {"casme2": f"casme2/sub{number:02d}", "samm": f"samm/{number:03d}",
            "smic": f"smic/s{number:02d}"}[source]  # fmt: skip


def read_rows(csv_path: Path) -> list[dict[str, Any]]:
    """The CSV's rows as {source, subject, clip, label, image_stem, where}; a bad cell is an
    error naming the file, the row and the field."""
    with io.StringIO(read_text(csv_path), newline="") as f:
        reader = csv.DictReader(f)
        missing = {"dataset", "sub", "filename_o", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        rows, seen = [], {}
        for number, row in enumerate(reader, start=2):  # row 1 is the header
            where = f"{csv_path}, row {number}"
            source = (row["dataset"] or "").strip().lower()
            if source not in SOURCES:
                raise ValueError(f"{where}, field dataset: {row['dataset']!r} is not one of "
                                 f"{', '.join(SOURCES)}")  # fmt: skip
            sub, clip = (row["sub"] or "").strip(), (row["filename_o"] or "").strip()
            subject = subject_id(source, sub)
            if subject is None or not clip or "/" in clip or "\\" in clip or clip.startswith("."):
                raise ValueError(f"{where}: sub {sub!r} / filename_o {clip!r} is not a clip id")
            label = _label(row["label"], where)
            key = (subject, clip)
            if key in seen:
                raise ValueError(f"{where}: clip {subject}/{clip} again (first in row {seen[key]})")
            seen[key] = number
            rows.append(dict(source=source, subject=subject, clip=clip, label=label,
                             image_stem=f"{sub}_{clip}", where=where))  # fmt: skip
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    return rows


def read_text(path: Path) -> str:
    """A UTF-8 text file (a BOM allowed); another encoding (a sheet saved as Latin-1) is an error
    naming the file and the row of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        row = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, row {row}: byte 0x{data[e.start]:02x} is not UTF-8; save the CSV as UTF-8"
        ) from None


def _label(cell: str | None, where: str) -> int:
    text = (cell or "").strip().lower()
    if text in CLASS_NAMES:
        return CLASS_NAMES.index(text)
    if text.isdigit() and int(text) < len(CLASS_NAMES):
        return int(text)
    raise ValueError(f"{where}, field label: {cell!r} is not 0, 1, 2 or one of {CLASS_NAMES}")


def find_images(manual_dir: Path) -> tuple[Path, Path]:
    """(the CSV, the folder of PNGs) in the manual folder."""
    csvs = sorted(manual_dir.glob("*.csv"))
    folders = sorted(p for p in manual_dir.iterdir() if p.is_dir() and any(p.glob("*.png")))
    if len(csvs) != 1 or len(folders) != 1:
        raise FileNotFoundError(
            f"{manual_dir}: expected exactly one CSV and one folder of PNG images, found "
            f"CSV {[p.name for p in csvs]}, image folders {[p.name for p in folders]}\n"
            f"Layout:{INSTRUCTIONS}"
        )
    return csvs[0], folders[0]


def match_images(
    rows: list[dict[str, Any]], folder: Path, views: tuple[View, ...] = DATASET_VIEWS[1]
) -> dict[tuple[str, str], tuple[Path, ...]]:
    """{(subject, clip): (one image per view)} for every row; a row without an image (of one of
    its ``views``: file ``<stem><view.suffix> .png``), an image without a row, an image that two
    rows would read, or two images for one row (``X .png`` and ``X.png``) is an error naming
    them."""
    images = {}
    for path in sorted(folder.glob("*.png")):
        stem = path.stem.rstrip()  # the repositories' "X .png" is row X, as is "X.png"
        if stem in images:  # which one the row means cannot be told
            raise ValueError(
                f"{folder}: two images for {stem}: {images[stem].name!r} and {path.name!r}; "
                "remove one"
            )
        images[stem] = path
    found, missing, owner = {}, [], {}
    for row in rows:
        paths = []
        for number, view in enumerate(views):
            stem = row["image_stem"] + view.suffix
            if stem in owner:  # clip X's view '_2' is clip X_2's view 0: which one is it?
                raise ValueError(
                    f"{folder}: {stem} .png is {owner[stem]} and {_view_of(row, number, views)}"
                )
            owner[stem] = _view_of(row, number, views)
            path = images.pop(stem, None)
            if path is None:
                missing.append(
                    f"{row['where']} ({row['image_stem']} .png)"
                    if len(views) == 1
                    else f"{row['where']} (clip {row['subject']}/{row['clip']}, "
                    f"{_view_of(row, number, views, who=False)}: {stem} .png)"
                )
            paths.append(path)
        found[(row["subject"], row["clip"])] = tuple(paths)
    if missing:
        shown = "; ".join(missing[:3]) + (
            f"; ... ({len(missing)} in all)" if len(missing) > 3 else ""
        )
        raise FileNotFoundError(f"no image in {folder} for {shown}")
    if images:
        extra = sorted(p.name for p in images.values())
        raise ValueError(f"{folder}: image(s) without a CSV row: {', '.join(extra[:5])}"
                         + (f" ... ({len(extra)} in all)" if len(extra) > 5 else "")
                         + _views_hint(rows, images, views))  # fmt: skip
    return found


def _view_of(row: dict[str, Any], number: int, views: tuple[View, ...], who=True) -> str:
    view = f"view {number} ({views[number].name})"
    return f"{view} of clip {row['subject']}/{row['clip']} ({row['where']})" if who else view


def _views_hint(rows, extra: dict[str, Path], views: tuple[View, ...]) -> str:
    """A one-view build of a folder whose extra images are the rows' other views: what to build."""
    stems = {row["image_stem"] for row in rows}
    suffixes = [v.suffix for v in DATASET_VIEWS[MULTI_VIEW][1:]]
    other = lambda stem: any(stem.endswith(x) and stem[: -len(x)] in stems for x in suffixes)
    if len(views) == 1 and all(other(stem) for stem in extra):
        return f"; a folder of {MULTI_VIEW} views per clip: build the config imported_<size>_4views"
    return ""


def read_image(path: Path, size: int, views: int = 1) -> np.ndarray:
    """uint8 RGB [size, size, 3]; another size, channel count or depth is an error naming it
    (and the config that takes the size: of ``views`` views)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        channels = 1 if image.ndim == 2 else image.shape[2]
        raise ValueError(f"{path}: {channels} channel(s) of {image.dtype}; flow images are "
                         "3-channel 8-bit (u, v, strain)")  # fmt: skip
    if image.shape[:2] != (size, size):
        height, width = image.shape[:2]
        suffix = builder_suffix(views)
        raise ValueError(f"{path}: {width}x{height} pixels; this config ({IMPORTED}_{size}{suffix})"
                         f" needs {size}x{size}: {_config_for(width, height, suffix)}")  # fmt: skip
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _config_for(width: int, height: int, suffix: str = "") -> str:
    """What to build for images of another size: the config that takes them, if one does."""
    if width == height and width in SIZES:
        return f"build {IMPORTED}_{width}{suffix} instead"
    configs = ", ".join(f"{IMPORTED}_{s}{suffix}" for s in SIZES)
    return f"no config takes {width}x{height} images (configs: {configs})"


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Imports a published folder of composite flow images (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        common.FlowConfig(
            name=f"{IMPORTED}_{size}",
            flow_method=IMPORTED,
            size=size,
            description=f"published {size}x{size} flow images, imported",
        )  # fmt: skip
        for size in SIZES
    ] + [
        ViewsConfig(
            name=f"{IMPORTED}_{size}{builder_suffix(MULTI_VIEW)}",
            flow_method=IMPORTED,
            size=size,
            views=MULTI_VIEW,
            description=f"published {size}x{size} flow images, {MULTI_VIEW} views per clip, "
            "imported",
        )  # fmt: skip
        for size in SIZES
    ]
    DEFAULT_BUILDER_CONFIG_NAME = f"{IMPORTED}_28"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Manual folder layout:{INSTRUCTIONS}"

    def __init__(self, *, workers=None, crop=None, apex="annotated", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The images are made already: the raw-frame options of the other builders do not apply.
        if crop is not None or apex != "annotated":
            raise ValueError("flow_images: --crop and --apex do not apply to imported images")

    @property
    def views(self) -> tuple[View, ...]:
        """The config's views, in their order (mjfn_jax.views.DATASET_VIEWS)."""
        return DATASET_VIEWS[getattr(self.builder_config, "views", 1)]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        image = lambda: tfds.features.Image(shape=(size, size, 3), encoding_format="png")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    **{view.feature: image() for view in self.views},
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "emotion": tfds.features.Text(),
                    "subject": tfds.features.Text(),
                    "source": tfds.features.Text(),
                    "clip": tfds.features.Text(),
                }
            ),
            supervised_keys=("flow_image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def source_fingerprint(self, manual_dir: Path) -> str:
        """The SHA-256 of the manual folder's CSV and images (names and bytes): what a reused
        build is checked against (data_builders.build.check_source)."""
        csv_path, folder = find_images(manual_dir)
        digest = hashlib.sha256(csv_path.read_bytes())
        for path in sorted(folder.glob("*.png")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        csv_path, folder = find_images(Path(dl_manager.manual_dir))
        rows = read_rows(csv_path)
        views = self.views
        images = match_images(rows, folder, views)
        size = self.builder_config.size
        examples = []
        for row in rows:
            paths = images[(row["subject"], row["clip"])]
            examples.append((row, [read_image(path, size, len(views)) for path in paths]))
        metadata = {
            "clips": len(examples),
            "crop": {IMPORTED: len(examples)},
            "skipped": {},
            "source_folder": folder.name,
            "csv": csv_path.name,
            "source_sha256": self.source_fingerprint(Path(dl_manager.manual_dir)),
        }
        if len(views) > 1:  # the one-view dataset's metadata stays what it was
            metadata["views"] = [f"{v.feature}: {v.name} (<clip>{v.suffix} .png)" for v in views]
        self.info.metadata.update(metadata)
        return {"train": self._generate_examples(examples)}

    def _generate_examples(self, examples):
        views = self.views
        for row, images in examples:
            key = f"{row['subject']}/{row['clip']}"
            yield (
                key,
                {
                    # PNG bytes from OpenCV: no TensorFlow
                    **{v.feature: encode_png(im) for v, im in zip(views, images, strict=True)},
                    "label": row["label"],
                    "emotion": CLASS_NAMES[row["label"]],
                    "subject": row["subject"],
                    "source": row["source"],
                    "clip": row["clip"],
                },
            )
