"""write_report: every file written, contents consistent with the inputs, labelled sections."""

import csv
import json
import os

import numpy as np
import pytest

from mjfn_jax.metrics import pooled_metrics
from mjfn_jax.report import PUBLISHED, format_results_table, load_results, write_report

NAMES = ("negative", "positive", "surprise")


def _run(n_per_subject=4, seed=0):
    """A fake pooled LOSO run over a 3-source composite: 3 subjects per source."""
    rng = np.random.default_rng(seed)
    sources = np.repeat(["smic", "casme2", "samm"], 3 * n_per_subject)
    subjects = np.array([f"{s}/sub{i // n_per_subject % 3}" for i, s in enumerate(sources)])
    n = sources.size
    y_true = rng.integers(0, 3, n)
    y_true[sources == "samm"] = rng.integers(0, 2, (sources == "samm").sum())  # no SAMM surprise
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    history = {
        s: [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.3 + 0.05 * e} for e in range(1, 6)]
        for s in sorted(set(subjects))
    }
    return dict(
        class_names=NAMES,
        y_true=y_true,
        y_pred=probs.argmax(axis=1),
        probs=probs,
        subjects=subjects,
        sources=sources,
        clips=np.array([f"clip{i:03d}" for i in range(n)]),
        folds=subjects,
        history=history,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("report"))
    run = _run()
    results = write_report(
        workdir, **run, timing={"train_s": 1.5}, config={"data": {"name": "megc2019"}}
    )
    return workdir, run, results


