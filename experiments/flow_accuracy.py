"""Optical-flow accuracy on the synthetic generator's clips (known onset->apex displacement).

Generates a small raw synthetic set, runs process_pair(crop="center") with each flow method and
prints a markdown table: end-point error (EPE, mean over the face ellipse) at the output
resolution and at the frame resolution, its ratio to the mean true motion, and time per pair.
The "zero flow" row is the EPE of predicting no motion at all (the mean true motion).

Usage (from the repository root): .venv/bin/python -m experiments.flow_accuracy [--clips 30] [--size 112] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import tempfile
import time

import cv2
import numpy as np

from mjfn_jax.preprocess import FLOW_METHODS, process_pair, read_frame, resize_flow
from mjfn_jax.synthetic import generate_raw, subject_geometry


def _epe(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - truth, axis=-1)[mask].mean())


def _load_pairs(raw_dir: str, seed: int, frame_size: int, size: int) -> list[dict]:
    pairs = []
    with open(os.path.join(raw_dir, "annotations.csv")) as f:
        for row in csv.DictReader(f):
            frames = os.path.join(raw_dir, "frames", row["subject"], row["clip"])
            truth = np.load(os.path.join(raw_dir, "true_flow", row["subject"], row["clip"] + ".npy"))
            geometry = subject_geometry(seed, int(row["subject"][1:]) - 1, frame_size)
            mask = geometry.mask(0.9)  # [frame, frame] bool: inside the face, off its outline
            small_mask = cv2.resize(mask.astype(np.uint8), (size, size),
                                    interpolation=cv2.INTER_NEAREST).astype(bool)
            pairs.append(dict(
                onset=read_frame(os.path.join(frames, f"img{row['onset_frame']}.png")),
                apex=read_frame(os.path.join(frames, f"img{row['apex_frame']}.png")),
                truth=truth, mask=mask, truth_small=resize_flow(truth, size),
                small_mask=small_mask))
    return pairs


def measure(pairs: list[dict], method: str, size: int, work_size: int | None) -> dict:
    epe_out, epe_frame, seconds = [], [], []
    for p in pairs:
        if method == "zero flow":
            flow, dt = np.zeros_like(p["truth_small"]), 0.0
        else:
            start = time.perf_counter()
            flow = process_pair(p["onset"], p["apex"], crop="center", flow_method=method,
                                size=size, work_size=work_size).flow
            dt = time.perf_counter() - start
        epe_out.append(_epe(flow, p["truth_small"], p["small_mask"]))
        full = resize_flow(flow, p["truth"].shape[:2])
        epe_frame.append(_epe(full, p["truth"], p["mask"]))
        seconds.append(dt)
    motion = np.mean([np.linalg.norm(p["truth"], axis=-1)[p["mask"]].mean() for p in pairs])
    return dict(out=np.mean(epe_out), frame=np.mean(epe_frame), rel=np.mean(epe_frame) / motion,
                ms=1000 * np.mean(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--work_size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame_size", type=int, default=128)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # time one pair on one core, as the builders' workers do
    subjects = max(1, args.clips // 3)
    with tempfile.TemporaryDirectory() as raw_dir:
        generate_raw(raw_dir, num_subjects=subjects, clips_per_subject=None, seed=args.seed,
                     frame_size=args.frame_size, num_samples=args.clips, workers=1)
        pairs = _load_pairs(raw_dir, args.seed, args.frame_size, args.size)
    work = args.work_size or "default"
    print(f"{len(pairs)} synthetic clips, frames {args.frame_size}px, crop=center, output "
          f"{args.size}px, work size {work}, seed {args.seed}; {platform.node()}, "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n")
    print(f"| method | EPE @{args.size}px | EPE @{args.frame_size}px (frame) "
          "| EPE / mean motion | ms per pair |")
    print("|---|---|---|---|---|")
    for method in (*FLOW_METHODS, "zero flow"):
        r = measure(pairs, method, args.size, args.work_size)
        print(f"| {method} | {r['out']:.3f} | {r['frame']:.3f} | {r['rel']:.2f} | {r['ms']:.1f} |")


if __name__ == "__main__":
    main()
