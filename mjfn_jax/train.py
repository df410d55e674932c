"""The training loop: ``train_and_evaluate(config, workdir, dataset=None) -> results``.

The whole dataset is placed on the device(s) once; the per-fold programs of
:mod:`mjfn_jax.engine`, lifted over a leading fold axis (:mod:`mjfn_jax.runner`), are compiled
once. Units of work (:mod:`mjfn_jax.units`: one per seed and fold) train in groups (strategy
'vmap': many folds sharded over the mesh axis 'fold'; 'sequential': one fold, its batch sharded
over the mesh axis 'data'; :mod:`mjfn_jax.parallel`); a training call runs
``parallel.epochs_per_call`` epochs of every unit of a group, as one ``lax.scan`` (accelerators)
or one call per step (CPU). Each unit checkpoints to ``workdir/folds/<fold>``
(:mod:`mjfn_jax.checkpoint`); a rerun skips finished units and resumes the others exactly
(docs/design.md#train-loop), and the workdir's records (:mod:`mjfn_jax.workdir`) refuse what
would make it inexact. The pooled predictions are reported by :mod:`mjfn_jax.results`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mjfn_jax import autotune, distributed, parallel
from mjfn_jax import workdir as workdir_lib
from mjfn_jax.checkpoint import SavePolicy
from mjfn_jax.config import validate_config
from mjfn_jax.config_io import save_or_check_config
from mjfn_jax.curves import Curves
from mjfn_jax.results import seed_predictions, write_reports
from mjfn_jax.runner import Runners
from mjfn_jax.timing import Chrono
from mjfn_jax.unit_checkpoints import UnitCheckpoints
from mjfn_jax.units import (
    Units,
    fold_inputs,
    input_stats,
    make_units,
    one_seed_config,
    seed_workdir,
    training_seeds,
)
from mjfn_jax.writer import closed_loop_reports_dropped, orbax_errors_in_one_line

log = logging.getLogger(__name__)


def setup_logging() -> None:
    """The commands' log format (mjfn_jax.cli.setup_logging), for notebooks and scripts."""
    from mjfn_jax.cli import setup_logging as setup

    setup()


