"""Facial-action motions modelled on FACS action units, and the rendering of a clip.

An AU is a set of Gaussian bumps of displacement centred on landmarks. A clip's motion at
frame t maps the neutral face point x to  phi_t(x) = x + s(t) * d(x) + (t / T) * h(x):
d is the expression field (the class's AUs plus random distractor AUs), s(t) the
onset-apex-offset profile (s = 0 at onset, 1 at apex), h the head motion (sub-pixel translation,
rotation and scale, plus a small smooth non-rigid wobble) growing linearly over the clip.
Frame t is the neutral face warped forward by phi_t: frame_t(phi_t(x)) = neutral(x), rendered
by a backward map (cv2.remap) with phi_t^-1 found by fixed-point iteration.

Since phi_onset is the identity, the true onset->apex flow is f(x) = phi_apex(x) - x =
d(x) + h(x) at apex (the apex's head term scaled by t_apex / T), in OpenCV's convention:
apex(x + f(x)) = onset(x). Flow methods estimate exactly this field.

What makes the task hard: the class lives only in WHERE and in which direction the face moves;
amplitude (0.2-2 px at 128 px, log-uniform), unilateral actions, distractor AUs of any class,
head rotation/scale and non-rigid wobble, face layout, illumination drift and sensor noise vary.
A head translation is invisible in the (u, v, strain) encoding (per-channel min-max removes
constants, strain ignores them) but not in the HSV one.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from mjfn_jax.synthetic.faces import FaceGeometry, canvas_grid, canvas_pad

CLASS_NAMES = ("negative", "positive", "surprise")

# AU -> bumps (landmark, direction (dx, dy) for the image-left side, sigma in frame sides,
# weight). Right-side landmarks mirror dx. Directions follow the FACS descriptions.
_AUS = {
    "AU1": [("brow_in", (0.0, -1.0), 0.05, 1.0)],  # inner brow raiser
    "AU2": [("brow_out", (0.0, -1.0), 0.05, 1.0), ("brow_mid", (0.0, -1.0), 0.05, 0.6)],
    "AU4": [("brow_in", (0.6, 0.8), 0.05, 1.0), ("brow_mid", (0.3, 0.9), 0.05, 0.6)],
    "AU6": [("cheek", (0.0, -1.0), 0.07, 0.7)],  # cheek raiser
    "AU9": [("ala", (0.0, -1.0), 0.04, 1.0), ("nose_bridge", (0.0, 0.6), 0.04, 0.5)],
    "AU12": [("corner", (-0.6, -0.8), 0.06, 1.0)],  # lip corner puller (up and out)
    "AU15": [("corner", (-0.2, 1.0), 0.05, 1.0)],  # lip corner depressor
    "AU26": [("lower_lip", (0.0, 1.0), 0.07, 0.8), ("chin", (0.0, 1.0), 0.1, 1.0)],
    # Distractors, present in clips of any class: blink, lid tightener, chin raiser, dimpler.
    "AU45": [("lid", (0.0, 1.0), 0.035, 1.0)],
    "AU7": [("lid", (0.0, 0.6), 0.03, 0.5), ("cheek", (0.2, -1.0), 0.04, 0.5)],
    "AU17": [("chin", (0.0, -1.0), 0.07, 0.8), ("lower_lip", (0.0, -1.0), 0.05, 0.5)],
    "AU14": [("corner", (1.0, 0.0), 0.04, 0.8)],
}
_DISTRACTORS = {"AU45": 0.3, "AU7": 0.25, "AU17": 0.25, "AU14": 0.2}
_MIDLINE = {"glabella", "nose_bridge", "upper_lip", "lower_lip", "chin"}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    label: int  # index into CLASS_NAMES
    aus: dict[str, tuple[float, float]]  # AU -> (left intensity, right intensity), in pixels
    num_frames: int
    apex_index: int  # frame index of the apex, onset is index 0
    residual: float  # s at the offset frame
    head: tuple[float, ...]  # (tx, ty, rotation rad, log-scale) reached at the last frame
    wobble_amplitude: float  # pixels
    gain_change: float  # relative global illumination change over the clip
    ramp_change: float  # grey levels of lighting-ramp change over the clip
    noise_sigma: float  # sensor noise, grey levels
    start_frame: int  # frame number of the onset (file img<start>.png)
    seed: int  # for wobble field and noise


def sample_clip(rng: np.random.Generator, label: int) -> ClipSpec:
    """Random clip parameters for a class (amplitudes are pixels at a 128-pixel frame)."""
    if label == 0:  # negative: a random non-empty subset of brow lowerer, nose wrinkle, AU15
        pick = rng.random(3) < 0.5
        pick[rng.integers(3)] = True
        aus = [a for a, keep in zip(("AU4", "AU9", "AU15"), pick, strict=True) if keep]
    elif label == 1:  # positive: lip corner puller, usually with cheek raiser
        aus = ["AU12"] + (["AU6"] if rng.random() < 0.7 else [])
    else:  # surprise: brow raise, often with jaw drop
        aus = ["AU1", "AU2"] + (["AU26"] if rng.random() < 0.6 else [])
    aus += [au for au, p in _DISTRACTORS.items() if rng.random() < p]
    amplitude = float(np.exp(rng.uniform(np.log(0.2), np.log(2.0))))  # per clip
    intensity = {}
    for au in aus:
        level = amplitude * rng.uniform(0.5, 1.0)
        sides = rng.uniform(0.6, 1.0, 2)
        if rng.random() < 0.2:  # unilateral action, frequent in micro-expressions
            sides[rng.integers(2)] *= rng.uniform(0.0, 0.3)
        intensity[au] = (level * float(sides[0]), level * float(sides[1]))
    num_frames = int(rng.integers(9, 16))
    return ClipSpec(
        label=label,
        aus=intensity,
        num_frames=num_frames,
        apex_index=int(rng.integers(round(0.3 * num_frames), round(0.6 * num_frames) + 1)),
        residual=float(rng.uniform(0.0, 0.2)),
        head=(
            float(rng.normal(0, 0.3)),
            float(rng.normal(0, 0.3)),
            float(rng.normal(0, np.deg2rad(0.25))),
            float(rng.normal(0, 0.004)),
        ),
        wobble_amplitude=float(rng.uniform(0.0, 0.4)),
        gain_change=float(rng.uniform(-0.015, 0.015)),
        ramp_change=float(rng.uniform(-2.0, 2.0)),
        noise_sigma=float(rng.uniform(0.3, 1.5)),
        start_frame=int(rng.integers(1, 300)),
        seed=int(rng.integers(2**31)),
    )


def profile(spec: ClipSpec, t: int) -> float:
    """Expression intensity s(t): raised-cosine rise 0 -> 1 at apex, decay to the residual."""
    if t <= spec.apex_index:
        return float(0.5 * (1 - np.cos(np.pi * t / spec.apex_index)))
    frac = (t - spec.apex_index) / max(1, spec.num_frames - 1 - spec.apex_index)
    return float(spec.residual + (1 - spec.residual) * 0.5 * (1 + np.cos(np.pi * frac)))


def expression_field(geometry: FaceGeometry, spec: ClipSpec) -> np.ndarray:
    """d: float32 [C, C, 2] forward displacement at apex over the canvas (C = size + 2 pad)."""
    size, pts = geometry.size, geometry.points()
    xx, yy = canvas_grid(size)
    field = np.zeros(xx.shape + (2,), np.float32)
    scale = size / 128.0  # amplitudes are specified at 128 pixels
    for au, (left, right) in spec.aus.items():
        for name, (dx, dy), sigma, weight in _AUS[au]:
            sides = (
                [(name, 1.0, left)]
                if name in _MIDLINE
                else [(f"l_{name}", 1.0, left), (f"r_{name}", -1.0, right)]
            )
            for point, mirror, level in sides:
                x0, y0 = pts[point]
                bump = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * (sigma * size) ** 2))
                field[..., 0] += level * weight * scale * mirror * dx * bump
                field[..., 1] += level * weight * scale * dy * bump
    return field


def head_field(geometry: FaceGeometry, spec: ClipSpec) -> np.ndarray:
    """h: float32 [C, C, 2] head displacement at the last frame (rigid + smooth wobble)."""
    size = geometry.size
    xx, yy = canvas_grid(size)
    tx, ty, angle, log_scale = spec.head
    rx, ry = xx - geometry.center[0], yy - geometry.center[1]
    c, s, k = np.cos(angle), np.sin(angle), np.exp(log_scale)
    field = np.stack([k * (c * rx - s * ry) - rx + tx, k * (s * rx + c * ry) - ry + ty], -1)
    coarse = np.random.default_rng(spec.seed).standard_normal((6, 6, 2)).astype(np.float32)
    wobble = cv2.resize(coarse, xx.shape[::-1], interpolation=cv2.INTER_CUBIC)
    return (field + spec.wobble_amplitude * size / 128.0 * wobble).astype(np.float32)


def true_flow(geometry: FaceGeometry, spec: ClipSpec) -> np.ndarray:
    """float32 [size, size, 2]: the exact onset->apex flow, apex(x + f(x)) = onset(x)."""
    head_share = spec.apex_index / (spec.num_frames - 1)
    flow = expression_field(geometry, spec) + head_share * head_field(geometry, spec)
    pad = canvas_pad(geometry.size)
    return flow[pad : pad + geometry.size, pad : pad + geometry.size]


def _inverse_map(displacement: np.ndarray, iterations: int = 6) -> np.ndarray:
    """float32 [H, W, 2] positions p with p + D(p) = y for every pixel y (backward map)."""
    displacement = displacement.astype(np.float32)
    size = displacement.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grid = np.stack([xx, yy], -1)
    pos = grid - displacement
    for _ in range(iterations):  # contraction: |grad D| << 1 for these smooth, small fields
        at = cv2.remap(displacement, pos, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        pos = grid - at
    return pos


def render_clip(neutral: np.ndarray, geometry: FaceGeometry, spec: ClipSpec) -> list[np.ndarray]:
    """The clip's frames, onset to offset: list of uint8 [size, size, 3] RGB.

    neutral: the float32 canvas from render_neutral; frames are warped on the canvas, then cut.
    """
    size, pad = geometry.size, canvas_pad(geometry.size)
    expression, head = expression_field(geometry, spec), head_field(geometry, spec)
    rng = np.random.default_rng(spec.seed + 1)
    ramp = (np.mgrid[0:size, 0:size][1] / size - 0.5)[..., None]  # left-to-right light ramp
    last = spec.num_frames - 1
    frames = []
    for t in range(spec.num_frames):
        pos = _inverse_map(profile(spec, t) * expression + (t / last) * head)
        canvas = cv2.remap(neutral, pos, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        warped = canvas[pad : pad + size, pad : pad + size]
        lit = warped * (1 + spec.gain_change * t / last) + spec.ramp_change * t / last * ramp
        noisy = lit + spec.noise_sigma * rng.standard_normal(lit.shape).astype(np.float32)
        frames.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return frames
