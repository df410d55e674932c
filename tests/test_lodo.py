"""Leave one dataset out end to end: the JAX engine and the PyTorch baseline on a tiny dataset of
three sources (folds.protocol='lodo')."""

import dataclasses
import os

import numpy as np
import pytest
from conftest import train_and_evaluate

from mjfn_jax.folds import make_folds

SOURCES = ("casme2", "samm", "smic")
FOLDS = ["lodo__casme2", "lodo__samm", "lodo__smic"]


@pytest.fixture(scope="module")
def three_sources(tiny_dataset):
    """6 synthetic subjects of 2 clips, two per source: 'synthetic/s01' -> 'casme2/s01', ..."""
    dataset = tiny_dataset(6, 2)
    order = sorted(set(dataset.subjects))
    source_of = {s: SOURCES[i // 2] for i, s in enumerate(order)}
    sources = np.array([source_of[s] for s in dataset.subjects])
    subjects = np.array([f"{source_of[s]}/{s.split('/')[1]}" for s in dataset.subjects])
    return dataclasses.replace(dataset, subjects=subjects, sources=sources)


@pytest.fixture(scope="module")
def lodo_run(tmp_path_factory, smoke_config, three_sources):
    workdir = str(tmp_path_factory.mktemp("lodo"))
    config = smoke_config("folds.protocol=lodo", "folds.val_subject_fraction=0.25")
    return config, workdir, train_and_evaluate(config, workdir, dataset=three_sources)


def test_jax_engine_tests_every_clip_once_by_its_source_fold(lodo_run, three_sources):
    _, workdir, results = lodo_run
    n = len(three_sources)
    np.testing.assert_array_equal(results["y_true"], three_sources.labels)
    assert results["probs"].shape == (n, 3) and results["y_pred"].shape == (n,)
    # each clip predicted once, by the fold that held its source out
    assert results["folds"].tolist() == [f"lodo__{s}" for s in three_sources.sources]
    assert [row["fold"] for row in results["per_fold"]] == FOLDS
    assert sum(row["n"] for row in results["per_fold"]) == n and results["num_folds"] == 3
    assert sorted(results["history"]) == FOLDS
    for fold in FOLDS:
        assert "val_loss" in results["history"][fold][-1]  # a validation subject per fold
        assert os.path.exists(os.path.join(workdir, "folds", fold, "done.json"))
    assert set(results["per_source"]) == set(SOURCES)
    with open(os.path.join(workdir, "report.md")) as f:
        text = f.read()
    assert "Leave-one-dataset-out" in text and "## Per target dataset" in text


def test_pytorch_baseline_builds_the_same_folds(lodo_run, three_sources, tmp_path, monkeypatch):
    import torch

    from experiments.pytorch_baseline import train as baseline

    config, _, jax_results = lodo_run
    seen = []

    def recording_train_fold(config, dataset, fold, *args, **kwargs):
        seen.append(fold)
        return train_fold(config, dataset, fold, *args, **kwargs)

    train_fold = baseline.train_fold
    monkeypatch.setattr(baseline, "train_fold", recording_train_fold)
    torch.manual_seed(0)
    results = baseline.train_loso_torch(config, three_sources, str(tmp_path))
    expected = make_folds(
        three_sources.subjects,
        protocol="lodo",
        val_subject_fraction=0.25,
        seed=config.seed,
        sources=three_sources.sources,
    )
    assert [f.name for f in seen] == [f.name for f in expected] == FOLDS
    for got, want in zip(seen, expected, strict=True):
        for part in ("train_idx", "val_idx", "test_idx"):
            np.testing.assert_array_equal(getattr(got, part), getattr(want, part))
    # the same per-fold test sets and the same protocol statement as the JAX engine's report
    assert [(r["fold"], r["subjects"], r["n"]) for r in results["per_fold"]] == [
        (r["fold"], r["subjects"], r["n"]) for r in jax_results["per_fold"]
    ]
    assert results["protocol"] == jax_results["protocol"]
    assert os.path.exists(tmp_path / "folds" / "lodo__samm.pt")