@dataclasses.dataclass(frozen=True)
class EpochsDone:
    """What ``train_and_evaluate``'s ``after_epochs`` callback sees after each training call
    of a fold group, once that call's checkpoints are handed to the checkpointer."""

    folds: tuple[str, ...]  # the group's fold names
    epoch: int  # epochs the group has completed
    trained_this_run: int  # epochs trained by this call of train_and_evaluate, all groups


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset=None,
    *,
    after_epochs: Callable[[EpochsDone], None] | None = None,
    runners: Runners | None = None,
) -> dict:
    """Train every unit (resuming from ``workdir``), evaluate once per test sample, report.

    dataset: a ``mjfn_jax.data.Dataset`` (or None: load ``config.data`` from disk).
    after_epochs: called after every training call of a fold group (see EpochsDone), after
    its checkpoints were handed over; an exception it raises stops the run there, and the
    checkpoints and finished folds written so far are kept (tests simulate a kill this way).
    runners: an open ``mjfn_jax.runner.Runners`` that several runs in one process share (its
    owner closes it): a run reuses the programs an earlier run traced and compiled for the same
    program config, instead of tracing them again. Default: the run's own, closed at its end.
    Returns the dict of ``mjfn_jax.report.write_report`` (pooled metrics under "pooled") plus
    "y_true", "y_pred" int [N], "probs" float [N, C], "folds" str [N], "history" and "timing".
    """
    # 1. Everything that can be checked is checked before anything is written to the workdir.
    validate_config(config)
    dataset = _load_dataset(config) if dataset is None else dataset
    _check_dataset(config, dataset)
    units = make_units(config, dataset, workdir)
    # One run per workdir (released even by kill -9); each process of a run its own lock.
    with workdir_lib.Lock(workdir, jax.process_index()):
        # 2. The workdir's records: a rerun must be the same run, on the same data.
        _save_or_check_records(config, workdir, dataset)
        if config.select.candidates:  # nested selection: a run per candidate, then choose
            return _select(config, workdir, dataset, units, after_epochs, runners)
        if config.parallel.compilation_cache:
            parallel.enable_compilation_cache()
        chrono = Chrono()
        own = contextlib.nullcontext(runners) if runners is not None else Runners()
        with own as runners, closed_loop_reports_dropped(), orbax_errors_in_one_line():
            # 3. Set up: the strategy ('auto': a timed trial), the runner and the dataset on its
            # mesh, the units' checkpointers (finished units are skipped).
            run = _set_up(config, workdir, dataset, units, runners)
            config, runner, ckpts, data = run.config, run.runner, run.ckpts, run.data
            total, policy = config.train.num_epochs, SavePolicy(config.checkpoint.every_epochs)
            with _training(run, chrono):  # at the end: every write waited for
                for members in _progress(run.groups, "fold groups"):
                    # 4. Init the group's units, or resume them from their newest common
                    # checkpoint.
                    with _init_or_resume(run, members, chrono) as group:
                        while group.epoch < total and not group.stopped:
                            # 5. A training call: as many epochs as fit before the next save.
                            n = min(max(1, config.parallel.epochs_per_call), total - group.epoch)
                            n = min(n, policy.epochs_until_save(group.epoch) or n)
                            with chrono.phase(Chrono.TRAINING):
                                group.states, metrics = runner.train(
                                    group.states, group.folds, data, group.epoch, n
                                )
                                metrics = parallel.to_host(metrics)  # waits for the device
                            chrono.count(samples=n * group.samples_per_epoch, epochs=n)
                            # 6. Check (a non-finite loss stops the run), record, save, log.
                            _record_epochs(group, metrics, units.arrays.names)
                            finished = group.epoch == total or group.stopped
                            with chrono.phase("saves (handing over)"):
                                match policy.what_to_save(group.epoch, finished):
                                    case "final":  # the model only (no optimizer state)
                                        models = runner.program.export(group.states)
                                        ckpts.save_models(models, members)
                                    case "progress":
                                        ckpts.save_progress(
                                            group.states, members, group.epoch, group.histories
                                        )
                            group.bar.update(n)
                            group.bar.set_postfix(loss=f"{np.mean(metrics['loss'][:, -1]):.3f}")
                            if after_epochs is not None:
                                after_epochs(EpochsDone(group.names, group.epoch, chrono.epochs))
                    # 7. Predict the group's test subjects once; hand over the results (a unit
                    # is done once they are written, after its saves).
                    with chrono.phase("predict"):
                        log_probs = runner.predict(group.states, data, group.test_idx)
                        log_probs = parallel.to_host(log_probs)  # [G, max_test, C]
                    with chrono.phase("results (handing over)"):
                        _hand_over_results(run, group, log_probs)
                    _log_group(run, group)
            timing = _timing(run, chrono)
        # 8. Pool each seed's predictions in dataset order and report, beside the linear floor.
        pooled_of = lambda seed: (seed_predictions(dataset, units, seed), None)  # noqa: E731
        return write_reports(config, workdir, dataset, units, timing, pooled_of)


def _save_or_check_records(config, workdir: str, dataset) -> None:
    """Write, or check against this run, the workdir's config and dataset records (and each
    seed's: with several seeds each seed's folder is a one-seed workdir of its own)."""
    save_or_check_config(config, workdir)
    workdir_lib.check_dataset(workdir, dataset)
    seeds = training_seeds(config)
    if len(seeds) > 1:
        for s in seeds:
            save_or_check_config(one_seed_config(config, s), seed_workdir(workdir, s))
            workdir_lib.check_dataset(seed_workdir(workdir, s), dataset)


@dataclasses.dataclass
class _Run:
    """What a run set up before its first group."""

    config: ml_collections.ConfigDict  # 'auto' resolved
    workdir: str
    units: Units
    dataset: object
    runner: object  # runner.GroupRunner
    data: dict  # the dataset on the runner's mesh
    ckpts: UnitCheckpoints
    execution: dict  # how it executes (workdir.check_execution)
    pending: np.ndarray  # the units to train, int64 [P]
    groups: list  # [members int64 [G]] (-1: padding), of units
    group_size: int
    auto: dict | None  # how 'auto' chose, or None
    compile_before: dict  # the runner's compile seconds per program before the run's calls


