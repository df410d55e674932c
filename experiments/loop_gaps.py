"""Where a warm LOSO loop loses time between the device's programs, and what the loop's shape
(one call per step or one ``lax.scan``; epochs per training call) changes.

    python -m experiments.loop_gaps [--config experiments/configs/benchmark.py:gpu]
        [--subjects 16] [--variants steps:1,steps:5,scan:5] [--repeats 2] [--machine NAME]

1. One LOSO through ``train_and_evaluate`` per variant to compile it (not counted), then
   ``--repeats`` rounds of every variant in turn (alternating, warm, one process): wall time,
   training-call time per fold and per step, the other phases per fold.
2. One more run of the first variant under a jax.profiler trace: on a GPU the device's
   timeline ("XLA Modules" line: which program ran when) with its idle gaps summed per
   transition (program before -> program after) and per host event running at the gap's
   middle (a dispatch, a transfer, a wait, or none: the loop's own Python). On a CPU only the
   timing part runs (its "device" is the host's threads).

Writes experiments/results/<machine>/loop_gaps.{md,json}.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import datetime
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.results_io import write_result  # noqa: E402
from mjfn_jax.config_io import load_config  # noqa: E402
from mjfn_jax.parallel import OUTSIDE_TRAINING_CALLS  # noqa: E402


def _variant_config(config, variant: str):
    loop, per_call = variant.split(":")
    config = config.copy_and_resolve_references()
    config.parallel.strategy, config.parallel.auto_trial = "sequential", False
    config.parallel.loop, config.parallel.epochs_per_call = loop, int(per_call)
    return config


def _run(config) -> dict:
    from mjfn_jax.train import train_and_evaluate

    with tempfile.TemporaryDirectory(prefix="mjfn_gaps_") as workdir:
        start = time.perf_counter()
        out = train_and_evaluate(config, workdir)
        wall = time.perf_counter() - start
    timing = out["timing"]
    folds = config.data.generated_subjects
    samples = (timing["samples_per_s"] or 0) * timing["train_s"]
    steps = round(samples / (folds * config.train.num_epochs * config.train.batch_size))
    compiles = timing["compile_by_program"]
    inside = sum(v for k, v in compiles.items() if k not in OUTSIDE_TRAINING_CALLS)
    calls = timing["phases_s"]["training calls"] - inside  # the training calls (warm: none)
    return {
        "wall_s": wall,
        "compile_s": sum(compiles.values()),
        "training_calls_per_fold_ms": 1e3 * calls / folds,
        "phases_per_fold_ms": {k: 1e3 * v / folds for k, v in timing["phases_s"].items()},
        "steps_per_epoch": steps,
        "uf1": out["pooled"]["uf1"] if "pooled" in out else None,
    }


def _short(name: str) -> str:
    name = re.sub(r"\(\d+\)$", "", name.split(" = ")[0]).replace("jit_mjfn_program__", "")
    return re.sub(r"\.\d+$", "", name)[:70]


def _intervals(line) -> list[tuple[int, int, str]]:
    return sorted((e.start_ns, e.start_ns + e.duration_ns, e.name) for e in line.events)


def gap_summary(xspace_path: str, min_gap_us: float = 20.0) -> dict:
    """The device timeline's idle gaps (GPU only) from one trace file."""
    return summarise_gaps(list(jax.profiler.ProfileData.from_file(xspace_path).planes), min_gap_us)


def summarise_gaps(planes, min_gap_us: float = 20.0) -> dict:
    """Idle gaps of the first GPU plane's timeline: its "XLA Modules" line (one event per
    program run), else the union of its "Stream" lines (kernels). Each gap of at least
    ``min_gap_us`` is summed under its transition (program before -> after) and under the
    innermost event of the dispatching host thread (the one with jit dispatches) at its middle."""
    gpu = [p for p in planes if p.name.startswith("/device:GPU")]
    if not gpu:
        return {"note": "no GPU plane in the trace: gap analysis is for accelerators"}
    timeline = [e for ln in gpu[0].lines if ln.name == "XLA Modules" for e in _intervals(ln)]
    if not timeline:  # kernels of every stream, overlaps merged
        kernels = sorted(
            e for ln in gpu[0].lines if ln.name.startswith("Stream") for e in _intervals(ln)
        )
        for s, e, n in kernels:
            if timeline and s <= timeline[-1][1]:
                timeline[-1] = (timeline[-1][0], max(e, timeline[-1][1]), timeline[-1][2])
            else:
                timeline.append((s, e, n))
    if not timeline:
        return {"note": "no program or kernel events on the GPU plane"}
    host_lines = [
        _intervals(ln)
        for p in planes
        if p.name.startswith("/host:")
        for ln in p.lines
        if any("pjit" in e.name.lower() for e in ln.events)
    ]
    busy = sum(e - s for s, e, _ in timeline)
    span = timeline[-1][1] - timeline[0][0]
    by_transition, by_host = collections.Counter(), collections.Counter()
    count = collections.Counter()
    for (_, end, before), (start, _, after) in zip(timeline, timeline[1:], strict=False):
        gap = start - end
        if gap < min_gap_us * 1e3:
            continue
        key = f"{_short(before)} -> {_short(after)}"
        by_transition[key] += gap
        count[key] += 1
        mid = end + gap // 2
        running = [ev for line in host_lines if (ev := _innermost(line, mid))]
        by_host[_short(min(running)[1]) if running else "(no JAX event: Python)"] += gap
    return {
        "device_span_ms": span / 1e6,
        "device_busy_ms": busy / 1e6,
        "idle_ms": (span - busy) / 1e6,
        "gaps_by_transition_ms": {
            k: {"total": v / 1e6, "count": count[k], "mean_us": v / 1e3 / count[k]}
            for k, v in by_transition.most_common(12)
        },
        "gaps_by_host_event_ms": {k: v / 1e6 for k, v in by_host.most_common(12)},
        "modules_ms": {k: v / 1e6 for k, v in _sum_by(timeline).most_common(8)},
    }


