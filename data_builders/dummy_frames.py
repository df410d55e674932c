"""Frames for the builders' dummy data: smooth random texture drifting a little per frame.

Only the layouts, names and file formats imitate the real datasets; the pixels are noise, so no
face detector finds a face in them (tests use crop 'center' or 'none', or count the skip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np


def texture(rng: np.random.Generator, size: int, gray: bool) -> np.ndarray:
    """uint8 [size, size] or [size, size, 3]: blurred noise, enough structure for optical flow."""
    channels = 1 if gray else 3
    noise = rng.standard_normal((size, size, channels)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0).reshape(size, size, channels)
    image = np.clip(128 + 60 * smooth / (smooth.std() + 1e-6), 0, 255).astype(np.uint8)
    return image[..., 0] if gray else image


def write_clip(
    folder: Path,
    frames: Iterable[int],
    file_name: Callable[[int], str],
    rng: np.random.Generator,
    *,
    size: int = 64,
    gray: bool = False,
) -> None:
    """Writes one clip: frame k is the texture shifted right by 0.5 px per frame since the first."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    base = texture(rng, size, gray)
    for k in frames:
        shift = np.float32([[1, 0, 0.5 * (k - frames[0])], [0, 1, 0]])
        image = cv2.warpAffine(base, shift, (size, size), borderMode=cv2.BORDER_REFLECT)
        bgr = image if gray else image[..., ::-1]
        if not cv2.imwrite(str(folder / file_name(k)), bgr):
            raise OSError(f"cannot write {folder / file_name(k)}")
