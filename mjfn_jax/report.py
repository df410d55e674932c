"""Evaluation report of a LOSO (k-fold, leave-one-dataset-out) run: results.json, report.md,
figures, predictions.csv.

Framework-agnostic (numpy inputs only; neither jax nor torch is imported), so the JAX engine
and the PyTorch baseline write the same files in the same format. The markdown rendering lives
in :mod:`mjfn_jax.report_md`, the figures in :mod:`mjfn_jax.plots`.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import io
import json
import os
import platform
from collections.abc import Mapping, Sequence

import numpy as np

from mjfn_jax import plots, report_md, storage
from mjfn_jax.metrics import (
    check_predictions,
    per_fold_table,
    per_group_metrics,
    per_sample_strings,
    pooled_metrics,
)
from mjfn_jax.report_md import SOURCE_NAMES, fmt, fold_protocol

SCHEMA_VERSION = 1
_METRICS_TEXT = (
    "Metrics follow MEGC2019: the predictions of all folds are pooled, then "
    "UF1 = mean over classes of F1_c = 2TP/(2TP+FP+FN) and UAR = mean over classes of "
    "recall_c = TP/(TP+FN), over the classes present in the ground truth of the evaluated part."
)
PROTOCOL = (
    "Leave-one-subject-out (or k-fold by subject) with a FIXED epoch budget: each fold's model "
    "after its last epoch (or after early stopping on a validation split drawn from its TRAINING "
    "subjects only) predicts its test subject once. No model, epoch or threshold is selected on "
    "the test subject. " + _METRICS_TEXT
)
PROTOCOL_LODO = (
    "Leave-one-dataset-out (folds.protocol='lodo', the cross-dataset protocol): one fold per "
    "source dataset, whose model is trained on the OTHER sources only with a FIXED epoch budget "
    "(or early stopping on a validation split drawn from those training subjects only) and "
    "predicts every clip of the held-out dataset once. No model, epoch or threshold is selected "
    "on the target dataset. The per-source rows are the per-target-dataset results; the headline "
    "pools all targets. " + _METRICS_TEXT
)
# Full MEGC2019 composite (442 clips, 68 subjects, LOSO), as reported by their authors.
PUBLISHED = (
    ("OFF-ApexNet", 0.7196, 0.7096),
    ("STSTNet", 0.7353, 0.7605),
    ("Dual-Inception", 0.7322, 0.7278),
    ("RCN", 0.7432, 0.7190),
    ("EMR", 0.7885, 0.7824),
    ("FeatRef", 0.7838, 0.7832),
    ("HTNet", 0.8603, 0.8475),
)
PUBLISHED_NOTE = (
    "THEIR numbers, copied from the publications, not reproduced by us. Several of these methods "
    "pick each fold's best epoch on the test subject (test-set leakage); reproductions without "
    "that report lower numbers (STSTNet's own PyTorch port 0.7209 / 0.725; EMR about 0.59 F1 "
    "once the leak was removed). Our numbers above use no selection on the test subject."
)
# What else a run's folder may hold, described in the report's file list (report_md.RUN_FILES).
RUN_FILES = (
    "config.json", "dataset.json", "execution.json", "linear_floor.npz", "folds", "seeds",
    "tensorboard", "logs",
)  # fmt: skip
COMPOSITE_SOURCES = {"smic", "casme2", "samm"}
_VERSION_PACKAGES = (
    "numpy", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch",
    "tensorflow-datasets", "opencv-contrib-python-headless", "scikit-learn", "matplotlib",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def json_safe(obj):
    """ConfigDicts, tuples and numpy values -> plain JSON types."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN/inf.
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def _check_probs(probs, n: int, c: int) -> np.ndarray | None:
    if probs is None:
        return None
    p = np.asarray(probs, dtype=np.float64)  # [N, C]
    if p.shape != (n, c):
        raise ValueError(f"probs must have shape [N, C] = {(n, c)}, got {p.shape}")
    if not np.all(np.isfinite(p)):
        bad_rows = np.flatnonzero(~np.all(np.isfinite(p), axis=1))
        raise ValueError(f"probs has non-finite values in rows {bad_rows[:5].tolist()}")
    if np.any(p < -1e-6) or np.any(p > 1 + 1e-6):
        raise ValueError(
            "probs must be probabilities in [0, 1] (the model's 'fused' output is log-probs: "
            "pass np.exp of it)"
        )
    return p


def _data_name(config) -> str | None:
    try:
        return str(config["data"]["name"])
    except (KeyError, TypeError, AttributeError):
        return None


