"""report.md rendering of a results dict (as written to results.json by mjfn_jax.report)."""

from __future__ import annotations

from collections.abc import Mapping

SOURCE_NAMES = {"smic": "SMIC", "casme2": "CASME II", "samm": "SAMM", "synthetic": "synthetic"}


def fmt(x, spec: str = "{:.4f}") -> str:
    """A metric or a time for a table: ``spec``-formatted, "n/a" for None."""
    return "n/a" if x is None else spec.format(x)


def _table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _headline(r: Mapping) -> list[str]:
    p = r["pooled"]
    out = ["## Headline (pooled over all folds)", ""]
    out += _table(
        ["metric", "value"],
        [["UF1", fmt(p["uf1"])], ["UAR", fmt(p["uar"])], ["accuracy", fmt(p["accuracy"])],
         ["clips", p["n"]], ["folds", r["num_folds"]], ["subjects", r["num_subjects"]]],
    )  # fmt: skip
    if p["absent_classes"]:
        out += [f"Classes with no test sample (excluded from UF1/UAR): {p['absent_classes']}", ""]
    floor = r.get("linear_floor")
    if floor:
        out += [
            f"**Linear floor** ({floor['method']}): UF1 {fmt(floor['uf1'])}, UAR "
            f"{fmt(floor['uar'])}, accuracy {fmt(floor['accuracy'])}. A network that does not "
            "beat it has learnt nothing a linear model of its input would not.",
            "",
        ]
    fused = r.get("with_linear_floor")
    if fused:
        out += [
            f"**Network + linear floor** ({fused['method']}; a fixed, untuned fusion of the two "
            f"models of each fold, another model than the network's): UF1 {fmt(fused['uf1'])}, "
            f"UAR {fmt(fused['uar'])}, accuracy {fmt(fused['accuracy'])}.",
            "",
        ]
    return out


def _per_class(r: Mapping) -> list[str]:
    rows = [
        [name, c["support"], c["predicted"], fmt(c["f1"]), fmt(c["recall"]), fmt(c["precision"])]
        for name, c in r["pooled"]["per_class"].items()
    ]
    out = ["## Per class (pooled)", ""]
    return out + _table(["class", "support", "predicted", "F1", "recall", "precision"], rows)


def fold_protocol(config: Mapping | None) -> str:
    """A run's ``folds.protocol`` from its config dict ('loso' when the config does not say)."""
    try:
        return str(config["folds"]["protocol"])
    except (KeyError, TypeError):
        return "loso"


def _lodo(r: Mapping) -> bool:
    """Whether the run left one source dataset out per fold."""
    return fold_protocol(r.get("config")) == "lodo"


def _per_source(r: Mapping) -> list[str]:
    rows = []
    for source, m in r["per_source"].items():
        absent = ", ".join(m["absent_classes"]) or "-"
        name = SOURCE_NAMES.get(source, source)
        rows.append([name, m["n"], fmt(m["uf1"]), fmt(m["uar"]), fmt(m["accuracy"]), absent])
    out = ["## Per source dataset", ""]
    if _lodo(r):
        out = ["## Per target dataset (leave one dataset out)", ""]
        out += [
            "Each row: the model trained on the other sources, tested on this one (the "
            "per-target-dataset results of cross-dataset micro-expression papers).",
            "",
        ]
    header = ["target" if _lodo(r) else "source", "n", "UF1", "UAR", "accuracy"]
    out += _table([*header, "absent classes"], rows, "lrrrrl")
    return out + ["UF1/UAR of a source average over the classes present in that source.", ""]


def _confusion(r: Mapping) -> list[str]:
    names = r["class_names"]
    cm = r["pooled"]["confusion"]
    rows = [[f"**{names[i]}**", *cm[i], sum(cm[i])] for i in range(len(names))]
    out = ["## Confusion matrix (pooled; rows = true, columns = predicted)", ""]
    out += _table(["true \\ predicted", *names, "support"], rows)
    if "confusion" in r.get("files", {}):
        out += [f"![confusion matrix]({r['files']['confusion']})", ""]
    return out


