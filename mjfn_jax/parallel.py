"""Devices, meshes and placement (jax.jit + Mesh + NamedSharding; no pmap), the strategy
rules, multi-process transfers, and JAX's persistent compilation cache.

- 'vmap': folds train in lockstep with a leading fold axis on every train-state leaf (params,
  BN statistics, optimizer state) and on the fold's index arrays; that axis is sharded over a
  1-D mesh axis ``fold``. Folds need no communication, so this scales to every device.
- 'sequential': one fold at a time; its batch is sharded over a 1-D mesh axis ``data``
  (params replicated). XLA inserts the gradient all-reduce.
- 'auto': a timed trial of the candidates, cached per machine and program (mjfn_jax.autotune;
  with ``parallel.auto_trial`` off, the platform rule of resolve_strategy). On XLA:CPU and on
  one H200, vmapping K folds inside one device (one grouped convolution) measured slower than
  K separate folds (docs/performance.md#strategies), so 'vmap' runs ONE fold per device by
  default and a CPU host is split into one device per core.

The compiled programs of a fold group live in mjfn_jax.runner. pmap is not used: it is in
maintenance mode and ran 2x slower than jit + sharding here. Meshes are built with Auto axis
types (``jax.make_mesh`` defaults to Explicit axes, under which unplaced state fails to combine
with sharded inputs).
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "vmap", "sequential")
LOOPS = ("auto", "scan", "steps")


def resolve_strategy(strategy: str, num_devices: int = 1) -> str:
    """'auto' -> the measured rule: 'vmap' with one fold per device when there are several
    devices (``mjfn_jax.main`` splits a CPU host into one device per core), else 'sequential'.

    XLA:CPU runs one small step on 2 cores at ~1.4x one core, two steps on their own cores at
    ~2x; on one H200 one fold at a time beat 17 vmapped folds (docs/performance.md#strategies).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    choice = "vmap" if num_devices > 1 else "sequential"
    log.info(
        "parallel.strategy=auto -> %s on %s (%d devices)",
        choice, jax.default_backend(), num_devices,
    )  # fmt: skip
    return choice


def split_cpu_devices(num_devices: int = 0) -> None:
    """One XLA:CPU device per core (before JAX starts its backends), so that on a CPU-only
    machine folds train one per core (parallel.strategy=auto); accelerators are unaffected.
    A device count forced through XLA_FLAGS is left alone."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    jax.config.update("jax_num_cpu_devices", num_devices or os.cpu_count() or 1)


def machine_id() -> str:
    """The host's architecture and a digest of its CPU model and instruction-set flags: what
    XLA:CPU code and a strategy trial depend on ('x86_64-1a2b3c4d5e6f')."""
    import hashlib
    import platform

    machine = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "model name"))][:2]
        machine += "-" + hashlib.sha1("".join(lines).encode()).hexdigest()[:12]
    except OSError:
        pass
    return machine


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache in ``<cache root>/xla/<machine>``: a rerun of the same
    program (another seed, a resumed run, the same config tomorrow) loads its executables
    instead of compiling them (the rest of a compile is tracing). The folder is per machine:
    XLA:CPU code is compiled for the host's instruction set, and a home folder may be shared by
    different machines. A cache the user set is kept. Returns the folder in use (None if JAX's
    cache was set elsewhere)."""

    from mjfn_jax.autotune import cache_root

    if jax.config.jax_compilation_cache_dir:
        return None
    path = os.path.join(cache_root(), "xla", machine_id())
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path


def resolve_loop(loop: str, platform: str | None = None) -> str:
    """'auto' -> 'steps' on CPU, 'scan' elsewhere.

    'scan' runs epochs as lax.scan inside one jitted call (no Python per step: the design for
    accelerators). On XLA:CPU (jax 0.10.2) this network's training step ran 5-25x slower
    inside a while loop (a scan) than as straight-line code (docs/performance.md#loops), so
    'steps' dispatches one jitted call per step instead (same math, same random streams).
    """
    if loop not in LOOPS:
        raise ValueError(f"parallel.loop must be one of {LOOPS}, got {loop!r}")
    if loop != "auto":
        return loop
    return "steps" if (platform or jax.default_backend()) == "cpu" else "scan"


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
    """Place every leaf of ``tree`` (the same host values in every process) with ``sharding``.

    Multi-process: jax.device_put refuses a sharding over other processes' devices unless it
    is replicated ("device_put's second argument must be a Device or a Sharding which
    represents addressable devices"); each process then gives its own devices' slices."""
    if sharding.is_fully_addressable:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)

    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: via their data
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def addressable(tree) -> bool:
    """Whether this process holds every shard of every leaf (always, with one process)."""
    return all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree))


