"""A finished fold's model (folds/<fold>/model/, an Orbax checkpoint): checkpoint.final_dtype
(bfloat16 is stored as bfloat16 by Orbax, takes about half the disk and comes back as float32,
equal to the float32 model rounded to bfloat16), a fold group's models saved per fold off the
loop, and damaged or foreign models."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mjfn_jax import parallel
from mjfn_jax.checkpoint import FoldCheckpointer
from mjfn_jax.config import base_config, validate_config
from mjfn_jax.workdir import WorkdirError
from mjfn_jax.writer import Writer


def _disk(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


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
        sizes[dtype] = _disk(ckpt.final_path)
        plain = ocp.StandardCheckpointer().restore(ckpt.final_path)  # as Orbax stores it
        assert plain["params"]["conv"].dtype == jnp.dtype(dtype)
        assert plain["count"].dtype == np.int32
        restored = ckpt.restore_final(model)
        assert restored["params"]["conv"].dtype == np.float32
        np.testing.assert_array_equal(restored["count"], model["count"])
        expected = model["params"]["conv"]
        if dtype == "bfloat16":
            expected = np.asarray(jnp.asarray(expected, jnp.bfloat16).astype(jnp.float32))
            assert not np.array_equal(expected, model["params"]["conv"])  # it did round
        np.testing.assert_array_equal(restored["params"]["conv"], expected)
    assert sizes["bfloat16"] < 0.6 * sizes["float32"], sizes


def test_a_fold_groups_models_are_copied_once_and_saved_per_fold_off_the_loop(tmp_path):
    """The loop hands this process's blocks of a group's stacked device arrays [G, ...]
    (parallel.owned_blocks) to the writer thread (Writer.copy_to_host) and each fold's save
    takes its row: what each model holds is its fold's; a copy that fails surfaces at close(),
    naming nothing lost silently."""
    import concurrent.futures

    models = [_model(), jax.tree.map(lambda x: x + 1, _model())]
    group = jax.tree.map(lambda *xs: jnp.stack(xs), *models)  # device arrays [2, ...]
    with Writer() as writer:  # the run's writer thread, shared by its folds
        blocks = parallel.owned_blocks(group)
        assert parallel.rows_of(blocks) == [0, 1]  # one process: every row
        host = writer.copy_to_host(blocks)
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


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_unknown_final_dtype_is_refused(dtype):
    """int8 is gone with the .npz model: Orbax has no per-output-channel quantized type."""
    config = base_config()
    config.checkpoint.final_dtype = dtype
    with pytest.raises(ValueError, match="checkpoint.final_dtype"):
        validate_config(config)


def test_a_damaged_or_foreign_final_model_is_one_error_naming_the_folder(tmp_path):
    ckpt = FoldCheckpointer(str(tmp_path), "fold")
    ckpt.save_final(_model())
    ckpt.close()
    bigger = _model()
    bigger["params"]["conv"] = np.zeros((3, 3, 64, 128), np.float32)
    with pytest.raises(WorkdirError, match=r"fold/model: \['params'\]\['conv'\] has shape"):
        ckpt.restore_final(bigger)
    other = {"params": {"dense": np.zeros(3, np.float32)}}
    with pytest.raises(WorkdirError, match="fold/model is not this config's model"):
        ckpt.restore_final(other)
    for d, _, files in os.walk(ckpt.final_path):  # every file of the checkpoint cut short
        for name in files:
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"not orbax")
    with pytest.raises(WorkdirError, match="fold/model is damaged") as e:
        ckpt.restore_final(_model())
    assert len(str(e.value).splitlines()) == 1
