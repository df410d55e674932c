"""Synthetic micro-expressions: procedural faces moved by action-unit displacement fields.

`generate_raw` writes a CASME II-like raw layout (frames, annotations, true flows) for the TFDS
builder; `make_flow_arrays` encodes the true flows directly (fast; benchmark and tests).
"""

from mjfn_jax.synthetic.faces import FaceGeometry, render_neutral, sample_geometry
from mjfn_jax.synthetic.generate import (
    ANNOTATION_COLUMNS,
    GENERATOR_VERSION,
    clip_labels,
    clip_spec,
    clips_per_subject_counts,
    generate_raw,
    make_flow_arrays,
    subject_geometry,
    subject_name,
)
from mjfn_jax.synthetic.motion import CLASS_NAMES, ClipSpec, render_clip, true_flow

__all__ = [
    "ANNOTATION_COLUMNS",
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "ClipSpec",
    "FaceGeometry",
    "clip_labels",
    "clip_spec",
    "clips_per_subject_counts",
    "generate_raw",
    "make_flow_arrays",
    "render_clip",
    "render_neutral",
    "sample_geometry",
    "subject_geometry",
    "subject_name",
    "true_flow",
]