def _default_title(framework: str, config: Mapping | None) -> str:
    try:
        return f"MJFN ({framework}) on {config['data']['name']}"
    except (KeyError, TypeError):
        return f"MJFN ({framework})"


def _history_summary(history: Mapping[str, Sequence[Mapping]]) -> dict:
    """Mean over folds of each fold's LAST epoch record (numeric fields only)."""
    last = [recs[-1] for recs in history.values() if recs]
    keys = sorted({k for r in last for k, v in r.items() if isinstance(v, int | float)})
    return {k: float(np.mean([r[k] for r in last if k in r])) for k in keys}


def _write_predictions_csv(path, names, y_true, y_pred, probs, subjects, sources, clips, folds):
    header = ["clip", "subject", "source", "fold", "label", "pred", "label_name", "pred_name"]
    header += [f"prob_{name}" for name in names] if probs is not None else []
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for i in range(y_true.size):
        row = [clips[i], subjects[i], sources[i], folds[i], int(y_true[i]), int(y_pred[i])]
        row += [names[y_true[i]], names[y_pred[i]]]
        row += [f"{v:.6f}" for v in probs[i]] if probs is not None else []
        writer.writerow(row)
    storage.write_text(path, text.getvalue())


def write_report(
    workdir: str,
    *,
    class_names: Sequence[str],
    y_true,
    y_pred,
    probs,
    subjects,
    sources,
    clips,
    folds,
    history: Mapping[str, Sequence[Mapping]] | None = None,
    config=None,
    timing: Mapping | None = None,
    framework: str = "jax",
    title: str | None = None,
    published: bool | None = None,
    linear_floor: Mapping | None = None,
    selection: Mapping | None = None,
    figures: bool = True,
) -> dict:
    """Writes results.json, report.md, confusion.png, curves.png, predictions.csv into workdir.

    Args:
      class_names: C names; labels index into them.
      y_true, y_pred: int [N] pooled test labels / predictions of every fold (one per clip).
      probs: float [N, C] class probabilities of the predictions, or None.
      subjects, sources, clips, folds: str [N] per prediction (fold = held-out fold name).
      history: {fold: [{"epoch", "loss", "accuracy", optional "val_*"}, ...]} or None.
      config: ConfigDict or dict of the run; timing: dict of timings (seconds) and device info.
      framework: "jax" or "pytorch". title: report title.
      published: include the published composite table; None = only for MEGC2019 composite runs
        that are not leave-one-dataset-out (the published numbers are LOSO ones).
      linear_floor: {"method": str, "y_pred": int [N], optional "probs": [N, C]} of
        mjfn_jax.linear_probe on the same folds, reported beside the headline (with probs and
        the network's probs also their fixed fusion, ``with_linear_floor``); or None.
      selection: what nested model selection chose (mjfn_jax.select), or None.
      figures: draw confusion.png and curves.png (config ``report.figures``); without them,
        figures left by an earlier report in workdir are removed.
    Returns the results dict (as in results.json) with ``files`` naming what was written.
    """
    yt, yp, names = check_predictions(y_true, y_pred, class_names)
    n = yt.size
    p = _check_probs(probs, n, len(names))
    subjects = per_sample_strings(subjects, "subjects", n)
    sources = per_sample_strings(sources, "sources", n)
    clips = per_sample_strings(clips, "clips", n)
    folds = per_sample_strings(folds, "folds", n)
    storage.makedirs(workdir)
    config_dict = json_safe(config) if config is not None else None
    lodo = fold_protocol(config_dict) == "lodo"
    if published is None:
        composite = _data_name(config_dict) == "megc2019" or COMPOSITE_SOURCES <= set(sources)
        published = composite and not lodo
    fold_rows = per_fold_table(yt, yp, folds, names)
    for row in fold_rows:
        row["subjects"] = sorted(set(subjects[folds == row["fold"]]))
    results = {
        "schema_version": SCHEMA_VERSION,
        "title": title or _default_title(framework, config_dict),
        "framework": framework,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "protocol": PROTOCOL_LODO if lodo else PROTOCOL,
        "class_names": list(names),
        "n": int(n),
        "num_folds": len(fold_rows),
        "num_subjects": len(set(subjects)),
        "pooled": pooled_metrics(yt, yp, names),
        "per_source": per_group_metrics(yt, yp, sources, names),
        "per_fold": fold_rows,
        "timing": json_safe(timing) if timing is not None else None,
        "config": config_dict,
        "history_final": json_safe(_history_summary(history)) if history else None,
    }
    if selection is not None:
        results["selection"] = json_safe(selection)
    if linear_floor is not None:
        floor = pooled_metrics(yt, np.asarray(linear_floor["y_pred"]), names)
        results["linear_floor"] = {"method": linear_floor["method"]} | {
            k: floor[k] for k in ("uf1", "uar", "accuracy", "n")
        }
        if p is not None and linear_floor.get("probs") is not None:
            results["with_linear_floor"] = with_linear_floor(yt, p, linear_floor["probs"], names)
    if published:
        results["published"] = {
            "note": PUBLISHED_NOTE,
            "rows": [{"method": m, "uf1": f, "uar": r} for m, f, r in PUBLISHED],
        }
    files = plots.figure_paths(workdir)
    title = results["title"]
    drawn = set()
    if figures:
        plots.plot_confusion(results["pooled"]["confusion"], names, files["confusion"], title)
        drawn.add("confusion")
        if history and plots.plot_curves(history, files["curves"], title) is not None:
            drawn.add("curves")
    for name in sorted(set(files) - drawn):  # a stale figure of an earlier report in workdir
        storage.as_path(files[name]).unlink(missing_ok=True)
        files.pop(name)
    if history:
        files["history"] = os.path.join(workdir, "history.json")
        storage.write_text(files["history"], json.dumps(json_safe(history)))
    files["predictions"] = os.path.join(workdir, "predictions.csv")
    _write_predictions_csv(files["predictions"], names, yt, yp, p, subjects, sources, clips, folds)
    files["report"] = os.path.join(workdir, "report.md")
    files["results"] = os.path.join(workdir, "results.json")
    results["files"] = {k: os.path.basename(v) for k, v in files.items()}
    results["run_files"] = [n for n in RUN_FILES if storage.exists(workdir, n)]
    storage.write_text(files["report"], report_md.render(results))
    storage.write_text(files["results"], json.dumps(results, indent=1))
    return results


