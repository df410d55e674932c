"""A fold group's compiled programs (``GroupRunner``) and the run-owned cache of them
(``Runners``), with the compile time of each program.

Under 'vmap' each device runs ``jax.vmap`` over its own folds inside ``jax.shard_map``: letting
the SPMD partitioner split a vmapped program over the fold axis gave wrong numbers (see _lift).
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mjfn_jax import parallel
from mjfn_jax.config_io import config_to_dict
from mjfn_jax.engine import FoldProgram, init_compile_options
from mjfn_jax.folds import steps_per_epoch
from mjfn_jax.units import fold_inputs
from mjfn_jax.views import config_layout


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
# metrics): compiled without XLA's backend optimisations (the init: engine.init_compile_options).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}

# GroupRunner's programs that run before or after a fold group's training calls (the others
# compile inside them): what timing's compile_by_program splits on.
OUTSIDE_TRAINING_CALLS = ("the init", "the prediction")
_PREFIX = "mjfn_program__"


class CompileClock:
    """Compile seconds per program, from JAX's monitoring events (tracing, lowering, XLA compile
    or a persistent-cache load) while open, keyed by the function name that GroupRunner gives
    each program (the names are the same in every runner and process: they are part of the
    persistent cache's key). A context manager: the listener is registered on enter and
    removed on exit."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.seconds: dict[str, float] = {}  # program name -> seconds

    def _on_event(self, event: str, seconds: float, **kwargs) -> None:
        if event not in self.EVENTS:
            return
        # fun_name: the function's name, or its module's ("jit(<name>)")
        match = re.search(_PREFIX + r"(\w+)", str(kwargs.get("fun_name", "")))
        if match:
            self.seconds[match[1]] = self.seconds.get(match[1], 0.0) + seconds

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_event)


def _named(fn, program: str):
    """``fn`` under a function name that CompileClock attributes to ``program``."""

    def call(*args):
        return fn(*args)

    call.__name__ = call.__qualname__ = _PREFIX + program.replace(" ", "_")
    return call


class GroupRunner:
    """The jitted programs for groups of ``group_size`` folds on one mesh: init, train (a scan
    over epochs, or per-step calls between an epoch plan and an epoch end) and predict. jax.jit
    caches their executables per argument shapes; the compile seconds of this runner's calls
    come from ``clock`` (``compile_s``, ``compile_by_program``)."""

    def __init__(
        self, program: FoldProgram, mesh, vmapped: bool, scan: bool, clock: CompileClock | None
    ):
        """scan: epochs as lax.scan in one call, else one call per step (see
        parallel.resolve_loop). clock: an open CompileClock (None: compiles are not timed)."""
        self.program, self.mesh, self.vmapped, self.scan = program, mesh, vmapped, scan
        self.group_sharding = (
            parallel.sharded_leading(mesh) if vmapped else parallel.replicated(mesh)
        )
        group = self.group_sharding
        self.compile_by_program: dict[str, float] = {}  # this runner's compiles, all shapes

        def jit(name, fn, in_axes, *, options=None, **kwargs):
            lifted = _named(_lift(fn, vmapped, in_axes, mesh), name)
            jitted = jax.jit(lifted, compiler_options=options, **kwargs)
            key = name.replace(" ", "_")

            seconds = clock.seconds if clock is not None else {}

            def call(*args):  # a first call per shapes compiles inside, on this thread
                before = seconds.get(key, 0.0)
                out = jitted(*args)
                if (spent := seconds.get(key, 0.0) - before) > 0:
                    self.compile_by_program[name] = self.compile_by_program.get(name, 0) + spent
                return out

            return call

        self._init = jit(
            "the init", program.init, (0,), options=init_compile_options(), out_shardings=group
        )
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
            plan = self.epoch_plan(folds, epoch)  # [G, steps, B] batches, [G, steps] keys
            for step in range(self.program.steps):
                states, (loss, right) = self.step(states, folds, data, plan, step)
                losses.append(loss)  # [G] each
                correct.append(right)
            states, metrics = self.end_epoch(states, folds, data, losses, correct)
            per_epoch.append(metrics)
        per_epoch = parallel.to_host(per_epoch)  # multi-process: np.stack of a global array raises
        return states, jax.tree.map(lambda *xs: np.stack(xs, 1), *per_epoch)  # host [G, E]

    def epoch_plan(self, folds, epoch: int):
        """The epoch's batches [G, steps, B] and step keys [G, steps] (loop 'steps')."""
        return self._plan(folds, np.int32(epoch))

    def step(self, states, folds, data, plan, step: int):
        """Training step ``step`` of the epoch ``plan``: (states, (loss [G], correct [G]))."""
        return self._step(states, folds, data, plan, np.int32(step))

    def end_epoch(self, states, folds, data, losses, correct):
        """An epoch's end from its steps' losses and correct counts: (states, metrics)."""
        return self._end(states, folds, data, tuple(losses), tuple(correct))

    def predict(self, states, data, test_idx):
        """test_idx [G, M] int32 -> log-probs [G, M, C] float32."""
        return self._predict(states, data, test_idx)


