"""How fast a finished fold's model reaches the host, and what the copy costs training that runs
beside it: the engine hands each finished fold group's model {"params", "batch_stats"} to the
writer thread, which copies it to the host.

    python -m experiments.handover_copy [--config experiments/configs/benchmark.py:gpu]
        [--repeats 10] [--steps 30]

Copies of one fold's model (fresh device arrays each time: a jax.Array caches its host copy):
  per_leaf  jax.device_get of the tree (the engine's way until 2026-11-27)
  flat      the leaves raveled into one buffer on the device (jitted), one transfer, split on
            the host with numpy (until 2026-11-27 05:40 UTC the split built device arrays, so
            the fifth H200 lease's 'flat' figures include a copy back to the GPU)
  pinned    each leaf moved to the device's pinned host memory, then read (the engine's way
            since 2026-11-27: ``mjfn_jax.checkpoint.copy_to_host``); skipped where the device
            has no such memory
Then ``--steps`` training steps of one fold alone, and the same with each copy
running on a thread beside them (the writer thread's situation): the extra milliseconds are
what the copy costs the loop. Prints medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.profile_step import one_fold, step_args  # noqa: E402
from mjfn_jax.checkpoint import copy_to_host  # noqa: E402
from mjfn_jax.config_io import load_config  # noqa: E402
from mjfn_jax.engine import FoldProgram  # noqa: E402

_fresh = jax.jit(lambda tree: jax.tree.map(lambda x: x + 0, tree))


def _copies(model) -> dict:
    """name -> function(device tree) -> host arrays."""
    ravel = jax.jit(lambda tree: ravel_pytree(tree)[0])
    leaves, treedef = jax.tree.flatten(model)
    bounds = np.cumsum([x.size for x in leaves])[:-1]

    def flat(tree):  # split with numpy: ravel_pytree's unravel would build device arrays
        parts = np.split(np.asarray(ravel(tree)), bounds)
        pairs = zip(parts, leaves, strict=True)
        return jax.tree.unflatten(treedef, [p.reshape(x.shape).astype(x.dtype) for p, x in pairs])

    copies = {"per_leaf": jax.device_get, "flat": flat}
    device = jax.tree.leaves(model)[0].device
    kinds = {m.kind for m in device.addressable_memories()}
    if "pinned_host" in kinds:
        copies["pinned"] = lambda tree: copy_to_host(tree, pinned=True)
    else:
        print(f"pinned: skipped (memories of {device}: {sorted(kinds)})")
    return copies


def _median_ms(fn, repeats: int, prepare) -> float:
    times = []
    for _ in range(repeats):
        arg = prepare()
        jax.block_until_ready(arg)
        start = time.perf_counter()
        fn(arg)
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/configs/benchmark.py:gpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    data, fold, steps_per_epoch = one_fold(config)
    program = FoldProgram(config, steps_per_epoch=steps_per_epoch)
    train_args = step_args(program, data, fold)
    model = jax.jit(program.export)(train_args[0])
    leaves = jax.tree.leaves(model)
    size = sum(x.nbytes for x in leaves)
    print(
        f"{jax.devices()[0].device_kind}, {args.config}: one fold's model {len(leaves)} "
        f"leaves, {size / 1e6:.1f} MB"
    )

    copies = _copies(model)
    for name, copy in copies.items():
        for _ in range(2):  # compile and warm up
            copy(_fresh(model))
        ms = _median_ms(copy, args.repeats, lambda: _fresh(model))
        print(f"copy {name:8s} {ms:8.2f} ms  {size / ms / 1e6:6.2f} GB/s")

    step = jax.jit(program.train_step_at).lower(*train_args).compile()

    def steps(copy=None):
        jax.block_until_ready(step(*train_args))
        tree = _fresh(model)
        jax.block_until_ready(tree)
        thread = threading.Thread(target=copy, args=(tree,)) if copy else None
        start = time.perf_counter()
        if thread:
            thread.start()
        out = None
        for _ in range(args.steps):
            out = step(*train_args)
        jax.block_until_ready(out)
        elapsed = 1e3 * (time.perf_counter() - start)
        if thread:
            thread.join()
        return elapsed

    variants = {"alone": None, **{f"{name} beside": copy for name, copy in copies.items()}}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # alternating rounds
        for name, copy in variants.items():
            times[name].append(steps(copy))
    alone = float(np.median(times["alone"]))
    for name, values in times.items():
        ms = float(np.median(values))
        print(f"{args.steps} steps, {name:16s} {ms:8.2f} ms  (+{ms - alone:6.2f} ms)")


if __name__ == "__main__":
    main()
