"""Flow image encodings: (u, v, strain) min-max ('uvs', the default) and HSV colour coding."""

from __future__ import annotations

import cv2
import numpy as np

from mjfn_jax.preprocess.flow import optical_strain

ENCODINGS = ("uvs", "hsv")


def minmax_uint8(channels: np.ndarray) -> np.ndarray:
    """Per-channel min-max of a float [H, W, C] array to uint8 [0, 255] (rounded).

    A constant channel maps to 0 instead of dividing by zero. "Constant" means a span below
    1e-6 (pixels, for flow): float rounding noise in an in-principle constant channel (e.g. the
    strain of an affine flow) must not be stretched to the full 0..255 range.
    """
    x = channels.astype(np.float64)
    low = x.min(axis=(0, 1), keepdims=True)
    span = x.max(axis=(0, 1), keepdims=True) - low
    scaled = np.divide(x - low, span, out=np.zeros_like(x), where=span > 1e-6)
    return np.rint(scaled * 255.0).astype(np.uint8)


def encode_flow(flow: np.ndarray, encoding: str = "uvs") -> np.ndarray:
    """float [H, W, 2] flow -> uint8 [H, W, 3] flow image.

    'uvs': channels (u, v, optical strain), each min-max normalised over this sample.
    'hsv': the usual flow visualisation, returned as RGB: hue = direction (OpenCV hue units,
    degrees / 2, image coordinates with y down), saturation 255, value = magnitude min-max.
    """
    flow = flow.astype(np.float32)
    if encoding == "uvs":
        stacked = np.concatenate([flow, optical_strain(flow)[..., None]], axis=-1)
        return minmax_uint8(stacked)
    if encoding == "hsv":
        magnitude, angle = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
        hsv = np.empty(flow.shape[:2] + (3,), np.uint8)
        hsv[..., 0] = np.rint(angle / 2.0).astype(np.int32) % 180
        hsv[..., 1] = 255
        hsv[..., 2] = minmax_uint8(magnitude[..., None])[..., 0]
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def hflip_flow_image(image: np.ndarray, encoding: str = "uvs") -> np.ndarray:
    """Mirrors an encoded [..., H, W, 3] uint8 flow image left-right, as if the flow were flipped.

    'uvs': mirroring the face negates u. Min-max is affine and reverses under negation:
    minmax(-u) = (max u - u) / (max u - min u) = 1 - minmax(u), so the u channel becomes 255 - u
    (exact up to one grey level of rounding). v is unchanged; the strain channel is invariant (its
    cross term (u_y + v_x) only changes sign), so both are just mirrored.
    'hsv': direction theta becomes 180 - theta degrees, i.e. hue h -> (90 - h) mod 180. This goes
    through an RGB -> HSV -> RGB round trip, so colours may move by a few grey levels; for exact
    results flip the raw flow (hflip_flow) and encode again.
    """
    flipped = np.array(image[..., ::-1, :], copy=True)
    if encoding == "uvs":
        flipped[..., 0] = 255 - flipped[..., 0]
        return flipped
    if encoding == "hsv":
        batch = flipped.reshape((-1,) + flipped.shape[-2:])  # rows of [W, 3] pixels
        hsv = cv2.cvtColor(batch, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (90 - hsv[..., 0].astype(np.int32)) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(flipped.shape)
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
