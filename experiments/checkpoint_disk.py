"""Disk use of a finished fold's saved model in each ``checkpoint.final_dtype``,
and what a 68-fold LOSO would leave: one fold's model of the config, initialised, saved through
the engine's FoldCheckpointer (an uncompressed .npz: its size depends only on the shapes).

    python -m experiments.checkpoint_disk [--config experiments/configs/benchmark.py:gpu]
        [--folds 68] [--out experiments/results/cpu-2core/checkpoint_disk.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile

import jax

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mjfn_jax.checkpoint import FINAL_DTYPES, FoldCheckpointer  # noqa: E402
from mjfn_jax.config_io import load_config  # noqa: E402
from mjfn_jax.engine import FoldProgram, jit_init  # noqa: E402


def measure(config, folds: int) -> list[dict]:
    program = FoldProgram(config, steps_per_epoch=1)
    model = jax.device_get(program.export(jit_init(program)(jax.random.key(0))))
    parameters = sum(x.size for x in jax.tree.leaves(model))
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for dtype in FINAL_DTYPES:
            ckpt = FoldCheckpointer(os.path.join(root, dtype), "fold", final_dtype=dtype)
            ckpt.save_final(model)
            ckpt.close()
            size = os.path.getsize(ckpt.final_path)
            rows.append({"final_dtype": dtype, "values": parameters, "fold_mb": size / 1e6,
                         "run_gb": folds * size / 1e9})  # fmt: skip
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/configs/benchmark.py:gpu")
    parser.add_argument("--folds", type=int, default=68)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = measure(load_config(args.config), args.folds)
    lines = [
        f"# Saved model per finished fold: `{args.config}`",
        "",
        f"`python -m experiments.checkpoint_disk {' '.join(argv or sys.argv[1:])}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, final.npz as written, "
        f"{rows[0]['values'] / 1e6:.2f} M values (params + BN statistics).",
        "",
        f"| checkpoint.final_dtype | MB per fold | GB for {args.folds} folds |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['final_dtype']} | {r['fold_mb']:.3g} | {r['run_gb']:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
