"""End-to-end smoke tests of the fold engine on a tiny synthetic dataset (sequential, CPU)."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli, train_and_evaluate

from mjfn_jax.config_io import load_config
from mjfn_jax.folds import balanced_class_weights


@pytest.fixture(scope="module")
def early_stopping_run(tmp_path_factory, smoke_config, tiny_dataset):
    """4 subjects, LOSO, a validation subject per fold, early stopping (patience 1)."""
    workdir = str(tmp_path_factory.mktemp("es"))
    config = smoke_config("folds.val_subject_fraction=0.34", "train.early_stopping_patience=1")
    dataset = tiny_dataset()
    return config, workdir, dataset, train_and_evaluate(config, workdir, dataset=dataset)


def test_end_to_end_results(early_stopping_run):
    _, workdir, dataset, results = early_stopping_run
    n = len(dataset.labels)
    assert results["y_pred"].shape == (n,) and results["probs"].shape == (n, 3)
    np.testing.assert_allclose(results["probs"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(results["y_true"], dataset.labels)
    np.testing.assert_array_equal(results["y_pred"], results["probs"].argmax(-1))
    # each sample is predicted by the fold that held its subject out
    expected = [s.replace("/", "__") for s in dataset.subjects]
    assert results["folds"].tolist() == expected
    assert 0.0 <= results["pooled"]["uf1"] <= 1.0 and results["num_folds"] == 4
    for fold in set(expected):
        records = results["history"][fold]
        assert 1 <= len(records) <= 2 and {"loss", "accuracy", "val_loss"} <= set(records[0])
        assert os.path.exists(os.path.join(workdir, "folds", fold, "done.json"))
        # a finished fold keeps its model (model/, Orbax) but no optimizer state (checkpoints/)
        assert os.listdir(os.path.join(workdir, "folds", fold, "model"))
        assert not os.path.exists(os.path.join(workdir, "folds", fold, "checkpoints"))
    timing = results["timing"]
    assert timing["strategy"] == "sequential" and timing["samples_per_s"] > 0
    phases = timing["phases_s"]  # where the loop's wall time went, inside it
    assert {"init", "training calls", "predict", "saves (handing over)"} <= set(phases)
    assert 0 < sum(phases.values()) <= timing["wall_s"] and phases["training calls"] > 0
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["pooled"]["uf1"] == results["pooled"]["uf1"]
    with open(os.path.join(workdir, "config.json")) as f:  # only what applies to this run
        saved = json.load(f)
    assert "num_folds" not in saved["folds"] and "generated_samples" not in saved["data"]
    assert saved["folds"]["protocol"] == "loso" and saved["train"]["num_epochs"] == 2
    from test_curves import read_scalars  # each fold's curves, as TensorBoard reads them

    for fold in set(expected):
        curves = read_scalars(os.path.join(workdir, "tensorboard", fold))
        history = results["history"][fold]
        assert [step for step, _ in curves["loss"]] == [r["epoch"] for r in history]
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} == set(curves)


def test_rerun_skips_finished_folds(early_stopping_run):
    config, workdir, dataset, first = early_stopping_run
    again = train_and_evaluate(config, workdir, dataset=dataset)
    assert again["timing"]["folds_trained_this_run"] == 0
    np.testing.assert_array_equal(again["probs"], first["probs"])


def test_different_config_in_same_workdir_is_refused(early_stopping_run, smoke_config):
    config, workdir, dataset, _ = early_stopping_run
    other = smoke_config("folds.val_subject_fraction=0.34", "train.early_stopping_patience=1")
    other.train.learning_rate = 0.5
    with pytest.raises(
        ValueError, match=r"(?s)different config.*train.learning_rate: saved 0.002 != new 0.5"
    ):
        train_and_evaluate(other, workdir, dataset=dataset)


def test_non_finite_loss_names_fold_and_epoch(tmp_path, smoke_config, tiny_dataset):
    config = smoke_config("train.learning_rate=1e30", "train.warmup_epochs=0")  # diverges
    with pytest.raises(FloatingPointError, match=r"fold 'synthetic__s01' at epoch \d+"):
        train_and_evaluate(config, str(tmp_path), dataset=tiny_dataset(3, 3))


def test_balanced_class_weights():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(weights, [4 / 9, 4 / 3, 0.0])


@pytest.mark.parametrize(
    "override,field",
    [
        ("train.num_epochs=0", "train.num_epochs"),
        ("train.num_epochs=-1", "train.num_epochs"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.batch_size=-8", "train.batch_size"),
        ("loss.class_weights=balance", "loss.class_weights"),
        ("loss.class_weights=None", "loss.class_weights"),
        ("loss.label_smoothing=2.0", "loss.label_smoothing"),
        ("train.learning_rate=0.0", "train.learning_rate"),
        ("train.ema_decay=1.0", "train.ema_decay"),
        ("train.ema_decay=-0.5", "train.ema_decay"),
        ("augment.mixup_alpha=-1.0", "augment.mixup_alpha"),
        ("parallel.strategy=pmap", "parallel.strategy"),
        ("model.fusion=bogus", "model.fusion"),
        ("folds.protocol=lofo", "folds.protocol"),
    ],
)
def test_invalid_config_is_refused_before_the_workdir_is_written(
    tmp_path, override, field, smoke_config, tiny_dataset
):
    """One error naming the field; nothing written, so the corrected rerun is accepted."""
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        train_and_evaluate(smoke_config(override), str(workdir), dataset=tiny_dataset(2, 2))
    assert not workdir.exists()


@pytest.mark.parametrize(
    "args,error",
    [
        (["--config.train.batch_size=0"], "error: train.batch_size=0: needs an int >= 1"),
        (["--config.train.num_epochs=abc"], "error: '--config.train.num_epochs=abc': Could not"),
        (["--config=missing.py"], "error: --config=missing.py: config file not found"),
        (["--bogus_flag=1"], "error: unrecognized arguments: --bogus_flag=1"),
        (["--config=mjfn_jax/configs/synthetic.py:bogus"], "unknown argument 'bogus'"),
    ],
)
def test_cli_reports_a_bad_config_in_one_line(tmp_path, args, error, capsys):
    from mjfn_jax.main import main

    argv = ["--config", "benchmark:quick", "--workdir", str(tmp_path / "w"), *args]
    status, _, stderr = run_cli(main, argv, capsys)
    lines = stderr.strip().splitlines()
    assert status != 0 and len(lines) == 1 and error in lines[0], stderr[-2000:]
    assert lines[0].startswith("error: ")
    assert not (tmp_path / "w").exists()


def test_generated_data_sizes_are_validated():
    from mjfn_jax.config import validate_config

    config = load_config("mjfn_jax/configs/benchmark.py:quick", ["data.generated_subjects=1"])
    with pytest.raises(ValueError, match=r"data\.generated_subjects=1: needs an int >= 2"):
        validate_config(config)
    validate_config(load_config("mjfn_jax/configs/benchmark.py:quick"))  # the real one passes


def test_a_cli_run_logged_to_a_file_has_no_escapes_and_writes_curves(tmp_path):
    """Output to a file (not a terminal): one line per fold group, no progress-bar escapes;
    the workdir holds one TensorBoard series per unit; the time summary is one short line."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir, log = tmp_path / "w", tmp_path / "train.log"
    cmd = [sys.executable, "-m", "mjfn_jax.main", "--config", "benchmark:quick",
           "--workdir", str(workdir), "--config.data.generated_subjects=3",
           "--config.data.generated_samples=18", "--config.train.num_epochs=1",
           "--config.parallel.strategy=sequential", "--config.report.linear_floor=False",
           "--config.report.figures=False"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\x1b[" not in text and "\r" not in text
    assert [ln for ln in text.splitlines() if "group 3/3 done" in ln]
    assert "timing: {" not in text and 'all figures: results.json "timing"' in text
    runs = sorted(p.name for p in (workdir / "tensorboard").iterdir())
    assert len(runs) == 3 and all(
        list((workdir / "tensorboard" / r).glob("events.*")) for r in runs
    )


def test_a_run_sharing_compiled_programs_equals_a_run_with_its_own(tmp_path, smoke_config):
    """train_and_evaluate(runners=...): the second run of a config in a shared Runners reuses
    the programs the first traced and compiled (none of its own) and predicts the same."""
    from conftest import make_tiny_dataset

    from mjfn_jax.runner import Runners
    from mjfn_jax.train import train_and_evaluate as product_train

    config, dataset = smoke_config("train.num_epochs=1"), make_tiny_dataset(2, 2)
    with Runners() as runners:
        first = product_train(config, str(tmp_path / "a"), dataset, runners=runners)
        second = product_train(config, str(tmp_path / "b"), dataset, runners=runners)
    assert first["timing"]["compile_s"] > 0 and second["timing"]["compile_s"] == 0
    np.testing.assert_array_equal(second["probs"], first["probs"])
    assert second["history"] == first["history"]
