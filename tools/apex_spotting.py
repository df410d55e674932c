"""Apex-spotting accuracy on synthetic clips (known apex), per nuisance setting and per method.

Renders the synthetic generator's clips in memory (same clips as generate_raw with the same
seed), optionally with one nuisance of the generator scaled up, runs
mjfn_jax.preprocess.spot_apex(crop="center") and reports the error |spotted - true apex| in
frames: median, 90th percentile, max, share within 1 frame, mean signed error (bias), and the
spotting time per frame (one OpenCV thread, frames already decoded). A cost table times one
clip at the real datasets' frame sizes (a clip upscaled and written as JPEG): decoding, spotting,
and the TV-L1 flow image of the chosen pair for comparison.

Usage (from the repository root):
  python -m tools.apex_spotting [--subjects 12 --clips 9] [--out FILE.md]
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
import tempfile
import time

import cv2
import numpy as np

from mjfn_jax import cli
from mjfn_jax.preprocess import process_pair
from mjfn_jax.preprocess.apex import SpotSettings, spot_apex
from mjfn_jax.synthetic import clip_labels, clip_spec, render_clip, render_neutral, subject_geometry
from mjfn_jax.synthetic.generate import APPEARANCE

# Nuisance settings: a function of the sampled ClipSpec. "as generated" is the generator itself
# (head drift, wobble, lighting drift, noise 0.3-1.5 grey levels, residual expression at offset).
SETTINGS = {
    "as generated": lambda s: s,
    "clean (no head, light, noise)": lambda s: dataclasses.replace(
        s,
        head=(0.0, 0.0, 0.0, 0.0),
        wobble_amplitude=0.0,
        gain_change=0.0,
        ramp_change=0.0,
        noise_sigma=0.0,
    ),  # fmt: skip
    "sensor noise x3": lambda s: dataclasses.replace(s, noise_sigma=3 * s.noise_sigma),
    "head drift + wobble x3": lambda s: dataclasses.replace(
        s, head=tuple(3 * h for h in s.head), wobble_amplitude=3 * s.wobble_amplitude
    ),
    "lighting drift x3": lambda s: dataclasses.replace(
        s, gain_change=3 * s.gain_change, ramp_change=3 * s.ramp_change
    ),
    "no return to neutral (residual 0.5)": lambda s: dataclasses.replace(s, residual=0.5),
}
# Methods compared on every setting: the default and the alternatives it was chosen over.
METHODS = {
    "default (farneback 64, strain, detrend)": SpotSettings(),
    "dis 64, strain, detrend": SpotSettings(flow_method="dis"),
    "farneback 32, strain, detrend": SpotSettings(work_size=32),
    "farneback 64, magnitude, detrend": SpotSettings(score="magnitude"),
    "farneback 64, strain, no detrend": SpotSettings(detrend=False),
}


def synthetic_clips(subjects: int, clips: int, seed: int, frame_size: int):
    """(subject index, neutral canvas, geometry, sampled ClipSpec) of every clip."""
    for subject in range(subjects):
        geometry = subject_geometry(seed, subject, frame_size)
        neutral = render_neutral(geometry, np.random.default_rng([seed, APPEARANCE, subject]))
        for clip, label in enumerate(clip_labels(seed, subject, clips)):
            yield neutral, geometry, clip_spec(seed, subject, clip, label)


def error_stats(errors: np.ndarray, seconds: float, frames: int) -> dict:
    abs_err = np.abs(errors)
    return {
        "median": float(np.median(abs_err)),
        "p90": float(np.percentile(abs_err, 90)),
        "max": int(abs_err.max()),
        "within1": float(np.mean(abs_err <= 1)),
        "bias": float(errors.mean()),
        "ms_per_frame": 1000 * seconds / frames,
    }


def run(subjects: int, clips: int, seed: int, frame_size: int) -> tuple[list, dict]:
    """Rows (setting, method, stats) and the amplitude breakdown of the default method."""
    base = list(synthetic_clips(subjects, clips, seed, frame_size))
    rows, by_amplitude = [], {}
    for setting, change in SETTINGS.items():
        rendered = []
        for neutral, geometry, spec in base:
            spec = change(spec)
            rendered.append((spec, render_clip(neutral, geometry, spec)))
        for method, settings in METHODS.items():
            errors, seconds, frames = [], 0.0, 0
            for spec, clip_frames in rendered:
                spot = spot_apex(clip_frames, crop="center", settings=settings)
                errors.append(spot.index - spec.apex_index)
                seconds, frames = seconds + spot.seconds, frames + len(clip_frames)
            errors = np.asarray(errors)
            rows.append((setting, method, error_stats(errors, seconds, frames)))
            if setting == "as generated" and method == next(iter(METHODS)):
                amplitude = np.array([max(max(v) for v in s.aus.values()) for s, _ in rendered])
                for lo, hi in ((0.0, 0.4), (0.4, 0.8), (0.8, 9.0)):
                    pick = (amplitude >= lo) & (amplitude < hi)
                    if pick.any():
                        by_amplitude[f"{lo}-{hi} px"] = (int(pick.sum()), np.abs(errors[pick]))
    return rows, by_amplitude


# (name, width, height, frames in a typical clip): CASME II 640x480 colour at 200 fps (onset to
# offset ~66 frames on average), SAMM 2040x1088 grey (~74).
COST_CLIPS = (("CASME II-like", 640, 480, 66), ("SAMM-like", 2040, 1088, 74))


def cost_rows(seed: int) -> list[tuple]:
    """(clip, size, frames, decode s/frame, spot s/frame farneback, dis, TV-L1 pair s)."""
    neutral, geometry, spec = next(synthetic_clips(1, 1, seed, 128))
    base = render_clip(neutral, geometry, spec)
    rows = []
    for name, width, height, count in COST_CLIPS:
        side = min(width, height)
        left = (width - side) // 2
        with tempfile.TemporaryDirectory() as folder:
            for t in range(count):
                face = cv2.resize(base[t % len(base)], (side, side), interpolation=cv2.INTER_CUBIC)
                frame = cv2.copyMakeBorder(
                    face, 0, height - side, left, width - side - left, cv2.BORDER_REFLECT
                )
                cv2.imwrite(os.path.join(folder, f"img{t}.jpg"), frame)
            start = time.perf_counter()
            gray = [
                cv2.cvtColor(cv2.imread(os.path.join(folder, f"img{t}.jpg")), cv2.COLOR_BGR2GRAY)
                for t in range(count)
            ]
            decode = (time.perf_counter() - start) / count
        spots = [
            spot_apex(gray, crop="center", settings=SpotSettings(flow_method=m)).seconds / count
            for m in ("farneback", "dis")
        ]
        start = time.perf_counter()
        process_pair(gray[0], gray[len(gray) // 2], crop="center", flow_method="tvl1", size=112)
        rows.append((name, f"{width}x{height}", count, decode, *spots, time.perf_counter() - start))
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {cpu} ({platform.node()})"


def report(rows, by_amplitude, costs, args, clip_count: int, seconds: float) -> str:
    now = datetime.datetime.now(datetime.UTC)
    command = "python -m tools.apex_spotting " + " ".join(sys.argv[1:])
    lines = [
        "# Apex spotting on synthetic clips (cpu-2core)",
        "",
        f"`{command.strip()}`, {now:%Y-%m-%d %H:%M} UTC, {machine()}, "
        f"one OpenCV thread, {seconds:.0f} s in all, load average {os.getloadavg()[0]:.2f} at "
        "the end (the cores are shared: timings are indicative).",
        "",
        f"{clip_count} clips ({args.subjects} subjects x {args.clips}, seed {args.seed}, "
        f"{args.frame_size}px frames, 9-15 frames each, true apex at 30-60% of the clip), "
        "crop=center. Error = spotted - true apex index, in frames. ms/frame: flows and "
        "scores only (frames already decoded).",
        "",
        "| setting | method | median | p90 | max | within 1 | bias | ms/frame |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setting, method, s in rows:
        lines.append(
            f"| {setting} | {method} | {s['median']:.1f} | {s['p90']:.1f} | {s['max']} "
            f"| {s['within1']:.0%} | {s['bias']:+.2f} | {s['ms_per_frame']:.2f} |"
        )
    lines += [
        "",
        "Default method, 'as generated', by expression amplitude (largest AU intensity, px at "
        "128 px):",
        "",
        "| amplitude | clips | median | p90 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (count, err) in by_amplitude.items():
        lines.append(
            f"| {name} | {count} | {np.median(err):.1f} | {np.percentile(err, 90):.1f} "
            f"| {err.max()} |"
        )
    lines += [
        "",
        "Cost of one clip (ms; JPEG frames, crop=center, one OpenCV thread). Spotting = flows "
        "and scores at 64 px, including resizing each frame's box; TV-L1 pair = process_pair of "
        "one pair at 112 px, what the builders compute per clip anyway:",
        "",
        "| clip | frame | frames | decode / frame | spot farneback / frame | spot dis / frame "
        "| spot farneback / clip | TV-L1 pair |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, count, decode, farneback, dis, tvl1 in costs:
        lines.append(
            f"| {name} | {size} | {count} | {1000 * decode:.1f} | {1000 * farneback:.2f} "
            f"| {1000 * dis:.2f} | {1000 * count * farneback:.0f} | {1000 * tvl1:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = cli.ArgumentParser("python -m tools.apex_spotting", __doc__)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--clips", type=int, default=9, help="clips per subject")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame_size", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # time one clip on one core, as a builder worker does
    start = time.perf_counter()
    rows, by_amplitude = run(args.subjects, args.clips, args.seed, args.frame_size)
    costs = cost_rows(args.seed)
    seconds = time.perf_counter() - start
    text = report(rows, by_amplitude, costs, args, args.subjects * args.clips, seconds)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