def _innermost(line: list, t: int, lookback: int = 256):
    """(duration, name) of the latest-starting event of a thread's sorted events that spans
    ``t`` (the innermost: a thread's events nest), or None; looks back ``lookback`` events."""
    i = bisect.bisect_right(line, (t, float("inf"), ""))
    for start, end, name in reversed(line[max(0, i - lookback) : i]):
        if end >= t:
            return end - start, name
    return None


def _sum_by(events) -> dict:
    out = collections.Counter()
    for s, e, n in events:
        out[_short(n)] += e - s
    return out


def to_markdown(result: dict) -> str:
    lines = [
        f"# Loop gaps: `{result['config']}` ({result['machine']})",
        "",
        f"`{result['command']}`, {result['date']}, jax {result['jax']}, {result['device']}; "
        f"{result['subjects']} folds (generated subjects), warm, one process.",
        "",
        "| variant (loop:epochs per call) | round | wall s | training calls ms / fold | "
        "ms / step inside | other phases ms / fold | UF1 |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in result["runs"]:
        steps = row["steps_per_epoch"] * result["epochs"]
        other = {
            k: round(v, 1)
            for k, v in row["phases_per_fold_ms"].items()
            if k != "training calls" and v >= 0.5
        }
        per_step = row["training_calls_per_fold_ms"] / steps if steps else float("nan")
        lines.append(
            f"| {row['variant']} | {row['round']} | {row['wall_s']:.2f} | "
            f"{row['training_calls_per_fold_ms']:.1f} | {per_step:.2f} | {other} | "
            f"{row['uf1']:.4f} |"
        )
    gaps = result.get("trace", {})
    lines += ["", f"## Trace of one more `{result['variants'][0]}` run", ""]
    if not gaps:
        lines.append("not traced (--no_trace)")
    elif "note" in gaps or "error" in gaps:
        lines.append(gaps.get("note") or gaps.get("error"))
    else:
        lines += [
            f"Device span {gaps['device_span_ms']:.1f} ms, busy in programs "
            f"{gaps['device_busy_ms']:.1f} ms, idle {gaps['idle_ms']:.1f} ms.",
            "",
            "| idle gaps by transition (program before -> after) | total ms | count | mean us |",
            "|---|---:|---:|---:|",
        ]
        for k, v in gaps["gaps_by_transition_ms"].items():
            lines.append(f"| {k} | {v['total']:.1f} | {v['count']} | {v['mean_us']:.0f} |")
        lines += ["", "| host event at a gap's middle | idle ms |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.1f} |" for k, v in gaps["gaps_by_host_event_ms"].items()]
        lines += ["", "| program | device ms |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in gaps["modules_ms"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/configs/benchmark.py:gpu")
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--samples", type=int, default=442)
    parser.add_argument("--variants", default="steps:1,steps:5,scan:5")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--machine", default=None)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--no_trace", action="store_true")
    args = parser.parse_args(argv)
    from experiments.benchmark_lib import default_machine_name
    from mjfn_jax.parallel import split_cpu_devices

    split_cpu_devices()
    config = load_config(args.config)
    config.data.generated_subjects, config.data.generated_samples = args.subjects, args.samples
    config.report.linear_floor = False
    variants = args.variants.split(",")
    runs = []
    for variant in variants:  # compiles (not counted)
        _run(_variant_config(config, variant))
    for r in range(args.repeats):
        for variant in variants:
            row = _run(_variant_config(config, variant)) | {"variant": variant, "round": r + 1}
            print(json.dumps(row), flush=True)
            runs.append(row)
    trace = {}
    if not args.no_trace:
        trace_dir = tempfile.mkdtemp(prefix="mjfn_gaps_trace_")
        try:
            jax.profiler.start_trace(trace_dir)
            _run(_variant_config(config, variants[0]))
            jax.profiler.stop_trace()
            path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
            trace = gap_summary(path[-1])
        except Exception as e:  # noqa: BLE001 - e.g. no CUPTI: the timing part still counts
            trace = {"error": f"{type(e).__name__}: {e}"}
    machine = args.machine or default_machine_name()
    backend = jax.default_backend()
    result = {
        "config": args.config,
        "machine": machine,
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({backend})",
        "jax": jax.__version__,
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "command": " ".join(["python -m experiments.loop_gaps", *(argv or sys.argv[1:])]),
        "subjects": args.subjects,
        "epochs": config.train.num_epochs,
        "variants": variants,
        "runs": runs,
        "trace": trace,
    }
    write_result(os.path.join(args.out, machine), "loop_gaps", result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
