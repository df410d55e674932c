"""The fold engine: ``train_and_evaluate(config, workdir, dataset=None) -> results``.

The whole dataset is placed on the device(s) once; per-fold functions from
:mod:`mjfn_jax.engine` are lifted over a leading fold axis and compiled once; a training call
runs ``parallel.epochs_per_call`` epochs of every fold of a group, as one ``lax.scan``
(``parallel.loop='scan'``, accelerators) or one call per step (``'steps'``, CPU). Folds run in
groups (strategy 'vmap': many folds sharded over the mesh axis 'fold'; 'sequential': one fold,
batch sharded over the mesh axis 'data'). Each fold checkpoints to ``workdir/folds/<fold>``;
a rerun skips finished folds and resumes the others exactly (docs/design.md#train-loop), and
the workdir's records (mjfn_jax.workdir) refuse what would make it inexact.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mjfn_jax import autotune, distributed, parallel
from mjfn_jax import workdir as workdir_lib
from mjfn_jax.checkpoint import CheckpointDamaged, FoldCheckpointer, SavePolicy, to_host_later
from mjfn_jax.config import validate_config
from mjfn_jax.config_io import config_to_dict, save_or_check_config
from mjfn_jax.engine import FoldInputs
from mjfn_jax.folds import (
    FoldArrays,
    balanced_class_weights,
    make_folds,
    pad_folds,
    steps_per_epoch,
)
from mjfn_jax.parallel import get_runner, strategy_setup

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


def training_seeds(config) -> tuple[int, ...]:
    """The run's training seeds: ``train.seeds``, or ``(seed,)`` when it is empty."""
    return tuple(int(s) for s in config.train.seeds) or (int(config.seed),)


@dataclasses.dataclass(frozen=True)
class Units:
    """What the run trains: one unit per (seed, fold), the members of the parallel fold axis.

    With one seed the units are the folds and the workdir is laid out as always
    (``folds/<fold>/``); with several, seed s's folds live in ``seeds/<s>/``, itself a complete
    one-seed workdir (config, data record, folds, report) that predict and resume accept."""

    arrays: FoldArrays  # one row per unit; names as shown ("sub01", or "seed1/sub01")
    seeds: np.ndarray  # int32 [U]
    fold_index: np.ndarray  # int32 [U]: unit (s, k) trains with key fold_in(key(s), k)
    fold_names: tuple[str, ...]  # [U] the fold's own name
    roots: tuple[str, ...]  # [U] the one-seed workdir the unit belongs to

    def of_seed(self, seed: int) -> list[int]:
        return [int(u) for u in np.flatnonzero(self.seeds == seed)]


def make_units(config, dataset, workdir: str) -> Units:
    """The folds of every training seed (each seed draws its own validation subjects and
    k-fold split, as a one-seed run with that seed would). Exactly that run's, when the seeds'
    largest training folds need the same number of steps per epoch (always without validation
    subjects; else a warning says which seeds differ)."""
    seeds = training_seeds(config)
    multi = len(seeds) > 1
    folds, unit_seeds, index, fold_names, roots = [], [], [], [], []
    for s in seeds:
        for k, fold in enumerate(
            make_folds(
                dataset.subjects,
                protocol=config.folds.protocol,
                num_folds=config.folds.num_folds,
                val_subject_fraction=config.folds.val_subject_fraction,
                seed=s,
                sources=dataset.sources,
            )
        ):
            name = f"seed{s}/{fold.name}" if multi else fold.name
            folds.append(dataclasses.replace(fold, name=name))
            unit_seeds.append(s)
            index.append(k)
            fold_names.append(fold.name)
            roots.append(seed_workdir(workdir, s) if multi else workdir)
    arrays = pad_folds(folds)
    if multi:  # every member of the fold axis takes the same number of steps per epoch
        batch = config.train.batch_size
        largest = {s: 0 for s in seeds}
        for fold, s in zip(folds, unit_seeds, strict=True):
            largest[s] = max(largest[s], len(fold.train_idx))
        own = {s: steps_per_epoch(n, batch) for s, n in largest.items()}
        run = steps_per_epoch(arrays.train_idx.shape[1], batch)
        if any(steps != run for steps in own.values()):
            log.warning(
                "train.seeds: the seeds' largest training folds need %s steps per epoch; all "
                "train %d, so a seed with fewer is not exactly its one-seed run (its smaller "
                "folds top up their epochs from their own training clips, as always)",
                ", ".join(f"seed {s}: {n}" for s, n in own.items()), run,
            )  # fmt: skip
    return Units(
        arrays=arrays,
        seeds=np.asarray(unit_seeds, np.int32),
        fold_index=np.asarray(index, np.int32),
        fold_names=tuple(fold_names),
        roots=tuple(roots),
    )


