"""A build and a load never import TensorFlow (tensorflow_datasets itself is fine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from data_builders.build import build_dataset
from mjfn_jax.data import load_dataset
build_dataset("synthetic/farneback_32", data_dir=sys.argv[1], workers=2,
              builder_kwargs={"synthetic": {"num_subjects": 2, "clips_per_subject": 3,
                                            "frame_size": 64}})
data = load_dataset("synthetic", "farneback_32", sys.argv[1])
assert len(data) == 6, len(data)
assert "tensorflow_datasets" in sys.modules
tf = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TF_MODULES", tf)
"""


def test_build_and_load_without_tensorflow(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=root,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TF_MODULES []" in result.stdout, result.stdout


def test_importing_mjfn_jax_data_is_cheap():
    code = "import sys, mjfn_jax.data; print(sorted(m for m in sys.modules if 'tensorflow' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
