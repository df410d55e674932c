"""Apex spotting: the frame of a clip where the face has moved most relative to the onset.

Real footage comes without onset/apex annotation, and SMIC has none at all (the builders take
the middle frame). Given a clip's frames, onset first, :func:`spot_apex` computes a cheap dense
flow from the onset to every frame inside the face box (the same box, context and sign
convention as the flow images of ``process_pair``), reduces each flow to one motion score, and
returns the argmax of the temporally smoothed score curve.

Why the score is optical strain and not flow magnitude: strain (the symmetric flow gradient)
ignores translation and rotation, and a smooth head drift has small gradients, while an action
unit is a local bump with large ones. The mean of the upper half of the strain values in the box
is used: an expression moves a part of the face, not all of it. On the synthetic set strain beat
magnitude, and both fail without detrending (tools/apex_spotting.py).

Why detrending (on by default): the onset->frame flow at time t is about s(t) * expression +
(t / (T - 1)) * drift, where the drift (head motion, lighting change seen as motion) grows with
time. Subtracting (t / (T - 1)) times the onset->last-frame flow cancels a linear drift exactly
and leaves (s(t) - t / (T - 1) * s_last) * expression: the apex stays the peak as long as the
clip ends near neutral (onset..offset clips, as the datasets give them). For a clip cut at its
apex, turn it off (SpotSettings(detrend=False)).

Cost: one flow per frame at ``work_size`` (default 64 px: enough to rank frames, not to
classify them): Farneback ~1 ms per frame on one core, DIS ~0.6 ms; decoding the frames usually
costs more (figures in experiments/results/cpu-2core/apex_spotting.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from mjfn_jax.preprocess.face import Box, face_box, to_gray, validate_frame
from mjfn_jax.preprocess.flow import compute_flow, optical_strain
from mjfn_jax.preprocess.pair import _resize_to, context_region

SPOT_FLOWS = ("dis", "farneback")  # cheap methods; TV-L1 works too but costs ~100x more
SPOT_SCORES = ("strain", "magnitude")


@dataclasses.dataclass(frozen=True)
class SpotSettings:
    """How the motion curve is measured. Defaults: the settings measured best on the synthetic
    set (tools/apex_spotting.py) at ~1 ms per frame."""

    flow_method: str = "farneback"  # one of SPOT_FLOWS (or "tvl1", ~100x slower)
    work_size: int = 64  # side (px) at which the box is resampled for the flow
    score: str = "strain"  # "strain" (drift-robust) or "magnitude" (mean |flow|)
    top_fraction: float = 0.5  # mean over this upper fraction of the box's per-pixel scores
    smooth_sigma: float = 1.0  # Gaussian temporal smoothing, in frames (0: none)
    detrend: bool = True  # subtract the onset->last-frame flow, scaled by t / (T - 1)
    context: float = 0.1  # box fraction added on every side while estimating (as process_pair)

    @classmethod
    def parse(cls, text: str) -> SpotSettings:
        """'flow_method=dis,work_size=32,detrend=false' -> SpotSettings (validated); for CLIs."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if key not in fields or not value:
                raise ValueError(
                    f"spot setting {item!r}: expected NAME=VALUE, NAME one of {list(fields)}"
                )
            try:
                if fields[key] == "bool":
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(value)
                    values[key] = value.lower() in ("true", "1")
                else:
                    values[key] = {"int": int, "float": float, "str": str}[fields[key]](value)
            except ValueError:
                raise ValueError(
                    f"spot setting {item!r}: {value!r} is not of type {fields[key]}"
                ) from None
        return cls(**values).validate()

    def validate(self) -> SpotSettings:
        if self.flow_method not in (*SPOT_FLOWS, "tvl1"):
            raise ValueError(f"spotting flow must be one of {SPOT_FLOWS}, got {self.flow_method!r}")
        if self.score not in SPOT_SCORES:
            raise ValueError(f"spotting score must be one of {SPOT_SCORES}, got {self.score!r}")
        if not 8 <= int(self.work_size) <= 1024:
            raise ValueError(f"spotting work_size must be in [8, 1024], got {self.work_size}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.smooth_sigma < 0 or self.context < 0:
            raise ValueError(f"smooth_sigma and context must be >= 0, got {self}")
        return self


@dataclasses.dataclass(frozen=True)
class ApexSpot:
    index: int  # apex position in the clip (0 = onset)
    curve: np.ndarray  # float32 [T]: motion score of each frame relative to the onset (0 at 0)
    smoothed: np.ndarray  # float32 [T]: the curve after temporal smoothing; index = its argmax
    box: Box  # crop box chosen on the onset frame
    seconds: float  # wall time of the flows and scores (frames already decoded)


def smooth_curve(curve: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a float [T] curve, reflecting at the ends (no pull towards zero
    at the last frame, where an apex may lie in a cut clip)."""
    curve = np.asarray(curve, np.float64)
    if sigma <= 0 or curve.size < 3:
        return curve.astype(np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(curve, radius, mode="reflect" if curve.size > radius else "edge")
    return np.convolve(padded, taps / taps.sum(), mode="valid").astype(np.float32)


def motion_score(flow: np.ndarray, score: str, top_fraction: float) -> float:
    """float [H, W, 2] flow -> one number: mean of the upper `top_fraction` of per-pixel values
    of strain (translation/rotation-invariant) or of the flow magnitude."""
    values = optical_strain(flow) if score == "strain" else np.linalg.norm(flow, axis=-1)
    values = values.ravel()
    keep = max(1, int(round(top_fraction * values.size)))
    return float(np.partition(values, values.size - keep)[values.size - keep :].mean())


def _box_region(gray: np.ndarray, box: Box, settings: SpotSettings) -> tuple[np.ndarray, tuple]:
    """The box (with context) resampled so that the box itself is work_size square."""
    region, pad_x, pad_y = context_region(gray, box, settings.context)
    scale_x, scale_y = settings.work_size / box.w, settings.work_size / box.h
    out_w = max(8, int(round(region.shape[1] * scale_x)))
    out_h = max(8, int(round(region.shape[0] * scale_y)))
    off = (int(round(pad_y * scale_y)), int(round(pad_x * scale_x)))
    return _resize_to(region, out_w, out_h), off


def spot_apex(
    frames: Sequence[np.ndarray],
    *,
    crop: str = "haar",
    margin: float = 0.1,
    on_no_face: str = "raise",
    box: Box | None = None,
    settings: SpotSettings | None = None,
) -> ApexSpot:
    """The apex of a clip: argmax of the smoothed onset->frame motion curve.

    frames: uint8 frames of one shape, [H, W] gray or [H, W, 3] RGB, frames[0] the onset.
    crop / margin / on_no_face: as process_pair (the box is chosen on the onset frame), unless
    `box` is given. Never returns the onset itself (index >= 1), so the result is a usable pair.
    """
    settings = (settings or SpotSettings()).validate()
    if len(frames) < 2:
        raise ValueError(f"apex spotting needs at least 2 frames, got {len(frames)}")
    onset = validate_frame(frames[0], "frame 0")
    if box is None:
        box = face_box(onset, crop=crop, margin=margin, on_no_face=on_no_face)
    start = time.perf_counter()
    onset_region, (oy, ox) = _box_region(to_gray(onset), box, settings)
    work, last = settings.work_size, len(frames) - 1

    def flow_to(t: int) -> np.ndarray:  # float32 [work, work, 2], onset -> frame t, in the box
        frame = validate_frame(frames[t], f"frame {t}")
        if frame.shape[:2] != onset.shape[:2]:
            raise ValueError(
                f"frame {t} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is "
                f"{onset.shape[1]}x{onset.shape[0]}: frames of one clip must have the same size"
            )
        region, _ = _box_region(to_gray(frame), box, settings)
        flow = compute_flow(onset_region, region, settings.flow_method)
        return flow[oy : oy + work, ox : ox + work]

    # The last frame's flow first (detrending needs it), then one flow at a time: memory stays
    # O(1) in the clip length, whatever the video.
    last_flow = flow_to(last)
    curve = np.zeros(len(frames), np.float32)
    for t in range(1, len(frames)):
        flow = last_flow if t == last else flow_to(t)
        if settings.detrend:
            flow = flow - (t / last) * last_flow
        curve[t] = motion_score(flow, settings.score, settings.top_fraction)
    smoothed = smooth_curve(curve, settings.smooth_sigma)
    index = 1 + int(np.argmax(smoothed[1:]))
    return ApexSpot(index, curve, smoothed, box, time.perf_counter() - start)


__all__ = [
    "SPOT_FLOWS",
    "SPOT_SCORES",
    "ApexSpot",
    "SpotSettings",
    "motion_score",
    "smooth_curve",
    "spot_apex",
]
