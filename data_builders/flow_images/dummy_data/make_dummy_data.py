"""A generated stand-in for a published flow-image folder: a CSV in the composite's format and
one 3-channel PNG per row, named as the public repositories name them (``<sub>_<clip> .png``);
with ``views=4``, CausalNet's four per row (``<sub>_<clip><view> .png``, <view> '', _1, _2, _3:
two flow views and their direction maps, mjfn_jax.views).

    python -m data_builders.flow_images.dummy_data.make_dummy_data OUT_DIR [--size 28] [--views 4]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

# (dataset, sub, clip, label) rows: 2 subjects per source, 2-3 clips each.
ROWS = [
    ("casme2", "sub01", "EP02_01f", 1), ("casme2", "sub01", "EP19_05f", 0),
    ("casme2", "sub02", "EP01_11f", 0), ("casme2", "sub02", "EP03_02f", 2),
    ("samm", "006", "006_1_2", 0), ("samm", "006", "006_1_3", 1),
    ("samm", "007", "007_3_1", 2), ("samm", "007", "007_6_5", 0),
    ("smic", "s01", "s01_ne_01", 0), ("smic", "s01", "s01_po_01", 1),
    ("smic", "s02", "s02_sur_01", 2), ("smic", "s02", "s02_ne_02", 0),
]  # fmt: skip
CSV_NAME = "combined_3_class2_for_optical_flow.csv"
IMAGES = "STSNet_whole_norm_u_v_os"


def make(out_dir: str | Path, size: int = 28, seed: int = 0, rows=ROWS, views: int = 1) -> Path:
    """Writes OUT_DIR/<CSV_NAME> and OUT_DIR/<IMAGES>/*.png; returns OUT_DIR. Each image is a
    smooth blob whose (u, v) direction depends on the label, plus noise. ``views=4``: per row
    also the apex->offset flow (another draw, direction reversed: ``_1``) and both flows'
    direction maps (``_2``, ``_3``: mjfn_jax.views.direction_map); the one-view images are
    the same bytes either way."""
    out = Path(out_dir)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    views_rng = np.random.default_rng([seed, 1])  # its own: view 0 is the one-view folder's
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    blob = np.exp(-(xx**2 + yy**2) / 0.05)
    with open(out / CSV_NAME, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["dataset", "sub", "filename_o", "label", "apex", "imagename", "sub_filename"]
        )
        for source, sub, clip, label in rows:
            writer.writerow([source, sub, clip, label, "", f"{sub}_{clip}.jpg", ""])
            angle = 2 * np.pi * label / 3
            u, v = np.cos(angle) * blob, np.sin(angle) * blob
            strain = np.hypot(u, v)
            image = np.stack([u, v, strain], -1) + rng.normal(0, 0.05, (size, size, 3))
            image = (image - image.min((0, 1))) / np.ptp(image, (0, 1))
            rgb = (image * 255).round().astype(np.uint8)
            assert cv2.imwrite(str(out / IMAGES / f"{sub}_{clip} .png"), rgb[..., ::-1])
            if views == 4:
                _more_views(out / IMAGES / f"{sub}_{clip}", rgb, views_rng)
    return out


def _more_views(stem: Path, onset_apex: np.ndarray, rng: np.random.Generator) -> None:
    """Writes <stem>_1 .png (apex->offset flow: the onset->apex u, v reversed, other noise),
    <stem>_2 .png and <stem>_3 .png (the two flows' direction maps)."""
    from mjfn_jax.views import direction_map

    noise = rng.integers(-12, 13, onset_apex.shape)
    back = onset_apex.astype(np.int64)
    back[..., :2] = 255 - back[..., :2]  # minmax(-x) = 1 - minmax(x)
    apex_offset = np.clip(back + noise, 0, 255).astype(np.uint8)
    for suffix, image in (("_1", apex_offset), ("_2", direction_map(onset_apex)),
                          ("_3", direction_map(apex_offset))):  # fmt: skip
        assert cv2.imwrite(f"{stem}{suffix} .png", image[..., ::-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--views", type=int, default=1, choices=(1, 4))
    args = parser.parse_args()
    print(make(args.out_dir, args.size, views=args.views))
