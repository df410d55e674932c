"""A/B on this machine: BatchNorm's batch statistics in one pass (the shipped form: the mean and
the mean of squares together, var = E[x^2] - E[x]^2 clamped at 0) against two passes (the mean,
then the mean of squared deviations from it: the form before 2026-11-27).

    python -m experiments.bn_passes [--config experiments/configs/benchmark.py:gpu]
        [--rounds 12] [--steps 40]

One fold's engine training step compiled both ways in one process, then alternating rounds of
``--steps`` steps each; prints ms per step per round, the medians and the median per-round ratio
(one-pass / two-pass). The two-pass form is patched in only while its program is traced.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.profile_step import one_fold, step_args  # noqa: E402
from mjfn_jax.config_io import load_config  # noqa: E402
from mjfn_jax.engine import FoldProgram  # noqa: E402
from mjfn_jax.models import layers  # noqa: E402

SHIPPED = layers.BatchNorm.__call__


def two_pass(self, x):
    """The BatchNorm forward before 2026-11-27 (train mode); eval mode as shipped."""
    if self.use_running_average:
        return SHIPPED(self, x)
    x32 = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x32, axis=axes)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes)
    n = x.size // x.shape[-1]
    unbiased = var * (n / max(n - 1, 1))
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
    self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased)
    mul = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
    shift = self.bias[...] - mean * mul
    return (x * mul.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)


def build(config, data, fold, steps_per_epoch, call):
    """One fold's training step compiled with ``call`` as BatchNorm's forward."""
    layers.BatchNorm.__call__ = call
    try:
        program = FoldProgram(config, steps_per_epoch=steps_per_epoch)
        args = step_args(program, data, fold)
        return jax.jit(program.train_step_at).lower(*args).compile(), args
    finally:
        layers.BatchNorm.__call__ = SHIPPED


def ms_per_step(compiled, args, steps: int) -> float:
    out = compiled(*args)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(steps):
        out = compiled(*args)
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/configs/benchmark.py:gpu")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    data, fold, steps_per_epoch = one_fold(config)
    t = time.perf_counter()
    two = build(config, data, fold, steps_per_epoch, two_pass)
    one = build(config, data, fold, steps_per_epoch, SHIPPED)
    print(
        f"{jax.devices()[0].device_kind}, {args.config}: both compiled in "
        f"{time.perf_counter() - t:.1f} s"
    )
    out_two, out_one = two[0](*two[1]), one[0](*one[1])
    pairs = zip(jax.tree.leaves(out_two[0].params), jax.tree.leaves(out_one[0].params), strict=True)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
    print(f"max parameter difference after one step: {diff:.3g}")
    t_two, t_one = [], []
    for _ in range(args.rounds):
        t_two.append(ms_per_step(*two, args.steps))
        t_one.append(ms_per_step(*one, args.steps))
    print("two-pass ms:", np.round(t_two, 3).tolist(), f"median {np.median(t_two):.3f}")
    print("one-pass ms:", np.round(t_one, 3).tolist(), f"median {np.median(t_one):.3f}")
    ratio = np.array(t_one) / np.array(t_two)
    print(
        f"one/two per round: median {np.median(ratio):.3f} "
        f"(min {ratio.min():.3f}, max {ratio.max():.3f})"
    )


if __name__ == "__main__":
    main()
