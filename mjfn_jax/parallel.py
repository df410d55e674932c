"""Parallel strategies, meshes and shardings (jax.jit + Mesh + NamedSharding; no pmap).

- 'vmap': folds train in lockstep with a leading fold axis on every train-state leaf (params,
  BN statistics, optimizer state) and on the fold's index arrays; that axis is sharded over a
  1-D mesh axis ``fold``. Folds need no communication, so this scales to every device.
- 'sequential': one fold at a time; its batch is sharded over a 1-D mesh axis ``data``
  (params replicated). XLA inserts the gradient all-reduce.
- 'auto': by platform, from measurement. On XLA:CPU vmap lowers the convolutions of K models to
  one grouped convolution, which is slower than K separate ones (DESIGN.md §3; measured again for
  this engine on the 2-core dev machine, see README), so CPU -> 'sequential'. GPU/TPU -> 'vmap'
  (UNMEASURED here: no accelerator was available when this was written).

pmap is not used: it is in maintenance mode and ran 2x slower than jit + sharding here.
Meshes are built with Auto axis types (``jax.make_mesh`` defaults to Explicit axes, under which
unplaced state fails to combine with sharded inputs).
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

STRATEGIES = ("auto", "vmap", "sequential")
# Measured choice per platform; see the module docstring (GPU/TPU unmeasured).
AUTO_STRATEGY = {"cpu": "sequential", "gpu": "vmap", "cuda": "vmap", "rocm": "vmap", "tpu": "vmap"}


def resolve_strategy(strategy: str, platform: str | None = None) -> str:
    """'auto' -> the measured choice for ``platform`` (default: jax's default backend)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    platform = platform or jax.default_backend()
    choice = AUTO_STRATEGY.get(platform, "sequential")
    logging.getLogger(__name__).info("parallel.strategy=auto -> %s on %s", choice, platform)
    return choice


def devices(num_devices: int = 0) -> list[jax.Device]:
    """The first ``num_devices`` devices (0 = all, across all hosts)."""
    all_devices = jax.devices()
    if num_devices < 0 or num_devices > len(all_devices):
        raise ValueError(f"parallel.num_devices={num_devices}; {len(all_devices)} available")
    return all_devices[: num_devices or len(all_devices)]


def make_mesh(axis_name: str, num_devices: int) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices, with an Auto axis."""
    return jax.make_mesh(
        (num_devices,),
        (axis_name,),
        axis_types=(AxisType.Auto,),
        devices=devices(num_devices),
    )


def data_axis_size(batch_size: int, num_devices: int) -> int:
    """Largest device count <= num_devices that divides the batch (for the 'data' axis)."""
    return max(d for d in range(1, num_devices + 1) if batch_size % d == 0)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def sharded_leading(mesh: Mesh) -> NamedSharding:
    """Shard the leading axis over the mesh's only axis."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def fold_groups(num_folds: int, group_size: int, num_devices: int) -> list[np.ndarray]:
    """Fold indices per vmap group, each padded with -1 (dummy folds) to a multiple of the
    device count so the fold axis shards evenly. group_size 0 = all folds in one group."""
    if num_folds == 0:
        return []
    size = num_folds if group_size <= 0 else min(group_size, num_folds)
    size = math.ceil(size / num_devices) * num_devices
    groups = []
    for start in range(0, num_folds, size):
        members = np.arange(start, min(start + size, num_folds))
        pad = np.full(size - len(members), -1, members.dtype)
        groups.append(np.concatenate([members, pad]))
    return groups


def put(tree, sharding: NamedSharding):
    """Place every leaf of ``tree`` with ``sharding``."""
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)
