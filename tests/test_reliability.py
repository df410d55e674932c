"""What a workdir guarantees across runs: one run at a time, one dataset, one way of computing
a fold, damaged files found and named, damaged checkpoints skipped for intact ones."""

import glob
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import train_and_evaluate

from mjfn_jax import workdir as workdir_lib
from mjfn_jax.data import Dataset
from mjfn_jax.train import _check_finite
from mjfn_jax.workdir import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLD = "synthetic__s01"


class Killed(Exception):
    pass


def _kill_after(epochs: int):
    def callback(done):
        if done.trained_this_run >= epochs:
            raise Killed

    return callback


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, smoke_config, tiny_dataset):
    """(config, dataset, reference results, a workdir killed after 2 of fold 1's 3 epochs,
    with checkpoints of epochs 1 and 2)."""
    root = tmp_path_factory.mktemp("interrupted")
    config = smoke_config("train.num_epochs=3", "checkpoint.every_epochs=1")
    dataset = tiny_dataset(3, 3)
    reference = train_and_evaluate(config, str(root / "reference"), dataset=dataset)
    workdir = str(root / "killed")
    with pytest.raises(Killed):
        train_and_evaluate(config, workdir, dataset=dataset, after_epochs=_kill_after(2))
    steps = os.path.join(workdir, "folds", FOLD, "checkpoints")
    assert sorted(os.listdir(steps)) == ["1", "2"]
    return config, dataset, reference, workdir


def _copy(workdir: str, tmp_path) -> str:
    out = str(tmp_path / "copy")
    shutil.copytree(workdir, out)
    return out


def _assert_same_results(results, reference):
    np.testing.assert_array_equal(results["y_pred"], reference["y_pred"])
    np.testing.assert_allclose(results["probs"], reference["probs"], rtol=0, atol=1e-6)
    for fold, records in reference["history"].items():
        assert [r["epoch"] for r in results["history"][fold]] == [r["epoch"] for r in records]


# Case 1: a fold continues the way it started ---------------------------------------------------


def test_resume_refuses_another_strategy_for_a_fold_in_progress(interrupted, tmp_path):
    config, dataset, reference, workdir = interrupted
    workdir = _copy(workdir, tmp_path)
    other = config.copy_and_resolve_references()
    other.parallel.strategy = "vmap"
    with pytest.raises(WorkdirError, match=r"strategy 'sequential' -> 'vmap'.*strategy=sequential"):
        train_and_evaluate(other, workdir, dataset=dataset)
    # 'auto' continues with the strategy the workdir records (no trial)
    auto = config.copy_and_resolve_references()
    auto.parallel.strategy = "auto"
    results = train_and_evaluate(auto, workdir, dataset=dataset)
    assert results["timing"]["strategy"] == "sequential"
    assert "execution.json" in results["timing"]["auto"]["reason"]
    _assert_same_results(results, reference)


# Case 2: a workdir belongs to one dataset ------------------------------------------------------


def test_resume_refuses_a_different_dataset(interrupted, tmp_path):
    config, dataset, _, workdir = interrupted
    workdir = _copy(workdir, tmp_path)
    labels = dataset.labels.copy()
    labels[0] = (labels[0] + 1) % len(dataset.class_names)  # one relabelled clip
    fields = {f: getattr(dataset, f) for f in ("images", "subjects", "sources", "clips")}
    relabelled = Dataset(labels=labels, class_names=dataset.class_names, **fields)
    with pytest.raises(WorkdirError, match="different data.*same sizes, different content"):
        train_and_evaluate(config, workdir, dataset=relabelled)
    fewer = Dataset(
        images=dataset.images[:-1],
        labels=dataset.labels[:-1],
        subjects=dataset.subjects[:-1],
        sources=dataset.sources[:-1],
        clips=dataset.clips[:-1],
        class_names=dataset.class_names,
    )
    with pytest.raises(WorkdirError, match=r"num_samples 9 -> 8"):
        train_and_evaluate(config, workdir, dataset=fewer)


# Case 8: damaged checkpoints ------------------------------------------------------------------


def _files(step_dir: str, pattern: str) -> list[str]:
    return [
        p for p in glob.glob(os.path.join(step_dir, pattern), recursive=True) if os.path.isfile(p)
    ]


def _truncate(paths, fraction=0.5):
    for path in paths:
        os.truncate(path, int(os.path.getsize(path) * fraction))


def _flip_a_byte(paths):
    for path in paths:
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))