@dataclasses.dataclass
class _Group:
    """A fold group in training: its members' inputs and states, epochs done, histories."""

    members: np.ndarray  # int64 [G]: units (-1: padding)
    names: tuple[str, ...]  # the real members' names
    folds: object  # engine.FoldInputs [G, ...], on the mesh
    test_idx: object  # int32 [G, max_test], on the mesh
    states: object  # engine.TrainState [G, ...], on the mesh
    epoch: int  # epochs done
    histories: dict  # unit -> per-epoch records
    stopped: bool  # early stopping has stopped every real member
    samples_per_epoch: int  # all real members together
    bar: object  # tqdm: the group's epochs
    curves: Curves  # the members' TensorBoard curves
    last_loss: float | None = None  # the mean over members of the last epoch's, this run


def _set_up(config, workdir: str, dataset, units: Units, runners: Runners) -> _Run:
    config, auto = autotune.choose_strategy(config, units, dataset, workdir, runners)
    runner, group_size, data = runners.setup(config, units.arrays, dataset)
    ckpts = UnitCheckpoints(
        units.roots,
        units.fold_names,
        max_to_keep=config.checkpoint.max_to_keep,
        final_dtype=config.checkpoint.final_dtype,
    )
    try:
        pending = ckpts.pending()
        execution = _execution(runner, group_size)
        in_progress = [units.arrays.names[u] for u in pending if ckpts[u].has_progress()]
        workdir_lib.check_execution(workdir, execution, in_progress)
    except BaseException:
        ckpts.close()
        raise
    log.info(
        "%d units (folds x seeds), %d to train, strategy %s, mesh %s, %d steps/epoch",
        units.arrays.num_folds, len(pending), execution["strategy"], dict(runner.mesh.shape),
        runner.program.steps,
    )  # fmt: skip
    mesh_size = runner.mesh.size if runner.vmapped else 1
    groups = [
        np.where(group >= 0, pending[np.maximum(group, 0)], -1)
        for group in parallel.fold_groups(len(pending), group_size, mesh_size)
    ]
    return _Run(
        config, workdir, units, dataset, runner, data, ckpts, execution, pending, groups,
        group_size, auto, dict(runner.compile_by_program),
    )  # fmt: skip


@contextlib.contextmanager
def _training(run: _Run, chrono: Chrono):
    """The training of a run's groups, timed as "wall": at the end, also after a failure,
    every save and result handed over is waited for (completed units are kept even if a later
    one failed); then, with several processes, every process's units are on disk."""
    with chrono.phase("wall"):
        try:
            yield
        finally:
            with chrono.phase("waiting for the writes at the end"):
                run.ckpts.close()
    parallel.sync("fold results written")


@contextlib.contextmanager
def _init_or_resume(run: _Run, members: np.ndarray, chrono: Chrono):
    """A group's fresh states, with its input statistics, then the newest checkpoint that all
    its real members share restored over them (if any); its progress bar and curves are
    closed when the group ends."""
    config, runner, arrays = run.config, run.runner, run.units.arrays
    real = [int(m) for m in members if m >= 0]
    run.ckpts.check()  # a failed write of an earlier group stops the run before this one trains
    with chrono.phase("init"):
        folds = fold_inputs(config, run.dataset, run.units, members)
        folds = parallel.put(folds, runner.group_sharding)
        test_idx = parallel.put(
            arrays.test_idx[np.where(members >= 0, members, real[0])], runner.group_sharding
        )  # [G, max_test]
        states = runner.init(folds.key)
        if config.model.input_standardize:
            stats = input_stats(config, run.dataset, run.units, members)
            states = _with_input_stats(states, stats, runner)
        jax.block_until_ready(states)
    with chrono.phase("resume"):
        states, epoch, histories = run.ckpts.restore(
            states, members, arrays.names, runner.group_sharding
        )
    names = tuple(arrays.names[m] for m in real)
    group = _Group(
        members=members,
        names=names,
        folds=folds,
        test_idx=test_idx,
        states=states,
        epoch=epoch,
        histories=histories,
        stopped=epoch > 0 and _all_stopped(states, members),  # resumed after they stopped
        samples_per_epoch=len(real) * runner.program.steps * config.train.batch_size,
        bar=None,
        curves=Curves(run.workdir, names, epoch, enabled=distributed.is_main()),
    )
    group.bar = _epoch_bar(group, config.train.num_epochs)
    try:
        yield group
    finally:
        group.bar.close()
        group.curves.close()