def mean_sd(values: Sequence[float]) -> dict:
    """{"mean", "sd"} of runs that differ only in their seed (sample sd, n - 1; 0 for one)."""
    values = np.asarray(values, np.float64)
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(np.mean(values)), "sd": sd}


SEEDS_NOTE = (
    "Every seed trained every fold in ONE run (the (seed, fold) pairs are members of one "
    "parallel axis); seed s's folds, validation subjects and random streams are exactly those "
    "of a run with train.seeds=(s,). Each seed's predictions are pooled over its folds, then "
    "UF1/UAR are averaged over seeds (sample sd, n - 1)."
)


def write_seeds_report(
    workdir: str, per_seed: Mapping[int, Mapping], *, config=None, timing=None
) -> dict:
    """results.json and report.md of a several-seed run: one row per seed (each seed's own
    report lies in ``seeds/<s>/``), mean +- sd over seeds of the pooled and per-source metrics,
    the linear floor. per_seed: {seed: results dict of write_report}."""
    first = next(iter(per_seed.values()))
    keys = ("uf1", "uar", "accuracy")
    rows = [
        {"seed": int(s), "workdir": os.path.join("seeds", str(s))}
        | {k: r["pooled"][k] for k in keys}
        for s, r in per_seed.items()
    ]
    sources = sorted({src for r in per_seed.values() for src in r.get("per_source", {})})
    per_source = {
        src: {
            k: mean_sd([r["per_source"][src][k] for r in per_seed.values()]) for k in ("uf1", "uar")
        }
        for src in sources
        if all(src in r.get("per_source", {}) for r in per_seed.values())
    }
    floors = [r["linear_floor"] for r in per_seed.values() if r.get("linear_floor")]
    results = {
        "schema_version": SCHEMA_VERSION,
        "title": first["title"] + f", {len(per_seed)} seeds",
        "framework": first["framework"],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "protocol": first["protocol"],
        "seeds_note": SEEDS_NOTE,
        "class_names": first["class_names"],
        "n": first["n"],
        "num_folds": first["num_folds"],
        "num_subjects": first["num_subjects"],
        "seeds": rows,
        "mean_sd": {k: mean_sd([row[k] for row in rows]) for k in keys},
        "per_source": per_source,
        "timing": json_safe(timing) if timing is not None else None,
        "config": json_safe(config) if config is not None else None,
    }
    if floors:
        results["linear_floor"] = {"method": floors[0]["method"]} | {
            k: mean_sd([f[k] for f in floors]) for k in ("uf1", "uar")
        }
    fused = [r["with_linear_floor"] for r in per_seed.values() if r.get("with_linear_floor")]
    if fused and len(fused) == len(per_seed):
        results["with_linear_floor"] = {"method": FUSION_METHOD} | {
            k: mean_sd([f[k] for f in fused]) for k in ("uf1", "uar")
        }
    results["seed_ensemble"] = seed_ensemble(per_seed, first["class_names"])
    if first.get("published"):
        results["published"] = first["published"]
    results["files"] = {"report": "report.md", "results": "results.json"}
    storage.write_text(os.path.join(workdir, "report.md"), report_md.render_seeds(results))
    storage.write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
    return results


