"""MEGC2019 recognition metrics on pooled LOSO predictions (numpy only: no jax, no torch).

Every fold's test predictions are pooled first, then for each class c, from the pooled counts:
``F1_c = 2TP / (2TP + FP + FN)`` and ``recall_c = TP / (TP + FN)``;
``UF1 = mean_c F1_c`` and ``UAR = mean_c recall_c`` (unweighted: every class counts the same,
whatever its size). Accuracy is the plain fraction of correct predictions.

A class with no ground-truth sample in the evaluated part (one source dataset, one fold, ...)
has an undefined recall. Such a class is REPORTED, never silently dropped: it is listed in
``absent_classes``, its recall is ``None``, and UF1/UAR are averaged over the classes PRESENT in
the ground truth of that part (``averaged_over``). This is the MEGC2019 definition
(UAR = 1/C sum_c TP_c / N_c needs N_c > 0) and what the widely used reference evaluation
(``recognition_evaluation`` of the STSTNet/HTNet code) does when the absent class is never
predicted. When an absent class IS predicted, those predictions still cost the true classes
(they are false negatives there) and the absent class reports ``f1 = 0`` and its false
positives, but it does not enter the averages. On the full composite all classes are present in
every source part, so the choice only matters for per-fold numbers and small subsets.

All values are plain Python types (``None`` for undefined), so they serialise to JSON as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AVERAGED_OVER = "classes present in the ground truth of the part"


def _check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(c) for c in class_names)
    if not names:
        raise ValueError("class_names is empty: need at least one class")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    return names


def _as_labels(values, name: str, num_classes: int) -> np.ndarray:
    """Returns a 1-D int64 array of labels in [0, num_classes), or raises naming ``name``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {arr[i]} is outside [0, {num_classes}) "
            f"({bad.size} out-of-range value(s); {num_classes} class names given)"
        )
    return arr


def check_predictions(y_true, y_pred, class_names: Sequence[str]):
    """Validates and converts inputs: returns (y_true int64 [N], y_pred int64 [N], names)."""
    names = _check_class_names(class_names)
    yt = _as_labels(y_true, "y_true", len(names))
    yp = _as_labels(y_pred, "y_pred", len(names))
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} entries but y_pred has {yp.size}")
    if yt.size == 0:
        raise ValueError("no predictions to evaluate (y_true is empty)")
    return yt, yp, names


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C] int64; rows are the true class, columns the predicted class."""
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, -1)


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den > 0 else None


def metrics_from_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """All metrics of :func:`pooled_metrics` from a [C, C] count matrix (rows = true)."""
    names = _check_class_names(class_names)
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion has shape {cm.shape}, expected {(len(names),) * 2}")
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true samples per class
    predicted = cm.sum(axis=0)  # predictions per class
    fp, fn = predicted - tp, support - tp
    per_class = {}
    for c, name in enumerate(names):
        per_class[name] = {
            "support": int(support[c]),
            "predicted": int(predicted[c]),
            "tp": int(tp[c]),
            "fp": int(fp[c]),
            "fn": int(fn[c]),
            # 2TP+FP+FN == 0 only when the class is neither present nor predicted.
            "f1": _ratio(2 * int(tp[c]), 2 * int(tp[c]) + int(fp[c]) + int(fn[c])),
            "recall": _ratio(int(tp[c]), int(support[c])),
            "precision": _ratio(int(tp[c]), int(predicted[c])),
        }
    present = [n for n in names if per_class[n]["support"] > 0]
    n_total = int(cm.sum())
    if n_total == 0:
        raise ValueError("confusion matrix is empty: no predictions to evaluate")
    return {
        "n": n_total,
        "accuracy": float(tp.sum()) / n_total,
        "uf1": float(np.mean([per_class[n]["f1"] for n in present])),
        "uar": float(np.mean([per_class[n]["recall"] for n in present])),
        "confusion": cm.tolist(),
        "per_class": per_class,
        "class_names": list(names),
        "present_classes": present,
        "absent_classes": [n for n in names if per_class[n]["support"] == 0],
        "averaged_over": AVERAGED_OVER,
    }


def pooled_metrics(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """MEGC2019 metrics of pooled predictions.

    Args:
      y_true: int [N] true class indices (all folds pooled).
      y_pred: int [N] predicted class indices, same order.
      class_names: C names; index c of the labels is ``class_names[c]``.

    Returns a JSON-ready dict: ``n``, ``accuracy``, ``uf1``, ``uar``, ``confusion`` ([C][C] ints,
    rows = true class), ``per_class`` ({name: support, predicted, tp, fp, fn, f1, recall,
    precision}; ``None`` where undefined), ``class_names``, ``present_classes``,
    ``absent_classes`` and ``averaged_over`` (see the module docstring).
    """
    yt, yp, names = check_predictions(y_true, y_pred, class_names)
    return metrics_from_confusion(confusion_matrix(yt, yp, len(names)), names)


def per_sample_strings(values, name: str, n: int) -> np.ndarray:
    """Validates a [N] per-prediction field (groups, subjects, ...) and returns it as str [N]."""
    keys = np.asarray(values)
    if keys.ndim != 1 or keys.shape[0] != n:
        raise ValueError(f"{name} must be 1-D, one entry per prediction ({n}), got {keys.shape}")
    return keys.astype(str)


def per_group_metrics(y_true, y_pred, groups, class_names: Sequence[str]) -> dict[str, dict]:
    """:func:`pooled_metrics` within each group (e.g. the source dataset of each sample).

    Args:
      groups: [N] group key per prediction (str-able). Groups come back sorted by key.
    Returns {group: pooled_metrics dict}; a class absent from a group is listed in that group's
    ``absent_classes``.
    """
    yt, yp, names = check_predictions(y_true, y_pred, class_names)
    keys = per_sample_strings(groups, "groups", yt.size)
    return {
        str(g): metrics_from_confusion(
            confusion_matrix(yt[keys == g], yp[keys == g], len(names)), names
        )
        for g in np.unique(keys)
    }


def per_fold_table(y_true, y_pred, folds, class_names: Sequence[str]) -> list[dict]:
    """One row per fold: fold, n, correct, accuracy, uf1, uar, absent_classes.

    Per-fold UF1/UAR are noisy: a LOSO fold holds one subject's few clips (often 1-10) and
    rarely every class, so they average over the classes present in that fold only. The
    headline numbers are the pooled ones; this table is for spotting broken folds.
    """
    groups = per_group_metrics(y_true, y_pred, folds, class_names)
    rows = []
    for fold, m in groups.items():
        correct = int(np.trace(np.asarray(m["confusion"])))
        rows.append(
            {
                "fold": fold,
                "n": m["n"],
                "correct": correct,
                "accuracy": m["accuracy"],
                "uf1": m["uf1"],
                "uar": m["uar"],
                "absent_classes": m["absent_classes"],
            }
        )
    return rows
