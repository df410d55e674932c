"""A run's results: each seed's saved fold predictions pooled in dataset order, the linear
floor fitted on the same folds, and the reports written (mjfn_jax.report) — one per seed in its
one-seed workdir, and with several seeds the top-level one (per-seed rows, mean +- sd).
"""

from __future__ import annotations

import jax
import numpy as np

from mjfn_jax.checkpoint import FoldCheckpointer
from mjfn_jax.config_io import config_to_dict
from mjfn_jax.linear_probe import run_floor
from mjfn_jax.report import write_report, write_seeds_report
from mjfn_jax.units import Units, one_seed_config, training_seeds


def pooled_predictions(dataset, fold_names, ckpts) -> dict:
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


def seed_predictions(dataset, units: Units, seed: int) -> dict:
    """The pooled predictions of one seed's finished units, read back from their folders."""
    members = units.of_seed(seed)
    names = [units.fold_names[u] for u in members]
    readers = [FoldCheckpointer(units.roots[u], units.fold_names[u]) for u in members]
    return pooled_predictions(dataset, names, readers)


def write_reports(config, workdir: str, dataset, units: Units, timing: dict, pooled_of) -> dict:
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
    summary = write_seeds_report(workdir, per_seed, config=config_to_dict(config), timing=timing)
    return summary | {"per_seed": per_seed, "timing": timing}


def _report(config, workdir, dataset, arrays, pooled, timing, selection, floor_memo) -> dict:
    """Write the report of pooled predictions (mjfn_jax.report) and return the results.
    floor_memo: see linear_probe.run_floor."""
    floor = None
    if config.report.linear_floor:
        floor = run_floor(config, workdir, dataset, arrays, floor_memo)
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
        figures=config.report.figures,
    )
    return results | pooled | {"timing": timing}
