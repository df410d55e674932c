"""Parallel strategies, meshes and shardings (jax.jit + Mesh + NamedSharding; no pmap).

- 'vmap': folds train in lockstep with a leading fold axis on every train-state leaf (params,
  BN statistics, optimizer state) and on the fold's index arrays; that axis is sharded over a
  1-D mesh axis ``fold``. Folds need no communication, so this scales to every device.
- 'sequential': one fold at a time; its batch is sharded over a 1-D mesh axis ``data``
  (params replicated). XLA inserts the gradient all-reduce.
- 'auto': a timed trial of the candidates, cached per machine and program (mjfn_jax.autotune;
  with ``parallel.auto_trial`` off, the platform rule of resolve_strategy). On XLA:CPU vmap
  lowers the convolutions of K models to one grouped convolution, which is slower than K
  separate ones (measured 2026-11-23, demo config, 6 folds: sequential 79.6 vs vmap 34.4
  samples/s), and on one H200 GPU too (2026-11-26, gpu benchmark model, 17 folds vmapped:
  0.141 s per fold-epoch against 0.083 for one fold at a time, experiments/results/nvidia-h200/),
  so 'vmap' runs ONE fold per device by default (no vmap at all inside a device; CPU hosts are
  split into one device per core). The rule: one device -> 'sequential'; several -> 'vmap'
  (several GPUs and TPUs unmeasured: the trial decides there).

Under 'vmap' each device runs ``jax.vmap`` over its own folds inside ``jax.shard_map``: letting
the SPMD partitioner split a vmapped program over the fold axis gave wrong numbers (see _lift).

pmap is not used: it is in maintenance mode and ran 2x slower than jit + sharding here.
Meshes are built with Auto axis types (``jax.make_mesh`` defaults to Explicit axes, under which
unplaced state fails to combine with sharded inputs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mjfn_jax.config_io import config_to_dict
from mjfn_jax.engine import INIT_COMPILE, FoldProgram

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "vmap", "sequential")
LOOPS = ("auto", "scan", "steps")


def resolve_strategy(strategy: str, num_devices: int = 1) -> str:
    """'auto' -> the measured rule: 'vmap' with one fold per device when there are several
    devices (``mjfn_jax.main`` splits a CPU host into one device per core), else 'sequential'.

    Measured on the 2-core dev machine (2026-11-25, benchmark cpu config, 68 folds x 2 epochs):
    training time 18.5 s with 2 devices x 1 fold vs 23.7 s sequential (XLA:CPU runs one small
    step on 2 cores at ~1.4x one core; two steps on their own cores at ~2x). On one H200
    (2026-11-26, gpu config): sequential 0.083 s per fold-epoch, vmap over 17 folds 0.141 s.
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
    instead of compiling them (benchmark cpu config: 9.1 s of compiles -> 2.5 s, the rest being
    tracing). The folder is per machine: XLA:CPU code is compiled for the host's instruction set,
    and a home folder may be shared by different machines. A cache the user set is kept.
    Returns the folder in use (None if JAX's cache was set elsewhere)."""

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
    accelerators; on one H200, 2026-11-26, gpu benchmark model, one fold at a time: 0.083 s per
    fold-epoch against 0.088 s with 'steps'; TPU unmeasured). On XLA:CPU (jax 0.10.2) this network's
    training step ran 5-25x slower inside a while loop (a scan) than as straight-line code
    (2-core dev machine, 2026-11-23: 12 s vs 0.45 s per step at 48x48, batch 32, widths
    16..128; 14.8 vs 79.6 samples/s with the demo config), so 'steps' dispatches one jitted
    call per step instead (same math, same random streams).
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


def _lift(fn, vmapped: bool, in_axes: tuple, mesh):
    """fn over one fold -> fn over a leading fold axis.

    'vmap': jax.vmap inside jax.shard_map, so each device runs its own slice of folds as a
    plain local program. (Letting the SPMD partitioner split a vmapped program over the fold
    axis instead gave WRONG results on XLA:CPU, jax 0.10.2: a channel concat followed by a
    vmapped (grouped) convolution, as in every JFM, came out garbled when sharded.)
    'sequential' (one fold): a squeeze, so the plain per-fold program runs (no grouped
    convolutions); its batch is sharded by the partitioner via the 'data' sharding constraint.
    """

    def one_fold(*args):
        args = [
            jax.tree.map(lambda x: x[0], a) if ax == 0 else a
            for a, ax in zip(args, in_axes, strict=True)
        ]
        return jax.tree.map(lambda x: x[None], fn(*args))

    if not vmapped:
        return one_fold

    def per_device(*args):  # this device's folds; one fold needs no vmap (no grouped convs)
        local = jax.tree.leaves([a for a, ax in zip(args, in_axes, strict=True) if ax == 0])
        if local[0].shape[0] == 1:
            return one_fold(*args)
        return jax.vmap(fn, in_axes=in_axes)(*args)

    specs = tuple(P(mesh.axis_names[0]) if ax == 0 else P() for ax in in_axes)
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(*mesh.axis_names))


# Programs that run once per epoch with little compute (the epoch's batch plan, the epoch-end
# metrics): compiled without XLA's backend optimisations (the init: engine.INIT_COMPILE).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}

# Compile time per program, from JAX's own monitoring events (tracing, lowering, XLA compile or
# a persistent-cache load), keyed by the function name that GroupRunner gives each program. The
# names are the same in every runner and process: they are part of the persistent cache's key.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_PREFIX = "mjfn_program__"
# GroupRunner's programs that run before or after a fold group's training calls (the others
# compile inside them): what timing's compile_by_program splits on.
OUTSIDE_TRAINING_CALLS = ("the init", "the prediction")
_compile_seconds: dict[str, float] = {}  # program name -> seconds, this process