def seed_workdir(workdir: str, seed: int) -> str:
    """Where seed ``seed`` of a several-seed run keeps its folds and report."""
    return os.path.join(workdir, "seeds", str(seed))


@jax.jit
def _fold_keys(seeds, folds):
    """Unit (s, k)'s key: fold_in(key(s), k). seeds, folds int32 [G] -> typed keys [G]
    (jitted: an eager vmap retraced at every group, ~15 ms each)."""
    return jax.vmap(lambda s, k: jax.random.fold_in(jax.random.key(s), k))(seeds, folds)


def _fold_inputs(config, dataset, units: Units, members: np.ndarray) -> FoldInputs:
    """A group's fold inputs, [G, ...] host arrays (dummy members, -1, reuse the first real
    unit)."""
    arrays = units.arrays
    real = members[members >= 0]
    take = np.where(members >= 0, members, real[0])
    num_classes = config.model.num_classes
    weights = [
        balanced_class_weights(
            dataset.labels[arrays.train_idx[f, : arrays.train_count[f]]], num_classes
        )
        for f in take
    ]
    return FoldInputs(
        key=_fold_keys(units.seeds[take], units.fold_index[take]),
        train_idx=arrays.train_idx[take],
        train_count=arrays.train_count[take],
        val_idx=arrays.val_idx[take],
        val_mask=arrays.val_mask[take],
        class_weights=np.stack(weights),
    )


