"""Checkpoints of a two-process run: what each process's saves move between the processes, cost
the training thread, and hold in memory.

    PYTHONPATH=<the code to measure> python experiments/checkpoint_pod.py --label after \
        [--epochs 3] [--subjects 8] [--json FILE]

Two processes x 2 CPU devices on 127.0.0.1 train ``benchmark:gpu`` at the reference widths
(ResNet-18's 64..512: 16.9 M parameters, ~203 MB of train state a fold with Adam's moments) on
small inputs (32 px, batch 8, generated data of ``--subjects`` subjects, 4 clips each: that many
LOSO folds, in groups of 4, one per device), saving every epoch. Each process is this script's
``--child`` mode: mjfn-train (``mjfn_jax.main``) with ``multihost_utils.process_allgather`` and
``UnitCheckpoints.save_progress`` / ``save_models`` wrapped. Per process it reports the bytes
all-gathered inside the save calls (and of them received from the other process), the time of
the save calls on the training thread, the peak RSS (getrusage) and the run's wall time. The
package measured is the one first on PYTHONPATH (printed), so one script measures two versions;
``--json`` keeps each ``--label``'s figures and the table printed covers them all.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def child(out: str, argv: list[str]) -> int:
    """One process of the run: mjfn-train with its saves and all-gathers measured."""
    import resource

    import jax
    from jax.experimental import multihost_utils

    import mjfn_jax
    from mjfn_jax.main import main as train
    from mjfn_jax.unit_checkpoints import UnitCheckpoints

    record = {"package": os.path.dirname(mjfn_jax.__file__), "saves": []}
    inside: list[dict] = []  # the save call in progress
    gather = multihost_utils.process_allgather

    def gathering(tree, *args, **kwargs):
        for x in jax.tree.leaves(tree) if inside else []:
            total = x.size * x.dtype.itemsize
            local = total
            if isinstance(x, jax.Array):
                local = sum(s.data.nbytes for s in x.addressable_shards if s.replica_id == 0)
            inside[-1]["gathered_bytes"] += total
            inside[-1]["received_bytes"] += total - local
        return gather(tree, *args, **kwargs)

    def timed(kind: str, save):
        def call(self, *args, **kwargs):
            entry = {"kind": kind, "gathered_bytes": 0, "received_bytes": 0}
            inside.append(entry)
            start = time.perf_counter()
            try:
                return save(self, *args, **kwargs)
            finally:
                entry["seconds"] = time.perf_counter() - start
                inside.pop()
                record["saves"].append(entry)

        return call

    multihost_utils.process_allgather = gathering
    UnitCheckpoints.save_progress = timed("progress", UnitCheckpoints.save_progress)
    UnitCheckpoints.save_models = timed("model", UnitCheckpoints.save_models)
    start = time.perf_counter()
    status = train(argv)
    record["wall_s"] = time.perf_counter() - start
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record["process"] = jax.process_index()
    with open(out, "w") as f:
        json.dump(record, f)
    return status or 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(root: str, epochs: int, subjects: int) -> list[dict]:
    """Both processes of one run, in ``root``; their records."""
    port = _free_port()
    args = [
        "--config", "benchmark:gpu", "--workdir", os.path.join(root, "run"),
        f"--config.data.generated_subjects={subjects}",
        f"--config.data.generated_samples={4 * subjects}",
        "--config.model.input_size=32", "--config.train.batch_size=8",
        f"--config.train.num_epochs={epochs}", "--config.checkpoint.every_epochs=1",
        "--config.parallel.strategy=vmap", "--config.parallel.fold_group_size=4",
        "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
    ]  # fmt: skip
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        MJFN_JAX_CACHE_DIR=os.path.join(root, "cache"),  # cold: no executables cached
    )
    outs = [os.path.join(root, f"process_{i}.json") for i in range(2)]
    me = [sys.executable, os.path.abspath(__file__), "--child"]
    commands = [[*me, outs[i], "--", *args, "--process_id", str(i)] for i in range(2)]
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode:
            raise SystemExit(f"a process failed (status {proc.returncode}):\n{err[-3000:]}")
    records = []
    for out in outs:
        with open(out) as f:
            records.append(json.load(f))
    folds = os.path.join(root, "run", "folds")
    models = [os.path.join(folds, fold, name) for fold in os.listdir(folds)
              for name in ("model", "final.npz")]  # fmt: skip
    sizes = [_disk(path) for path in models if os.path.exists(path)]  # after / before
    for r in records:
        r["model_bytes_per_fold"] = sum(sizes) / max(1, len(sizes))
    return records


def _disk(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def table(runs: dict) -> list[str]:
    """One row per (label, process): the figures of each kind of save, memory, wall."""
    lines = [
        "| code | process | progress saves: received per save (all-gathered) | their time on "
        "the training thread, mean (max) | model saves: received per save (all-gathered) | "
        "their time, mean (max) | peak RSS | wall | a fold's model on disk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    for label, records in runs.items():
        for r in records:
            cells = []
            for kind in ("progress", "model"):
                saves = [s for s in r["saves"] if s["kind"] == kind]
                n = max(1, len(saves))
                received = sum(s["received_bytes"] for s in saves) / n
                gathered = sum(s["gathered_bytes"] for s in saves) / n
                seconds = [s["seconds"] for s in saves] or [0.0]
                cells += [
                    f"{mb(received)} ({mb(gathered)})",
                    f"{1e3 * sum(seconds) / n:.0f} ms ({1e3 * max(seconds):.0f} ms), "
                    f"{len(saves)} calls",
                ]
            lines.append(
                f"| {label} | {r['process']} | {' | '.join(cells)} | "
                f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['wall_s']:.0f} s | "
                f"{mb(r['model_bytes_per_fold'])} |"
            )
    return lines


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        sys.exit(child(argv[1], argv[3:]))
    parser = argparse.ArgumentParser("python experiments/checkpoint_pod.py", description=__doc__)
    parser.add_argument("--label", required=True, help="what code this is (before, after)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--json", default=None, help="keep every label's figures in this file")
    args = parser.parse_args(argv)
    runs = {}
    if args.json and os.path.exists(args.json):
        with open(args.json) as f:
            runs = json.load(f)
    with tempfile.TemporaryDirectory(prefix="mjfn_checkpoint_pod_") as root:
        runs[args.label] = run_two(root, args.epochs, args.subjects)
    print(f"measured {runs[args.label][0]['package']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
