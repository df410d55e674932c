"""Seeds x folds as one parallel axis (train.seeds): every (seed, fold) member equals the
one-seed run with that seed; reports per seed and mean +- sd; resume per (seed, fold)."""

import json
import os

import numpy as np
import pytest
from conftest import train_and_evaluate

from mjfn_jax.config import validate_config
from mjfn_jax.report import format_results_table, mean_sd

COMMON = ("train.num_epochs=2", "report.linear_floor=True", "folds.val_subject_fraction=0.34")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-seed run, its rerun, and the one-seed runs of seeds 0 and 2 (same data)."""
    from conftest import make_smoke_config, make_tiny_dataset

    root = tmp_path_factory.mktemp("seeds")
    dataset = make_tiny_dataset(4, 3)
    out = {"root": root, "dataset": dataset}
    config = make_smoke_config(*COMMON, "train.seeds=(0, 1, 2)")
    out["multi"] = train_and_evaluate(config, str(root / "multi"), dataset)
    out["again"] = train_and_evaluate(config, str(root / "multi"), dataset)
    for s in (0, 2):
        single = make_smoke_config(*COMMON, f"train.seeds=({s},)")
        out[s] = train_and_evaluate(single, str(root / f"single{s}"), dataset)
    return out


def test_each_seed_equals_its_one_seed_run(runs):
    for s in (0, 2):
        member, single = runs["multi"]["per_seed"][s], runs[s]
        np.testing.assert_array_equal(member["folds"], single["folds"])
        np.testing.assert_allclose(member["probs"], single["probs"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(member["y_pred"], single["y_pred"])
        assert member["pooled"]["uf1"] == single["pooled"]["uf1"]
    # the seeds really differ (validation subjects, initialisation, batch order)
    seed0, seed1 = (runs["multi"]["per_seed"][s]["probs"] for s in (0, 1))
    assert np.abs(seed0 - seed1).max() > 1e-3


def test_layout_report_and_mean_sd(runs):
    multi, root = runs["multi"], runs["root"] / "multi"
    uf1s = [multi["per_seed"][s]["pooled"]["uf1"] for s in (0, 1, 2)]
    assert [row["seed"] for row in multi["seeds"]] == [0, 1, 2]
    assert multi["mean_sd"]["uf1"]["mean"] == pytest.approx(np.mean(uf1s))
    assert multi["mean_sd"]["uf1"]["sd"] == pytest.approx(np.std(uf1s, ddof=1))
    assert "uf1" in multi["linear_floor"]
    fused = [multi["per_seed"][s]["with_linear_floor"]["uf1"] for s in multi["per_seed"]]
    assert multi["with_linear_floor"]["uf1"]["mean"] == pytest.approx(np.mean(fused))
    with open(root / "results.json") as f:
        assert json.load(f)["mean_sd"] == json.loads(json.dumps(multi["mean_sd"]))
    report = (root / "report.md").read_text()
    assert "mean +- sd" in report and "seeds/2" in report
    for s in (0, 1, 2):  # each seed's folder is a complete one-seed workdir
        seed_dir = root / "seeds" / str(s)
        assert {"config.json", "dataset.json", "report.md", "results.json"} <= set(
            os.listdir(seed_dir)
        )
        with open(seed_dir / "config.json") as f:
            assert json.load(f)["train"]["seeds"] == [s]
        for fold in multi["per_seed"][s]["folds"]:
            assert (seed_dir / "folds" / fold / "done.json").exists()
    assert not (root / "folds").exists()
    table = format_results_table(multi)
    assert "mean +- sd" in table and table.count("\n| ") >= 4


def test_seed_ensemble_averages_the_seeds_probabilities(runs):
    from mjfn_jax.metrics import pooled_metrics

    multi = runs["multi"]
    per_seed = [multi["per_seed"][s] for s in (0, 1, 2)]
    probs = np.mean([r["probs"] for r in per_seed], axis=0)
    names = multi["class_names"]
    expected = pooled_metrics(per_seed[0]["y_true"], probs.argmax(-1), names)
    ensemble = multi["seed_ensemble"]
    assert ensemble["method"] == "mean probability of 3 seeds"
    assert ensemble["uf1"] == pytest.approx(expected["uf1"])
    assert ensemble["uar"] == pytest.approx(expected["uar"])
    report = (runs["root"] / "multi" / "report.md").read_text()
    assert "ensemble (mean probability of 3 seeds)" in report


def test_rerun_resumes_every_seed_and_fold(runs):
    again = runs["again"]
    assert again["timing"]["folds_trained_this_run"] == 0
    for s in (0, 1, 2):
        np.testing.assert_array_equal(
            again["per_seed"][s]["probs"], runs["multi"]["per_seed"][s]["probs"]
        )


def test_a_seed_folder_resumes_as_a_one_seed_workdir(runs, smoke_config):
    """seeds/<s> is what a one-seed run with that seed writes: it resumes with nothing to do."""
    again = train_and_evaluate(
        smoke_config(*COMMON, "train.seeds=(1,)"),
        str(runs["root"] / "multi" / "seeds" / "1"),
        runs["dataset"],
    )
    assert again["timing"]["folds_trained_this_run"] == 0
    np.testing.assert_array_equal(again["probs"], runs["multi"]["per_seed"][1]["probs"])


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["train.seeds=(0, 0)"], "train.seeds"),
        (["train.seeds=(-1,)"], "train.seeds"),
    ],
)
def test_bad_seeds_are_refused(smoke_config, overrides, error):
    with pytest.raises(ValueError, match=error):
        validate_config(smoke_config(*overrides))


def test_mean_sd_is_the_sample_sd():
    assert mean_sd([0.5, 0.7]) == pytest.approx({"mean": 0.6, "sd": np.std([0.5, 0.7], ddof=1)})
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": 0.0}


def test_predict_asks_for_one_seeds_workdir(runs, tmp_path):
    from mjfn_jax import predict as predict_mod

    image = tmp_path / "flow.png"
    import cv2

    cv2.imwrite(str(image), runs["dataset"].images[0])
    with pytest.raises(ValueError, match=r"trained 3 seeds in one run.*seeds/0 \(seeds: 0, 1, 2\)"):
        predict_mod.predict(str(runs["root"] / "multi"), "all", flow_image=str(image))


@pytest.mark.slow  # ~30 s: four more training runs (test_select covers one seed's selection)
def test_nested_selection_per_seed_equals_its_one_seed_selection(runs, smoke_config):
    """select.candidates with two seeds: every candidate trains both seeds in one run, each
    (seed, fold) chooses on its own validation subjects; seed 1's report is the one a one-seed
    selection with seed 1 writes."""
    select = "select.candidates=('train.learning_rate=1e-3', 'train.learning_rate=3e-3')"
    root, dataset = runs["root"], runs["dataset"]
    multi = train_and_evaluate(
        smoke_config(*COMMON, select, "train.seeds=(0, 1)"), str(root / "sel_multi"), dataset
    )
    single = train_and_evaluate(
        smoke_config(*COMMON, select, "train.seeds=(1,)"), str(root / "sel_single"), dataset
    )
    member = multi["per_seed"][1]
    assert member["selection"]["per_fold"] == json.loads(
        json.dumps(single["selection"]["per_fold"])
    )
    np.testing.assert_allclose(member["probs"], single["probs"], rtol=0, atol=1e-6)
    assert (root / "sel_multi" / "seeds" / "1" / "report.md").read_text().count("Nested") == 1
    assert [row["seed"] for row in multi["seeds"]] == [0, 1]


def test_seeds_whose_step_counts_differ_are_named(smoke_config, caplog):
    """With validation subjects of different sizes, the seeds' largest training folds can need
    different step counts: every seed trains the run's (the largest), and a warning says so."""
    import logging
    import types

    from mjfn_jax.units import make_units

    counts = [1, 1, 2, 3, 8, 12]  # clips per subject
    subjects = np.repeat([f"s/{i}" for i in range(len(counts))], counts)
    data = types.SimpleNamespace(subjects=subjects, sources=np.full(len(subjects), "s"))
    common = ("train.batch_size=1", "folds.val_subject_fraction=0.2")  # steps = largest fold
    caplog.set_level(logging.WARNING, logger="mjfn_jax")
    steps = {
        s: make_units(
            smoke_config(*common, f"train.seeds=({s},)"), data, "w"
        ).arrays.train_idx.shape[1]
        for s in range(4)
    }
    assert len(set(steps.values())) > 1, steps  # the fixture does make them differ
    assert not caplog.text  # one seed: nothing to say
    units = make_units(smoke_config(*common, "train.seeds=(0, 1, 2, 3)"), data, "w")
    assert units.arrays.train_idx.shape[1] == max(steps.values())
    assert "not exactly its one-seed run" in caplog.text
    assert ", ".join(f"seed {s}: {n}" for s, n in steps.items()) in caplog.text
