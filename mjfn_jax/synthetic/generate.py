"""The synthetic micro-expression set: raw CASME II-like layout, or encoded true flows directly.

Random streams are keyed by (seed, subject index, clip index), so a clip's content does not depend
on how many clips come before it, on the worker count, or on which of the two outputs is made:
make_flow_arrays(seed=s) encodes exactly the true flows that generate_raw(seed=s) writes.
"""

from __future__ import annotations

import concurrent.futures
import csv
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np

from mjfn_jax.preprocess import encode_flow, resize_flow
from mjfn_jax.synthetic.faces import FaceGeometry, render_neutral, sample_geometry
from mjfn_jax.synthetic.motion import CLASS_NAMES, ClipSpec, render_clip, sample_clip, true_flow
from mjfn_jax.workers import exit_with_parent

# Bumped whenever the output for a given seed changes; callers that cache generated data (the
# synthetic TFDS builder) can put it in their cache key.
GENERATOR_VERSION = 1
ANNOTATION_COLUMNS = ("subject", "clip", "onset_frame", "apex_frame", "offset_frame", "emotion")
# Stream tags (distinct SeedSequence entropy); APPEARANCE is public: tools render a subject
# neutral face as the generator does.
_GEOMETRY, APPEARANCE, _CLIP = 1, 2, 3


def subject_name(index: int) -> str:
    return f"s{index + 1:02d}"


def subject_geometry(seed: int, subject: int, frame_size: int = 128) -> FaceGeometry:
    return sample_geometry(np.random.default_rng([seed, _GEOMETRY, subject]), frame_size)


def clip_labels(seed: int, subject: int, num_clips: int) -> np.ndarray:
    """int32 [num_clips]: classes cycle through a per-subject permutation (balanced per subject)."""
    order = np.random.default_rng([seed, _CLIP, subject]).permutation(len(CLASS_NAMES))
    return order[np.arange(num_clips) % len(CLASS_NAMES)].astype(np.int32)


def clip_spec(seed: int, subject: int, clip: int, label: int) -> ClipSpec:
    return sample_clip(np.random.default_rng([seed, _CLIP, subject, clip + 1]), int(label))


def clips_per_subject_counts(
    num_subjects: int, clips_per_subject: int | None, num_samples: int | None
) -> list[int]:
    """Clip count of each subject: all equal, or `num_samples` spread as evenly as possible."""
    if num_samples is None:
        if clips_per_subject is None or clips_per_subject < 1:
            raise ValueError("give clips_per_subject >= 1 or num_samples")
        return [clips_per_subject] * num_subjects
    if num_samples < num_subjects:
        raise ValueError(f"num_samples={num_samples} < num_subjects={num_subjects}")
    base, extra = divmod(num_samples, num_subjects)
    return [base + (i < extra) for i in range(num_subjects)]


def _write_subject(
    out_dir: str, seed: int, subject: int, num_clips: int, frame_size: int
) -> list[tuple]:
    """Renders and writes one subject's clips; returns its annotation rows."""
    cv2.setNumThreads(1)  # parallelism is across subjects
    geometry = subject_geometry(seed, subject, frame_size)
    neutral = render_neutral(geometry, np.random.default_rng([seed, APPEARANCE, subject]))
    name, rows = subject_name(subject), []
    for clip, label in enumerate(clip_labels(seed, subject, num_clips)):
        spec = clip_spec(seed, subject, clip, label)
        clip_name = f"{name}_{clip + 1:02d}"
        frame_dir = Path(out_dir, "frames", name, clip_name)
        frame_dir.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(render_clip(neutral, geometry, spec)):
            path = frame_dir / f"img{spec.start_frame + t}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {path}")
        flow_dir = Path(out_dir, "true_flow", name)
        flow_dir.mkdir(parents=True, exist_ok=True)
        np.save(flow_dir / f"{clip_name}.npy", true_flow(geometry, spec).astype(np.float32))
        start = spec.start_frame
        rows.append(
            (
                name,
                clip_name,
                start,
                start + spec.apex_index,
                start + spec.num_frames - 1,
                CLASS_NAMES[label],
            )
        )
    return rows


def generate_raw(
    out_dir: str | os.PathLike,
    *,
    num_subjects: int = 12,
    clips_per_subject: int = 9,
    seed: int = 0,
    frame_size: int = 128,
    workers: int | None = None,
    num_samples: int | None = None,
) -> str:
    """Writes the raw synthetic set and returns the path of its annotation file.

    Layout (CASME II-like, frame numbers unpadded):
      out_dir/frames/<subject>/<clip>/img<k>.png   uint8 RGB, frame_size x frame_size
      out_dir/annotations.csv                      subject, clip, onset_frame, apex_frame,
                                                   offset_frame, emotion
      out_dir/true_flow/<subject>/<clip>.npy       float32 [H, W, 2] onset->apex, frame pixels,
                                                   apex(x + f(x)) = onset(x) (OpenCV's convention)
    Subjects are s01, s02, ...; clips s01_01, ...; faces fill the centre (use crop="center").
    workers: processes (default: min(CPU count, subjects)); the output does not depend on it.
    """
    counts = clips_per_subject_counts(num_subjects, clips_per_subject, num_samples)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    workers = min(os.cpu_count() or 1, num_subjects) if workers is None else max(1, workers)
    jobs = [(out_dir, seed, s, n, frame_size) for s, n in enumerate(counts)]
    if workers == 1:
        results = [_write_subject(*job) for job in jobs]
    else:  # spawn: safe even when the caller has already imported jax (fork is not)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as pool:  # Workers exit with this process, even after kill -9 (mjfn_jax.workers).
            results = list(pool.map(_write_subject, *zip(*jobs, strict=True)))
    path = os.path.join(out_dir, "annotations.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ANNOTATION_COLUMNS)
        writer.writerows(row for rows in results for row in rows)
    return path


def make_flow_arrays(
    num_subjects: int = 12,
    clips_per_subject: int | None = 9,
    size: int = 48,
    seed: int = 0,
    *,
    num_samples: int | None = None,
    frame_size: int = 128,
    encoding: str = "uvs",
) -> dict:
    """Encodes the clips' TRUE onset->apex flows as flow images (no frames, no flow estimation).

    Same clips as generate_raw with the same arguments; the flow is resized to `size` (the whole
    frame, i.e. crop="center" of a square frame) and encoded like process_pair does. Use
    num_samples (with clips_per_subject=None) for uneven counts, e.g. 442 over 68 subjects.
    Returns images uint8 [N, size, size, 3], labels int32 [N], subjects str [N] ('s01'),
    clips str [N] ('s01_01'), class_names tuple.
    """
    counts = clips_per_subject_counts(num_subjects, clips_per_subject, num_samples)
    images, labels, subjects, clips = [], [], [], []
    for subject, num_clips in enumerate(counts):
        geometry = subject_geometry(seed, subject, frame_size)
        for clip, label in enumerate(clip_labels(seed, subject, num_clips)):
            flow = resize_flow(true_flow(geometry, clip_spec(seed, subject, clip, label)), size)
            images.append(encode_flow(flow, encoding))
            labels.append(label)
            subjects.append(subject_name(subject))
            clips.append(f"{subject_name(subject)}_{clip + 1:02d}")
    return dict(
        images=np.stack(images),  # [N, size, size, 3] uint8
        labels=np.asarray(labels, np.int32),  # [N]
        subjects=np.asarray(subjects),  # [N] str
        clips=np.asarray(clips),  # [N] str
        class_names=CLASS_NAMES,
    )
