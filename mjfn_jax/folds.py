"""Evaluation folds by subject (LOSO, k-fold) or by source dataset (leave one dataset out), their
padded index arrays, and epoch orders.

A fold never sees its test subjects during training or validation: validation subjects are drawn
from the fold's own training subjects. The engine trains folds in lockstep, so every fold gets
the same number of steps per epoch; :func:`epoch_batches` tops up a smaller fold's epoch with
extra draws from ITS OWN training indices (never padding slots, never another fold's samples).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Fold:
    """One evaluation fold: indices into the dataset (sorted, int64)."""

    name: str  # Path-safe: "casme2__sub01" (LOSO), "fold03" (k-fold), "lodo__casme2" (LODO).
    test_subjects: tuple[str, ...]
    train_idx: np.ndarray  # [n_train]
    val_idx: np.ndarray  # [n_val], possibly empty
    test_idx: np.ndarray  # [n_test]


@dataclasses.dataclass(frozen=True)
class FoldArrays:
    """Folds padded to common lengths, for a leading fold axis on the device."""

    names: tuple[str, ...]
    train_idx: np.ndarray  # [F, max_train] int32; padding slots hold 0 (never drawn)
    train_count: np.ndarray  # [F] int32
    val_idx: np.ndarray  # [F, max_val] int32 (max_val >= 1)
    val_mask: np.ndarray  # [F, max_val] bool
    test_idx: np.ndarray  # [F, max_test] int32
    test_mask: np.ndarray  # [F, max_test] bool

    @property
    def num_folds(self) -> int:
        return len(self.names)

    def take(self, rows) -> FoldArrays:
        """The folds at ``rows`` (same padded widths)."""
        rows = np.asarray(rows, np.int64)
        return FoldArrays(
            names=tuple(self.names[r] for r in rows),
            **{
                f.name: getattr(self, f.name)[rows]
                for f in dataclasses.fields(self)
                if f.name != "names"
            },
        )


def sanitize_fold_name(subject: str) -> str:
    """A subject id made safe as a directory name: "casme2/sub01" -> "casme2__sub01"."""
    name = str(subject).replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _split_validation(
    train_subjects: list[str], fraction: float, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    if fraction <= 0.0:
        return train_subjects, []
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"folds.val_subject_fraction must be in [0, 1), got {fraction}")
    n_val = max(1, int(round(fraction * len(train_subjects))))
    if n_val >= len(train_subjects):
        raise ValueError(
            f"folds.val_subject_fraction={fraction} leaves no training subjects "
            f"({len(train_subjects)} available)"
        )
    chosen = set(rng.choice(len(train_subjects), size=n_val, replace=False).tolist())
    val = [s for i, s in enumerate(train_subjects) if i in chosen]
    train = [s for i, s in enumerate(train_subjects) if i not in chosen]
    return train, val


def _lodo_groups(
    subjects: np.ndarray, sources: np.ndarray | None
) -> tuple[list[list[str]], list[str]]:
    """(test subjects of each fold, fold names): one fold per source dataset, sorted."""
    if sources is None:
        raise ValueError("folds.protocol='lodo' needs each sample's source dataset (sources=)")
    if not all(sources):
        raise ValueError("folds.protocol='lodo': some samples have an empty source name")
    datasets = sorted(set(sources.tolist()))
    if len(datasets) < 2:
        raise ValueError(f"folds.protocol='lodo' needs at least 2 source datasets, got {datasets}")
    owner: dict[str, str] = {}
    for subject, source in zip(subjects.tolist(), sources.tolist(), strict=True):
        if owner.setdefault(subject, source) != source:
            raise ValueError(
                f"folds.protocol='lodo': subject {subject!r} is in sources {owner[subject]!r} "
                f"and {source!r}; a subject must belong to one source"
            )
    groups = [sorted(set(subjects[sources == d].tolist())) for d in datasets]
    return groups, [sanitize_fold_name(f"lodo/{d}") for d in datasets]


def make_folds(
    subjects: np.ndarray,
    *,
    protocol: str = "loso",
    num_folds: int = 5,
    val_subject_fraction: float = 0.0,
    seed: int = 0,
    sources: np.ndarray | None = None,
) -> list[Fold]:
    """Folds from the per-sample ``subjects`` array [N] (str).

    'loso': one fold per subject (sorted ids). 'kfold': subjects shuffled with ``seed`` and
    dealt round-robin into ``num_folds`` groups. 'lodo' (leave one dataset out, needs the
    per-sample ``sources`` [N] str): one fold per source dataset (sorted), named
    "lodo__<source>", testing every subject of that source and training on the other sources'.
    Validation subjects (if any) are drawn per fold from that fold's training subjects, with a
    seed derived from (seed, fold index).
    """
    subjects = np.asarray(subjects).astype(str)
    unique = sorted(set(subjects.tolist()))
    if sources is not None:
        sources = np.asarray(sources).astype(str)
        if sources.shape != subjects.shape:
            raise ValueError(
                f"make_folds: sources has shape {sources.shape}, subjects {subjects.shape}; "
                "need one source per sample"
            )
    if len(unique) < 2:
        raise ValueError(f"need at least 2 subjects for subject-wise folds, got {unique}")
    if protocol == "loso":
        groups = [[s] for s in unique]
        names = [sanitize_fold_name(s) for s in unique]
    elif protocol == "kfold":
        if not 2 <= num_folds <= len(unique):
            raise ValueError(f"folds.num_folds={num_folds} must be in [2, {len(unique)}]")
        order = np.random.default_rng(seed).permutation(len(unique))
        groups = [sorted(unique[j] for j in order[k::num_folds]) for k in range(num_folds)]
        names = [f"fold{k:02d}" for k in range(num_folds)]
    elif protocol == "lodo":
        groups, names = _lodo_groups(subjects, sources)
    else:
        raise ValueError(f"folds.protocol must be 'loso', 'kfold' or 'lodo', got {protocol!r}")

    folds = []
    for k, (name, test_subjects) in enumerate(zip(names, groups, strict=True)):
        rest = [s for s in unique if s not in test_subjects]
        train_s, val_s = _split_validation(
            rest, val_subject_fraction, np.random.default_rng([seed, k])
        )
        folds.append(
            Fold(
                name=name,
                test_subjects=tuple(test_subjects),
                train_idx=np.flatnonzero(np.isin(subjects, train_s)),
                val_idx=np.flatnonzero(np.isin(subjects, val_s)),
                test_idx=np.flatnonzero(np.isin(subjects, test_subjects)),
            )
        )
    return folds


def _pad(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(r) for r in rows))
    idx = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = r
        mask[i, : len(r)] = True
    return idx, mask


def pad_folds(folds: list[Fold]) -> FoldArrays:
    """Stack folds into padded arrays with a leading fold axis."""
    train_idx, _ = _pad([f.train_idx for f in folds])
    val_idx, val_mask = _pad([f.val_idx for f in folds])
    test_idx, test_mask = _pad([f.test_idx for f in folds])
    return FoldArrays(
        names=tuple(f.name for f in folds),
        train_idx=train_idx,
        train_count=np.array([len(f.train_idx) for f in folds], np.int32),
        val_idx=val_idx,
        val_mask=val_mask,
        test_idx=test_idx,
        test_mask=test_mask,
    )


def steps_per_epoch(max_train: int, batch_size: int) -> int:
    """Equal for every fold: the largest fold sees each of its samples once per epoch."""
    return -(-max_train // batch_size)


def epoch_batches(
    key: jax.Array, train_idx: jax.Array, count: jax.Array, steps: int, batch_size: int
) -> jax.Array:
    """One epoch's sample order for one fold: [steps, batch_size] int32 dataset indices.

    train_idx: [max_train] int32 (valid in the first ``count`` slots). A random permutation of
    the valid slots comes first (random-key argsort with padding slots sorted last); positions
    >= count are filled by uniform draws among the valid slots, so a smaller fold tops up its
    epoch from its own training set only.
    """
    max_train = train_idx.shape[0]
    total = steps * batch_size
    perm_key, draw_key = jax.random.split(key)
    slot = jnp.arange(max_train)
    sort_keys = jnp.where(slot < count, jax.random.uniform(perm_key, (max_train,)), 2.0)
    perm = jnp.argsort(sort_keys)  # valid slots first, in random order
    if total > max_train:
        perm = jnp.concatenate([perm, jnp.zeros((total - max_train,), perm.dtype)])
    position = jnp.arange(total)
    extra = jax.random.randint(draw_key, (total,), 0, jnp.maximum(count, 1))
    order = jnp.where(position < count, perm[:total], perm[extra])  # perm[:count] are valid
    return train_idx[order].reshape(steps, batch_size)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (C * n_c) from one fold's training labels [n]; 0 for a class absent there."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, labels.size / (num_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)