def input_stats(config, dataset, units: Units, members: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel, per-channel mean and standard deviation [G, S, S, 3] of each member's training
    clips (images / 255), for ``model.input_standardize``. With ``augment.hflip`` they are the
    statistics of the clips and their flow-aware mirror images together, so that a flipped clip
    is standardised as it would be unflipped. The standard deviation is at least 1/255."""
    arrays = units.arrays
    real = members[members >= 0]
    means, stds = [], []
    for f in np.where(members >= 0, members, real[0]):
        images = dataset.images[arrays.train_idx[f, : arrays.train_count[f]]]
        images = images.astype(np.float64) / 255.0
        mean, var = images.mean(0), images.var(0)
        if config.augment.hflip:  # an equal mixture of the clips and their mirror images
            mirrored_mean = mean[:, ::-1, :].copy()  # augment.hflip_batch: mirror, u -> 1 - u
            mirrored_mean[..., 0] = 1.0 - mirrored_mean[..., 0]
            mirrored_var = var[:, ::-1, :]
            var = (var + mirrored_var) / 2 + ((mean - mirrored_mean) / 2) ** 2
            mean = (mean + mirrored_mean) / 2
        means.append(mean)
        stds.append(np.maximum(np.sqrt(var), 1.0 / 255.0))
    return {
        "input_mean": np.stack(means).astype(np.float32),
        "input_std": np.stack(stds).astype(np.float32),
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


def _slice(tree, i: int):
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _resume(runner, ckpts, members, states, names):
    """Restore a group from the newest epoch count checkpointed by ALL its real folds (folds
    of a group train in lockstep, so they normally share it; a run killed between two folds'
    saves falls back to the previous common one). A damaged checkpoint is skipped, with a
    warning, for the next older one; the steps after the one restored are deleted (training
    writes them again). Returns (states, epochs_done, histories)."""
    real = [m for m in members if m >= 0]
    common = set.intersection(*(set(ckpts[m].epochs()) for m in real))
    histories = {m: [] for m in real}
    # Multi-process: rows of other processes' devices cannot be read (np.asarray raises), so
    # every process restores every real fold from its shapes, and dummy members copy one.
    local = all(x.is_fully_addressable for x in jax.tree.leaves(states))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), states)
    for done in sorted(common, reverse=True):
        slices, metas = [], {}
        try:
            for pos, m in enumerate(members):
                like = _slice(states, pos) if local else shapes
                if m >= 0:
                    like, metas[m] = ckpts[m].restore(done, like)
                slices.append(like)
        except CheckpointDamaged as e:
            log.warning("%s; trying an older checkpoint", e)
            continue
        for m in real:
            ckpts[m].discard_after(done)
            histories[m] = metas[m]["history"][:done]
        first = next(s for s, m in zip(slices, members, strict=True) if m >= 0)
        slices = [s if local or m >= 0 else first for s, m in zip(slices, members, strict=True)]
        restored = parallel.put(_stack(slices), runner.group_sharding)
        log.info("resumed folds %s from epoch %d", ", ".join(names[m] for m in real), done)
        return restored, done, histories
    if common:
        log.warning(
            "no readable checkpoint of folds %s: training them from the start",
            ", ".join(names[m] for m in real),
        )
    for m in real:
        ckpts[m].discard_after(0)
    return states, 0, histories


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


def _run_group(config, runner, ckpts, units: Units, dataset, data, members, stats, after) -> list:
    """Train (or resume) one group of units (folds of a seed) to the end and predict their test
    subjects.

    Returns the group's results as (checkpointer, test_idx, log_probs, summary) tuples; the
    caller writes them (which marks the folds done)."""
    arrays = units.arrays
    names = arrays.names
    real = [int(m) for m in members if m >= 0]
    phase = stats["phase_s"]  # host seconds per phase of a fold's life (timing's "phases_s")
    clock = time.perf_counter()
    folds = parallel.put(_fold_inputs(config, dataset, units, members), runner.group_sharding)
    test_idx = parallel.put(
        arrays.test_idx[np.where(members >= 0, members, real[0])], runner.group_sharding
    )  # [G, max_test]
    states = runner.init(folds.key)
    if config.model.input_standardize:
        states = _with_input_stats(states, input_stats(config, dataset, units, members), runner)
    jax.block_until_ready(states)
    phase["init"] += time.perf_counter() - clock
    clock = time.perf_counter()
    # Multi-process: process 0 writes every fold (Orbax writes host numpy arrays from process
    # 0 only: a save by another process leaves a checkpoint without data); the others only
    # take part in the all-gathers that bring it the folds of their devices.
    writer = distributed.is_main()
    states, epoch, histories = _resume(runner, ckpts, members, states, names)
    phase["resume"] += time.perf_counter() - clock
    total, policy = config.train.num_epochs, SavePolicy(config.checkpoint.every_epochs)
    stopped = epoch > 0 and _all_stopped(states, members)  # resumed after the folds stopped
    label = names[real[0]] if len(real) == 1 else f"{len(real)} folds"
    with tqdm(  # multi-process: bars on process 0 only
        total=total, initial=epoch, desc=label, unit="epoch", leave=False, disable=not writer
    ) as bar:
        while epoch < total and not stopped:
            n = min(max(1, config.parallel.epochs_per_call), total - epoch)
            n = min(n, policy.epochs_until_save(epoch) or n)
            start = time.perf_counter()
            states, metrics = runner.train(states, folds, data, epoch, n)
            metrics = parallel.to_host(metrics)  # waits for the device
            stats["train_s"] += time.perf_counter() - start
            phase["training calls"] += time.perf_counter() - start
            stats["samples"] += len(real) * n * runner.program.steps * config.train.batch_size
            _check_finite(metrics, members, names, epoch)
            for pos, m in enumerate(members):
                if m >= 0:
                    histories[m] += _epoch_records(metrics, pos, epoch)
            epoch += n
            stats["epochs"] += n
            if "stopped" in metrics:  # early stopping: every real fold has stopped
                stopped = bool(np.all(metrics["stopped"][members >= 0, -1]))
            save = policy.what_to_save(epoch, finished=epoch == total or stopped)
            clock = time.perf_counter()
            if save == "final":  # the model only (no optimizer state): what a finished fold keeps
                models = runner.program.export(states)  # [G, ...], never donated again
                if not parallel.addressable(models):  # several processes: a collective, here
                    host = parallel.to_host(models)
                elif writer:  # one copy for the group, on the writer thread: the loop goes on
                    host = to_host_later(models)
                for pos, m in enumerate(members):
                    if m >= 0 and writer:
                        ckpts[m].save_final(host, pos)
            elif save == "progress":
                host_states = parallel.to_host(states)  # one batch of copies for the group
                for pos, m in enumerate(members):
                    if m >= 0 and writer:
                        meta = {"epochs_done": epoch, "history": histories[m]}
                        ckpts[m].save(epoch, _slice(host_states, pos), meta)
            phase["saves (handing over)"] += time.perf_counter() - clock
            bar.update(n)
            bar.set_postfix(loss=f"{np.mean(metrics['loss'][:, -1]):.3f}")
            if after is not None:
                after(EpochsDone(tuple(names[m] for m in real), epoch, stats["epochs"]))
    clock = time.perf_counter()
    log_probs = parallel.to_host(runner.predict(states, data, test_idx))  # [G, max_test, C]
    phase["predict"] += time.perf_counter() - clock
    results = []
    for pos, m in enumerate(members):
        if m >= 0 and writer:
            mask = arrays.test_mask[m]
            summary = {
                "fold": units.fold_names[m],
                "epochs_trained": epoch,
                "history": histories[m],
            }
            results.append((ckpts[m], arrays.test_idx[m][mask], log_probs[pos][mask], summary))
    return results


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


def _setup(config, arrays: FoldArrays, dataset):
    """(runner, fold group size, the dataset placed on the runner's mesh) for the config's
    strategy. data: {"images": uint8 [N, H, W, 3], "labels": int32 [N]}, replicated."""
    vmapped, mesh, group_size, data_sharding = strategy_setup(config)
    steps = steps_per_epoch(arrays.train_idx.shape[1], config.train.batch_size)
    runner = get_runner(config, steps, mesh, vmapped, data_sharding)
    data = parallel.put(
        {"images": np.asarray(dataset.images), "labels": np.asarray(dataset.labels, np.int32)},
        parallel.replicated(mesh),
    )  # the whole dataset, once
    return runner, group_size, data


def first_group(config, units: Units, dataset):
    """``config``'s strategy set up on its first fold group, initialised: (runner, data,
    members [G] (-1: padding), folds, states). What a trial or a benchmark times."""
    runner, group_size, data = _setup(config, units.arrays, dataset)
    members = parallel.fold_groups(
        units.arrays.num_folds, group_size, runner.mesh.size if runner.vmapped else 1
    )[0]
    folds = parallel.put(_fold_inputs(config, dataset, units, members), runner.group_sharding)
    return runner, data, members, folds, runner.init(folds.key)


def _trial(config, units: Units, dataset):
    """Start ``config``'s strategy on the first fold group: (the compile time of its training
    call, a function that trains the group one more epoch and returns seconds per fold)."""
    runner, data, group, folds, states = first_group(config, units, dataset)
    state = {"states": states, "epoch": 0}
    before = runner.compile_s

    def epoch() -> float:
        start = time.perf_counter()
        state["states"], metrics = runner.train(state["states"], folds, data, state["epoch"], 1)
        jax.block_until_ready(metrics["loss"])  # waits for the device
        state["epoch"] += 1
        return (time.perf_counter() - start) / int(np.sum(group >= 0))

    epoch()  # compiles
    return runner.compile_s - before, epoch


def _choose_strategy(config, units: Units, dataset, workdir: str):
    """(config, record): ``parallel.strategy='auto'`` resolved by a timed trial (mjfn_jax.autotune)
    unless ``parallel.auto_trial`` is off; other strategies pass through (record None). A
    workdir that was trained on this platform before keeps the strategy it was trained with
    (a resumed fold must continue the way it started)."""
    if config.parallel.strategy != "auto" or not config.parallel.auto_trial:
        return config, None
    if jax.process_count() > 1:  # each process's trial could choose differently: a deadlock
        log.info("parallel.strategy=auto with %d processes: the platform rule, no trial",
                 jax.process_count())  # fmt: skip
        return config, {"reason": "several processes: the platform rule (no timed trial)"}
    arrays = units.arrays
    recorded = workdir_lib.recorded_execution(workdir)
    if recorded and recorded.get("platform") == jax.default_backend():
        choice = autotune.Choice(
            recorded["strategy"], recorded["loop"], int(recorded.get("fold_group_size", 0))
        )
        log.info("parallel.strategy=auto -> %s (recorded in the workdir)", choice)
        return choice.apply(config), {
            "choice": dataclasses.asdict(choice),
            "reason": f"recorded in {workdir_lib.EXECUTION_FILE}",
        }
    num_devices = len(parallel.devices(config.parallel.num_devices))
    platform = jax.default_backend()
    options = autotune.candidates(
        platform, num_devices, arrays.num_folds, config.parallel.fold_group_size
    )
    fields = config_to_dict(config)
    shape = {  # what the speed of a step depends on
        "model": fields["model"],
        "train": [config.train.batch_size, config.train.optimizer, config.train.grad_clip_norm > 0],
        "early_stopping": config.train.early_stopping_patience > 0,
        "augment": fields["augment"],
        "data": [len(dataset.labels), arrays.num_folds, int(arrays.train_idx.shape[1])],
    }
    device = jax.devices()[0].device_kind  # on CPU just "cpu": the host's model and flags too
    machine = parallel.machine_id() if platform == "cpu" else device
    key = json.dumps([platform, device, machine, num_devices, shape], sort_keys=True)
    choice, record = autotune.choose(
        key,
        options,
        lambda option: _trial(option.apply(config), units, dataset),
        run_fold_epochs=arrays.num_folds * config.train.num_epochs,
        budget=config.parallel.auto_trial_budget,
    )
    return choice.apply(config), record


def _gather_results(dataset, fold_names, ckpts) -> dict:
    """Pool the saved test predictions of one seed's folds, in dataset order."""
    idx, log_probs, fold_of, history = [], [], [], {}
    for name, ckpt in zip(fold_names, ckpts, strict=True):
        test_idx, lp, summary = ckpt.read_result()
        idx.append(test_idx)
        log_probs.append(lp)
        fold_of += [name] * len(test_idx)
        history[name] = summary["history"]
    idx = np.concatenate(idx)
    order = np.argsort(idx)
    probs = np.exp(np.concatenate(log_probs)[order])  # [N, C]
    idx = idx[order]
    if not np.array_equal(idx, np.arange(len(dataset.labels))):
        raise RuntimeError("fold predictions do not cover every sample exactly once")
    return {
        "y_true": np.asarray(dataset.labels)[idx],
        "y_pred": np.argmax(probs, axis=-1),
        "probs": probs,
        "folds": np.asarray(fold_of)[order],
        "history": history,
    }


