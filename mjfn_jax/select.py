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
With several ``train.seeds`` every candidate trains all seeds in one run and the choice is
made per (seed, fold): each seed's report in ``seeds/<s>/``, the mean +- sd at the top.
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
    candidate.report.linear_floor = False  # the same folds: the selection's report shows it
    return apply_overrides(candidate, split_overrides(text))


def split_overrides(text: str) -> list[str]:
    """'a=1, b=(2, 3)' -> ['a=1', 'b=(2, 3)']: commas inside brackets belong to a value."""
    text, parts, depth, start = str(text), [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


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


def choose(runs: list[dict], early_stopping: list[bool], metric: str) -> dict[str, dict]:
    """{fold: {"candidate": index of the chosen run, "scores": every run's score}} from the
    runs' histories; early_stopping[i]: whether run i kept its best-on-validation model (a
    candidate may set it). Ties go to the first candidate."""
    pick = METRICS[metric]
    chosen = {}
    for fold in runs[0]["history"]:
        scores = [
            _score(run["history"][fold], metric, stops)
            for run, stops in zip(runs, early_stopping, strict=True)
        ]
        chosen[fold] = {"candidate": scores.index(pick(scores)), "scores": scores}
    return chosen


def train_candidates(config, workdir: str, dataset, train_fn) -> list[dict]:
    """Train every candidate: ``train_fn(candidate config, workdir/candidates/<i>, dataset)
    -> results`` (a one-seed run's results, or a several-seed run's with "per_seed")."""
    runs, candidates = [], candidate_configs(config)
    for i, candidate in enumerate(candidates):
        log.info("select: candidate %d of %d: %s", i + 1, len(candidates),
                 config.select.candidates[i])  # fmt: skip
        runs.append(train_fn(candidate, os.path.join(workdir, "candidates", str(i)), dataset))
    return runs


def choose_and_pool(config, runs: list[dict]) -> tuple[dict, dict]:
    """(pooled predictions, selection record) of one seed: each fold keeps the candidate with
    the best ``select.metric`` on its validation subjects. runs: one seed's results per
    candidate (``train_and_evaluate``'s dict: history, probs, folds, y_true, pooled)."""
    stops = [c.train.early_stopping_patience > 0 for c in candidate_configs(config)]
    per_fold = choose(runs, stops, config.select.metric)
    folds = runs[0]["folds"]  # [N] fold of each clip, dataset order (the same in every run)
    probs = np.stack([run["probs"] for run in runs])  # [K, N, C]
    pick = np.asarray([per_fold[f]["candidate"] for f in folds])
    pooled = {
        "y_true": runs[0]["y_true"],
        "probs": probs[pick, np.arange(len(folds))],
        "folds": folds,
        "history": {f: runs[c["candidate"]]["history"][f] for f, c in per_fold.items()},
    }
    pooled["y_pred"] = np.argmax(pooled["probs"], axis=-1)
    selection = {
        "metric": config.select.metric,
        "candidates": [
            {
                "overrides": str(text),
                "chosen_by_folds": sum(c["candidate"] == i for c in per_fold.values()),
                "test_uf1_alone_not_used": run["pooled"]["uf1"],
            }  # fmt: skip
            for i, (text, run) in enumerate(zip(config.select.candidates, runs, strict=True))
        ],
        "per_fold": per_fold,
    }
    return pooled, selection
