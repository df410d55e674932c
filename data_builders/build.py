"""Builds a dataset with tfds `download_and_prepare` into array_record files, without TensorFlow.

`tfds build` needs TensorFlow (docs/design.md#built-dataset-format); this is our replacement:
it builds one `<name>/<config>`, computes the flows in its own process pool, and returns (and
prints) a summary: examples per split and class, skipped rows and why, seconds, pairs per second.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import data_builders
from data_builders.apex import format_apex

log = logging.getLogger("data_builders")


def parse_name(name: str, builder_config: str | None = None) -> tuple[str, str | None]:
    """'megc2019/tvl1_112' -> ('megc2019', 'tvl1_112'); a config given twice must agree."""
    base, _, config = name.partition("/")
    if config and builder_config and config != builder_config:
        raise ValueError(f"config given twice: {name!r} and builder_config={builder_config!r}")
    return base, config or builder_config


def make_builder(
    name: str, *, builder_config: str | None, data_dir: str | os.PathLike, **kwargs: Any
):
    """The Builder of data_builders/<name> (imported directly, no tfds registry lookup)."""
    cls = data_builders.builder_cls(name)
    config = builder_config or cls.DEFAULT_BUILDER_CONFIG_NAME
    known = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in known:
        raise ValueError(f"{name}: unknown builder config {config!r}; known: {', '.join(known)}")
    with no_bucket_lookup():
        return cls(config=config, data_dir=os.fspath(data_dir), **kwargs)


@contextlib.contextmanager
def no_bucket_lookup() -> Iterator[None]:
    """A builder made before its dataset_info.json exists asks GCS for precomputed info
    (``DatasetInfo.initialize_from_bucket``), which makes a temporary folder first and leaves it
    empty in /tmp, one per fresh build. Our datasets are never on GCS: the lookup is skipped
    while the builder is made."""
    from tensorflow_datasets.core import dataset_info

    cls = dataset_info.DatasetInfo
    original = cls.initialize_from_bucket
    cls.initialize_from_bucket = lambda self: None
    try:
        yield
    finally:
        cls.initialize_from_bucket = original


def class_counts(builder) -> dict[str, dict[str, int]]:
    """Examples per split and class, read back from the written records (labels only)."""
    import tensorflow_datasets as tfds

    names = builder.info.features["label"].names
    features = builder.info.features
    skip = {k: tfds.decode.SkipDecoding() for k in ("flow_image", "onset", "apex") if k in features}
    counts = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split=split, decoders=skip)
        labels = collections.Counter(int(source[i]["label"]) for i in range(len(source)))
        counts[split] = {names[k]: labels.get(k, 0) for k in range(len(names))}
    return counts


@contextlib.contextmanager
def build_lock(version_dir: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on the config folder (`<data_dir>/<name>/<config>`) for a build.

    tfds writes into `incomplete.<random>_<version>/` beside the version folder and renames it
    at the end; a build killed by kill -9 leaves that folder behind forever (issue 10, case
    15). With the lock held no other build of this config is running, so any such folder is
    stale and is removed (logged). The kernel drops a flock when its process dies, so a killed
    build never blocks the next one; a second build running at the same time is refused.
    """
    folder = Path(version_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another build of {folder} is running (it holds {folder / '.build.lock'}); "
                "wait for it to finish"
            ) from None
        for stale in sorted(folder.glob("incomplete.*")):
            log.warning("removing %s, left behind by an interrupted build", stale)
            shutil.rmtree(stale)
        yield


@contextlib.contextmanager
def deterministic_records() -> Iterator[None]:
    """tfds serializes each example as a tf.train.Example proto with `SerializeToString()`.

    Its features are a protobuf map, written in an order that follows Python's per-process
    string-hash seed: two builds of the same examples gave different shard bytes (measured:
    every record differed, the decoded features did not). Deterministic serialization sorts the
    map, so the same examples give the same files on every run and machine (issue 10, case
    17); readers parse either order alike. Patched for the duration of our build only.
    """
    from tensorflow_datasets.core import example_serializer

    cls = example_serializer.ExampleSerializer
    original = cls.serialize_example

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)

    cls.serialize_example = serialize_example
    try:
        yield
    finally:
        cls.serialize_example = original


def check_reused(builder, metadata: dict[str, Any], crop: str | None) -> None:
    """An existing build is reused only if the options that change its bytes agree with it.

    Otherwise `--crop center` or `--apex_fraction 0.3` on a folder built without them would
    silently give the old data under the new name. A crop override agrees when every clip of
    the build used that crop.
    """
    wanted = {
        "synthetic": getattr(builder, "synthetic", None),
        "apex_fraction": getattr(builder, "apex_fraction", None),
        "crop": None if crop is None else {crop},
    }
    built = {**metadata, "crop": set(metadata.get("crop", {}))}
    for key, value in wanted.items():
        if value is not None and built.get(key) != value:
            raise ValueError(
                f"{builder.data_dir} was built with {key}={built.get(key)}, not {value}: delete "
                "that folder or use another --data_dir"
            )
    built_apex = metadata.get("apex", {}).get("mode", "annotated")
    if built_apex != getattr(builder, "apex", "annotated"):
        raise ValueError(
            f"{builder.data_dir} was built with --apex {built_apex}, not {builder.apex}: delete "
            "that folder or use another --data_dir"
        )


