"""The per-clip work of a build, run in worker processes: frames -> process_pair -> PNG bytes.

Kept free of tensorflow_datasets so that spawned workers start fast (they import only numpy,
OpenCV and mjfn_jax.preprocess).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One annotated clip, resolved to frame files; picklable so it can go to a worker."""

    source: str
    subject: str  # canonical and prefixed, e.g. "casme2/sub01"
    clip: str
    emotion: str
    label: str  # class name of the builder's task
    onset_frame: int
    apex_frame: int
    offset_frame: int
    onset_path: str
    apex_path: str
    crop: str  # "haar", "none" or "center": argument of process_pair

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.clip}"


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 [H, W, 3] RGB -> PNG bytes (OpenCV wants BGR; tfds decodes back to RGB)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {rgb.shape}")
    return buf.tobytes()


def init_worker(parent_pid: int | None = None) -> None:
    """Pool initializer (parent_pid given) or the in-process setup of workers=1 (None).

    One OpenCV thread, in workers and in the parent alike: the pool is the parallelism, and a
    build's bytes must not depend on how many threads OpenCV would pick on a given machine.
    """
    cv2.setNumThreads(1)
    if parent_pid is not None:
        from mjfn_jax.workers import exit_with_parent

        exit_with_parent(parent_pid)  # kill -9 of the build must not orphan its workers.


def process_clip(job: tuple[ClipSpec, str, int]) -> tuple[ClipSpec, dict | None, str | None]:
    """Worker: frames -> process_pair -> encoded example, or a skip reason (no face found).

    Bad frames (unreadable, too small, onset and apex of different sizes) raise, naming the clip
    and both frame files: process_pair alone knows neither.
    """
    from mjfn_jax.preprocess import NoFaceFound, process_pair, read_frame

    clip, method, size = job
    files = f"onset {clip.onset_path}, apex {clip.apex_path}"
    try:
        onset, apex = read_frame(clip.onset_path), read_frame(clip.apex_path)
        pair = process_pair(onset, apex, crop=clip.crop, flow_method=method, size=size)
    except NoFaceFound:
        return clip, None, "no face found"
    except FileNotFoundError as err:
        raise FileNotFoundError(f"clip {clip.key}: {err}") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"clip {clip.key}: {err} ({files})") from None
    example = {
        "flow_image": encode_png(pair.flow_image),
        "flow": np.asarray(pair.flow, np.float32),
        "onset": encode_png(pair.onset_face),
        "apex": encode_png(pair.apex_face),
        "label": clip.label,
        "emotion": clip.emotion,
        "subject": clip.subject,
        "source": clip.source,
        "clip": clip.clip,
        "onset_frame": clip.onset_frame,
        "apex_frame": clip.apex_frame,
        "offset_frame": clip.offset_frame,
    }
    return clip, example, None