def _per_fold(r: Mapping) -> list[str]:
    note = (
        "Per-fold UF1/UAR are noisy (a fold holds one subject's few clips, rarely every class) "
        "and average over the classes present in that fold only; the headline is the pooled "
        "figure."
    )
    if _lodo(r):
        note = "One fold per held-out source dataset (its metrics are in the table above)."
    out = ["## Per fold", "", note, ""]
    # LOSO folds are named after their one subject: a subjects column only for k-fold runs
    # (and a count for leave-one-dataset-out runs, whose fold holds a whole source).
    loso = all(len(f["subjects"]) == 1 for f in r["per_fold"])
    lodo = _lodo(r)

    def subjects(f: Mapping) -> str:
        return f"{len(f['subjects'])} subjects" if lodo else ", ".join(f["subjects"])

    rows = [
        [f["fold"], *([] if loso else [subjects(f)]), f["n"], f["correct"],
         fmt(f["accuracy"]), fmt(f["uf1"]), ", ".join(f["absent_classes"]) or "-"]
        for f in r["per_fold"]
    ]  # fmt: skip
    header = ["fold", *([] if loso else ["subjects"]), "n", "correct", "accuracy"]
    header += ["UF1" if lodo else "UF1 (noisy)", "absent classes"]
    return out + _table(header, rows, "l" + ("" if loso else "l") + "rrrrl")


RUN_FILES = {  # what each of a run's other files and folders is (mjfn_jax.report.RUN_FILES)
    "config.json": "the run's config",
    "dataset.json": "the dataset it trained on",
    "execution.json": "how it executed: strategy, loop, platform",
    "linear_floor.npz": "the linear floor's predictions and per-fold probes",
    "folds": "each fold's model (model/, Orbax), test predictions and history",
    "seeds": "each seed's own one-seed workdir",
    "tensorboard": "per-epoch curves of every unit: tensorboard --logdir",
    "logs": "the logs of processes other than 0",
}


def timing_rows(timing: Mapping) -> list[list[str]]:
    """A run's timing record as table rows a person reads: seconds per phase and per compiled
    program on rows of their own, the strategy choice in words, the rest as values (nested
    records beyond these are in results.json)."""
    rows = []
    for key, value in timing.items():
        if key in ("phases_s", "compile_by_program") and isinstance(value, Mapping):
            what = "phase" if key == "phases_s" else "compile"
            for name, seconds in sorted(value.items(), key=lambda kv: -kv[1]):
                rows.append([f"{what}: {name}", f"{seconds:.2f} s"])
        elif key == "auto":
            rows.append(["strategy choice (auto)", _auto_text(value)])
        elif key == "mesh" and isinstance(value, Mapping):
            rows.append(["mesh", ", ".join(f"{axis} {size}" for axis, size in value.items())])
        elif key == "candidates" and isinstance(value, list):
            rows.append(["candidates (nested selection)", f"{len(value)} runs, in results.json"])
        elif isinstance(value, Mapping | list):
            rows.append([key, "in results.json"])
        elif isinstance(value, float):
            seconds = key.endswith("_s") and not key.endswith("_per_s")
            rows.append([key, f"{value:.2f} s" if seconds else f"{value:.4g}"])
        else:
            rows.append([key, "n/a" if value is None else str(value)])
    return rows


def _auto_text(auto: Mapping | None) -> str:
    """How parallel.strategy='auto' chose, in words."""
    if not auto:
        return "not used (the strategy was given)"
    choice = auto.get("choice")
    what = (
        f"{choice['strategy']}, loop {choice['loop']}, {choice['fold_group_size']} folds a group"
        if choice
        else "the platform rule"
    )
    if auto.get("cached"):
        return f"{what} (cached from an earlier trial)"
    if "reason" in auto:
        return f"{what} ({auto['reason']})"
    return f"{what} (timed trial, {auto.get('trial_s', 0):.1f} s)"


def _curves_and_timing(r: Mapping) -> list[str]:
    out = []
    if "curves" in r.get("files", {}):
        out += ["## Training curves", "", f"![training curves]({r['files']['curves']})", ""]
    if r.get("history_final"):
        rows = [[k, fmt(v)] for k, v in r["history_final"].items() if k != "epoch"]
        out += ["Mean over folds of the last epoch's training record:", ""]
        out += _table(["field", "value"], rows)
    if r.get("timing"):
        out += ["## Timing", ""]
        out += _table(["field", "value"], timing_rows(r["timing"]), "ll")
    return out


def _published(r: Mapping) -> list[str]:
    pub = r.get("published")
    if not pub:
        return []
    out = [
        "## Published results on the full MEGC2019 composite: THEIRS, NOT OURS",
        "",
        f"> {pub['note']}",
        "",
    ]
    rows = [[row["method"], f"{row['uf1']:.4f}", f"{row['uar']:.4f}"] for row in pub["rows"]]
    return out + _table(["method (published)", "UF1", "UAR"], rows)