def test_all_files_written_and_nonempty(written):
    workdir, _, results = written
    for name in ("results.json", "report.md", "confusion.png", "curves.png", "predictions.csv"):
        path = os.path.join(workdir, name)
        assert os.path.getsize(path) > 0, name
    for png in ("confusion.png", "curves.png"):
        with open(os.path.join(workdir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(results["files"].values()) >= {"results.json", "report.md", "predictions.csv"}


def test_results_json_matches_inputs(written):
    workdir, run, results = written
    loaded = load_results(workdir)
    assert loaded == json.loads(json.dumps(results))
    expected = pooled_metrics(run["y_true"], run["y_pred"], NAMES)
    assert loaded["pooled"]["uf1"] == pytest.approx(expected["uf1"])
    assert loaded["pooled"]["confusion"] == expected["confusion"]
    assert set(loaded["per_source"]) == {"smic", "casme2", "samm"}
    assert loaded["per_source"]["samm"]["absent_classes"] == ["surprise"]
    assert sum(f["n"] for f in loaded["per_fold"]) == loaded["n"] == run["y_true"].size
    assert loaded["num_folds"] == 9 and loaded["framework"] == "jax"
    assert loaded["timing"] == {"train_s": 1.5}
    assert "numpy" in loaded["versions"] and loaded["date"].startswith("20")
    assert loaded["history_final"]["loss"] == pytest.approx(0.2)


def test_predictions_csv_rows(written):
    workdir, run, _ = written
    with open(os.path.join(workdir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == run["y_true"].size
    assert [int(r["label"]) for r in rows] == run["y_true"].tolist()
    assert [int(r["pred"]) for r in rows] == run["y_pred"].tolist()
    assert rows[5]["clip"] == "clip005" and rows[5]["fold"] == run["folds"][5]
    probs = np.array([[float(r[f"prob_{c}"]) for c in NAMES] for r in rows])
    np.testing.assert_allclose(probs, run["probs"], atol=1e-6)


def test_report_md_sections_and_published_marked_theirs(written):
    workdir, run, results = written
    text = open(os.path.join(workdir, "report.md")).read()
    assert f"| UF1 | {results['pooled']['uf1']:.4f} |" in text
    for heading in ("## Protocol", "## Per source dataset", "## Confusion matrix", "## Per fold"):
        assert heading in text
    assert "| SAMM |" in text and "| CASME II |" in text
    pub = text.index("THEIRS, NOT OURS")
    assert text.index("## Headline") < pub  # ours first, theirs in a separate later section
    for method, uf1, _ in PUBLISHED:
        assert f"| {method} | {uf1:.4f} |" in text[pub:]
    assert "best epoch on the test subject" in text[pub:]


def test_published_table_only_for_composite_runs(tmp_path):
    run = _run()
    run["sources"] = np.full(run["y_true"].size, "synthetic")
    results = write_report(str(tmp_path), **run, config={"data": {"name": "synthetic"}})
    assert "published" not in results
    assert "THEIRS" not in (tmp_path / "report.md").read_text()


def test_leave_one_dataset_out_report(tmp_path):
    """folds.protocol='lodo': the protocol says so, the per-source rows are the per-target
    results, the per-fold table counts subjects, and the (LOSO) published table is left out."""
    run = _run()
    run["folds"] = np.array([f"lodo__{s}" for s in run["sources"]])
    config = {"data": {"name": "megc2019"}, "folds": {"protocol": "lodo"}}
    results = write_report(str(tmp_path), **run, config=config)
    assert results["protocol"].startswith("Leave-one-dataset-out") and "published" not in results
    text = (tmp_path / "report.md").read_text()
    assert "## Per target dataset (leave one dataset out)" in text and "THEIRS" not in text
    samm = results["per_source"]["samm"]
    assert f"| SAMM | {samm['n']} | {samm['uf1']:.4f} | {samm['uar']:.4f} |" in text
    assert "| lodo__samm | 3 subjects | 12 |" in text
    assert "leave one dataset out" in format_results_table(results)
    loso = write_report(str(tmp_path / "loso"), **_run(), config={"folds": {"protocol": "loso"}})
    assert loso["protocol"].startswith("Leave-one-subject-out")
    assert "leave one dataset out" not in format_results_table(loso)


def test_without_history_or_probs(tmp_path):
    run = _run()
    run.update(history=None, probs=None)
    results = write_report(str(tmp_path), **run, framework="pytorch")
    assert not (tmp_path / "curves.png").exists() and "curves" not in results["files"]
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0]
    assert "prob_" not in header and results["framework"] == "pytorch"


def test_format_results_table(written):
    _, _, results = written
    table = format_results_table(results)
    assert f"| all (pooled) | {results['n']} | {results['pooled']['uf1']:.4f} |" in table
    assert "SAMM (absent: surprise)" in table and "| SMIC |" in table


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("probs", "3x3", r"shape \[N, C\]"),
        ("probs", "logprobs", r"log-probs"),
        ("probs", "nan", "non-finite values in rows"),
        ("subjects", ["a"], "subjects must be 1-D"),
        ("y_pred", "short", "entries but y_pred has"),
    ],
)
def test_input_validation(tmp_path, field, value, match):
    run = _run()
    n = run["y_true"].size
    if value == "3x3":
        value = np.full((3, 3), 1 / 3)
    elif value == "logprobs":
        value = np.log(run["probs"])
    elif value == "nan":
        value = run["probs"].copy()
        value[2, 1] = np.nan
    elif value == "short":
        value = run["y_pred"][:-1]
    run[field] = value
    with pytest.raises(ValueError, match=match):
        write_report(str(tmp_path), **run)
    assert n > 3


def test_non_finite_history_gives_valid_json_and_no_stale_curves(tmp_path):
    run = _run()
    first_fold = next(iter(run["history"]))
    run["history"][first_fold][-1]["loss"] = float("nan")
    write_report(str(tmp_path), **run)
    text = (tmp_path / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert (tmp_path / "curves.png").exists()
    run["history"] = None
    write_report(str(tmp_path), **run)  # same workdir, now without curves
    assert not (tmp_path / "curves.png").exists()


def test_a_report_without_figures_leaves_none_and_links_none(tmp_path):
    """report.figures=False (the smoke configs'): no PNG written, an earlier report's removed,
    none named in results.json or linked from report.md; the rest of the report as with them."""
    with_figures = write_report(str(tmp_path), **_run())
    assert {"confusion", "curves"} <= set(with_figures["files"])
    results = write_report(str(tmp_path), **_run(), figures=False)
    assert not list(tmp_path.glob("*.png"))
    assert not {"confusion", "curves"} & set(results["files"])
    assert ".png" not in (tmp_path / "report.md").read_text()
    assert results["pooled"] == with_figures["pooled"]
    assert results["per_fold"] == with_figures["per_fold"]


def test_report_and_metrics_import_neither_jax_nor_torch():
    """The PyTorch baseline writes its report with this code: it must not pull in jax."""
    import subprocess
    import sys

    code = (
        "import sys; import mjfn_jax.report, mjfn_jax.metrics; "
        "bad = [m for m in ('jax', 'torch', 'flax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_the_timing_table_is_read_by_a_person_and_the_file_list_is_complete(tmp_path):
    """No raw JSON in the timing table's cells: phases and compiles on rows of their own, the
    strategy choice in words; the file list names the run's records that exist."""
    from mjfn_jax.report_md import timing_rows

    timing = {
        "wall_s": 12.5, "samples_per_s": 80.0, "phases_s": {"init": 1.0, "training calls": 9.0},
        "compile_by_program": {"the init": 0.5}, "mesh": {"fold": 2}, "strategy": "vmap",
        "auto": {"choice": {"strategy": "vmap", "loop": "steps", "fold_group_size": 2},
                 "cached": True},
    }  # fmt: skip
    rows = dict(map(tuple, timing_rows(timing)))
    assert rows["wall_s"] == "12.50 s" and rows["samples_per_s"] == "80"
    assert rows["phase: training calls"] == "9.00 s" and rows["compile: the init"] == "0.50 s"
    assert rows["mesh"] == "fold 2" and "cached" in rows["strategy choice (auto)"]
    assert not [v for v in rows.values() if "{" in v or "[" in v]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "folds").mkdir()
    write_report(str(tmp_path), **_run(), timing=timing)
    report = (tmp_path / "report.md").read_text()
    assert "| phase: init | 1.00 s |" in report
    line = next(ln for ln in report.splitlines() if ln.startswith("The run's folder also holds"))
    assert "`config.json` (the run's config)" in line and "`folds/`" in line
    assert "dataset.json" not in line  # only what is there
