"""A finished fold's model (final.npz): checkpoint.final_dtype (bfloat16 takes about half the
disk and comes back as float32, equal to the float32 model rounded to bfloat16; int8 kernels a
quarter), damaged files,
and the Orbax folder of runs from before 2026-11-26."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mjfn_jax.checkpoint import FoldCheckpointer
from mjfn_jax.config import base_config, validate_config
from mjfn_jax.workdir import WorkdirError
from mjfn_jax.writer import Writer


def _model():
    rng = np.random.default_rng(0)
    return {
        "params": {"conv": rng.normal(size=(3, 3, 64, 64)).astype(np.float32)},
        "batch_stats": {"mean": rng.normal(size=(64,)).astype(np.float32)},
        "count": np.arange(5, dtype=np.int32),  # not floating: kept as it is
    }


def test_bfloat16_final_model_halves_the_disk_and_restores_as_float32(tmp_path):
    model = _model()
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        ckpt = FoldCheckpointer(str(tmp_path / dtype), "fold", final_dtype=dtype)
        ckpt.save_final(model)
        ckpt.close()
        sizes[dtype] = os.path.getsize(ckpt.final_path)
        restored = ckpt.restore_final(model)
        assert restored["params"]["conv"].dtype == np.float32
        np.testing.assert_array_equal(restored["count"], model["count"])
        expected = model["params"]["conv"]
        if dtype == "bfloat16":
            expected = np.asarray(jnp.asarray(expected, jnp.bfloat16).astype(jnp.float32))
            assert not np.array_equal(expected, model["params"]["conv"])  # it did round
        np.testing.assert_array_equal(restored["params"]["conv"], expected)
    assert sizes["bfloat16"] < 0.55 * sizes["float32"], sizes


def test_a_fold_groups_models_are_copied_once_and_saved_per_fold_off_the_loop(tmp_path):
    """The loop hands a group's stacked device arrays [G, ...] to the writer thread
    (Writer.copy_to_host) and each fold's save takes its item: what each file holds is its fold's
    model; a copy that fails surfaces at close(), naming nothing lost silently."""
    import concurrent.futures

    models = [_model(), jax.tree.map(lambda x: x + 1, _model())]
    group = jax.tree.map(lambda *xs: jnp.stack(xs), *models)  # device arrays [2, ...]
    with Writer() as writer:  # the run's writer thread, shared by its folds
        host = writer.copy_to_host(group)
        ckpts = [FoldCheckpointer(str(tmp_path / f"f{i}"), "fold", writer=writer) for i in range(2)]
        for i, ckpt in enumerate(ckpts):
            ckpt.save_final(host, i)
        for i, ckpt in enumerate(ckpts):
            ckpt.close()
            restored = ckpt.restore_final(models[i])
            for got, want in zip(
                jax.tree.leaves(restored), jax.tree.leaves(models[i]), strict=True
            ):
                np.testing.assert_array_equal(got, want)
    failed = concurrent.futures.Future()
    failed.set_exception(RuntimeError("device lost"))
    ckpt = FoldCheckpointer(str(tmp_path / "bad"), "fold")
    ckpt.save_final(failed, 0)
    with pytest.raises(RuntimeError, match="device lost"):
        ckpt.close()
    assert not os.path.exists(ckpt.final_path)


def test_int8_final_model_quarters_the_kernels_and_restores_within_half_a_step(tmp_path):
    """checkpoint.final_dtype='int8': kernels as per-output-channel int8 (each channel's step
    max|w| / 127), 1-axis arrays (BatchNorm, biases) and integers exactly as they were."""
    model = _model()
    model["params"]["conv"][..., 5] = 0.0  # an all-zero channel stays zero
    sizes = {}
    for dtype in ("float32", "int8"):
        ckpt = FoldCheckpointer(str(tmp_path / dtype), "fold", final_dtype=dtype)
        ckpt.save_final(model)
        ckpt.close()
        sizes[dtype] = os.path.getsize(ckpt.final_path)
    restored = ckpt.restore_final(model)
    w, got = model["params"]["conv"], restored["params"]["conv"]
    assert got.dtype == np.float32 and got.shape == w.shape
    step = np.abs(w).reshape(-1, 64).max(axis=0) / 127  # per output channel
    assert np.all(np.abs(got - w) <= step / 2 + 1e-7)
    assert np.all(got[..., 5] == 0)
    assert len(np.unique(got[..., 0])) > 100  # not collapsed onto a few values
    np.testing.assert_array_equal(restored["batch_stats"]["mean"], model["batch_stats"]["mean"])
    np.testing.assert_array_equal(restored["count"], model["count"])
    assert sizes["int8"] < 0.3 * sizes["float32"], sizes
    # The in-memory round trip (tools.repredict --final_dtypes) is what the file gives.
    from mjfn_jax.model_file import round_trip_final

    again = round_trip_final(model, "int8")
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_copy_to_host_through_pinned_memory_gives_the_same_arrays():
    """The writer thread's copy: through the device's pinned host memory on an accelerator
    (forced here: the CPU device has such memory too), plain device_get on the CPU."""
    from mjfn_jax.model_file import copy_to_host, has_pinned_host

    group = jax.tree.map(lambda x: jnp.stack([x, x + 1]), _model())
    assert not has_pinned_host(jax.tree.leaves(group)[0])  # the CPU: pinned only when asked
    want = jax.device_get(group)
    for pinned in (None, True):
        got = copy_to_host(group, pinned=pinned)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert isinstance(g, np.ndarray) and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


def test_unknown_final_dtype_is_refused():
    config = base_config()
    config.checkpoint.final_dtype = "float16"
    with pytest.raises(ValueError, match="checkpoint.final_dtype"):
        validate_config(config)


def test_a_damaged_or_foreign_final_model_is_one_error_naming_the_file(tmp_path):
    ckpt = FoldCheckpointer(str(tmp_path), "fold")
    ckpt.save_final(_model())
    ckpt.close()
    bigger = _model()
    bigger["params"]["conv"] = np.zeros((3, 3, 64, 128), np.float32)
    with pytest.raises(WorkdirError, match=r"final.npz: \['params'\]\['conv'\] has shape"):
        ckpt.restore_final(bigger)
    other = {"params": {"dense": np.zeros(3, np.float32)}}
    with pytest.raises(WorkdirError, match="is not this config's model"):
        ckpt.restore_final(other)
    with open(ckpt.final_path, "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(WorkdirError, match="final.npz is damaged"):
        ckpt.restore_final(_model())
