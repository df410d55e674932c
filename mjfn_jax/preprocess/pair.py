"""process_pair: the one entry point from an (onset, apex) pair of frames to a flow image."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from mjfn_jax.preprocess.encode import encode_flow
from mjfn_jax.preprocess.face import Box, apply_box, face_box, to_gray, to_rgb, validate_frame
from mjfn_jax.preprocess.flow import compute_flow, resize_flow


@dataclasses.dataclass(frozen=True)
class PairResult:
    flow_image: np.ndarray  # [S, S, 3] uint8: encoded flow (u, v, strain min-max, or HSV RGB)
    flow: np.ndarray  # [S, S, 2] float32: (u, v) in pixels at the output resolution
    onset_face: np.ndarray  # [S, S, 3] uint8 RGB: the cropped onset face, resized
    apex_face: np.ndarray  # [S, S, 3] uint8 RGB: the same box on the apex frame, resized
    box: Box  # crop box (x, y, w, h) in frame pixels, chosen on the onset frame


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if side * side < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (side, side), interpolation=interp)


def default_work_size(box: Box, size: int) -> int:
    """Flow working resolution: the crop's own resolution, capped at 2x the output size.

    Estimating at (up to) 2x the output and then area-averaging keeps sub-pixel micro-motions
    measurable (they halve at each halving of the resolution) while bounding TV-L1's cost on big
    crops (640x480 CASME II, 2040x1088 SAMM). Never below the output size.
    """
    return max(size, min(max(box.w, box.h), 2 * size))


def process_pair(
    onset: np.ndarray,
    apex: np.ndarray,
    *,
    crop: str = "haar",
    flow_method: str = "tvl1",
    size: int = 112,
    encoding: str = "uvs",
    margin: float = 0.1,
    on_no_face: str = "raise",
    work_size: int | None = None,
) -> PairResult:
    """Crops the face, computes onset->apex optical flow and encodes it as a flow image.

    onset, apex: uint8 frames of one shape, [H, W] gray or [H, W, 3] RGB.
    crop: 'haar' | 'center' | 'none' (see face.face_box); the box is chosen on the onset frame
    and applied unchanged to the apex, so head motion stays in the flow rather than in the crop.
    flow_method: 'tvl1' | 'farneback' | 'dis'. encoding: 'uvs' | 'hsv'.
    margin: fraction of the detected face side added on every side ('haar' only).
    on_no_face: 'raise' (NoFaceFound), or 'center' / 'none' to fall back to that crop.
    work_size: side at which flow is computed (default: default_work_size).
    """
    onset = validate_frame(onset, "onset")
    apex = validate_frame(apex, "apex")
    if onset.shape != apex.shape:
        raise ValueError(f"onset and apex differ in shape: {onset.shape} vs {apex.shape}")
    if not isinstance(size, int | np.integer) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    box = face_box(onset, crop=crop, margin=margin, on_no_face=on_no_face)
    onset_crop, apex_crop = apply_box(onset, box), apply_box(apex, box)
    work = default_work_size(box, size) if work_size is None else int(work_size)
    flow_work = compute_flow(  # [work, work, 2] float32
        _resize(to_gray(onset_crop), work), _resize(to_gray(apex_crop), work), flow_method
    )
    flow = resize_flow(flow_work, size)  # [size, size, 2] float32
    return PairResult(
        flow_image=encode_flow(flow, encoding),
        flow=flow,
        onset_face=_resize(to_rgb(onset_crop), size),
        apex_face=_resize(to_rgb(apex_crop), size),
        box=box,
    )
