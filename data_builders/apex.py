"""Which frame is the apex: the sheet's (annotated), a spotted one, or the clip's middle frame.

``--apex annotated`` (the default) changes nothing: the sheet's apex, and for SMIC, which has no
apex annotation, the frame its builder chooses (the middle). ``spotted`` runs
mjfn_jax.preprocess.spot_apex on the clip's frames from onset to offset (same crop as the flow)
and, where the sheet has an apex, measures spotted - annotated: the build summary reports its
median and 90th percentile in frames, so that users with the real data learn how good spotting
is on it. ``middle`` takes the middle frame of onset..offset for every source (SMIC's rule).

Kept apart from common.py and free of tensorflow_datasets: spotting runs in spawned worker
processes, like the flows (flow_worker.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from data_builders.flow_worker import ClipSpec, init_worker

APEX_MODES = ("annotated", "spotted", "middle")
UNANNOTATED_SOURCES = frozenset({"smic"})  # no apex in any sheet: the builder's middle frame


def clip_frames(clip: ClipSpec) -> list[tuple[int, str]]:
    """(frame number, path) of the clip from onset to offset (to the folder's last frame when
    the sheet gives no offset), from the onset frame's folder."""
    from data_builders.parsing import frames_by_number

    frames = frames_by_number(Path(clip.onset_path).parent, clip.key)
    last = clip.offset_frame if clip.offset_frame >= clip.onset_frame else max(frames)
    return [(n, str(frames[n])) for n in sorted(frames) if clip.onset_frame <= n <= last]


def with_apex(clip: ClipSpec, frames: list[tuple[int, str]], position: int) -> ClipSpec:
    number, path = frames[position]
    return dataclasses.replace(clip, apex_frame=number, apex_path=path)


def middle_position(count: int) -> int:
    """SMIC's rule (apex_fraction 0.5, rounded half up), never the onset itself."""
    return max(1, math.floor((count - 1) * 0.5 + 0.5))


def spot_clip(clip: ClipSpec) -> tuple[ClipSpec, int | None, str | None]:
    """Worker: (clip with the spotted apex, spotted - annotated in frames or None, failure)."""
    import cv2

    from mjfn_jax.preprocess import NoFaceFound, spot_apex
    from mjfn_jax.preprocess.face import decode_image_file

    frames = clip_frames(clip)
    if len(frames) < 2:
        return clip, None, "fewer than 2 frames from onset to offset"
    gray = [cv2.cvtColor(decode_image_file(p), cv2.COLOR_BGR2GRAY) for _, p in frames]
    try:
        position = spot_apex(gray, crop=clip.crop).index
    except NoFaceFound:
        return clip, None, "no face found"  # the flow worker skips (and counts) this clip
    numbers = [n for n, _ in frames]
    error = None
    if clip.source not in UNANNOTATED_SOURCES and clip.apex_frame in numbers:
        error = position - numbers.index(clip.apex_frame)
    return with_apex(clip, frames, position), error, None


def error_summary(errors: list[int]) -> dict:
    """median / p90 / max of |spotted - annotated| in frames, and the mean signed error."""
    if not errors:
        return {"clips": 0}
    err = np.abs(np.asarray(errors))
    return {
        "clips": len(errors),
        "median": float(np.median(err)),
        "p90": float(np.percentile(err, 90)),
        "max": int(err.max()),
        "bias": round(float(np.mean(errors)), 2),
    }


def choose_apexes(
    clips: list[ClipSpec], mode: str, workers: int | None = None
) -> tuple[list[ClipSpec], dict]:
    """The clips with their apex chosen by `mode`, and what the summary reports about it."""
    if mode not in APEX_MODES:
        raise ValueError(f"apex must be one of {APEX_MODES}, got {mode!r}")
    if mode == "annotated":
        return clips, {"mode": mode}
    start = time.perf_counter()
    if mode == "middle":
        out = []
        for clip in clips:
            frames = clip_frames(clip)
            out.append(with_apex(clip, frames, middle_position(len(frames))))
        return out, {"mode": mode}
    workers = max(1, min(workers or os.cpu_count() or 1, len(clips) or 1))
    if workers == 1:
        init_worker()
        results = list(map(spot_clip, clips))
    else:  # spawn, as generate_examples: forking after jax/tfds started threads can deadlock
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=init_worker,
            initargs=(os.getpid(),),  # Workers exit when this process dies (even by kill -9).
        ) as pool:
            results = list(pool.map(spot_clip, clips, chunksize=1))
    errors = [e for _, e, _ in results if e is not None]
    failed = sum(reason is not None for _, _, reason in results)
    info = {
        "mode": mode,
        "spotted_vs_annotated": error_summary(errors),
        "not_spotted": failed,
        "spot_seconds": round(time.perf_counter() - start, 2),
    }
    return [clip for clip, _, _ in results], info


def format_apex(info: dict) -> str:
    """One summary line, e.g. 'apex: spotted; spotted - annotated over 145 clips: median 1,
    p90 3, max 9 frames (bias -0.4); 12.3 s'."""
    text = f"  apex: {info.get('mode', 'annotated')}"
    stats = info.get("spotted_vs_annotated")
    if stats is not None:
        if stats["clips"]:
            text += (
                f"; |spotted - annotated| over {stats['clips']} clips: median "
                f"{stats['median']:g}, p90 {stats['p90']:g}, max {stats['max']} frames "
                f"(mean signed {stats['bias']:+g})"
            )
        else:
            text += "; no annotated apex to compare with"
        if info.get("not_spotted"):
            text += f"; {info['not_spotted']} clip(s) kept their apex (no face or < 2 frames)"
        text += f"; {info.get('spot_seconds')} s of spotting"
    return text
