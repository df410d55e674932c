"""A run interrupted between and inside folds, then rerun, equals an uninterrupted run."""

import os

import numpy as np
import pytest
from conftest import train_and_evaluate


class Killed(Exception):
    """Raised by the after_epochs callback: the run stops as if killed there."""


def kill_after(epochs: int):
    """An after_epochs callback that stops the run once it has trained ``epochs`` epochs."""

    def callback(done):
        if done.trained_this_run >= epochs:
            raise Killed(f"stopped after {done.trained_this_run} epochs ({done.folds})")

    return callback


@pytest.mark.parametrize(  # with a moving average: ~30 s, with the slow tests
    "extra",
    [(), pytest.param(("train.ema_decay=0.5",), marks=pytest.mark.slow)],
    ids=["plain", "ema"],
)
def test_interrupted_and_resumed_run_equals_uninterrupted(
    tmp_path, smoke_config, tiny_dataset, extra
):
    """With train.ema_decay the moving average is part of the checkpoints: resumed, the run
    predicts as an uninterrupted one does."""
    dataset = tiny_dataset(3, 3)
    config = smoke_config("train.num_epochs=3", "checkpoint.every_epochs=1", *extra)
    reference = train_and_evaluate(config, str(tmp_path / "ref"), dataset=dataset)

    workdir = str(tmp_path / "resumed")
    folds = sorted(set(reference["folds"]))
    # 4 epochs: fold 1 finishes (3 epochs), fold 2 stops after its first epoch.
    with pytest.raises(Killed):
        train_and_evaluate(config, workdir, dataset=dataset, after_epochs=kill_after(4))
    fold_dirs = [os.path.join(workdir, "folds", f) for f in folds]
    assert os.path.exists(os.path.join(fold_dirs[0], "done.json"))
    assert not os.path.exists(os.path.join(fold_dirs[1], "done.json"))
    assert os.listdir(os.path.join(fold_dirs[1], "checkpoints")) == ["1"]
    assert not os.path.exists(os.path.join(fold_dirs[2], "checkpoints"))  # not started

    resumed = train_and_evaluate(config, workdir, dataset=dataset)
    assert resumed["timing"]["folds_trained_this_run"] == 2
    np.testing.assert_array_equal(resumed["y_pred"], reference["y_pred"])
    np.testing.assert_allclose(resumed["probs"], reference["probs"], rtol=0, atol=1e-6)
    assert resumed["pooled"] == reference["pooled"]
    for fold in folds:  # the resumed fold's history continues where it stopped
        losses = [r["loss"] for r in resumed["history"][fold]]
        ref_losses = [r["loss"] for r in reference["history"][fold]]
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
