"""What a run trains: its units, one per (seed, fold), the members of the parallel fold axis;
each unit's inputs (fold keys, index arrays, class weights) and input statistics.

With one seed the units are the folds (mjfn_jax.folds); with several, seed s's folds are units
too, laid out as a one-seed workdir of their own under ``seeds/<s>/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from mjfn_jax.engine import FoldInputs
from mjfn_jax.folds import (
    FoldArrays,
    balanced_class_weights,
    make_folds,
    pad_folds,
    steps_per_epoch,
)

log = logging.getLogger(__name__)


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
    _check_batch_size(config, arrays)
    return Units(
        arrays=arrays,
        seeds=np.asarray(unit_seeds, np.int32),
        fold_index=np.asarray(index, np.int32),
        fold_names=tuple(fold_names),
        roots=tuple(roots),
    )


def _check_batch_size(config, arrays: FoldArrays) -> None:
    """Warn when the batch is larger than every fold's training set: each epoch's one step
    then tops its batch up with repeated clips, compute that a smaller batch would not spend."""
    batch, largest = config.train.batch_size, int(arrays.train_count.max())
    if batch > largest:
        log.warning(
            "train.batch_size=%d exceeds the largest fold's %d training clips: each epoch is "
            "one step of %d clips, most of them repeats (~%.0fx the compute of "
            "train.batch_size=%d)", batch, largest, batch, batch / largest, largest,
        )  # fmt: skip


def seed_workdir(workdir: str, seed: int) -> str:
    """Where seed ``seed`` of a several-seed run keeps its folds and report."""
    return os.path.join(workdir, "seeds", str(seed))


def one_seed_config(config, seed: int):
    """The config of the one-seed run that seed ``seed`` of ``config`` reproduces."""
    config = config.copy_and_resolve_references()
    config.train.seeds = (seed,)
    return config


@jax.jit
def fold_keys(seeds, folds):
    """Unit (s, k)'s key: fold_in(key(s), k). seeds, folds int32 [G] -> typed keys [G]
    (jitted: an eager vmap retraced at every group, ~15 ms each)."""
    return jax.vmap(lambda s, k: jax.random.fold_in(jax.random.key(s), k))(seeds, folds)


def fold_inputs(config, dataset, units: Units, members: np.ndarray) -> FoldInputs:
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
        key=fold_keys(units.seeds[take], units.fold_index[take]),
        train_idx=arrays.train_idx[take],
        train_count=arrays.train_count[take],
        val_idx=arrays.val_idx[take],
        val_mask=arrays.val_mask[take],
        class_weights=np.stack(weights),
    )


def input_stats(config, dataset, units: Units, members: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel, per-channel mean and standard deviation [G, S, S, C] of each member's training
    clips (images / 255), for ``model.input_standardize``. With ``augment.hflip`` they are the
    statistics of the clips and their flow-aware mirror images together, so that a flipped clip
    is standardised as it would be unflipped (several views with direction maps, whose flip is
    not affine: the mirror images themselves, mjfn_jax.views.hflip_views). The standard
    deviation is at least 1/255."""
    from mjfn_jax import views

    layout = views.config_layout(config.data)
    directions = any(source is not None for source in layout)
    arrays = units.arrays
    real = members[members >= 0]
    means, stds = [], []
    for f in np.where(members >= 0, members, real[0]):
        images = dataset.images[arrays.train_idx[f, : arrays.train_count[f]]]
        if config.augment.hflip and directions:  # the clips and their mirror images
            images = np.concatenate([images, views.hflip_views(images, layout)])
        images = images.astype(np.float64) / 255.0
        mean, var = images.mean(0), images.var(0)
        if config.augment.hflip and not directions:
            # an equal mixture of the clips and their mirror images
            mirrored_mean = mean[:, ::-1, :].copy()  # augment.hflip_batch: mirror, u -> 1 - u
            u = [3 * k for k in range(len(layout))]  # every view's u (all flow views here)
            mirrored_mean[..., u] = 1.0 - mirrored_mean[..., u]
            mirrored_var = var[:, ::-1, :]
            var = (var + mirrored_var) / 2 + ((mean - mirrored_mean) / 2) ** 2
            mean = (mean + mirrored_mean) / 2
        means.append(mean)
        stds.append(np.maximum(np.sqrt(var), 1.0 / 255.0))
    return {
        "input_mean": np.stack(means).astype(np.float32),
        "input_std": np.stack(stds).astype(np.float32),
    }
