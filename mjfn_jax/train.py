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

import dataclasses
import logging
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mjfn_jax import autotune, distributed, parallel
from mjfn_jax import workdir as workdir_lib
from mjfn_jax.checkpoint import (
    SavePolicy,
    UnitCheckpoints,
    closed_loop_reports_dropped,
    orbax_errors_in_one_line,
)
from mjfn_jax.config import validate_config
from mjfn_jax.config_io import save_or_check_config
from mjfn_jax.results import pooled_predictions, write_reports
from mjfn_jax.runner import Runners
from mjfn_jax.timing import Chrono
from mjfn_jax.units import (
    Units,
    fold_inputs,
    input_stats,
    make_units,
    one_seed_config,
    seed_workdir,
    training_seeds,
)

log = logging.getLogger(__name__)


def setup_logging() -> None:
    """INFO for this package; Orbax's per-save INFO lines (absl logger) only as warnings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("mjfn_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)


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
) -> dict:
    """Train every unit (resuming from ``workdir``), evaluate once per test sample, report.

    dataset: a ``mjfn_jax.data.Dataset`` (or None: load ``config.data`` from disk).
    after_epochs: called after every training call of a fold group (see EpochsDone), after
    its checkpoints were handed over; an exception it raises stops the run there, and the
    checkpoints and finished folds written so far are kept (tests simulate a kill this way).
    Returns the dict of ``mjfn_jax.report.write_report`` (pooled metrics under "pooled") plus
    "y_true", "y_pred" int [N], "probs" float [N, C], "folds" str [N], "history" and "timing".
    """
    # 1. Everything that can be checked is checked before anything is written to the workdir.
    validate_config(config)
    dataset = _load_dataset(config) if dataset is None else dataset
    _check_dataset(config, dataset)
    units = make_units(config, dataset, workdir)
    seeds = training_seeds(config)
    # One run per workdir (released even by kill -9); each process of a run its own lock.
    with workdir_lib.Lock(workdir, jax.process_index()):
        # 2. The workdir's records: a rerun must be the same run.
        save_or_check_config(config, workdir)
        workdir_lib.check_dataset(workdir, dataset)
        if len(seeds) > 1:  # each seed's folder is a one-seed workdir of its own
            for s in seeds:
                save_or_check_config(one_seed_config(config, s), seed_workdir(workdir, s))
                workdir_lib.check_dataset(seed_workdir(workdir, s), dataset)
        if config.select.candidates:
            return _select(config, workdir, dataset, units, after_epochs)
        # 3. Train every pending unit, group by group; 4. report the pooled predictions.
        if config.parallel.compilation_cache:
            parallel.enable_compilation_cache()
        with Runners() as runners, closed_loop_reports_dropped(), orbax_errors_in_one_line():
            timing = _train(config, workdir, dataset, units, runners, after_epochs)

        def pooled_of(seed: int):
            members = units.of_seed(seed)
            names = [units.fold_names[u] for u in members]
            ckpts = [_result_reader(units, u) for u in members]
            return pooled_predictions(dataset, names, ckpts), None

        return write_reports(config, workdir, dataset, units, timing, pooled_of)


def _train(config, workdir: str, dataset, units: Units, runners: Runners, after_epochs) -> dict:
    """Train every unit not yet finished; returns the run's timing record."""
    config, auto = autotune.choose_strategy(config, units, dataset, workdir, runners)
    runner, group_size, data = runners.setup(config, units.arrays, dataset)
    compile_before, compile_by_before = runner.compile_s, dict(runner.compile_by_program)
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
    chrono = Chrono()
    groups = parallel.fold_groups(
        len(pending), group_size, runner.mesh.size if runner.vmapped else 1
    )
    with chrono.phase("wall"):
        try:
            quiet = len(groups) < 2 or not distributed.is_main()  # multi-process: process 0 only
            for group in tqdm(groups, desc="fold groups", unit="group", disable=quiet):
                members = np.where(group >= 0, pending[np.maximum(group, 0)], -1)
                _train_group(
                    config, runner, ckpts, units, dataset, data, members, execution, chrono,
                    after_epochs,
                )  # fmt: skip
        finally:
            with chrono.phase("waiting for the writes at the end"):
                ckpts.close()  # completed folds are kept even if a later one failed
    parallel.sync("fold results written")  # multi-process: every process's folds are on disk
    timing = {
        "wall_s": chrono.phases.pop("wall"),
        "compile_s": runner.compile_s - compile_before,  # training calls compiled this run
        "compile_by_program": {  # this run's (the trial may have compiled some)
            name: seconds - compile_by_before.get(name, 0.0)
            for name, seconds in runner.compile_by_program.items()
            if seconds > compile_by_before.get(name, 0.0)
        },
        # where the wall time went, host seconds (compiles inside the calls that triggered them)
        **chrono.summary(),
        "strategy": execution["strategy"],
        "loop": execution["loop"],
        "fold_group_size": int(group_size),
        "auto": auto,  # how 'auto' chose (trial results or the cache), or None
        "mesh": {k: int(v) for k, v in runner.mesh.shape.items()},
        "device": jax.devices()[0].device_kind,
        "platform": execution["platform"],
        "folds_trained_this_run": len(pending),
    }
    log.info("timing: %s", timing)
    return timing