def _record_epochs(group: _Group, metrics: dict, names) -> None:
    """A training call's metrics {name: host [G, n]} into the group: a non-finite loss raises
    naming unit, epoch and step; histories grow; epochs done and early stopping advance."""
    _check_finite(metrics, group.members, names, group.epoch)
    for pos, m in enumerate(group.members):
        if m >= 0:
            records = _epoch_records(metrics, pos, group.epoch)
            group.histories[m] += records
            group.curves.add(names[m], records)
    group.epoch += metrics["loss"].shape[1]
    group.last_loss = float(np.mean(metrics["loss"][:, -1]))
    if "stopped" in metrics:  # early stopping: every real member has stopped
        group.stopped = bool(np.all(metrics["stopped"][group.members >= 0, -1]))


def _hand_over_results(run: _Run, group: _Group, log_probs: np.ndarray) -> None:
    """Each real member's test predictions and summary to its checkpointer."""
    arrays = run.units.arrays
    for pos, m in enumerate(group.members):
        if m >= 0:
            mask = arrays.test_mask[m]
            summary = {
                "fold": run.units.fold_names[m],
                "epochs_trained": group.epoch,
                "history": group.histories[m],
                "execution": run.execution,
            }
            run.ckpts.write_result(m, arrays.test_idx[m][mask], log_probs[pos][mask], summary)


def _bars() -> bool:
    """Progress bars on a terminal only (a log file gets one line per group instead), and
    with several processes on process 0 only."""
    return sys.stderr.isatty() and distributed.is_main()


def _progress(groups: list, desc: str):
    """The groups, with a bar when there are several."""
    return tqdm(groups, desc=desc, unit="group", disable=len(groups) < 2 or not _bars())


def _epoch_bar(group: _Group, total: int):
    """A group's epochs bar."""
    label = group.names[0] if len(group.names) == 1 else f"{len(group.names)} folds"
    return tqdm(
        total=total, initial=group.epoch, desc=label, unit="epoch", leave=False,
        disable=not _bars(),
    )  # fmt: skip


def _log_group(run: _Run, group: _Group) -> None:
    """Without bars, one log line per finished group: which, how far, its last loss."""
    if _bars() or not distributed.is_main():
        return
    done = next(i for i, g in enumerate(run.groups) if g is group.members) + 1
    names = ", ".join(group.names) if len(group.names) <= 4 else f"{len(group.names)} folds"
    loss = "" if group.last_loss is None else f", loss {group.last_loss:.3f}"
    log.info("group %d/%d done (%s): %d epochs%s", done, len(run.groups), names, group.epoch, loss)


def _timing(run: _Run, chrono: Chrono) -> dict:
    """The run's timing record (results.json "timing")."""
    runner, before = run.runner, run.compile_before
    this_run = {  # this run's compiles (the trial may have compiled some before)
        name: seconds - before.get(name, 0.0)
        for name, seconds in runner.compile_by_program.items()
        if seconds > before.get(name, 0.0)
    }
    timing = {
        "wall_s": chrono.phases.pop("wall"),
        "compile_s": sum(this_run.values()),
        "compile_by_program": this_run,
        # where the wall time went, host seconds (compiles inside the calls that triggered them)
        **chrono.summary(),
        "strategy": run.execution["strategy"],
        "loop": run.execution["loop"],
        "fold_group_size": int(run.group_size),
        "auto": run.auto,  # how 'auto' chose (trial results or the cache), or None
        "mesh": {k: int(v) for k, v in runner.mesh.shape.items()},
        "device": jax.devices()[0].device_kind,
        "platform": run.execution["platform"],
        "folds_trained_this_run": len(run.pending),
    }
    phases = sorted(timing["phases_s"].items(), key=lambda kv: -kv[1])
    log.info(
        "%.1f s: %s (all figures: results.json \"timing\")", timing["wall_s"],
        ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases if seconds >= 0.05),
    )  # fmt: skip
    return timing


def _execution(runner, group_size: int) -> dict:
    """How the run executes (workdir.check_execution keeps a resumed unit on it)."""
    return {
        "strategy": "vmap" if runner.vmapped else "sequential",
        "loop": "scan" if runner.scan else "steps",
        "platform": jax.default_backend(),
        "data_shards": int(runner.mesh.shape.get("data", 1)),
        "fold_group_size": int(group_size) if runner.vmapped else 0,  # as autotune.Choice has it
    }


