"""kill -9 at random points of a training run, then rerun: the results equal an uninterrupted run.

Each kill lands after a random number of training calls plus a random delay, so it hits the
training loop, the background checkpoint writes, a fold's result files, the report, or the
start-up; early stopping is on (folds stop at different epochs) and every epoch is saved.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = (
    "parallel.strategy=sequential",
    "train.num_epochs=4",
    "checkpoint.every_epochs=1",
    "folds.val_subject_fraction=0.34",
    "train.early_stopping_patience=1",
)


def run_driver(workdir: str, log_path: str, kill_after: int | None = None, delay: float = 0.0):
    """Run tests/kill_driver.py; with kill_after, SIGKILL it ``delay`` s after its
    ``kill_after``-th training call (0: right after start-up). Returns whether it was killed."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "kill_driver.py"), workdir, *OVERRIDES],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        if kill_after is not None:
            events = 0
            for line in proc.stdout:
                events += line.startswith(("START", "EPOCHS"))
                if events > kill_after:
                    break
            if proc.poll() is None:
                time.sleep(delay)
                proc.kill()
        proc.stdout.read()
        rc = proc.wait(timeout=300)
    if kill_after is None or rc >= 0:
        assert rc == 0, f"run failed (rc {rc}); log: {open(log_path).read()[-3000:]}"
    return rc < 0


def outputs(workdir: str) -> dict:
    with np.load(os.path.join(workdir, "out.npz")) as z:
        return dict(z)


def finish(workdir: str) -> None:
    """kill_driver's run to its end in this process: the uninterrupted reference, and the rerun
    after the kills (it reads only what the killed processes left on disk; the programs it runs
    are the ones the reference compiled, as a rerun's are from XLA's persistent cache)."""
    import kill_driver
    from conftest import train_and_evaluate

    kill_driver.main(workdir, *OVERRIDES, run=train_and_evaluate)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (nothing kills it)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    finish(workdir)
    return outputs(workdir)


# Seed 0 (one kill) in the fast suite; two more schedules of two kills each with the slow tests
# (`make test-all`).
@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_random_kills_then_rerun_equal_an_uninterrupted_run(reference, tmp_path, seed):
    rng = np.random.default_rng(seed)
    workdir, log = str(tmp_path / "run"), str(tmp_path / "log.txt")
    killed = 0
    kills = 1 if seed == 0 else 2  # the fast suite's schedule is one kill, sized down
    for _ in range(kills):  # kills at random points, each followed by a rerun that continues
        killed += run_driver(workdir, log, int(rng.integers(0, 11)), float(rng.uniform(0, 0.4)))
    finish(workdir)  # the last rerun finishes
    assert killed >= 1, "no kill landed: the test did not test anything"
    resumed = outputs(workdir)
    np.testing.assert_array_equal(resumed["epochs"], reference["epochs"])  # early stopping too
    np.testing.assert_array_equal(resumed["y_pred"], reference["y_pred"])
    np.testing.assert_allclose(resumed["probs"], reference["probs"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed["losses"], reference["losses"], rtol=1e-6)
    for fold in os.listdir(os.path.join(workdir, "folds")):  # finished folds keep the model only
        assert sorted(os.listdir(os.path.join(workdir, "folds", fold))) == [
            "done.json",
            "model",
            "predictions.npz",
        ]
