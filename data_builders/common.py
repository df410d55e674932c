"""Shared logic of the MJFN-JAX TFDS builders: configs, features, clip specs, skips, the flow pool.

Every builder (``data_builders/<name>/<name>_dataset_builder.py``) only knows how to turn its
manual folder into a list of :class:`ClipSpec` (annotation parsing, frame lookup, labels). This
module turns clip specs into TFDS examples: it reads the onset and apex frames, calls
``mjfn_jax.preprocess.process_pair`` (crop, optical flow, strain, encoding) in a process pool,
encodes the images as PNG with OpenCV (so TensorFlow is never needed:
docs/design.md#built-dataset-format) and counts every skipped clip with its reason.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_builders.apex import APEX_MODES, choose_apexes
from data_builders.flow_worker import ClipSpec, init_worker, process_clip
from data_builders.skips import SkipLog
from mjfn_jax.preprocess import CROP_MODES, FLOW_METHODS
from mjfn_jax.synthetic.motion import CLASS_NAMES

SIZES = (32, 48, 64, 112, 224)
THREE_CLASSES = CLASS_NAMES  # the 3-class task of MEGC2019 (and of the synthetic generator)


@dataclasses.dataclass
class FlowConfig(tfds.core.BuilderConfig):
    """A BuilderConfig is what changes the bytes on disk: the flow method and the resolution."""

    flow_method: str = "tvl1"
    size: int = 112


def make_configs() -> list[FlowConfig]:
    """All `<method>_<size>` configs, e.g. tvl1_112, farneback_112, dis_112, tvl1_48."""
    return [
        FlowConfig(
            name=f"{method}_{size}",
            flow_method=method,
            size=size,
            description=f"{method} optical flow between onset and apex, {size}x{size} output.",
        )
        for size in SIZES
        for method in FLOW_METHODS
    ]


def make_features(class_names: Sequence[str], size: int) -> tfds.features.FeaturesDict:
    image = lambda: tfds.features.Image(shape=(size, size, 3), encoding_format="png")
    frame = lambda: tfds.features.Scalar(dtype=np.int32)
    return tfds.features.FeaturesDict(
        {
            "flow_image": image(),  # [S, S, 3] uint8: (u, v, strain), per-channel min-max.
            "flow": tfds.features.Tensor(shape=(size, size, 2), dtype=np.float32),  # pixels
            "onset": image(),  # [S, S, 3] uint8 RGB, cropped face
            "apex": image(),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "emotion": tfds.features.Text(),  # as annotated (lower case)
            "subject": tfds.features.Text(),  # canonical, source-prefixed: "casme2/sub01"
            "source": tfds.features.Text(),  # "casme2", "samm", "smic", "synthetic"
            "clip": tfds.features.Text(),
            "onset_frame": frame(),
            "apex_frame": frame(),
            "offset_frame": frame(),
        }
    )


def generate_examples(
    clips: Sequence[ClipSpec],
    *,
    flow_method: str,
    size: int,
    workers: int | None,
    skips: SkipLog,
    desc: str,
) -> Iterator[tuple[str, dict]]:
    """Computes every clip's flow in a process pool (tfds itself generates in one process)."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(clips) or 1))
    jobs = [(clip, flow_method, size) for clip in clips]
    # A bar on a terminal; a log file gets the build's summary instead of \r-separated updates.
    bar = tqdm(
        total=len(jobs), desc=desc, unit="pair", dynamic_ncols=True,
        disable=not sys.stderr.isatty(),
    )  # fmt: skip
    if workers == 1:
        init_worker()
        results: Iterator = map(process_clip, jobs)
        pool = None
    else:
        # spawn, not fork: forking a process that has started threads (jax, tfds) can deadlock.
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(os.getpid(),),  # Workers exit when this process dies (even by kill -9).
        )
        results = pool.map(process_clip, jobs, chunksize=1)
    try:
        for clip, example, reason in results:
            bar.update(1)
            if example is None:
                skips.skip(reason, f"{clip.key} (onset frame {clip.onset_path})")
                continue
            yield clip.key, example
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


class NothingBuilt(ValueError):
    """Every clip was skipped: nothing to write. `skipped` maps each reason to its count."""

    def __init__(self, message: str, skipped: dict[str, int]) -> None:
        super().__init__(message)
        self.skipped = skipped