FUSION_METHOD = "mean probability of the network and the linear floor"


def with_linear_floor(y_true, probs, floor_probs, class_names) -> dict:
    """The pooled metrics of a fixed, untuned late fusion: each clip's class probabilities
    averaged over the network and the linear floor (both fitted on the same fold's training
    subjects only), then argmax. Another model than the network's: reported beside it, never in
    place of it. probs, floor_probs: [N, C] in the same (dataset) order."""
    probs, floor_probs = np.asarray(probs, np.float64), np.asarray(floor_probs, np.float64)
    if probs.shape != floor_probs.shape:
        raise ValueError(f"floor probabilities {floor_probs.shape} != network's {probs.shape}")
    pooled = pooled_metrics(y_true, ((probs + floor_probs) / 2).argmax(-1), class_names)
    return {"method": FUSION_METHOD} | {k: pooled[k] for k in ("uf1", "uar", "accuracy", "n")}


def seed_ensemble(per_seed: Mapping[int, Mapping], class_names) -> dict:
    """The pooled metrics of the seeds' models as one ensemble: each clip's class probabilities
    averaged over the seeds (each seed's fold model that held the clip out), then argmax. A
    different model from any one seed's (several trainings per prediction): reported beside the
    mean +- sd, never in place of it. per_seed: {seed: {"probs" [N, C], "y_true" [N], ...}}, in
    dataset order."""
    probs = np.mean([np.asarray(r["probs"], np.float64) for r in per_seed.values()], axis=0)
    y_true = next(iter(per_seed.values()))["y_true"]
    pooled = pooled_metrics(y_true, probs.argmax(-1), class_names)
    return {"method": f"mean probability of {len(per_seed)} seeds"} | {
        k: pooled[k] for k in ("uf1", "uar", "accuracy")
    }


def format_results_table(results: Mapping) -> str:
    """A short markdown table (pooled + per source) for the CLI and the demo to print."""
    if "seeds" in results:
        return report_md.seeds_table(results)
    pooled = results["pooled"]
    lodo = fold_protocol(results.get("config")) == "lodo"
    lines = [
        f"{results.get('title', 'MJFN')}: {results['n']} clips, {results.get('num_folds', '?')} "
        f"folds, pooled predictions ({results.get('framework', '?')})"
        + ("; leave one dataset out: a source's row is its target-dataset result" if lodo else ""),
        "| part | n | UF1 | UAR | accuracy |",
        "|---|---:|---:|---:|---:|",
        f"| all (pooled) | {pooled['n']} | {fmt(pooled['uf1'])} | {fmt(pooled['uar'])} | "
        f"{fmt(pooled['accuracy'])} |",
    ]
    floor = results.get("linear_floor")
    if floor:
        lines.append(
            f"| linear floor | {floor['n']} | {fmt(floor['uf1'])} | {fmt(floor['uar'])} | "
            f"{fmt(floor['accuracy'])} |"
        )
    fused = results.get("with_linear_floor")
    if fused:
        lines.append(
            f"| network + floor (mean probability) | {fused['n']} | {fmt(fused['uf1'])} | "
            f"{fmt(fused['uar'])} | {fmt(fused['accuracy'])} |"
        )
    for source, m in results.get("per_source", {}).items():
        absent = f" (absent: {', '.join(m['absent_classes'])})" if m["absent_classes"] else ""
        lines.append(
            f"| {SOURCE_NAMES.get(source, source)}{absent} | {m['n']} | {fmt(m['uf1'])} | "
            f"{fmt(m['uar'])} | {fmt(m['accuracy'])} |"
        )
    return "\n".join(lines)


def load_results(workdir_or_file: str) -> dict:
    path = storage.as_path(workdir_or_file)
    if path.is_dir():
        path = path / "results.json"
    return json.loads(path.read_bytes().decode())
