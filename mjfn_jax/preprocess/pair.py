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


def _resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if width * height < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    return _resize_to(image, side, side)


def context_region(frame: np.ndarray, box: Box, fraction: float) -> tuple[np.ndarray, int, int]:
    """The box grown by `fraction` of its size on every side, replicate-padded past the frame.

    Returns (region, pad_x, pad_y) with the pads in frame pixels. Flow methods are least accurate
    at image borders (motion into or out of the image is unobservable there; measured on the
    synthetic set: border-pixel EPE ~2x interior). Estimating on a larger region and cutting the
    box out afterwards moves those errors off the face crop, where they would otherwise set the
    min-max range of the encoded image. Real context is used where the frame has it.
    """
    height, width = frame.shape[:2]
    pad_x, pad_y = int(np.ceil(fraction * box.w)), int(np.ceil(fraction * box.h))
    x0, y0 = box.x - pad_x, box.y - pad_y
    x1, y1 = box.x + box.w + pad_x, box.y + box.h + pad_y
    inside = frame[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    region = cv2.copyMakeBorder(
        inside,
        max(-y0, 0),
        max(y1 - height, 0),
        max(-x0, 0),
        max(x1 - width, 0),
        cv2.BORDER_REPLICATE,
    )
    return region, pad_x, pad_y


def flow_on_box(
    onset_gray: np.ndarray, apex_gray: np.ndarray, box: Box, work: int, method: str, context: float
) -> np.ndarray:
    """Flow over `box` at work x work pixels (float32 [work, work, 2], work-pixel units).

    The region around the box (context_region) is resized by the box's scale work / box side;
    the box is cut back out of the flow at the nearest work pixel (offset error < 0.5 px).
    """
    onset_region, pad_x, pad_y = context_region(onset_gray, box, context)
    apex_region, _, _ = context_region(apex_gray, box, context)
    scale_x, scale_y = work / box.w, work / box.h
    out_w = int(round(onset_region.shape[1] * scale_x))
    out_h = int(round(onset_region.shape[0] * scale_y))
    resize = lambda image: _resize_to(image, out_w, out_h)
    flow = compute_flow(resize(onset_region), resize(apex_region), method)
    # The region was resized to out_w x out_h, not exactly region * scale: correct the vectors.
    flow[..., 0] *= scale_x * onset_region.shape[1] / out_w
    flow[..., 1] *= scale_y * onset_region.shape[0] / out_h
    off_x, off_y = int(round(pad_x * scale_x)), int(round(pad_y * scale_y))
    return flow[off_y : off_y + work, off_x : off_x + work]


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
    context: float = 0.1,
) -> PairResult:
    """Crops the face, computes onset->apex optical flow and encodes it as a flow image.

    onset, apex: uint8 frames of one shape, [H, W] gray or [H, W, 3] RGB.
    crop: 'haar' | 'center' | 'none' (see face.face_box); the box is chosen on the onset frame
    and applied unchanged to the apex, so head motion stays in the flow rather than in the crop.
    flow_method: 'tvl1' | 'farneback' | 'dis'. encoding: 'uvs' | 'hsv'.
    margin: fraction of the detected face side added on every side ('haar' only).
    on_no_face: 'raise' (NoFaceFound), or 'center' / 'none' to fall back to that crop.
    work_size: side at which flow is computed (default: default_work_size).
    context: fraction of the box added on every side while estimating flow (context_region).
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
    flow_work = flow_on_box(  # [work, work, 2] float32
        to_gray(onset), to_gray(apex), box, work, flow_method, context
    )
    flow = resize_flow(flow_work, size)  # [size, size, 2] float32
    return PairResult(
        flow_image=encode_flow(flow, encoding),
        flow=flow,
        onset_face=_resize(to_rgb(onset_crop), size),
        apex_face=_resize(to_rgb(apex_crop), size),
        box=box,
    )
