"""Nested model selection: hyperparameters chosen per fold on that fold's validation subjects.

Tuning on the LOSO test subjects (the best epoch, learning rate or augmentation on the test
scores) is leakage. The honest way: every fold holds out validation subjects drawn from its own
TRAINING subjects (``folds.val_subject_fraction``), each candidate setting is trained on the
rest, and the fold keeps the candidate with the best validation score; its model predicts the
test subject once. Nothing about the test subject enters the choice.

``select.candidates`` lists the settings as override strings, e.g.::

    --config.select.candidates='("train.learning_rate=1e-3",
                                 "train.learning_rate=3e-3,train.weight_decay=1e-3")'

Each candidate is a complete run in ``workdir/candidates/<i>/`` (resumable, with its own
report); the selection pools, per fold, the test predictions of the chosen candidate (the
"keep the selected model" variant: no retraining on the validation subjects) and writes the
report to ``workdir``, with what each fold chose and why (``results.json`` "selection").
The score is ``select.metric`` over the fold's validation subjects: 'val_loss' (lowest) or
'val_accuracy' (highest), taken at the epoch whose model predicts the test subject (the best
one with early stopping, else the last).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from mjfn_jax.config_io import apply_overrides

log = logging.getLogger(__name__)

METRICS = {"val_loss": min, "val_accuracy": max}


def candidate_config(config, text: str):
    """``config`` with one ``select.candidates`` entry's overrides applied (no selection)."""
    candidate = config.copy_and_resolve_references()
    candidate.select.candidates = ()
    overrides = [part.strip() for part in str(text).split(",") if part.strip()]
    return apply_overrides(candidate, overrides)


def candidate_configs(config) -> list:
    """One config per ``select.candidates`` entry."""
    return [candidate_config(config, text) for text in config.select.candidates]


def _score(history: list[dict], metric: str, early_stopping: bool) -> float:
    """The validation score of the model a fold's run used for its test predictions."""
    values = [record[metric] for record in history if metric in record]
    if not values:
        raise ValueError(f"a fold's history has no {metric!r}: select needs validation subjects")
    if early_stopping:  # the kept model is the best-on-validation-loss one
        losses = [record["val_loss"] for record in history]
        return values[int(np.argmin(losses))]
    return values[-1]


def choose(runs: list[dict], metric: str, early_stopping: bool) -> dict[str, int]:
    """{fold: index of the chosen run} from the runs' histories (ties: the first candidate)."""
    pick = METRICS[metric]
    chosen = {}
    for fold in runs[0]["history"]:
        scores = [_score(run["history"][fold], metric, early_stopping) for run in runs]
        best = pick(scores)
        chosen[fold] = scores.index(best)
    return chosen


def select_and_evaluate(config, workdir: str, dataset, train_fn, write_fn) -> dict:
    """Train every candidate (``train_fn(config, workdir, dataset) -> results``), choose per
    fold, pool the chosen predictions and write the report (``write_fn(pooled, selection)``).
    Returns write_fn's results."""
    runs = []
    for i, candidate in enumerate(candidate_configs(config)):
        log.info("select: candidate %d of %d: %s", i + 1, len(config.select.candidates),
                 config.select.candidates[i])  # fmt: skip
        runs.append(train_fn(candidate, os.path.join(workdir, "candidates", str(i)), dataset))
    metric = config.select.metric
    chosen = choose(runs, metric, config.train.early_stopping_patience > 0)
    folds = runs[0]["folds"]  # [N] fold of each clip, dataset order (the same in every run)
    probs = np.stack([run["probs"] for run in runs])  # [K, N, C]
    pick = np.asarray([chosen[f] for f in folds])
    pooled = {
        "y_true": runs[0]["y_true"],
        "probs": probs[pick, np.arange(len(folds))],
        "folds": folds,
        "history": {f: runs[chosen[f]]["history"][f] for f in chosen},
    }
    pooled["y_pred"] = np.argmax(pooled["probs"], axis=-1)
    selection = {
        "metric": metric,
        "candidates": [
            {
                "overrides": str(text),
                "chosen_by_folds": sum(v == i for v in chosen.values()),
                "test_uf1_alone_not_used": run["pooled"]["uf1"],
            }  # fmt: skip
            for i, (text, run) in enumerate(zip(config.select.candidates, runs, strict=True))
        ],
        "per_fold": {
            fold: {
                "candidate": i,
                "scores": [
                    _score(run["history"][fold], metric, config.train.early_stopping_patience > 0)
                    for run in runs
                ],
            }
            for fold, i in chosen.items()
        },
    }
    return write_fn(pooled, selection)
