"""Parameter counts per part and forward FLOPs (XLA cost analysis) of an MJFN configuration."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mjfn_jax.models.mjfn import MJFN

PARTS = ("backbone", "jfm1", "jfm2", "jfm3", "heads")
BRANCH_PART = "ststnet"  # model.ststnet_branch's network, whole (counted only where present)


def _part_of(path: tuple) -> str:
    """Maps a state path to its part: stem + stages = backbone; JFM convs; all linear heads;
    the STSTNet branch as one part."""
    names = [str(p) for p in path]
    if names[0] == "branch":
        return BRANCH_PART
    if "head" in names or names[0] in ("backbone_head", "fusion_logits"):
        return "heads"
    if names[0] == "jfms":
        return f"jfm{int(names[1]) + 1}"
    if names[0] in ("stem", "stages"):
        return "backbone"
    raise ValueError(f"unknown part for parameter {'.'.join(names)}")


def count_params(model: nnx.Module) -> dict[str, int]:
    """Number of trainable parameters (nnx.Param) per part, plus 'total' (BN stats excluded);
    a model with the STSTNet branch has the part 'ststnet' too."""
    counts = dict.fromkeys(PARTS, 0)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        part = _part_of(path)
        counts[part] = counts.get(part, 0) + int(np.prod(var.shape))
    counts["total"] = sum(counts.values())
    return counts


def count_flops(fn: Callable, *args) -> float:
    """FLOPs of one call of ``fn(*args)`` from XLA's cost analysis of the compiled function.

    args may be arrays or ``jax.ShapeDtypeStruct``s (nothing is executed). XLA counts a
    multiply-add as 2 FLOPs and skips the taps of a convolution that fall on zero padding
    (a 3x3 conv on a 7x7 map counts (19/21)^2 = 82% of 2 * MACs), so on small feature maps
    it is below the textbook 2 * MACs figure. In this jax version ``cost_analysis()`` returns
    a dict; older versions returned a one-element list of dicts, accepted too.

    Always counted on XLA:CPU: on GPU the cost analysis leaves out the convolutions, which run
    as cuDNN custom calls (on an H200: 59.7 MFLOP per training sample of the gpu benchmark
    model against 13.03 GFLOP on XLA:CPU).
    """
    with jax.default_device(jax.devices("cpu")[0]):
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    if not cost or "flops" not in cost:
        raise RuntimeError("XLA:CPU's cost analysis reported no 'flops'")
    return float(cost["flops"])


def model_summary(model_config, batch_size: int = 1) -> dict:
    """Parameter counts per part and eval-mode forward FLOPs per sample.

    The model is built abstractly (``nnx.eval_shape``): no weights are allocated, nothing runs.
    Returns {"params": {part: n, "total": n}, "batch_stats": n, "flops_per_sample": float,
    "input_shape": [S, S, model.input_channels], "dtype": str}.
    """
    abstract = nnx.eval_shape(lambda: MJFN(model_config, rngs=nnx.Rngs(0)))
    abstract.eval()
    params = count_params(abstract)
    stats = nnx.state(abstract, nnx.BatchStat)
    n_stats = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(stats))
    graphdef, state = nnx.split(abstract)
    size = int(model_config.input_size)
    channels = int(model_config.get("input_channels", 3))
    x = jax.ShapeDtypeStruct((batch_size, size, size, channels), jnp.float32)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)["fused"]

    state_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    flops = count_flops(forward, state_spec, x) / batch_size
    return {
        "params": params,
        "batch_stats": n_stats,
        "flops_per_sample": flops,
        "input_shape": [size, size, channels],
        "dtype": str(model_config.dtype),
    }


def format_summary(summary: dict, title: str = "") -> str:
    """A plain-text table of :func:`model_summary`'s result."""
    total = summary["params"]["total"]
    lines = [title] if title else []
    lines.append(f"{'part':<10} {'params':>12} {'share':>7}")
    for part in [p for p in summary["params"] if p != "total"] + ["total"]:
        n = summary["params"][part]
        lines.append(f"{part:<10} {n:>12,} {100.0 * n / total:>6.1f}%")
    lines.append(f"BatchNorm running statistics (not trained): {summary['batch_stats']:,}")
    s = summary["input_shape"]
    lines.append(
        f"forward FLOPs per sample (XLA cost analysis, eval mode, {s[0]}x{s[1]}x{s[2]}, "
        f"{summary['dtype']}): {summary['flops_per_sample'] / 1e9:.3f} GFLOP"
    )
    return "\n".join(lines)
