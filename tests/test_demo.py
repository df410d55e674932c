"""`make demo`'s command end to end (slow: it builds the synthetic dataset and trains 12 LOSO
folds for 20 epochs, ~2-3 min on 2 cores; run with `make test-all`)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_builds_trains_and_beats_chance(tmp_path):
    cmd = [sys.executable, "-m", "experiments.demo", "--data_dir", str(tmp_path / "tfds"),
           "--workdir", str(tmp_path / "demo")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| all (pooled) | 108 |" in proc.stdout
    with open(tmp_path / "demo" / "results.json") as f:
        results = json.load(f)
    assert results["num_folds"] == 12 and results["n"] == 108
    assert results["pooled"]["uf1"] > 0.45  # chance is ~0.33; the README reports ~0.62-0.69
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 to train" in again.stderr  # the rerun reuses everything