_NOT_PROGRAM = ("data", "folds", "checkpoint", "seed")


class Runners:
    """A run's group runners (hence traced and compiled programs), reused by later requests
    with the same program-relevant config, step count and placement: the run reuses the
    programs that ``parallel.strategy=auto``'s trial compiled, and several runs in one process
    reuse each other's when they share one (``train_and_evaluate(runners=...)``: tracing and
    lowering this network's programs is most of a small run's start; a new process instead
    loads the executables from JAX's persistent cache, parallel.enable_compilation_cache, but
    traces them again). A context manager: it opens the CompileClock that times their
    compiles, and drops the runners on exit."""

    def __init__(self):
        self.clock = CompileClock()
        self._runners: dict[str, GroupRunner] = {}

    def __enter__(self) -> Runners:
        self.clock.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.clock.__exit__(*exc)
        self._runners.clear()

    def get(self, config, steps: int, mesh, vmapped: bool, data_sharding) -> GroupRunner:
        """The runner of this program config, step count and placement."""
        scan = parallel.resolve_loop(config.parallel.loop) == "scan"
        program_config = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_PROGRAM}
        program_config["train"].pop("seeds", None)  # the seeds are inputs, not the program
        program_config["views"] = config_layout(config.data)  # the flips read it (engine)
        placement = [vmapped, mesh.axis_names, [d.id for d in mesh.devices.flat]]
        key = json.dumps([program_config, steps, placement], sort_keys=True)
        if key not in self._runners:
            program = FoldProgram(config, steps_per_epoch=steps, data_sharding=data_sharding)
            self._runners[key] = GroupRunner(program, mesh, vmapped, scan, self.clock)
        return self._runners[key]

    def setup(self, config, arrays, dataset):
        """(runner, fold group size, the dataset placed on the runner's mesh) for the config's
        strategy. data: {"images": uint8 [N, H, W, 3], "labels": int32 [N]}, replicated."""
        vmapped, mesh, group_size, data_sharding = parallel.strategy_setup(config)
        steps = steps_per_epoch(arrays.train_idx.shape[1], config.train.batch_size)
        runner = self.get(config, steps, mesh, vmapped, data_sharding)
        data = parallel.put(
            {"images": np.asarray(dataset.images), "labels": np.asarray(dataset.labels, np.int32)},
            parallel.replicated(mesh),
        )  # the whole dataset, once
        return runner, group_size, data

    def first_group(self, config, units, dataset):
        """``config``'s strategy set up on its first fold group, initialised: (runner, data,
        members [G] (-1: padding), folds, states). What a trial or a benchmark times."""
        runner, group_size, data = self.setup(config, units.arrays, dataset)
        members = parallel.fold_groups(
            units.arrays.num_folds, group_size, runner.mesh.size if runner.vmapped else 1
        )[0]
        folds = parallel.put(fold_inputs(config, dataset, units, members), runner.group_sharding)
        return runner, data, members, folds, runner.init(folds.key)
