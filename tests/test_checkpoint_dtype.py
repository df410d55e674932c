"""checkpoint.final_dtype: a finished fold's model saved in bfloat16 takes about half the disk
and comes back as float32, equal to the float32 model rounded to bfloat16."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from mjfn_jax.checkpoint import FoldCheckpointer
from mjfn_jax.config import base_config, validate_config


def _disk(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_bfloat16_final_model_halves_the_disk_and_restores_as_float32(tmp_path):
    rng = np.random.default_rng(0)
    model = {
        "params": {"conv": rng.normal(size=(3, 3, 64, 64)).astype(np.float32)},
        "batch_stats": {"mean": rng.normal(size=(64,)).astype(np.float32)},
        "count": np.arange(5, dtype=np.int32),  # not floating: kept as it is
    }
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        ckpt = FoldCheckpointer(str(tmp_path / dtype), "fold", final_dtype=dtype)
        ckpt.save_final(model)
        ckpt.close()
        sizes[dtype] = _disk(ckpt.final_dir)
        restored = ckpt.restore_final(model)
        assert restored["params"]["conv"].dtype == np.float32
        np.testing.assert_array_equal(restored["count"], model["count"])
        expected = model["params"]["conv"]
        if dtype == "bfloat16":
            expected = np.asarray(jnp.asarray(expected, jnp.bfloat16).astype(jnp.float32))
            assert not np.array_equal(expected, model["params"]["conv"])  # it did round
        np.testing.assert_array_equal(restored["params"]["conv"], expected)
    assert sizes["bfloat16"] < 0.6 * sizes["float32"], sizes


def test_unknown_final_dtype_is_refused():
    config = base_config()
    config.checkpoint.final_dtype = "float16"
    with pytest.raises(ValueError, match="checkpoint.final_dtype"):
        validate_config(config)


def test_checkpoint_disk_command_writes_both_dtypes(tmp_path):
    from experiments.checkpoint_disk import main

    out = tmp_path / "disk.md"
    main(["--config", "experiments/configs/benchmark.py:quick", "--folds", "10", "--out", str(out)])
    rows = [r for r in out.read_text().splitlines() if r.startswith(("| float32", "| bfloat16"))]
    mb = [float(r.split("|")[2]) for r in rows]
    assert len(rows) == 2 and 0 < mb[1] < mb[0]