def _linear_floor(config, workdir: str, dataset, arrays: FoldArrays, memo: dict) -> dict:
    """The linear probe's pooled predictions on the run's folds (mjfn_jax.linear_probe), kept
    with each fold's probe (``weight`` [F, D, C], ``bias`` [F, C], ``folds`` [F]: what
    ``predict --with-floor`` uses) in ``workdir/linear_floor.npz``: the workdir's dataset and
    folds never change. The probe depends only on the test subjects of each fold: ``memo``
    (test split -> the file's arrays) spares the seeds of one run that share them (LOSO) from
    fitting it again."""
    from mjfn_jax.linear_probe import NAME, fit_floor

    path = os.path.join(workdir, workdir_lib.LINEAR_FLOOR_FILE)
    split = tuple(
        tuple(arrays.test_idx[f][arrays.test_mask[f]].tolist()) for f in range(arrays.num_folds)
    )
    shape = (len(dataset.labels), config.model.num_classes)
    folds = [name.rsplit("/", 1)[-1] for name in arrays.names]  # without "seed<s>/"
    saved, write = memo.get(split), True
    if saved is None and os.path.exists(path):
        try:
            with np.load(path) as z:
                saved = {k: z[k] for k in ("probs", "weight", "bias", "folds")}
            if saved["probs"].shape != shape or saved["folds"].tolist() != folds:
                saved = None
            write = saved is None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            saved = None  # damaged, or from before the probes were kept: computed again
    if saved is None:
        start = time.perf_counter()
        probs, _, weight, bias = fit_floor(
            dataset.images, dataset.labels, arrays, config.model.num_classes, with_weights=True
        )
        log.info("linear floor: %.1f s", time.perf_counter() - start)
        saved = {"probs": probs, "weight": weight, "bias": bias, "folds": np.asarray(folds)}
    if write:
        workdir_lib.write_npz(path, y_pred=saved["probs"].argmax(-1), **saved)
    memo[split] = saved
    return {"method": NAME, "y_pred": saved["probs"].argmax(-1), "probs": saved["probs"]}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset=None,
    *,
    after_epochs: Callable[[EpochsDone], None] | None = None,
) -> dict:
    """Train every fold (resuming from ``workdir``), evaluate once per test sample, report.

    dataset: a ``mjfn_jax.data.Dataset`` (or None: load ``config.data`` from disk).
    after_epochs: called after every training call of a fold group (see EpochsDone), after
    its checkpoints were handed over; an exception it raises stops the run there, and the
    checkpoints and finished folds written so far are kept (tests simulate a kill this way).
    Returns the dict of ``mjfn_jax.report.write_report`` (pooled metrics under "pooled") plus
    "y_true", "y_pred" int [N], "probs" float [N, C], "folds" str [N], "history" and "timing".
    """
    # Everything that can be checked is checked before anything is written to the workdir.
    validate_config(config)
    dataset = _load_dataset(config) if dataset is None else dataset
    _check_dataset(config, dataset)
    units = make_units(config, dataset, workdir)
    seeds = training_seeds(config)
    # One run per workdir (released even by kill -9); each process of a run its own lock.
    with workdir_lib.Lock(workdir, jax.process_index()):
        save_or_check_config(config, workdir)
        workdir_lib.check_dataset(workdir, dataset)
        if len(seeds) > 1:  # each seed's folder is a one-seed workdir of its own
            for s in seeds:
                save_or_check_config(one_seed_config(config, s), seed_workdir(workdir, s))
                workdir_lib.check_dataset(seed_workdir(workdir, s), dataset)
        if config.select.candidates:
            return _select(config, workdir, dataset, units, after_epochs)
        return _train_and_report(config, workdir, dataset, units, after_epochs)