def check_source(builder, metadata: dict[str, Any], manual_dir, data_dir) -> None:
    """A build is reused for a --manual_dir only if it was built from that folder's files.

    Otherwise a rebuild from an edited CSV, or from a folder that does not exist, would say
    "reused" and keep the old labels. A builder with ``source_fingerprint(manual_dir)`` (a hash
    of its source files) is compared by content, so a moved folder still matches; the others
    by the manual folder's path. A build that recorded neither cannot be checked.
    """
    if manual_dir is None:  # no source named: the build is what is asked for
        return
    check_manual_dir(builder, manual_dir, data_dir)
    remedy = f"delete {builder.data_dir} to rebuild, or leave out --manual_dir to reuse it"
    fingerprint = getattr(builder, "source_fingerprint", None)
    if fingerprint is not None and "source_sha256" in metadata:
        if fingerprint(Path(manual_dir)) != metadata["source_sha256"]:
            raise ValueError(
                f"{builder.data_dir} was built from other files than {manual_dir} holds now "
                f"(built from {metadata.get('csv')} and {metadata.get('source_folder')}/); "
                + remedy
            )
    elif "manual_dir" in metadata and metadata["manual_dir"] != str(Path(manual_dir).resolve()):
        raise ValueError(
            f"{builder.data_dir} was built from {metadata['manual_dir']}, not {manual_dir}; "
            + remedy
        )


def check_manual_dir(builder, manual_dir: str | os.PathLike | None, data_dir) -> None:
    """A missing or empty manual folder is a FileNotFoundError with the expected layout.

    tfds raises a bare AssertionError for it; without --manual_dir it looks in
    <data_dir>/downloads/manual, which the message says.
    """
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if not instructions:
        return
    folder = Path(manual_dir) if manual_dir is not None else Path(data_dir) / "downloads" / "manual"
    if not folder.is_dir() or not any(folder.iterdir()):
        given = "" if manual_dir is not None else " (no --manual_dir given: the tfds default)"
        raise FileNotFoundError(
            f"{builder.name} manual folder {folder}{given} does not exist or is empty\n"
            f"{instructions}"
        )


@contextlib.contextmanager
def _tfds_quiet():
    """TFDS's lines that say nothing about a manual build ("Downloading and preparing dataset
    Unknown size", "... downloaded and prepared", printed to stdout; "Variant folder ... has no
    dataset_info.json", a warning for every fresh build) stay out of the output; its errors
    pass. The build's own summary says where the dataset went."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl.setLevel(level)


def build_dataset(
    name: str,
    *,
    builder_config: str | None = None,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    crop: str | None = None,
    apex: str = "annotated",
    builder_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds `name` (optionally 'name/config') and returns the summary dict.

    workers: flow processes (default os.cpu_count()). crop: None (per source, from the manual
    folder) or 'haar' / 'center' / 'none' for every clip. apex: 'annotated' (the sheet's; SMIC:
    the middle frame), 'spotted' or 'middle' (data_builders.apex). builder_kwargs: builder
    specific, e.g. {'apex_fraction': 0.5} (smic, megc2019) or {'synthetic': {'num_subjects': 4}}.
    An existing build is reused (its summary comes from the files and their metadata).
    """
    import tensorflow_datasets as tfds

    name, builder_config = parse_name(name, builder_config)
    with _tfds_quiet():
        builder = make_builder(
            name,
            builder_config=builder_config,
            data_dir=data_dir,
            workers=workers,
            crop=crop,
            apex=apex,
            **(builder_kwargs or {}),
        )
    already = builder.is_prepared()
    tfds.disable_progress_bar()  # Ours (tqdm, per flow pair) replaces tfds's own bars.
    download_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir),
        try_download_gcs=False,  # Never look for these names on GCS (offline machines).
    )
    start = time.perf_counter()
    if already:
        check_reused(builder, dict(builder.info.metadata or {}), crop)
        check_source(builder, dict(builder.info.metadata or {}), manual_dir, data_dir)
    else:
        check_manual_dir(builder, manual_dir, data_dir)
        if manual_dir is not None and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            builder.info.metadata["manual_dir"] = str(Path(manual_dir).resolve())
        with build_lock(builder.data_dir), deterministic_records(), _tfds_quiet():
            builder.download_and_prepare(
                file_format="array_record", download_config=download_config
            )
    seconds = time.perf_counter() - start
    metadata = dict(builder.info.metadata or {})
    counts = class_counts(builder)
    pairs, flow_seconds = int(metadata.get("clips", 0)), metadata.get("flow_seconds")
    return {
        "name": name,
        "config": builder.builder_config.name,
        "path": str(Path(builder.data_dir)),
        "status": "already built (reused)" if already else "built",
        "num_examples": {split: sum(c.values()) for split, c in counts.items()},
        "class_counts": counts,
        "skipped": metadata.get("skipped", {}),
        "crop": metadata.get("crop", {}),
        "apex": metadata.get("apex", {"mode": "annotated"}),
        "seconds": round(seconds, 2),
        "flow_seconds": None if already else flow_seconds,
        "pairs_per_s": round(pairs / flow_seconds, 2) if flow_seconds and not already else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['name']}/{summary['config']}: {summary['status']} at {summary['path']}",
        f"  crop: {summary['crop']}",
        format_apex(summary.get("apex", {})),
    ]
    for split, counts in summary["class_counts"].items():
        per_class = ", ".join(f"{k} {v}" for k, v in counts.items())
        lines.append(f"  {split}: {summary['num_examples'][split]} examples ({per_class})")
    skipped = summary["skipped"]
    lines.append(f"  skipped: {sum(skipped.values())}" + ("" if skipped else " (none)"))
    lines += [f"    {n:4d}  {reason}" for reason, n in skipped.items()]
    rate = summary["pairs_per_s"]
    rate_text = f" ({summary['flow_seconds']} s of flow, {rate} pairs/s)" if rate else ""
    lines.append(f"  time: {summary['seconds']} s{rate_text}")
    return "\n".join(lines)
