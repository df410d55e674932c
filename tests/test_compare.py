"""mjfn-compare: one table across finished runs whose figures are each run's results.json."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from mjfn_jax.compare import main
from mjfn_jax.config import base_config
from mjfn_jax.config_io import config_to_dict
from mjfn_jax.report import write_report, write_seeds_report

NAMES = ("negative", "positive", "surprise")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finished_run(workdir, seed: int, *, learning_rate: float = 1e-3, floor: bool = True) -> dict:
    """What a finished one-seed run writes (mjfn_jax.report.write_report), on 2 sources."""
    rng = np.random.default_rng(seed)
    n = 60
    y_true = np.arange(n) % 3
    probs = rng.dirichlet(np.ones(3), size=n)
    probs[np.arange(n), y_true] += rng.uniform(0, 1.2, n)  # better than chance, not perfect
    probs /= probs.sum(-1, keepdims=True)
    config = base_config()
    config.seed, config.train.learning_rate = seed, learning_rate
    sources = np.where(np.arange(n) < 30, "casme2", "samm")
    subjects = np.asarray([f"{s}/s{i % 6}" for i, s in enumerate(sources)])
    floor_probs = np.roll(probs, 1, axis=0)
    results = write_report(
        str(workdir), class_names=NAMES, y_true=y_true, y_pred=probs.argmax(-1), probs=probs,
        subjects=subjects, sources=sources, clips=np.asarray([f"c{i}" for i in range(n)]),
        folds=subjects, config=config_to_dict(config),
        linear_floor={"method": "logistic", "y_pred": floor_probs.argmax(-1), "probs": floor_probs}
        if floor else None,
    )  # fmt: skip
    return results | {"y_true": y_true, "probs": probs}  # as train_and_evaluate returns


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-seed run and a three-seed run that differs in its learning rate."""
    root = tmp_path_factory.mktemp("runs")
    one = finished_run(root / "one", 0)
    per_seed = {s: finished_run(root / "three" / "seeds" / str(s), s, learning_rate=2e-3)
                for s in (0, 1, 2)}  # fmt: skip
    config = dict(
        per_seed[0]["config"], train=dict(per_seed[0]["config"]["train"], seeds=[0, 1, 2])
    )
    three = write_seeds_report(str(root / "three"), per_seed, config=config)
    return root, one, per_seed, three


def test_the_table_holds_each_runs_results(runs, capsys, tmp_path):
    root, one, per_seed, three = runs
    out, table = tmp_path / "t.md", tmp_path / "t.csv"
    assert (
        main([str(root / "one"), str(root / "three"), "--out", str(out), "--csv", str(table)]) == 0
    )
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    rows = {r["run"]: r for r in csv.DictReader(open(table))}
    first, second = rows[str(root / "one")], rows[str(root / "three")]
    assert float(first["uf1_mean"]) == one["pooled"]["uf1"] and float(first["uf1_sd"]) == 0
    assert float(second["uf1_mean"]) == pytest.approx(three["mean_sd"]["uf1"]["mean"], abs=1e-12)
    assert float(second["uf1_sd"]) == pytest.approx(three["mean_sd"]["uf1"]["sd"], abs=1e-12)
    assert second["seeds"] == "0 1 2"
    assert float(first["floor_uf1"]) == one["linear_floor"]["uf1"]
    assert float(first["casme2_uf1_mean"]) == one["per_source"]["casme2"]["uf1"]
    line = next(ln for ln in printed.splitlines() if ln.startswith(f"| {root / 'one'} |"))
    assert f"{one['pooled']['uf1']:.4f} +- 0.0000" in line
    # the only difference that matters: the learning rate (the seeds are the point)
    assert f"- {root / 'three'}: train.learning_rate: 0.001 -> 0.002" in printed


def test_a_workdir_without_results_is_one_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path}: no results.json (not a finished run's workdir)\n"
    )


def test_the_console_command_runs(runs):
    root = runs[0]
    proc = subprocess.run([sys.executable, "-m", "mjfn_jax.compare", str(root / "one")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "| run | seeds | UF1 |" in proc.stdout, proc.stderr