def _on_event(event: str, seconds: float, **kwargs) -> None:
    if event not in _COMPILE_EVENTS:
        return
    # fun_name: the function's name, or its module's ("jit(<name>)")
    match = re.search(_PREFIX + r"(\w+)", str(kwargs.get("fun_name", "")))
    if match:
        _compile_seconds[match[1]] = _compile_seconds.get(match[1], 0.0) + seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _named(fn, program: str):
    """``fn`` under a function name that the compile-time listener attributes to ``program``."""

    def call(*args):
        return fn(*args)

    call.__name__ = call.__qualname__ = _PREFIX + program.replace(" ", "_")
    return call


class GroupRunner:
    """The jitted programs for groups of ``group_size`` folds on one mesh: init, train (a scan
    over epochs, or per-step calls between an epoch plan and an epoch end) and predict. jax.jit
    caches their executables per argument shapes; the compile seconds of this runner's calls
    come from JAX's monitoring events (``compile_s``, ``compile_by_program``)."""

    def __init__(self, program: FoldProgram, mesh, vmapped: bool, scan: bool):
        """scan: epochs as lax.scan in one call, else one call per step (see resolve_loop)."""
        self.program, self.mesh, self.vmapped, self.scan = program, mesh, vmapped, scan
        self.group_sharding = sharded_leading(mesh) if vmapped else replicated(mesh)
        group = self.group_sharding
        self.compile_by_program: dict[str, float] = {}  # this runner's compiles, all shapes

        def jit(name, fn, in_axes, *, options=None, **kwargs):
            lifted = _named(_lift(fn, vmapped, in_axes, mesh), name)
            jitted = jax.jit(lifted, compiler_options=options, **kwargs)
            key = name.replace(" ", "_")

            def call(*args):  # a first call per shapes compiles inside, on this thread
                before = _compile_seconds.get(key, 0.0)
                out = jitted(*args)
                if (spent := _compile_seconds.get(key, 0.0) - before) > 0:
                    self.compile_by_program[name] = self.compile_by_program.get(name, 0) + spent
                return out

            return call

        self._init = jit("the init", program.init, (0,), options=INIT_COMPILE, out_shardings=group)
        self._predict = jit("the prediction", program.predict, (0, None, 0))
        self._train = jit(
            "the training call", program.train_epochs, (0, 0, None, None),
            donate_argnums=0, out_shardings=(group, group),
        )  # fmt: skip
        self._plan = jit(
            "the epoch plan",
            program.epoch_plan,
            (0, None),
            options=_FAST_COMPILE,
            out_shardings=group,
        )
        self._step = jit(
            "the training step", program.train_step_at, (0, 0, None, 0, None),
            donate_argnums=0, out_shardings=(group, group),
        )  # fmt: skip
        self._end = jit(
            "the epoch end", program.end_epoch, (0, 0, None, 0, 0),
            options=None if program.early_stopping else _FAST_COMPILE, donate_argnums=0,
            out_shardings=(group, group),
        )  # fmt: skip

    @property
    def compile_s(self) -> float:
        return sum(self.compile_by_program.values())

    def init(self, keys):
        """Fresh train states [G, ...] from fold keys [G]."""
        return self._init(keys)

    def train(self, states, folds, data, first_epoch: int, num_epochs: int):
        """Train epochs [first_epoch, first_epoch + num_epochs) of a group.
        Returns (states, metrics {name: [G, num_epochs]})."""
        if self.scan:
            epochs = jnp.arange(first_epoch, first_epoch + num_epochs, dtype=jnp.int32)
            return self._train(states, folds, data, epochs)
        per_epoch = []
        for epoch in range(first_epoch, first_epoch + num_epochs):
            losses, correct = [], []
            plan = self._plan(folds, np.int32(epoch))  # [G, steps, B] batches, [G, steps] keys
            for step in range(self.program.steps):
                states, (loss, right) = self._step(states, folds, data, plan, np.int32(step))
                losses.append(loss)  # [G] each
                correct.append(right)
            states, metrics = self._end(states, folds, data, tuple(losses), tuple(correct))
            per_epoch.append(metrics)
        per_epoch = to_host(per_epoch)  # multi-process: np.stack of a global array raises
        return states, jax.tree.map(lambda *xs: np.stack(xs, 1), *per_epoch)  # host [G, E]

    def predict(self, states, data, test_idx):
        """test_idx [G, M] int32 -> log-probs [G, M, C] float32."""
        return self._predict(states, data, test_idx)


# Runners (hence compiled programs) reused by later calls in the same process with the same
# program-relevant config: a notebook or a test suite that reruns a config compiles once, and a
# run reuses the programs that parallel.strategy=auto's trial compiled.
_RUNNERS: dict[str, GroupRunner] = {}
_NOT_PROGRAM = ("data", "folds", "checkpoint", "seed")


def get_runner(config, steps: int, mesh, vmapped: bool, data_sharding) -> GroupRunner:
    """The (cached) runner of this program config, step count and placement."""
    scan = resolve_loop(config.parallel.loop) == "scan"
    program_config = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_PROGRAM}
    program_config["train"].pop("seeds", None)  # the seeds are inputs, not the program
    placement = [vmapped, mesh.axis_names, [d.id for d in mesh.devices.flat]]
    key = json.dumps([program_config, steps, placement], sort_keys=True)
    if key not in _RUNNERS:
        program = FoldProgram(config, steps_per_epoch=steps, data_sharding=data_sharding)
        _RUNNERS[key] = GroupRunner(program, mesh, vmapped, scan)
    return _RUNNERS[key]
