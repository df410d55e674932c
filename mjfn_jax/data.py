"""Datasets as host arrays: a whole split is read once, then lives on the device.

See docs/design.md#loading-data (and #fold-engine for the device side).

`load_dataset` reads a split written by `mjfn-build build` (array_record files,
no TensorFlow); `Dataset.from_arrays` wraps arrays made elsewhere (benchmarks, tests).
tensorflow_datasets and the builders are imported inside `load_dataset` only, so importing this
module stays cheap.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import cv2
import numpy as np

# Decoded by us (cv2) or not at all: tfds would also decode the unused onset/apex images.
_UNDECODED = ("flow_image", "onset", "apex", "flow")
# A multi-view dataset's further views (mjfn_jax.views.DATASET_VIEWS), stacked after flow_image.
_VIEW_FEATURES = ("flow_image_1", "flow_image_2", "flow_image_3")


def _check_strings(name: str, values: np.ndarray, n: int) -> None:
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"Dataset.{name}: expected shape [{n}], got {values.shape}")
    if values.dtype.kind != "U":
        raise TypeError(f"Dataset.{name}: expected a numpy str array, got dtype {values.dtype}")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split in host memory, one row per clip.

    images: uint8 [N, H, W, 3] flow images (or [N, H, W, 3 V]: V views of each clip stacked as
    channels, mjfn_jax.views); labels: int32 [N] in [0, num_classes);
    subjects: str [N], canonical and source-prefixed ("casme2/sub01"); sources: str [N]
    ("casme2"); clips: str [N]; class_names: the label names, index = label.
    """

    images: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    sources: np.ndarray
    clips: np.ndarray
    class_names: tuple[str, ...]
    # How the flow images were made (what predict must redo on a new clip): "flow_method",
    # "size", "encoding", "crop" ({mode: clips}), "apex", "dataset" ('name/config'). Empty
    # for arrays that did not come from a build or the synthetic generator.
    preprocessing: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(
                f"Dataset.images: expected a uint8 numpy array, got {type(images)} "
                f"{getattr(images, 'dtype', '')}"
            )
        if images.ndim != 4 or images.shape[-1] % 3 or not images.shape[-1]:
            raise ValueError(
                f"Dataset.images: expected shape [N, H, W, 3] (or 3 channels per view), got "
                f"{images.shape}"
            )
        n = images.shape[0]
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
            raise TypeError(
                f"Dataset.labels: expected an int32 numpy array, got "
                f"{getattr(labels, 'dtype', type(labels))}"
            )
        if labels.shape != (n,):
            raise ValueError(f"Dataset.labels: expected shape [{n}], got {labels.shape}")
        for name in ("subjects", "sources", "clips"):
            _check_strings(name, getattr(self, name), n)
        names = self.class_names
        if not isinstance(names, tuple) or not names or len(set(names)) != len(names):
            raise ValueError(
                f"Dataset.class_names: expected a tuple of unique names, got {names!r}"
            )
        if n and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(
                f"Dataset.labels: values must lie in [0, {len(names)}), got "
                f"[{labels.min()}, {labels.max()}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def unique_subjects(self) -> np.ndarray:
        """Sorted unique subject ids, str [num_subjects]."""
        return np.unique(self.subjects)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def take(self, indices: np.ndarray | Sequence[int]) -> Dataset:
        """The rows at `indices` (int [M]), as a new Dataset."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            self.images[idx],
            self.labels[idx],
            self.subjects[idx],
            self.sources[idx],
            self.clips[idx],
            self.class_names,
            self.preprocessing,
        )

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        subjects: np.ndarray | Sequence[str],
        class_names: Sequence[str],
        *,
        sources: np.ndarray | Sequence[str] | None = None,
        clips: np.ndarray | Sequence[str] | None = None,
        source: str | None = None,
    ) -> Dataset:
        """Wraps arrays, converting dtypes where it is lossless.

        source: prefixes subjects that have no 'source/' prefix yet (e.g. 's01' ->
        'synthetic/s01', for `mjfn_jax.synthetic.make_flow_arrays`) and fills `sources`.
        Without it, `sources` defaults to each subject's prefix. clips default to 'clip<i>'.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(f"images: expected uint8 (flow images 0..255), got {images.dtype}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels: expected integers, got dtype {labels.dtype}")
        subjects = np.asarray(subjects).astype(str)
        if source is not None:
            subjects = np.asarray([s if "/" in s else f"{source}/{s}" for s in subjects], dtype=str)
        if sources is None:
            sources = np.asarray([s.split("/", 1)[0] if "/" in s else "" for s in subjects], str)
        if clips is None:
            clips = np.asarray([f"clip{i}" for i in range(len(subjects))], dtype=str)
        return cls(
            images,
            labels.astype(np.int32),
            subjects,
            np.asarray(sources).astype(str),
            np.asarray(clips).astype(str),
            tuple(str(c) for c in class_names),
        )

    @classmethod
    def from_synthetic_arrays(cls, arrays: dict) -> Dataset:
        """The dict of ``mjfn_jax.synthetic.make_flow_arrays`` as a Dataset, with subjects
        prefixed like the synthetic builder's canonical ids ('s01' -> 'synthetic/s01')."""
        dataset = cls.from_arrays(
            arrays["images"],
            arrays["labels"],
            arrays["subjects"],
            arrays["class_names"],
            clips=arrays["clips"],
            source="synthetic",
        )
        # The generator's TRUE flows, centre crop of its square frames; on a new clip, the
        # builders' default estimate of them (TV-L1) is the closest preprocessing.
        preprocessing = {
            "dataset": "make_flow_arrays",
            "flow_method": "tvl1",
            "size": int(dataset.images.shape[1]),
            "encoding": arrays.get("encoding", "uvs"),
            "crop": {"center": len(dataset)},
        }
        return dataclasses.replace(dataset, preprocessing=preprocessing)


def build_command(name: str, builder_config: str, data_dir: str | os.PathLike) -> str:
    manual = "" if name == "synthetic" else " --manual_dir /path/to/" + name
    return f"mjfn-build build {name}/{builder_config} --data_dir {data_dir}{manual}"


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3] RGB."""
    if not isinstance(data, bytes):  # A damaged shard can give records without the image.
        raise ValueError(f"the flow image of {where} is missing ({type(data).__name__})")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode the flow image of {where}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _unreadable_shards(paths: Sequence[os.PathLike]) -> list[str]:
    """The shard files that array_record cannot read through (only on the error path)."""
    from array_record.python.array_record_module import ArrayRecordReader

    bad = []
    for path in paths:
        try:
            reader = ArrayRecordReader(os.fspath(path))
            reader.read_all()
            damaged = not reader.ok()  # A file cut at a block boundary reads as empty, not ok.
        except Exception:  # noqa: BLE001 - any failure means this file is damaged.
            damaged = True
        if damaged:
            bad.append(os.path.basename(os.fspath(path)))
    return bad


def damaged_dataset_error(
    builder, name: str, config: str, split: str, data_dir, err: Exception
) -> ValueError:
    """One line naming the dataset folder, the damaged shard(s) and how to rebuild.

    array_record's own message ("Corrupted Riegeli/records file: chunk header hash mismatch")
    names no file (issue 10, case 14); a truncated copy or a full disk during the build are
    the usual causes, and the cure is a rebuild.
    """
    paths = builder.info.splits[split].filepaths
    bad = _unreadable_shards(paths)
    cause = str(err).splitlines()[0] if str(err) else type(err).__name__
    what = f"is damaged: cannot read shard(s) {', '.join(bad)}" if bad else "cannot be read"
    return ValueError(
        f"dataset {name}/{config} in {builder.data_dir} {what} ({cause}). If it was copied, or "
        f"its build interrupted, delete {builder.data_dir} and rebuild it with: "
        f"{build_command(name, config, data_dir)}"
    )


def dataset_dir(name: str, builder_config: str, data_dir: str | os.PathLike) -> str | None:
    """The newest built version folder, ``<data_dir>/<name>/<config>/<version>``, or None."""
    root = os.path.join(os.fspath(data_dir), name, builder_config)
    try:
        info = lambda v: os.path.join(root, v, "dataset_info.json")
        versions = [v for v in os.listdir(root) if os.path.isfile(info(v))]
    except FileNotFoundError:
        return None
    parse = lambda v: tuple(int(x) if x.isdigit() else -1 for x in v.split("."))
    return os.path.join(root, max(versions, key=parse)) if versions else None


def load_dataset(
    name: str,
    builder_config: str,
    data_dir: str | os.PathLike,
    split: str = "train",
) -> Dataset:
    """Reads a built split into a Dataset sorted by (subject, clip).

    The dataset is read by directory (``tfds.builder_from_directory``): no builder code, so a
    built dataset copied anywhere loads without ``data_builders``. The records come back from
    array_record in a hashed order, so we sort by the ids carried in the features. A dataset
    that was not built raises FileNotFoundError with the build command.
    """
    import tensorflow_datasets as tfds

    path = dataset_dir(name, builder_config, data_dir)
    if path is None:
        raise FileNotFoundError(
            f"dataset {name}/{builder_config} is not built in {os.fspath(data_dir)} (looked for "
            f"{os.path.join(os.fspath(data_dir), name, builder_config)}/<version>/"
            f"dataset_info.json). Build it with:\n  {build_command(name, builder_config, data_dir)}"
        )
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        raise ValueError(
            f"{name}/{builder_config}: no split {split!r}; have {list(builder.info.splits)}"
        )
    features = builder.info.features
    undecoded = _UNDECODED + _VIEW_FEATURES
    decoders = {key: tfds.decode.SkipDecoding() for key in undecoded if key in features}
    size = int(builder.info.features["flow_image"].shape[0])
    views = ("flow_image",) + tuple(key for key in _VIEW_FEATURES if key in features)
    try:
        source = builder.as_data_source(split=split, decoders=decoders)
        records = source.__getitems__(range(len(source))) if len(source) else []
        subjects = [_text(r["subject"]) for r in records]
        clips = [_text(r["clip"]) for r in records]
        order = sorted(range(len(records)), key=lambda i: (subjects[i], clips[i]))
        # [N, S, S, 3 V] uint8: the views stacked as channels, in their order
        images = np.zeros((len(records), size, size, 3 * len(views)), np.uint8)
        for row, i in enumerate(order):
            for k, view in enumerate(views):
                where = f"{subjects[i]}/{clips[i]}" + (f" ({view})" if k else "")
                images[row, ..., 3 * k : 3 * k + 3] = _decode_png(records[i][view], where)
    except (RuntimeError, ValueError, TypeError, KeyError, OSError) as err:
        raise damaged_dataset_error(builder, name, builder_config, split, data_dir, err) from err
    pick = lambda values: np.asarray([values[i] for i in order], dtype=str)
    metadata = dict(builder.info.metadata or {})
    preprocessing = {
        "dataset": f"{name}/{builder_config}",
        "flow_method": builder_config.rsplit("_", 1)[0],
        "size": size,
        "encoding": "uvs",  # the builders' encoding (u, v, strain)
        "crop": dict(metadata.get("crop", {})),
        "apex": dict(metadata.get("apex", {"mode": "annotated"})),
    }
    if len(views) > 1:  # '<method>_<size>_<n>views'
        preprocessing["flow_method"] = builder_config.rsplit("_", 2)[0]
        preprocessing["views"] = list(views)
    return Dataset(
        images=images,
        labels=np.asarray([records[i]["label"] for i in order], np.int32),
        subjects=pick(subjects),
        sources=pick([_text(r["source"]) for r in records]),
        clips=pick(clips),
        class_names=tuple(builder.info.features["label"].names),
        preprocessing=preprocessing,
    )


GENERATED = "generated"  # data.name of arrays made in memory (benchmarks): no build, no tfds


def dataset_from_config(data_config, input_size: int, seed: int) -> Dataset:
    """The dataset a config names: a built split (``load_dataset``), or with
    ``data.name='generated'`` synthetic flow images made in memory at ``input_size``
    (``data.generated_subjects`` subjects, ``data.generated_samples`` clips; the data seed is
    the config's seed), so a benchmark needs no dataset build."""
    if data_config.name == GENERATED:
        from mjfn_jax.synthetic import make_flow_arrays

        arrays = make_flow_arrays(
            data_config.generated_subjects,
            None,
            input_size,
            seed,
            num_samples=data_config.generated_samples,
        )
        return Dataset.from_synthetic_arrays(arrays)
    dataset = load_dataset(
        data_config.name,
        builder_config_name(data_config, input_size),
        data_config.data_dir,
        split=data_config.split,
    )
    return select_views(dataset, data_config)


def select_views(dataset: Dataset, data_config) -> Dataset:
    """The views ``data.views`` picks of a dataset of ``data.dataset_views`` views, stacked as
    channels in that order (mjfn_jax.views); all of them: the dataset itself."""
    from mjfn_jax import views

    dataset_views = data_config.get("dataset_views", 1)
    chosen = tuple(data_config.get("views", ()))
    have = dataset.images.shape[-1] // views.CHANNELS_PER_VIEW
    if have != dataset_views:
        raise ValueError(
            f"dataset {dataset.preprocessing.get('dataset', '')} has {have} view(s) per clip; "
            f"the config reads {dataset_views} (data.dataset_views)"
        )
    images = views.select_channels(dataset.images, dataset_views, chosen)
    if images is dataset.images:
        return dataset
    preprocessing = dict(dataset.preprocessing)
    if "views" in preprocessing:
        preprocessing["views"] = [preprocessing["views"][v] for v in views.selected(have, chosen)]
    return dataclasses.replace(dataset, images=images, preprocessing=preprocessing)


def builder_config_name(data_config, input_size: int) -> str:
    """The built dataset's config, '<data.flow_method>_<model.input_size>' (e.g. 'tvl1_48'),
    '_<n>views' after it for a dataset of n > 1 views per clip (``data.dataset_views``, e.g.
    'imported_28_4views'): derived, so the image size is stated once, in the model config."""
    from mjfn_jax.views import builder_suffix

    suffix = builder_suffix(data_config.get("dataset_views", 1))
    return f"{data_config.flow_method}_{int(input_size)}{suffix}"
