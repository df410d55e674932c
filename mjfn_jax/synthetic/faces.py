"""Procedural per-subject faces: geometry (landmarks) and a rendered neutral frame.

Everything is in pixels of a square frame of side `size`, x to the right, y down. Each subject
has its own face shape, feature placement, skin tone and texture, hair line and lighting.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

_SUPERSAMPLE = 4  # draw at 4x and area-downsample: anti-aliased, sub-pixel accurate features


def canvas_pad(size: int) -> int:
    """Scene margin around the frame: motion near the frame border then brings in real scene
    content (as a camera would), not reflected or replicated pixels."""
    return size // 8


def canvas_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (x, y) frame coordinates of every canvas pixel, [size + 2 pad] squared each."""
    pad = canvas_pad(size)
    yy, xx = np.mgrid[-pad : size + pad, -pad : size + pad].astype(np.float32)
    return xx, yy


@dataclasses.dataclass(frozen=True)
class FaceGeometry:
    size: int  # frame side, pixels
    center: tuple[float, float]  # face ellipse centre (x, y)
    axes: tuple[float, float]  # face ellipse semi-axes (x, y)
    eye_y: float
    eye_dx: float  # half the distance between the eye centres
    eye_r: float
    brow_y: float
    brow_half_len: float
    nose_y: float  # nose tip
    nose_half_w: float
    mouth_y: float
    mouth_half_w: float
    lip_h: float  # lip half height

    def points(self) -> dict[str, tuple[float, float]]:
        """Named landmarks (x, y). 'l_' is the image-left side (smaller x)."""
        cx, cy = self.center
        pts = {}
        for side, sign in (("l", -1.0), ("r", 1.0)):
            ex = cx + sign * self.eye_dx
            pts[f"{side}_eye"] = (ex, self.eye_y)
            pts[f"{side}_lid"] = (ex, self.eye_y - 0.6 * self.eye_r)
            pts[f"{side}_brow_in"] = (ex - sign * 0.6 * self.brow_half_len, self.brow_y)
            pts[f"{side}_brow_mid"] = (ex, self.brow_y - 0.15 * self.brow_half_len)
            pts[f"{side}_brow_out"] = (ex + sign * 0.7 * self.brow_half_len, self.brow_y)
            pts[f"{side}_cheek"] = (ex + sign * 0.2 * self.eye_dx, self.eye_y + 2.4 * self.eye_r)
            pts[f"{side}_ala"] = (cx + sign * self.nose_half_w, self.nose_y - 0.3 * self.eye_r)
            pts[f"{side}_corner"] = (cx + sign * self.mouth_half_w, self.mouth_y)
        pts["glabella"] = (cx, self.brow_y + 0.3 * self.eye_r)
        pts["nose_bridge"] = (cx, 0.5 * (self.eye_y + self.nose_y))
        pts["upper_lip"] = (cx, self.mouth_y - self.lip_h)
        pts["lower_lip"] = (cx, self.mouth_y + self.lip_h)
        pts["chin"] = (cx, cy + 0.85 * self.axes[1])
        return pts

    def mask(self, shrink: float = 1.0) -> np.ndarray:
        """bool [size, size]: inside the face ellipse (semi-axes scaled by `shrink`)."""
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float64)
        ax, ay = self.axes[0] * shrink, self.axes[1] * shrink
        return ((xx - self.center[0]) / ax) ** 2 + ((yy - self.center[1]) / ay) ** 2 <= 1.0