def skip_text(skipped: dict[str, int]) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in skipped.items()) or "none"


def check_unique_keys(clips: Sequence[ClipSpec]) -> None:
    """Two clips with one (subject, clip) id are an error naming both frame folders.

    tfds keys examples by this id and fails on a duplicate with an unrelated TensorFlow import
    error (issue 10, case 12); e.g. SMIC folders s1/ and s01/ both map to smic/s01.
    """
    first: dict[str, ClipSpec] = {}
    for clip in clips:
        if clip.key in first:
            raise ValueError(
                f"two clips have the id {clip.key}: frames in "
                f"{os.path.dirname(first[clip.key].onset_path)} and "
                f"{os.path.dirname(clip.onset_path)}; remove or rename one"
            )
        first[clip.key] = clip


class FlowBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class of the five builders: subclasses set CLASS_NAMES and implement list_clips."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = make_configs()
    DEFAULT_BUILDER_CONFIG_NAME = "tvl1_112"
    CLASS_NAMES: tuple[str, ...] = ()
    HOMEPAGE = ""

    def __init__(
        self,
        *,
        workers: int | None = None,
        crop: str | None = None,
        apex: str = "annotated",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        valid = isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
        if workers is not None and not valid:  # 0 used to mean "CPU count", -3 one worker.
            raise ValueError(
                f"workers must be an integer >= 1 (or None: CPU count), got {workers!r}"
            )
        if apex not in APEX_MODES:
            raise ValueError(f"apex must be one of {APEX_MODES}, got {apex!r}")
        # 'annotated' (the sheet's; SMIC: middle), 'spotted' or 'middle': data_builders.apex.
        self.apex = apex
        self.apex_info: dict[str, Any] = {"mode": apex}
        if crop is not None and crop not in CROP_MODES:
            raise ValueError(f"crop must be None or one of {CROP_MODES}, got {crop!r}")
        self.workers = workers  # Flow worker processes; None = os.cpu_count().
        # None: each source's crop follows its manual folder (raw frames: 'haar', an official
        # cropped set: 'none'). An override is for frames that are already face-aligned.
        self.crop = crop
        self.skips = SkipLog()
        self.crop_modes: collections.Counter[str] = collections.Counter()

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=make_features(self.CLASS_NAMES, self.builder_config.size),
            supervised_keys=("flow_image", "label"),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    @abc.abstractmethod
    def list_clips(self, dl_manager: tfds.download.DownloadManager) -> list[ClipSpec]:
        """Parses the manual folder into clip specs; counts skipped rows in self.skips."""

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        clips = self.list_clips(dl_manager)
        if not clips:
            skipped = self.skips.as_dict()
            raise NothingBuilt(
                f"{self.name}: no usable clip found; skipped: {skip_text(skipped)}", skipped
            )
        check_unique_keys(clips)
        if self.crop is not None:
            clips = [dataclasses.replace(clip, crop=self.crop) for clip in clips]
        self.crop_modes.update(clip.crop for clip in clips)
        clips, self.apex_info = choose_apexes(clips, self.apex, self.workers)
        return {"train": self._generate_examples(clips)}

    def _generate_examples(self, clips: list[ClipSpec]):
        config = self.builder_config
        start = time.perf_counter()
        examples = generate_examples(
            clips,
            flow_method=config.flow_method,
            size=config.size,
            workers=self.workers,
            skips=self.skips,
            desc=f"{self.name}/{config.name}",
        )
        written = 0
        for key, example in examples:
            written += 1
            yield key, example
        if not written:  # Before tfds's bare "AssertionError: No examples were yielded".
            skipped = self.skips.as_dict()
            raise NothingBuilt(
                f"{self.name}/{config.name}: all {len(clips)} clips were skipped, nothing was "
                f"written ({skip_text(skipped)})",
                skipped,
            )
        # Persisted in metadata.json so that a later summary still knows what was left out.
        self.info.metadata.update(
            {
                "skipped": self.skips.as_dict(),
                "crop": dict(self.crop_modes),
                "clips": len(clips),
                "apex": self.apex_info,
                "flow_seconds": round(time.perf_counter() - start, 3),
            }
        )
