"""Dense optical flow onset->apex, flow resizing, optical strain and flow flipping.

Sign convention (OpenCV's): flow[y, x] = (u, v) such that apex[y + v, x + u] ~= onset[y, x],
i.e. the forward displacement of the point at (x, y) of the onset frame.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

FLOW_METHODS = ("tvl1", "farneback", "dis")

# TV-L1 with 3 pyramid scales and 3 warps instead of OpenCV's 5/5: micro-expression motions are
# at most a few pixels at face-crop resolution, so a deep pyramid buys nothing, and this is
# faster (~0.17 s vs ~0.4 s on a 256x256 pair; docs/performance.md#optical-flow-cost). The other
# parameters are OpenCV's defaults (tau 0.25, lambda 0.15, theta 0.3, epsilon 0.01, median
# filtering 5). EPE on the synthetic generator: tools/flow_accuracy.py.
TVL1_PARAMS = dict(nscales=3, warps=3)
# Farneback: OpenCV's documented example values (pyr_scale, levels, winsize, iterations,
# poly_n, poly_sigma, flags).
FARNEBACK_PARAMS = dict(
    pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
)

# The cv2 flow objects keep internal buffers: one per thread.
_local = threading.local()


def _flow_object(method: str):
    cache = _local.__dict__.setdefault("objects", {})
    if method not in cache:
        if method == "tvl1":
            cache[method] = cv2.optflow.DualTVL1OpticalFlow_create(**TVL1_PARAMS)
        elif method == "dis":
            cache[method] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return cache[method]


def compute_flow(onset_gray: np.ndarray, apex_gray: np.ndarray, method: str = "tvl1") -> np.ndarray:
    """Optical flow from uint8 [H, W] onset to uint8 [H, W] apex -> float32 [H, W, 2] (u, v)."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow_method must be one of {FLOW_METHODS}, got {method!r}")
    if onset_gray.shape != apex_gray.shape or onset_gray.ndim != 2:
        raise ValueError(
            f"flow needs two gray images of one shape: {onset_gray.shape}, {apex_gray.shape}"
        )
    if method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(onset_gray, apex_gray, None, **FARNEBACK_PARAMS)
    else:
        flow = _flow_object(method).calc(onset_gray, apex_gray, None)
    return np.asarray(flow, dtype=np.float32)


def resize_flow(flow: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes a float [H, W, 2] flow to `size` (S or (height, width)), rescaling the vectors.

    A displacement of u pixels at width W is u * W'/W pixels at width W' (v likewise with the
    heights). Downsampling uses area averaging, upsampling bilinear interpolation.
    """
    new_h, new_w = (size, size) if isinstance(size, int) else size
    old_h, old_w = flow.shape[:2]
    if (new_h, new_w) == (old_h, old_w):
        return flow.astype(np.float32, copy=True)
    interp = cv2.INTER_AREA if new_h * new_w < old_h * old_w else cv2.INTER_LINEAR
    resized = cv2.resize(flow.astype(np.float32), (new_w, new_h), interpolation=interp)
    resized[..., 0] *= new_w / old_w
    resized[..., 1] *= new_h / old_h
    return resized  # [new_h, new_w, 2] float32


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Optical strain magnitude of a float [H, W, 2] flow -> float32 [H, W].

    sqrt(u_x^2 + v_y^2 + 0.5 (u_y + v_x)^2): the norm of the symmetric part of the flow Jacobian
    (the infinitesimal strain tensor, off-diagonal counted twice). It is invariant to translation,
    so global head drift vanishes from this channel. Derivatives by np.gradient (central
    differences inside, one-sided at the borders).
    """
    u_y, u_x = np.gradient(flow[..., 0].astype(np.float64))
    v_y, v_x = np.gradient(flow[..., 1].astype(np.float64))
    return np.sqrt(u_x**2 + v_y**2 + 0.5 * (u_y + v_x) ** 2).astype(np.float32)


def hflip_flow(flow: np.ndarray) -> np.ndarray:
    """Mirrors a [..., H, W, 2] flow left-right: the image is mirrored and u changes sign."""
    flipped = np.array(flow[..., ::-1, :], copy=True)
    flipped[..., 0] = -flipped[..., 0]
    return flipped
