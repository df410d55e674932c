"""Reading a whole clip: a video file or a folder of frame images, checked and in time order.

The predict command takes raw footage, where the apex has to be spotted among all frames. Frames
are kept as uint8 gray [H, W]: flow, strain and the Haar detector all work on luminance (so
process_pair gives the same flow image from gray or RGB frames), and a long clip then needs a
third of the memory. Every failure raises ValueError / FileNotFoundError naming the file, so a
CLI can print it as one line.
"""

from __future__ import annotations

import os
import re

import cv2
import numpy as np

from mjfn_jax.preprocess.face import decode_image_file

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def natural_key(name: str) -> list:
    """Sort key comparing digit runs by value: img2 before img10 (unpadded frame numbers, as in
    CASME II and the synthetic set); otherwise plain name order."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    ]


def list_frame_files(folder: str | os.PathLike) -> list[str]:
    """Image files of a folder (FRAME_EXTENSIONS, any case) in natural name order."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--frames {folder}: not a folder")
    names = [
        n
        for n in os.listdir(folder)
        if n.lower().endswith(FRAME_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
    ]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def read_frame_folder(folder: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
    """(gray frames uint8 [H, W], their file paths) of a frame folder; at least 2 frames of one
    size (the first frame's size is the clip's; a different one is named)."""
    paths = list_frame_files(folder)
    if len(paths) < 2:
        raise ValueError(
            f"--frames {os.fspath(folder)}: {len(paths)} frame image(s) found, a clip needs at "
            f"least 2 ({', '.join(FRAME_EXTENSIONS)})"
        )
    frames = []
    for path in paths:
        # Decoded in colour and converted by cvtColor, exactly as read_frame + to_gray do for the
        # builders: IMREAD_GRAYSCALE uses the codec's own conversion (other rounding for PNG).
        frame = cv2.cvtColor(decode_image_file(path), cv2.COLOR_BGR2GRAY)  # [H, W] uint8
        if frames and frame.shape != frames[0].shape:
            raise ValueError(
                f"frame {path} is {frame.shape[1]}x{frame.shape[0]} but {paths[0]} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}: frames of one clip must have the "
                "same size"
            )
        frames.append(frame)
    return frames, paths


def read_video(path: str | os.PathLike, max_bytes: int = 2**31) -> list[np.ndarray]:
    """Gray frames uint8 [H, W] of a video file, in order (OpenCV's FFmpeg backend: mp4, avi,
    mkv, ... whatever the wheel decodes). At least 2 frames, at most `max_bytes` of them in
    memory (2 GiB: ~1000 frames of 1080p; a micro-expression lasts < 0.5 s, so a longer video
    is to be cut around it first)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video {path}: file not found")
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ValueError(f"--video {path}: cannot open it as a video (unknown or broken file)")
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if (len(frames) + 1) * frame.shape[0] * frame.shape[1] > max_bytes:
                raise ValueError(
                    f"--video {path}: more than {len(frames)} frames of {frame.shape[1]}x"
                    f"{frame.shape[0]} ({max_bytes / 2**30:g} GiB); cut the clip around the "
                    "expression first"
                )
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame)
    finally:
        capture.release()
    if len(frames) < 2:
        raise ValueError(
            f"--video {path}: {len(frames)} frame(s) decoded, a clip needs at least 2 "
            "(empty, unreadable or unsupported video)"
        )
    return frames