def _selection(r: Mapping) -> list[str]:
    sel = r.get("selection")
    if not sel:
        return []
    text = (
        f"Each fold chose the candidate with the best `{sel['metric']}` on its validation "
        "subjects (drawn from its own training subjects); the chosen candidate's model "
        "predicted the test subject once. The test UF1 each candidate would give if every "
        "fold took it is shown for completeness; it played no part in the choice."
    )
    out = ["## Nested model selection", "", text, ""]
    rows = [[f"`{c['overrides']}`", c["chosen_by_folds"], fmt(c["test_uf1_alone_not_used"])]
            for c in sel["candidates"]]  # fmt: skip
    return out + _table(["candidate", "chosen by folds", "test UF1 alone (not used)"], rows)


def _preamble(r: Mapping) -> list[str]:
    """Title, framework, date, versions and the protocol statement."""
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    return [
        f"# {r['title']}",
        "",
        f"Framework: {r['framework']}. Date (UTC): {r['date']}. Versions: {versions}.",
        "",
        "## Protocol",
        "",
        r["protocol"],
        "",
    ]


def render(r: Mapping) -> str:
    out = _preamble(r)
    for section in (_headline, _per_class, _per_source, _confusion, _per_fold):
        out += section(r)
    for section in (_selection, _curves_and_timing, _published):
        out += section(r)
    files = ", ".join(f"`{v}`" for v in r.get("files", {}).values())
    out += ["## Files", "", f"Written beside this report: {files}."]
    run = [f"`{n}{'/' if '.' not in n else ''}` ({RUN_FILES[n]})" for n in r.get("run_files", ())]
    out += [f"The run's folder also holds: {', '.join(run)}." if run else "", ""]
    return "\n".join(out)


def _pm(m: Mapping) -> str:
    return f"{m['mean']:.4f} +- {m['sd']:.4f}"


def seeds_table(r: Mapping) -> str:
    """The per-seed rows and the mean +- sd of a several-seed run (results of
    mjfn_jax.report.write_seeds_report), as a markdown table."""
    lines = [
        f"{r['title']}: {r['n']} clips, {r['num_folds']} folds per seed, "
        f"pooled predictions per seed ({r['framework']})",
    ]
    rows = [[row["seed"], fmt(row["uf1"]), fmt(row["uar"]), fmt(row["accuracy"]),
             f"`{row['workdir']}`"] for row in r["seeds"]]  # fmt: skip
    m = r["mean_sd"]
    rows.append(["**mean +- sd**", f"**{_pm(m['uf1'])}**", _pm(m["uar"]), _pm(m["accuracy"]), ""])
    ensemble = r.get("seed_ensemble")
    if ensemble:  # another model (several trainings per prediction): beside, not instead
        rows.append([f"ensemble ({ensemble['method']})", fmt(ensemble["uf1"]),
                     fmt(ensemble["uar"]), fmt(ensemble["accuracy"]), ""])  # fmt: skip
    floor = r.get("linear_floor")
    if floor:
        rows.append([f"linear floor ({floor['method']})", _pm(floor["uf1"]), _pm(floor["uar"]),
                     "", ""])  # fmt: skip
    fused = r.get("with_linear_floor")
    if fused:
        rows.append(["network + floor (mean probability)", _pm(fused["uf1"]), _pm(fused["uar"]),
                     "", ""])  # fmt: skip
    for source, v in r.get("per_source", {}).items():
        rows.append([SOURCE_NAMES.get(source, source), _pm(v["uf1"]), _pm(v["uar"]), "", ""])
    table = _table(["seed", "UF1", "UAR", "accuracy", "report"], rows, "lrrrl")
    return "\n".join(lines + table).rstrip()


def render_seeds(r: Mapping) -> str:
    """report.md of a several-seed run."""
    out = _preamble(r) + [
        r["seeds_note"],
        "",
        "## Seeds",
        "",
        seeds_table(r),
        "",
        "Each seed's full report (per class, per fold, confusion, curves) is in its folder.",
        "",
    ]
    out += _published(r)
    if r.get("timing"):
        out += ["## Timing (the whole run, every seed)", ""]
        out += _table(["field", "value"], timing_rows(r["timing"]), "ll")
    return "\n".join(out)
