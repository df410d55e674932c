"""tools/fuse_runs.py: finished runs' per-clip probabilities, aligned by clip, fused."""

import csv
import json

import numpy as np
import pytest

from mjfn_jax.metrics import pooled_metrics
from tools import fuse_runs

NAMES = ("negative", "positive", "surprise")


def _write_predictions(path, keys, probs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "subject", "label", *[f"prob_{c}" for c in NAMES]])
        for key, p in zip(keys, probs, strict=True):
            subject, clip = key.rsplit("/", 1)
            w.writerow([clip, subject, 0, *p])


def test_seeds_of_a_run_are_read_in_the_given_clip_order(tmp_path):
    keys = ["casme2/sub01/EP1", "casme2/sub01/EP2", "samm/006/x"]
    rng = np.random.default_rng(0)
    probs = {s: rng.dirichlet(np.ones(3), 3) for s in (0, 1)}
    for s in (0, 1):  # written in reverse order: read back in the order asked
        _write_predictions(tmp_path / "seeds" / str(s) / "predictions.csv", keys[::-1],
                           probs[s][::-1])  # fmt: skip
    out = fuse_runs.mjfn_probs(str(tmp_path), keys, NAMES)
    assert sorted(out) == [0, 1]
    np.testing.assert_allclose(out[1], probs[1], rtol=1e-6)


def test_a_one_seed_run_and_a_different_dataset(tmp_path):
    keys = ["a/1/x", "a/2/y"]
    (tmp_path / "config.json").write_text(json.dumps({"seed": 7}))
    _write_predictions(tmp_path / "predictions.csv", keys, np.full((2, 3), 1 / 3))
    assert list(fuse_runs.mjfn_probs(str(tmp_path), keys, NAMES)) == [7]
    with pytest.raises(ValueError, match="a/3/z is not in it: not the same dataset"):
        fuse_runs.mjfn_probs(str(tmp_path), ["a/1/x", "a/3/z"], NAMES)
    with pytest.raises(ValueError, match="no column prob_fear"):
        fuse_runs.read_predictions(str(tmp_path / "predictions.csv"), ("fear",))


def test_every_combination_is_the_mean_probability():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 40)
    models = {n: rng.dirichlet(np.ones(3), 40) for n in ("A", "B", "C")}
    rows = {r["models"]: r for r in fuse_runs.fuse(models, labels, NAMES)}
    assert list(rows) == ["A", "B", "C", "A + B", "A + C", "B + C", "A + B + C"]
    want = pooled_metrics(labels, (models["A"] + models["C"]).argmax(-1), NAMES)
    assert rows["A + C"]["uf1"] == pytest.approx(want["uf1"])
    assert rows["B"]["uar"] == pytest.approx(
        pooled_metrics(labels, models["B"].argmax(-1), NAMES)["uar"]
    )


def test_missing_inputs_are_one_line(tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--ststnet", str(tmp_path / "s.json")]
    assert fuse_runs.main([*args, "--data_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: dataset flow_images/imported_28 is not built")


def test_per_source_scores_are_those_of_the_source_alone():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 60)
    sources = np.array(["casme2", "samm", "smic"] * 20)
    models = {n: rng.dirichlet(np.ones(3), 60) for n in ("A", "B")}
    rows = {r["models"]: r for r in fuse_runs.fuse(models, labels, NAMES, sources)}
    pick = sources == "samm"
    pred = (models["A"] + models["B"]).argmax(-1)
    want = pooled_metrics(labels[pick], pred[pick], NAMES)["uf1"]
    assert rows["A + B"]["uf1/samm"] == pytest.approx(want)


@pytest.mark.parametrize("value", ["nan", "x", ""])
def test_a_bad_probability_names_its_line(tmp_path, value):
    path = tmp_path / "predictions.csv"
    _write_predictions(path, ["a/1/x", "a/2/y"], [[0.2, 0.3, 0.5], [value, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"predictions.csv, line 3: a prob_ value is not a finite"):
        fuse_runs.read_predictions(str(path), NAMES)


def test_a_run_with_the_ststnet_branch_is_named_so(tmp_path):
    assert fuse_runs.run_name(str(tmp_path)) == "MJFN-JAX"  # no config.json: the plain name
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "model": {}}))
    assert fuse_runs.run_name(str(tmp_path)) == "MJFN-JAX"  # saved before the field existed
    (tmp_path / "config.json").write_text(json.dumps({"model": {"ststnet_branch": True}}))
    assert fuse_runs.run_name(str(tmp_path)) == "MJFN-JAX with its STSTNet branch"
    branches = {"model": {"ststnet_branch": True, "ststnet_copies": 5}}
    (tmp_path / "config.json").write_text(json.dumps(branches))
    assert fuse_runs.run_name(str(tmp_path)) == "MJFN-JAX with its STSTNet branch (5 copies)"


def test_a_damaged_config_names_its_file(tmp_path):
    (tmp_path / "config.json").write_text('{"seed": ')
    with pytest.raises(ValueError, match=r"config\.json is damaged"):
        fuse_runs.run_name(str(tmp_path))