def one_seed_config(config, seed: int):
    """The config of the one-seed run that seed ``seed`` of ``config`` reproduces."""
    config = config.copy_and_resolve_references()
    config.train.seeds = (seed,)
    return config


def _train_and_report(config, workdir: str, dataset, units: Units, after_epochs) -> dict:
    if config.parallel.compilation_cache:
        parallel.enable_compilation_cache()
    arrays = units.arrays
    config, auto = _choose_strategy(config, units, dataset, workdir)
    runner, group_size, data = _setup(config, arrays, dataset)
    mesh, vmapped, steps = runner.mesh, runner.vmapped, runner.program.steps
    compile_before, compile_by_before = runner.compile_s, dict(runner.compile_by_program)
    ckpts = [
        FoldCheckpointer(
            root,
            name,
            max_to_keep=config.checkpoint.max_to_keep,
            final_dtype=config.checkpoint.final_dtype,
        )
        for root, name in zip(units.roots, units.fold_names, strict=True)
    ]
    for c in ckpts:  # a damaged result is found now, not after hours of training
        if c.is_done():
            c.read_result()
            c.tidy()
    pending = np.array([i for i, c in enumerate(ckpts) if not c.is_done()], np.int64)
    execution = {
        "strategy": "vmap" if vmapped else "sequential",
        "loop": "scan" if runner.scan else "steps",
        "platform": jax.default_backend(),
        "data_shards": int(mesh.shape.get("data", 1)),
        "fold_group_size": int(group_size) if vmapped else 0,  # as autotune.Choice has it
    }
    workdir_lib.check_execution(
        workdir, execution, [arrays.names[i] for i in pending if ckpts[i].has_progress()]
    )
    log.info(
        "%d units (folds x seeds), %d to train, strategy %s, mesh %s, %d steps/epoch",
        arrays.num_folds, len(pending), execution["strategy"], dict(mesh.shape), steps,
    )  # fmt: skip
    stats = {"train_s": 0.0, "samples": 0, "epochs": 0, "phase_s": collections.Counter()}
    groups = parallel.fold_groups(len(pending), group_size, mesh.size if vmapped else 1)
    start = time.perf_counter()
    try:
        quiet = len(groups) < 2 or not distributed.is_main()  # multi-process: process 0 only
        for group in tqdm(groups, desc="fold groups", unit="group", disable=quiet):
            members = np.where(group >= 0, pending[np.maximum(group, 0)], -1)
            finished = _run_group(
                config, runner, ckpts, units, dataset, data, members, stats, after_epochs
            )
            clock = time.perf_counter()
            for ckpt, test_idx, log_probs, summary in finished:  # written in the background,
                summary["execution"] = execution  # after the fold's saves
                ckpt.write_result(test_idx, log_probs, summary)
            stats["phase_s"]["results (handing over)"] += time.perf_counter() - clock
    finally:
        clock = time.perf_counter()
        for c in ckpts:  # waits for every save and result (completed folds are kept even if a
            c.close()  # later one failed)
        stats["phase_s"]["waiting for the writes at the end"] += time.perf_counter() - clock
    wall = time.perf_counter() - start
    parallel.sync("fold results written")  # multi-process: every process's folds are on disk
    timing = {
        "wall_s": wall,
        "compile_s": runner.compile_s - compile_before,  # training calls compiled this run
        "compile_by_program": {  # this run's (a trial or an earlier run may have compiled)
            name: seconds - compile_by_before.get(name, 0.0)
            for name, seconds in runner.compile_by_program.items()
            if seconds > compile_by_before.get(name, 0.0)
        },
        "train_s": stats["train_s"],
        "samples_per_s": stats["samples"] / stats["train_s"] if stats["train_s"] else None,
        # where the wall time went, host seconds (compiles inside the calls that triggered them)
        "phases_s": dict(stats["phase_s"]),
        "strategy": execution["strategy"],
        "loop": execution["loop"],
        "fold_group_size": int(group_size),
        "auto": auto,  # how 'auto' chose (trial results or the cache), or None
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "device": jax.devices()[0].device_kind,
        "platform": execution["platform"],
        "folds_trained_this_run": len(pending),
    }
    log.info("timing: %s", timing)

    def pooled_of(seed: int):
        members = units.of_seed(seed)
        names = [units.fold_names[u] for u in members]
        return _gather_results(dataset, names, [ckpts[u] for u in members]), None

    return _reports(config, workdir, dataset, units, timing, pooled_of)


