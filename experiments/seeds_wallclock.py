"""Seeds in one run vs one run per seed: whole-process wall time of the JAX CLI on the shared
benchmark config (generated composite-scale data, no build).

    python -m experiments.seeds_wallclock --config mjfn_jax/configs/benchmark.py:cpu \
        --seeds 0,1,2 --epochs 2 --repeats 2 [--machine cpu-2core]

"one run": ``--config.train.seeds=(0, 1, 2)``, every (seed, fold) pair a member of the parallel
fold axis. "separate runs": one process per seed, ``--config.train.seeds=(s,)``, one after the
other (what a user does without train.seeds). The two give the same per-seed UF1 (checked).
Writes experiments/results/<machine>/seeds_wallclock.{json,md}.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile

from experiments.loso_wallclock import run_cli
from experiments.results_io import write_result
from mjfn_jax import cli


def main(argv=None) -> None:
    parser = cli.ArgumentParser("python -m experiments.seeds_wallclock", __doc__)
    parser.add_argument("--config", default="mjfn_jax/configs/benchmark.py:cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    seeds = list(args.seeds)
    flag = lambda ss: f"--config.train.seeds=({', '.join(map(str, ss))},)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="mjfn_seeds_") as root:
        # A strategy cache of this session's own, warmed by a first run that is not counted:
        # both variants then meet the cached choice and compiled programs, as on a user's
        # machine after the first run.
        env = dict(os.environ, MJFN_JAX_CACHE_DIR=os.path.join(root, "cache"))
        run_cli("jax", args.config, args.epochs, root, env, [flag(seeds[:1])])
        for _ in range(args.repeats):
            one = run_cli("jax", args.config, args.epochs, root, env, [flag(seeds)])
            print(f"one run, {len(seeds)} seeds: {one['wall_s']:.1f} s")
            separate = [run_cli("jax", args.config, args.epochs, root, env, [flag([s])])
                        for s in seeds]  # fmt: skip
            wall = sum(r["wall_s"] for r in separate)
            print(f"{len(seeds)} separate runs: {wall:.1f} s")
            per_seed = {k: v for r in separate for k, v in r["seed_uf1"].items()}
            if per_seed != one["seed_uf1"]:
                raise SystemExit(f"per-seed UF1 differ: one run {one['seed_uf1']}, {per_seed}")
            rows.append({"one_run": one, "separate": separate, "separate_wall_s": wall})
    lines = [
        f"# {len(seeds)} seeds in one run vs one run per seed ({args.machine})",
        "",
        f"`{' '.join(['python -m experiments.seeds_wallclock', *(argv or sys.argv[1:])])}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"load at end {os.getloadavg()[0]:.2f}. Whole processes, {args.epochs} epochs, after "
        "one uncounted warm-up run (strategy trial and compilation cache warm).",
        "",
        "| one run (s) | separate runs (s) | speed-up | UF1 per seed (identical in both) |",
        "|---:|---:|---:|---|",
    ]
    for row in rows:
        one, wall = row["one_run"]["wall_s"], row["separate_wall_s"]
        uf1 = ", ".join(f"{s}: {u:.4f}" for s, u in row["one_run"]["seed_uf1"].items())
        lines.append(f"| {one:.1f} | {wall:.1f} | {wall / one:.2f}x | {uf1} |")
    record = {"rows": rows, "argv": argv or sys.argv[1:]}
    out_dir = os.path.join(args.out, args.machine)
    write_result(out_dir, "seeds_wallclock", record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
