"""Preprocessing: frame reading, face crop, onset->apex optical flow, strain, flow-image encoding,
apex spotting.

Pure numpy/OpenCV (opencv-contrib for TV-L1 and the Haar cascade). The one function builders and
the predict command call is :func:`process_pair`.
"""

from mjfn_jax.preprocess.apex import SPOT_FLOWS, SPOT_SCORES, ApexSpot, SpotSettings, spot_apex
from mjfn_jax.preprocess.encode import ENCODINGS, encode_flow, hflip_flow_image, minmax_uint8
from mjfn_jax.preprocess.face import (
    CROP_MODES,
    Box,
    NoFaceFound,
    center_box,
    detect_face_box,
    face_box,
    read_frame,
    to_gray,
    to_rgb,
    validate_frame,
)
from mjfn_jax.preprocess.flow import (
    FLOW_METHODS,
    compute_flow,
    hflip_flow,
    optical_strain,
    resize_flow,
)
from mjfn_jax.preprocess.pair import PairResult, default_work_size, process_pair

__all__ = [
    "SPOT_FLOWS",
    "SPOT_SCORES",
    "ApexSpot",
    "SpotSettings",
    "spot_apex",
    "CROP_MODES",
    "ENCODINGS",
    "FLOW_METHODS",
    "Box",
    "NoFaceFound",
    "PairResult",
    "center_box",
    "compute_flow",
    "default_work_size",
    "detect_face_box",
    "encode_flow",
    "face_box",
    "hflip_flow",
    "hflip_flow_image",
    "minmax_uint8",
    "optical_strain",
    "process_pair",
    "read_frame",
    "resize_flow",
    "to_gray",
    "to_rgb",
    "validate_frame",
]
