"""Optical-flow accuracy on the synthetic generator's clips (known onset->apex displacement).

Generates a small raw synthetic set, runs process_pair(crop="center") with each flow method and
prints a markdown table: end-point error (EPE, mean over the face ellipse) at the output
resolution and at the frame resolution, its ratio to the mean true motion, time per pair (one
OpenCV thread), and the leave-one-subject-out accuracy of a nearest-class-mean classifier on the
encoded (u, v, strain) images (chance 1/3). "zero flow" predicts no motion (its EPE is the mean
true motion); "true flow" encodes the known displacement (what make_flow_arrays gives).

Usage (from the repository root):
  .venv/bin/python -m tools.flow_accuracy [--clips 108] [--subjects 12] [--size 112]
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import tempfile
import time

import cv2
import numpy as np

from mjfn_jax import cli
from mjfn_jax.preprocess import FLOW_METHODS, encode_flow, process_pair, read_frame, resize_flow
from mjfn_jax.synthetic import CLASS_NAMES, generate_raw, subject_geometry


def loso_nearest_centroid(images: np.ndarray, labels: np.ndarray, subjects: np.ndarray) -> float:
    """Leave-one-subject-out accuracy of a nearest-class-mean classifier on raw pixels.

    images uint8 [N, S, S, 3]: a floor for what a learned model should reach on these images.
    """
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    predictions = np.empty_like(labels)
    for subject in np.unique(subjects):
        test = subjects == subject
        centroids = np.stack([x[~test & (labels == c)].mean(0) for c in np.unique(labels)])
        predictions[test] = ((x[test, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predictions == labels).mean())


def _epe(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - truth, axis=-1)[mask].mean())


def _load_pairs(raw_dir: str, seed: int, frame_size: int, size: int) -> list[dict]:
    pairs = []
    with open(os.path.join(raw_dir, "annotations.csv")) as f:
        for row in csv.DictReader(f):
            frames = os.path.join(raw_dir, "frames", row["subject"], row["clip"])
            truth = np.load(
                os.path.join(raw_dir, "true_flow", row["subject"], row["clip"] + ".npy")
            )
            geometry = subject_geometry(seed, int(row["subject"][1:]) - 1, frame_size)
            mask = geometry.mask(0.9)  # [frame, frame] bool: inside the face, off its outline
            small_mask = cv2.resize(
                mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST
            ).astype(bool)
            pairs.append(
                dict(
                    onset=read_frame(os.path.join(frames, f"img{row['onset_frame']}.png")),
                    apex=read_frame(os.path.join(frames, f"img{row['apex_frame']}.png")),
                    truth=truth,
                    mask=mask,
                    truth_small=resize_flow(truth, size),
                    small_mask=small_mask,
                    label=CLASS_NAMES.index(row["emotion"]),
                    subject=row["subject"],
                )
            )
    return pairs


def measure(pairs: list[dict], method: str, size: int, work_size: int | None) -> dict:
    epe_out, epe_frame, seconds, images = [], [], [], []
    for p in pairs:
        if method in ("zero flow", "true flow"):
            flow = np.zeros_like(p["truth_small"]) if method == "zero flow" else p["truth_small"]
            dt = 0.0
        else:
            start = time.perf_counter()
            flow = process_pair(
                p["onset"],
                p["apex"],
                crop="center",
                flow_method=method,
                size=size,
                work_size=work_size,
            ).flow
            dt = time.perf_counter() - start
        epe_out.append(_epe(flow, p["truth_small"], p["small_mask"]))
        full = resize_flow(flow, p["truth"].shape[:2])
        epe_frame.append(_epe(full, p["truth"], p["mask"]))
        seconds.append(dt)
        images.append(encode_flow(flow, "uvs"))
    motion = np.mean([np.linalg.norm(p["truth"], axis=-1)[p["mask"]].mean() for p in pairs])
    return dict(
        out=np.mean(epe_out),
        frame=np.mean(epe_frame),
        rel=np.mean(epe_frame) / motion,
        ms=1000 * np.mean(seconds),
        nc=loso_nearest_centroid(
            np.stack(images),
            np.array([p["label"] for p in pairs]),
            np.array([p["subject"] for p in pairs]),
        ),
    )


def main() -> None:
    parser = cli.ArgumentParser("python -m tools.flow_accuracy", __doc__)
    parser.add_argument("--clips", type=int, default=108)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--work_size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame_size", type=int, default=128)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # time one pair on one core, as the builders' workers do
    with tempfile.TemporaryDirectory() as raw_dir:
        generate_raw(
            raw_dir,
            num_subjects=args.subjects,
            clips_per_subject=None,
            seed=args.seed,
            frame_size=args.frame_size,
            num_samples=args.clips,
            workers=1,
        )
        pairs = _load_pairs(raw_dir, args.seed, args.frame_size, args.size)
    work = args.work_size or "default"
    print(
        f"{len(pairs)} synthetic clips, frames {args.frame_size}px, crop=center, output "
        f"{args.size}px, work size {work}, seed {args.seed}; {platform.node()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
    )
    print(
        f"| flow | EPE @{args.size}px | EPE @{args.frame_size}px (frame) "
        "| EPE / mean motion | ms per pair | nearest-centroid LOSO acc. |"
    )
    print("|---|---|---|---|---|---|")
    for method in (*FLOW_METHODS, "zero flow", "true flow"):
        r = measure(pairs, method, args.size, args.work_size)
        nc = "-" if method == "zero flow" else f"{r['nc']:.2f}"
        print(
            f"| {method} | {r['out']:.3f} | {r['frame']:.3f} | {r['rel']:.2f} | {r['ms']:.1f} "
            f"| {nc} |"
        )


if __name__ == "__main__":
    main()
