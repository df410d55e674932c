"""Whole-process wall time of a full LOSO: the JAX CLI vs the PyTorch baseline's CLI, on the
shared benchmark config (generated composite-scale data, no build), alternating, in one session.

    python -m experiments.loso_wallclock --config mjfn_jax/configs/benchmark.py:cpu \
        --epochs 2,10 --repeats 2 [--machine cpu-2core]

Each run is a fresh process (imports, data generation, compiles and every fold included), the
way a user meets it. Writes experiments/results/<machine>/loso_wallclock.{json,md}.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from experiments.results_io import write_result
from mjfn_jax import cli

COMMANDS = {
    "jax": [sys.executable, "-m", "mjfn_jax.main", "--config", "{config}", "--workdir", "{w}",
            "--config.train.num_epochs={epochs}"],
    "torch_eager": [sys.executable, "experiments/pytorch_baseline/train.py", "--config",
                    "{config}", "--workdir", "{w}", "--config.train.num_epochs={epochs}"],
}  # fmt: skip


def run_cli(name: str, config: str, epochs: int, root: str, env: dict, extra=()) -> dict:
    """One whole process of ``COMMANDS[name]`` (plus ``extra`` flags): wall time, UF1 (mean
    over seeds for a several-seed run), disk use, the strategy."""
    workdir = tempfile.mkdtemp(prefix=f"{name}_{epochs}_", dir=root)
    cmd = [part.format(config=config, w=workdir, epochs=epochs) for part in COMMANDS[name]]
    cmd += list(extra)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    disk = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(workdir) for f in files
    )
    auto = (results.get("timing") or {}).get("auto") or {}
    multi = "seeds" in results  # a several-seed run: mean over its seeds
    train, config_seed = results["config"]["train"], results["config"]["seed"]
    return {
        # a timed trial's seconds (none when cached, or skipped by parallel.auto_trial_budget)
        "auto_trial_s": auto.get("trial_s", 0.0) if "trial" in auto and not auto["cached"] else 0.0,
        "variant": name,
        "epochs": epochs,
        "wall_s": wall,
        "uf1": results["mean_sd"]["uf1"]["mean"] if multi else results["pooled"]["uf1"],
        "seed_uf1": {str(r["seed"]): r["uf1"] for r in results["seeds"]}
        if multi
        else {str((train.get("seeds") or [config_seed])[0]): results["pooled"]["uf1"]},
        "strategy": (results.get("timing") or {}).get("strategy"),
        "disk_mb": disk / 2**20,
        "command": " ".join(cmd),
    }


def main(argv=None) -> None:
    parser = cli.ArgumentParser("python -m experiments.loso_wallclock", __doc__)
    parser.add_argument("--config", default="mjfn_jax/configs/benchmark.py:cpu")
    parser.add_argument("--epochs", default="2,10")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mjfn_wall_") as root:
        # A strategy cache of this session's own: the first JAX run pays 'auto''s timed trial
        # (reported in its own column), later ones reuse its choice, as on a user's machine.
        env = dict(os.environ, MJFN_JAX_CACHE_DIR=os.path.join(root, "cache"))
        for epochs in (int(e) for e in args.epochs.split(",")):
            for _ in range(args.repeats):
                for name in COMMANDS:  # alternate the frameworks
                    run = run_cli(name, args.config, epochs, root, env)
                    print(f"{name} {epochs} epochs: {run['wall_s']:.1f} s, UF1 {run['uf1']:.3f}")
                    runs.append(run)
    lines = [
        f"# Full LOSO, whole processes ({args.machine})",
        "",
        f"`{' '.join(['python -m experiments.loso_wallclock', *(argv or sys.argv[1:])])}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"load at end {os.getloadavg()[0]:.2f}.",
        "",
        "| epochs | JAX wall (s) | of which `auto`'s trial (s) | PyTorch eager wall (s) | "
        "speed-up | JAX UF1 | torch UF1 |",
        "|---:|---|---|---|---:|---|---|",
    ]
    for epochs in sorted({r["epochs"] for r in runs}):
        pick = lambda n, e=epochs: [r for r in runs if r["variant"] == n and r["epochs"] == e]
        jax_runs, torch_runs = pick("jax"), pick("torch_eager")
        fmt = lambda rs, k: ", ".join(f"{r[k]:.3f}" if k == "uf1" else f"{r[k]:.1f}" for r in rs)
        low = min(r["wall_s"] for r in torch_runs) / max(r["wall_s"] for r in jax_runs)
        high = max(r["wall_s"] for r in torch_runs) / min(r["wall_s"] for r in jax_runs)
        ratio = f"{low:.2f}x" if abs(high - low) < 0.005 else f"{low:.2f}-{high:.2f}x"
        lines.append(
            f"| {epochs} | {fmt(jax_runs, 'wall_s')} | {fmt(jax_runs, 'auto_trial_s')} | "
            f"{fmt(torch_runs, 'wall_s')} | {ratio} | "
            f"{fmt(jax_runs, 'uf1')} | {fmt(torch_runs, 'uf1')} |"
        )
    record = {"runs": runs, "argv": argv or sys.argv[1:]}
    out_dir = os.path.join(args.out, args.machine)
    write_result(out_dir, "loso_wallclock", record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
