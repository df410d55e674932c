"""Frame reading, validation, grayscale conversion and face cropping (pure numpy/OpenCV)."""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import cv2
import numpy as np

CROP_MODES = ("haar", "center", "none")


class NoFaceFound(RuntimeError):
    """The Haar detector found no face on the onset frame (builders count and log these)."""


class Box(NamedTuple):
    """An axis-aligned box in pixel coordinates: columns x..x+w, rows y..y+h."""

    x: int
    y: int
    w: int
    h: int


def decode_image_file(
    path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR, what: str = "frame file"
) -> np.ndarray:
    """cv2.imdecode of a file's bytes with ``flags``, as OpenCV returns it (BGR order).

    cv2.imread returns None silently on a missing or unreadable file; this raises instead, naming
    the file. Reading the bytes ourselves and decoding with cv2.imdecode also handles non-ASCII
    paths, which cv2.imread does not on every platform.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path} ({data.size} bytes)")
    return image


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as uint8 RGB [H, W, 3] (grayscale files are replicated to 3 channels);
    a missing or undecodable file raises, naming it (see decode_image_file)."""
    return cv2.cvtColor(decode_image_file(path), cv2.COLOR_BGR2RGB)  # [H, W, 3] uint8


def validate_frame(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """Checks a frame is uint8 [H, W], [H, W, 1] or [H, W, 3]; returns it as [H, W] or [H, W, 3]."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise TypeError(f"{name}: expected a uint8 image, got dtype {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"{name}: expected shape [H, W] or [H, W, 3], got {frame.shape}")
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise ValueError(f"{name}: image too small for optical flow: {frame.shape}")
    return frame


def to_gray(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] RGB -> uint8 [H, W]."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] RGB -> uint8 [H, W, 3] RGB."""
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB) if frame.ndim == 2 else frame


def square_box(cx: float, cy: float, side: float, height: int, width: int) -> Box:
    """A square box of `side` centred on (cx, cy), shifted (never shrunk unless it must) to fit."""
    side = int(round(min(side, height, width)))
    x = int(round(cx - side / 2))
    y = int(round(cy - side / 2))
    x = min(max(x, 0), width - side)
    y = min(max(y, 0), height - side)
    return Box(x, y, side, side)


def center_box(height: int, width: int) -> Box:
    """The largest central square: for pre-aligned frames (synthetic, official cropped sets)."""
    return square_box(width / 2, height / 2, min(height, width), height, width)


@functools.cache
def _haar_detector() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise RuntimeError(f"cannot load the Haar cascade {path}")
    return detector


def detect_face_box(gray: np.ndarray, *, margin: float = 0.1, max_side: int = 640) -> Box:
    """Largest Haar face on a uint8 [H, W] image, as a square box enlarged by `margin` per side.

    Large frames (SAMM is 2040x1088) are detected on a copy downscaled to `max_side`: the cascade
    is scale-invariant and this is ~10x faster. Raises NoFaceFound when nothing is detected.
    """
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    small = (
        gray
        if scale == 1.0
        else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    )
    min_face = max(24, int(0.15 * min(small.shape)))
    faces = _haar_detector().detectMultiScale(
        cv2.equalizeHist(small), scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face)
    )
    if len(faces) == 0:
        raise NoFaceFound(f"no face detected on a {width}x{height} frame")
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3])) / scale
    side = max(w, h) * (1.0 + 2.0 * margin)
    return square_box(x + w / 2, y + h / 2, side, height, width)


def face_box(
    frame: np.ndarray, *, crop: str = "haar", margin: float = 0.1, on_no_face: str = "raise"
) -> Box:
    """The crop box chosen on the onset frame (the same box is then applied to the apex frame).

    crop: 'haar' (detected face + margin), 'center' (largest central square), 'none' (whole
    frame; resized later without keeping the aspect ratio). on_no_face ('raise', 'center' or
    'none') is used only by 'haar' when no face is found.
    """
    if on_no_face not in ("raise", "center", "none"):
        raise ValueError(f"on_no_face must be 'raise', 'center' or 'none', got {on_no_face!r}")
    height, width = frame.shape[:2]
    if crop == "haar":
        try:
            return detect_face_box(to_gray(frame), margin=margin)
        except NoFaceFound:
            if on_no_face == "raise":
                raise
            crop = on_no_face
    if crop == "center":
        return center_box(height, width)
    if crop == "none":
        return Box(0, 0, width, height)
    raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")


def apply_box(frame: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of `frame` inside `box` (a view)."""
    return frame[box.y : box.y + box.h, box.x : box.x + box.w]