# Kinds of damage to a checkpoint step folder that make it unreadable. (An emptied
# _CHECKPOINT_METADATA, timestamps only, does not: the step restores intact.)
DAMAGE = {
    "array files deleted": lambda s: [os.remove(p) for p in _files(s, "state/**/d/*")],
    "array files truncated": lambda s: _truncate(_files(s, "state/**/d/*")),
    "a byte flipped in the arrays": lambda s: _flip_a_byte(_files(s, "state/**/d/*")),
    "array metadata emptied": lambda s: _truncate(_files(s, "state/_METADATA"), 0),
    "history json cut": lambda s: open(os.path.join(s, "meta", "metadata"), "w").write('{"hi'),
    "state folder deleted": lambda s: shutil.rmtree(os.path.join(s, "state")),
}


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # Orbax's noise
def test_a_damaged_checkpoint_is_named_and_skipped(interrupted, tmp_path, caplog, monkeypatch):
    """Each kind of damage to the newest step is found (the intact step restores); the run
    warns naming the step, resumes from the older one and ends with the uninterrupted results."""
    from mjfn_jax.checkpoint import CheckpointDamaged, FoldCheckpointer
    from mjfn_jax.writer import closed_loop_reports_dropped

    config, dataset, reference, workdir = interrupted
    likes = []  # the train-state structure a resume restores into
    restore = FoldCheckpointer.restore
    monkeypatch.setattr(
        FoldCheckpointer,
        "restore",
        lambda self, e, like: likes.append(like) or restore(self, e, like),
    )
    caplog.set_level(logging.INFO, logger="mjfn_jax")
    copy = str(tmp_path / "end_to_end")
    shutil.copytree(workdir, copy)
    DAMAGE["array files truncated"](os.path.join(copy, "folds", FOLD, "checkpoints", "2"))
    results = train_and_evaluate(config, copy, dataset=dataset)
    assert f"folds/{FOLD}/checkpoints/2 is unreadable (ValueError: OUT_OF_RANGE" in caplog.text
    assert f"resumed folds {FOLD} from epoch 1" in caplog.text  # fold names, not indices
    _assert_same_results(results, reference)

    like = likes[0]
    with closed_loop_reports_dropped():  # what a run (and predict) does around its restores
        for i, (kind, damage) in enumerate(DAMAGE.items()):
            copy = str(tmp_path / f"damaged{i}")
            shutil.copytree(workdir, copy)
            ckpt = FoldCheckpointer(copy, FOLD)
            damage(ckpt.step_dir(2))
            with pytest.raises(CheckpointDamaged, match="checkpoints/2 is unreadable"):
                ckpt.restore(2, like)
            state, meta = ckpt.restore(1, like)  # the intact step
            assert meta["epochs_done"] == 1, kind
            ckpt.close()


def test_every_checkpoint_damaged_trains_the_fold_again(interrupted, tmp_path, caplog):
    config, dataset, reference, workdir = interrupted
    workdir = _copy(workdir, tmp_path)
    for step in ("1", "2"):
        DAMAGE["state folder deleted"](os.path.join(workdir, "folds", FOLD, "checkpoints", step))
    caplog.set_level(logging.WARNING, logger="mjfn_jax")
    results = train_and_evaluate(config, workdir, dataset=dataset)
    assert f"no readable checkpoint of folds {FOLD}: training them from the start" in caplog.text
    _assert_same_results(results, reference)


# Case 9: one run per workdir ------------------------------------------------------------------


def test_a_workdir_in_use_is_refused(interrupted, tmp_path):
    config, dataset, _, workdir = interrupted
    workdir = _copy(workdir, tmp_path)
    with workdir_lib.Lock(workdir):
        with pytest.raises(WorkdirError, match=rf"in use by another run \(pid {os.getpid()} on"):
            train_and_evaluate(config, workdir, dataset=dataset)


def test_a_killed_runs_lock_is_released(tmp_path):
    code = (
        "import os, sys, time; sys.path.insert(0, '.'); from mjfn_jax.workdir import Lock\n"
        f"lock = Lock({str(tmp_path)!r}).__enter__(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    with pytest.raises(WorkdirError, match="in use"):
        workdir_lib.Lock(str(tmp_path)).__enter__()
    proc.kill()
    proc.wait()
    with workdir_lib.Lock(str(tmp_path)):  # the kernel released the dead process's lock
        pass


# Case 14: damaged result and config files are named ---------------------------------------------


@pytest.fixture(scope="module")
def finished(interrupted):
    config, dataset, _, workdir = interrupted
    workdir = workdir + "_finished"
    train_and_evaluate(config, workdir, dataset=dataset)
    return config, dataset, workdir


@pytest.mark.parametrize(
    "path,damage",
    [
        (f"folds/{FOLD}/done.json", "empty"),
        (f"folds/{FOLD}/predictions.npz", "truncate"),
        (f"folds/{FOLD}/predictions.npz", "empty"),
        ("config.json", "empty"),
        ("dataset.json", "truncate"),
    ],
)
def test_a_damaged_workdir_file_is_named(finished, tmp_path, path, damage):
    config, dataset, workdir = finished
    workdir = _copy(workdir, tmp_path)
    _truncate([os.path.join(workdir, path)], 0 if damage == "empty" else 0.5)
    with pytest.raises(WorkdirError, match=f"{path} is damaged"):
        train_and_evaluate(config, workdir, dataset=dataset)


# Case 16: messages -----------------------------------------------------------------------------


def test_non_finite_message_counts_steps_from_one():
    metrics = {"nonfinite_step": np.array([[-1, 1]])}  # 0-based step 1 of the 2nd epoch
    with pytest.raises(FloatingPointError, match=r"'f' at epoch 4 \(1-based\), step 2 \(1-based\)"):
        _check_finite(metrics, np.array([0]), ["f"], first_epoch=2)