def sample_geometry(rng: np.random.Generator, size: int) -> FaceGeometry:
    """Random face layout; the face fills the central region of the frame."""
    u = lambda lo, hi: float(rng.uniform(lo, hi)) * size
    cx, cy = size / 2 + u(-0.015, 0.015), size / 2 + u(0.0, 0.03)
    return FaceGeometry(
        size=size,
        center=(cx, cy),
        axes=(u(0.33, 0.39), u(0.42, 0.47)),
        eye_y=cy - u(0.09, 0.14),
        eye_dx=u(0.13, 0.17),
        eye_r=u(0.035, 0.05),
        brow_y=cy - u(0.19, 0.23),
        brow_half_len=u(0.07, 0.09),
        nose_y=cy + u(0.05, 0.09),
        nose_half_w=u(0.04, 0.06),
        mouth_y=cy + u(0.18, 0.23),
        mouth_half_w=u(0.09, 0.13),
        lip_h=u(0.018, 0.03),
    )


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise, float32 [size, size]."""
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def render_neutral(geometry: FaceGeometry, rng: np.random.Generator) -> np.ndarray:
    """The subject's neutral scene: float32 [size + 2 pad, size + 2 pad, 3] RGB in [0, 255].

    The frame is its centre (canvas_pad); values are not yet quantised.
    """
    k, pad = _SUPERSAMPLE, canvas_pad(geometry.size)
    size = geometry.size + 2 * pad  # canvas side
    big = size * k
    p = lambda xy: (int(round((xy[0] + pad) * k)), int(round((xy[1] + pad) * k)))
    r = lambda v: max(1, int(round(v * k)))
    tone = rng.uniform(0.35, 0.95)
    skin = np.array([200 * tone + 40, 150 * tone + 35, 120 * tone + 30])
    background = rng.uniform(40, 200, 3)
    canvas = np.empty((big, big, 3), np.float32)
    canvas[:] = background
    cx, cy = geometry.center
    ax, ay = geometry.axes
    cv2.ellipse(canvas, p((cx, cy)), (r(ax), r(ay)), 0, 0, 360, skin.tolist(), -1, cv2.LINE_AA)
    hair = (skin * rng.uniform(0.15, 0.45)).tolist()
    hair_line = cy - ay * rng.uniform(0.6, 0.8)  # forehead top: between brows and the crown
    cv2.ellipse(
        canvas, p((cx, hair_line)), (r(ax * 1.05), r(ay * 0.45)), 0, 180, 360, hair, -1, cv2.LINE_AA
    )
    pts = geometry.points()
    dark = (skin * rng.uniform(0.2, 0.4)).tolist()
    lips = (skin * np.array([1.0, 0.6, 0.6]) * rng.uniform(0.7, 0.9)).tolist()
    for side in ("l", "r"):
        eye = pts[f"{side}_eye"]
        cv2.ellipse(
            canvas,
            p(eye),
            (r(geometry.eye_r * 1.6), r(geometry.eye_r)),
            0,
            0,
            360,
            (235, 235, 235),
            -1,
            cv2.LINE_AA,
        )
        cv2.circle(canvas, p(eye), r(geometry.eye_r * 0.7), dark, -1, cv2.LINE_AA)
        cv2.ellipse(
            canvas,
            p(eye),
            (r(geometry.eye_r * 1.7), r(geometry.eye_r * 1.1)),
            0,
            180,
            360,
            dark,
            r(0.8),
            cv2.LINE_AA,
        )
        brow = np.array([p(pts[f"{side}_brow_{n}"]) for n in ("in", "mid", "out")], np.int32)
        cv2.polylines(canvas, [brow], False, dark, r(geometry.size * 0.025), cv2.LINE_AA)
        cv2.circle(
            canvas, p(pts[f"{side}_ala"]), r(geometry.nose_half_w * 0.35), dark, -1, cv2.LINE_AA
        )
        fold = np.array([p(pts[f"{side}_ala"]), p(pts[f"{side}_corner"])], np.int32)
        cv2.polylines(canvas, [fold], False, (skin * 0.8).tolist(), r(0.8), cv2.LINE_AA)
    cv2.line(
        canvas,
        p(pts["nose_bridge"]),
        p((cx, geometry.nose_y)),
        (skin * 0.8).tolist(),
        r(1.0),
        cv2.LINE_AA,
    )
    cv2.ellipse(
        canvas,
        p((cx, geometry.mouth_y)),
        (r(geometry.mouth_half_w), r(geometry.lip_h)),
        0,
        0,
        360,
        lips,
        -1,
        cv2.LINE_AA,
    )
    cv2.line(canvas, p(pts["l_corner"]), p(pts["r_corner"]), dark, r(0.7), cv2.LINE_AA)
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    # Skin texture (pores, freckles: fine and medium scale) lets flow be measured on the cheeks;
    # a linear lighting ramp of random direction and strength shades the whole frame.
    texture = (
        1.0
        + rng.uniform(0.06, 0.14) * _smooth_noise(rng, size, 0.8)
        + rng.uniform(0.04, 0.1) * _smooth_noise(rng, size, 3.0)
    )
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = (np.mgrid[0:size, 0:size] - size / 2) / geometry.size
    light = 1.0 + rng.uniform(0.1, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy)
    return np.clip(image * (texture * light)[..., None], 0, 255).astype(np.float32)