def _train_group(
    config, runner, ckpts, units: Units, dataset, data, members, execution, chrono, after
) -> None:
    """Train (or resume) one group of units to the end, predict their test subjects and hand
    their results to the checkpointers (which marks them done once written)."""
    arrays, names = units.arrays, units.arrays.names
    real = [int(m) for m in members if m >= 0]
    ckpts.check()  # a failed write of an earlier group stops the run before this one trains
    with chrono.phase("init"):
        folds = parallel.put(fold_inputs(config, dataset, units, members), runner.group_sharding)
        test_idx = parallel.put(
            arrays.test_idx[np.where(members >= 0, members, real[0])], runner.group_sharding
        )  # [G, max_test]
        states = runner.init(folds.key)
        if config.model.input_standardize:
            stats = input_stats(config, dataset, units, members)
            states = _with_input_stats(states, stats, runner)
        jax.block_until_ready(states)
    with chrono.phase("resume"):
        states, epoch, histories = ckpts.restore(states, members, names, runner.group_sharding)
    total, policy = config.train.num_epochs, SavePolicy(config.checkpoint.every_epochs)
    stopped = epoch > 0 and _all_stopped(states, members)  # resumed after the folds stopped
    label = names[real[0]] if len(real) == 1 else f"{len(real)} folds"
    with tqdm(  # multi-process: bars on process 0 only
        total=total, initial=epoch, desc=label, unit="epoch", leave=False,
        disable=not distributed.is_main(),
    ) as bar:  # fmt: skip
        while epoch < total and not stopped:
            n = min(max(1, config.parallel.epochs_per_call), total - epoch)
            n = min(n, policy.epochs_until_save(epoch) or n)
            with chrono.phase(Chrono.TRAINING):
                states, metrics = runner.train(states, folds, data, epoch, n)
                metrics = parallel.to_host(metrics)  # waits for the device
            chrono.count(
                samples=len(real) * n * runner.program.steps * config.train.batch_size, epochs=n
            )
            _check_finite(metrics, members, names, epoch)
            for pos, m in enumerate(members):
                if m >= 0:
                    histories[m] += _epoch_records(metrics, pos, epoch)
            epoch += n
            if "stopped" in metrics:  # early stopping: every real fold has stopped
                stopped = bool(np.all(metrics["stopped"][members >= 0, -1]))
            save = policy.what_to_save(epoch, finished=epoch == total or stopped)
            with chrono.phase("saves (handing over)"):
                if save == "final":  # the model only (no optimizer state)
                    ckpts.save_models(runner.program.export(states), members)
                elif save == "progress":
                    ckpts.save_progress(states, members, epoch, histories)
            bar.update(n)
            bar.set_postfix(loss=f"{np.mean(metrics['loss'][:, -1]):.3f}")
            if after is not None:
                after(EpochsDone(tuple(names[m] for m in real), epoch, chrono.epochs))
    with chrono.phase("predict"):
        log_probs = parallel.to_host(runner.predict(states, data, test_idx))  # [G, max_test, C]
    with chrono.phase("results (handing over)"):
        for pos, m in enumerate(members):
            if m >= 0:
                mask = arrays.test_mask[m]
                summary = {
                    "fold": units.fold_names[m],
                    "epochs_trained": epoch,
                    "history": histories[m],
                    "execution": execution,
                }
                ckpts.write_result(m, arrays.test_idx[m][mask], log_probs[pos][mask], summary)


def _execution(runner, group_size: int) -> dict:
    """How the run executes (workdir.check_execution keeps a resumed unit on it)."""
    return {
        "strategy": "vmap" if runner.vmapped else "sequential",
        "loop": "scan" if runner.scan else "steps",
        "platform": jax.default_backend(),
        "data_shards": int(runner.mesh.shape.get("data", 1)),
        "fold_group_size": int(group_size) if runner.vmapped else 0,  # as autotune.Choice has it
    }


def _result_reader(units: Units, unit: int):
    """A unit's finished result, read back from its fold folder."""
    from mjfn_jax.checkpoint import FoldCheckpointer

    return FoldCheckpointer(units.roots[unit], units.fold_names[unit])


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
    size = config.model.input_size
    if (h, w, c) != (size, size, 3) or dataset.images.dtype != np.uint8:
        raise ValueError(
            f"dataset images are {dataset.images.dtype} [{n}, {h}, {w}, {c}]; the config "
            f"(model.input_size={size}) needs uint8 [N, {size}, {size}, 3]"
        )
    if len(dataset.class_names) != config.model.num_classes:
        raise ValueError(
            f"dataset has {len(dataset.class_names)} classes {tuple(dataset.class_names)}, "
            f"config model.num_classes={config.model.num_classes}"
        )


def _select(config, workdir: str, dataset, units: Units, after_epochs) -> dict:
    """``select.candidates``: nested model selection (mjfn_jax.select), per (seed, fold)."""
    from mjfn_jax.select import choose_and_pool, train_candidates

    def train_fn(candidate, candidate_dir, data):
        return train_and_evaluate(candidate, candidate_dir, data, after_epochs=after_epochs)

    runs = train_candidates(config, workdir, dataset, train_fn)
    timing = {"candidates": [r["timing"] for r in runs]}
    timing["wall_s"] = sum(t["wall_s"] for t in timing["candidates"])
    if jax.process_index() != 0:  # multi-process: process 0 chooses and writes the reports
        return {"per_seed": {s: None for s in training_seeds(config)}, "timing": timing}
    several = len(training_seeds(config)) > 1

    def pooled_of(seed: int):
        return choose_and_pool(config, [r["per_seed"][seed] if several else r for r in runs])

    return write_reports(config, workdir, dataset, units, timing, pooled_of)