def _reports(config, workdir: str, dataset, units: Units, timing: dict, pooled_of) -> dict:
    """One report per seed, in its one-seed workdir, and with several seeds the top-level one
    (per-seed rows, mean +- sd). pooled_of(seed) -> (pooled predictions, selection record or
    None). Multi-process: process 0 writes; the others return the pooled predictions."""
    seeds = training_seeds(config)
    main = jax.process_index() == 0
    per_seed, floor_memo = {}, {}
    for s in seeds:
        pooled, selection = pooled_of(s)
        if not main:
            per_seed[s] = pooled | {"timing": timing}
            continue
        members = units.of_seed(s)
        seed_config = config if len(seeds) == 1 else one_seed_config(config, s)
        per_seed[s] = _report(
            seed_config, units.roots[members[0]], dataset, units.arrays.take(members), pooled,
            timing, selection, floor_memo,
        )  # fmt: skip
    if len(seeds) == 1:
        return per_seed[seeds[0]]
    if not main:
        return {"per_seed": per_seed, "timing": timing}
    from mjfn_jax.report import write_seeds_report

    summary = write_seeds_report(workdir, per_seed, config=config_to_dict(config), timing=timing)
    return summary | {"per_seed": per_seed, "timing": timing}


def _report(config, workdir, dataset, arrays, pooled, timing, selection, floor_memo) -> dict:
    """Write the report of pooled predictions (mjfn_jax.report) and return the results.
    floor_memo: see _linear_floor."""
    from mjfn_jax.report import write_report

    floor = None
    if config.report.linear_floor:
        floor = _linear_floor(config, workdir, dataset, arrays, floor_memo)
    results = write_report(
        workdir,
        class_names=dataset.class_names,
        y_true=pooled["y_true"],
        y_pred=pooled["y_pred"],
        probs=pooled["probs"],
        subjects=np.asarray(dataset.subjects).astype(str),
        sources=np.asarray(dataset.sources).astype(str),
        clips=np.asarray(dataset.clips).astype(str),
        folds=pooled["folds"],
        history=pooled["history"],
        config=config_to_dict(config),
        timing=timing,
        framework="jax",
        linear_floor=floor,
        selection=selection,
    )
    return results | pooled | {"timing": timing}


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

    return _reports(config, workdir, dataset, units, timing, pooled_of)