def to_host(tree):
    """Every leaf as a host array of its GLOBAL value, in every process (small arrays only:
    metrics, predictions). Multi-process: an all-gather (np.asarray/jax.device_get of an
    array with shards in other processes raise)."""
    if addressable(tree):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _first_row(index: tuple) -> int:
    return (index[0].start or 0) if index else 0


def owned_blocks(tree) -> dict[int, object]:
    """This process's share of ``tree``'s leading (fold) axis, found without a collective:
    {first row: ``tree`` of device arrays [rows, ...]} for the shards whose replica 0 is on this
    process's devices. Sharded over the fold axis ('vmap') each row lives on one device, so
    exactly one process owns it; replicated ('sequential') the process holding replica 0 owns
    every row. With one process: every row. Every leaf must be sharded alike."""
    leaves, treedef = jax.tree.flatten(tree)
    per_leaf = [
        {_first_row(s.index): s.data for s in x.addressable_shards if s.replica_id == 0}
        for x in leaves
    ]
    starts = sorted(per_leaf[0]) if per_leaf else []
    if any(sorted(blocks) != starts for blocks in per_leaf):
        raise ValueError("the leaves of a fold group are not sharded alike over its fold axis")
    return {start: treedef.unflatten([blocks[start] for blocks in per_leaf]) for start in starts}


def rows_of(blocks: dict) -> list[int]:
    """The rows of ``owned_blocks``' blocks (device or host arrays)."""
    sizes = {start: jax.tree.leaves(block)[0].shape[0] for start, block in blocks.items()}
    return [start + i for start, size in sizes.items() for i in range(size)]


def take_row(blocks: dict, row: int):
    """Row ``row`` of ``owned_blocks``' blocks, without the fold axis (views of host arrays)."""
    for start, block in blocks.items():
        if start <= row < start + jax.tree.leaves(block)[0].shape[0]:
            return jax.tree.map(lambda x, i=row - start: x[i], block)
    raise KeyError(f"row {row} is not among this process's rows")


def local_rows(tree) -> list[int]:
    """The rows of ``tree``'s leading axis that this process's devices hold (any replica)."""
    x = jax.tree.leaves(tree)[0]
    rows = set()
    for shard in x.addressable_shards:
        rows.update(range(*shard.index[0].indices(x.shape[0])) if shard.index else [0])
    return sorted(rows)


def local_row(tree, row: int):
    """Row ``row`` of ``tree`` as host arrays, from a shard on this process's devices."""

    def one(x):
        for shard in x.addressable_shards:
            start = _first_row(shard.index)
            if start <= row < start + shard.data.shape[0]:
                return np.asarray(shard.data)[row - start]
        raise KeyError(f"row {row} is not on this process's devices")

    return jax.tree.map(one, tree)


def from_rows(rows: dict, like, sharding: NamedSharding):
    """Global arrays shaped like ``like`` ([G, ...] leaves) with ``sharding``, from host rows
    {row: pytree of arrays without the fold axis}. Only the rows on this process's devices are
    needed (``local_rows``): jax.make_array_from_callback asks for nothing else, so each process
    places the folds it will train, and no process holds another's."""
    like_leaves, treedef = jax.tree.flatten(like)
    row_leaves = {row: jax.tree.leaves(tree) for row, tree in rows.items()}

    def leaf(k: int, x):
        def block(index):
            wanted = range(*index[0].indices(x.shape[0])) if index else [0]
            return np.stack([row_leaves[r][k] for r in wanted])[(slice(None), *index[1:])]

        return jax.make_array_from_callback(x.shape, sharding, block, dtype=x.dtype)

    return treedef.unflatten([leaf(k, x) for k, x in enumerate(like_leaves)])


def everywhere(flag: bool) -> bool:
    """Whether ``flag`` holds in every process (an all-gather of one bool; no collective with
    one process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([flag]))))


def sync(name: str) -> None:
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def strategy_setup(config):
    """(vmapped, mesh, group_size, data_sharding) for the configured strategy."""
    num_devices = len(devices(config.parallel.num_devices))
    strategy = resolve_strategy(config.parallel.strategy, num_devices=num_devices)
    if strategy == "vmap":
        mesh = make_mesh("fold", num_devices)
        group_size = config.parallel.fold_group_size
        if not group_size:  # one fold per device: no grouped convolutions (module docstring)
            group_size = num_devices
        if group_size == num_devices == 1 and jax.default_backend() != "cpu":
            log.warning(
                "parallel.strategy=vmap on one device trains one fold at a time inside "
                "shard_map (3.7x slower than 'sequential' with loop=scan on an H200); use "
                "'sequential', or parallel.fold_group_size > 1 to vmap several folds"
            )
        return True, mesh, group_size, None
    size = data_axis_size(config.train.batch_size, num_devices)
    mesh = make_mesh("data", size)
    data_sharding = NamedSharding(mesh, P("data")) if size > 1 else None
    return False, mesh, 1, data_sharding