def _with_input_stats(states, stats: dict, runner):
    """``states`` with the input statistics of ``input_stats`` in their BN-statistics dicts (and
    the early-stopping copy's): keys ``['input_mean']`` and ``['input_std']``."""
    placed = parallel.put(stats, runner.group_sharding)
    keys = {name: f"['{name}']" for name in stats}  # the model's variables, flat (engine)
    missing = [key for key in keys.values() if key not in states.batch_stats]
    if missing:  # a renamed variable must not leave the model at mean 0, sd 1 unnoticed
        raise RuntimeError(f"the model's statistics {missing} are not in its train state")

    def put(batch_stats: dict) -> dict:
        return batch_stats | {key: placed[name] for name, key in keys.items()}

    states = states.replace(batch_stats=put(states.batch_stats))
    if states.best is not None:
        states = states.replace(best=states.best.replace(batch_stats=put(states.best.batch_stats)))
    return states


def _all_stopped(states, members) -> bool:
    """Whether early stopping has stopped every real fold of the group (False without it)."""
    if getattr(states, "best", None) is None:
        return False
    stopped = np.asarray(parallel.to_host(states.best.stopped))  # [G] bool
    return bool(np.all(stopped[members >= 0]))


def _epoch_records(metrics: dict, pos: int, first_epoch: int) -> list[dict]:
    """Per-epoch history records of group member ``pos`` (report.py's history format)."""
    names = {
        "loss": "loss",
        "train_acc": "accuracy",
        "val_loss": "val_loss",
        "val_acc": "val_accuracy",
    }
    n = metrics["loss"].shape[1]
    return [
        {"epoch": first_epoch + e + 1}
        | {out: float(metrics[key][pos, e]) for key, out in names.items() if key in metrics}
        for e in range(n)
    ]


def _check_finite(metrics: dict, members, names, first_epoch: int) -> None:
    bad = metrics["nonfinite_step"]  # [G, E] int32, -1 where finite
    for pos, m in enumerate(members):
        if m >= 0 and np.any(bad[pos] >= 0):
            e = int(np.flatnonzero(bad[pos] >= 0)[0])
            raise FloatingPointError(
                f"non-finite training loss in fold {names[m]!r} at epoch {first_epoch + e + 1} "
                f"(1-based), step {int(bad[pos, e]) + 1} (1-based) of that epoch; lower "
                "train.learning_rate or set train.grad_clip_norm"
            )


def _load_dataset(config):
    from mjfn_jax.data import dataset_from_config  # lazy: tfds only when reading from disk

    return dataset_from_config(config.data, config.model.input_size, config.seed)


def _check_dataset(config, dataset) -> None:
    n, h, w, c = dataset.images.shape
    size, channels = config.model.input_size, config.model.input_channels
    if (h, w, c) != (size, size, channels) or dataset.images.dtype != np.uint8:
        raise ValueError(
            f"dataset images are {dataset.images.dtype} [{n}, {h}, {w}, {c}]; the config "
            f"(model.input_size={size}, model.input_channels={channels}) needs uint8 "
            f"[N, {size}, {size}, {channels}]"
        )
    if len(dataset.class_names) != config.model.num_classes:
        raise ValueError(
            f"dataset has {len(dataset.class_names)} classes {tuple(dataset.class_names)}, "
            f"config model.num_classes={config.model.num_classes}"
        )


def _select(config, workdir: str, dataset, units: Units, after_epochs, runners) -> dict:
    """``select.candidates``: nested model selection (mjfn_jax.select), per (seed, fold)."""
    from mjfn_jax.data import select_views
    from mjfn_jax.select import choose_and_pool, train_candidates

    def train_fn(candidate, candidate_dir, data):
        if tuple(candidate.data.views) != tuple(config.data.views):  # a choice of input views
            data = select_views(data, candidate.data)  # (the run reads them all: validated)
        return train_and_evaluate(
            candidate, candidate_dir, data, after_epochs=after_epochs, runners=runners
        )

    runs = train_candidates(config, workdir, dataset, train_fn)
    timing = {"candidates": [r["timing"] for r in runs]}
    timing["wall_s"] = sum(t["wall_s"] for t in timing["candidates"])
    if jax.process_index() != 0:  # multi-process: process 0 chooses and writes the reports
        return {"per_seed": {s: None for s in training_seeds(config)}, "timing": timing}
    several = len(training_seeds(config)) > 1

    def pooled_of(seed: int):
        return choose_and_pool(config, [r["per_seed"][seed] if several else r for r in runs])

    return write_reports(config, workdir, dataset, units, timing, pooled_of)
