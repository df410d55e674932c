"""model.input_standardize: per-pixel statistics of each fold's training clips, symmetrised
under the flow-aware flip, applied by the model and kept with the fold's saved model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import train_and_evaluate
from flax import nnx

from mjfn_jax.augment import hflip_batch
from mjfn_jax.models import MJFN
from mjfn_jax.predict import restore_fold
from mjfn_jax.units import input_stats, make_units


@pytest.fixture(scope="module")
def standardized_run(tmp_path_factory, smoke_config, tiny_dataset):
    workdir = str(tmp_path_factory.mktemp("standardize"))
    config = smoke_config("model.input_standardize=True")
    dataset = tiny_dataset()
    return config, workdir, dataset, train_and_evaluate(config, workdir, dataset=dataset)


@pytest.mark.parametrize("hflip", [False, True])
def test_statistics_are_the_training_clips_and_flip_symmetric(smoke_config, tiny_dataset, hflip):
    config = smoke_config(f"augment.hflip={hflip}")
    dataset = tiny_dataset()
    units = make_units(config, dataset, None)
    arrays = units.arrays
    stats = input_stats(config, dataset, units, np.array([0, 1]))
    train = dataset.images[arrays.train_idx[1, : arrays.train_count[1]]] / 255.0
    mean, std = stats["input_mean"][1], stats["input_std"][1]
    if not hflip:
        np.testing.assert_allclose(mean, train.mean(0), atol=1e-6)
        np.testing.assert_allclose(std, np.maximum(train.std(0), 1 / 255), atol=1e-6)
    else:  # the statistics of the clips and their mirror images pooled
        both = np.concatenate([train, np.asarray(hflip_batch(jnp.asarray(train)))])
        np.testing.assert_allclose(mean, both.mean(0), atol=1e-6)
        np.testing.assert_allclose(std, np.maximum(both.std(0), 1 / 255), atol=1e-5)
        np.testing.assert_allclose(hflip_batch(jnp.asarray(mean[None]))[0], mean, atol=1e-6)
    assert not np.allclose(stats["input_mean"][0], mean)  # another fold, other clips


def test_the_model_standardizes_its_input(smoke_config):
    on = smoke_config("model.input_standardize=True").model
    off = smoke_config().model
    model_on = MJFN(on, rngs=nnx.Rngs(0))
    model_off = MJFN(off, rngs=nnx.Rngs(0))
    model_on.eval(), model_off.eval()
    rng = np.random.default_rng(0)
    size = on.input_size
    mean = rng.uniform(0.3, 0.7, (size, size, 3)).astype(np.float32)
    std = rng.uniform(0.1, 0.3, (size, size, 3)).astype(np.float32)
    model_on.input_mean.value, model_on.input_std.value = jnp.asarray(mean), jnp.asarray(std)
    x = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(
        model_on(jnp.asarray(x))["fused"], model_off(jnp.asarray((x - mean) / std))["fused"],
        atol=1e-5,
    )  # fmt: skip


def test_a_run_keeps_each_folds_statistics_with_its_model(standardized_run):
    config, workdir, dataset, results = standardized_run
    units = make_units(config, dataset, workdir)
    fold = units.fold_names[2]
    program, model, meta = restore_fold(workdir, fold, config)
    expected = input_stats(config, dataset, units, np.array([2]))
    np.testing.assert_allclose(
        model["batch_stats"]["['input_mean']"], expected["input_mean"][0], atol=1e-6
    )
    assert meta["finished"]
    # the restored model predicts the fold's test clips as the run did
    test_idx = units.arrays.test_idx[2][units.arrays.test_mask[2]]
    data = {"images": jnp.asarray(dataset.images), "labels": jnp.asarray(dataset.labels)}
    log_probs = jax.jit(program.predict)(model, data, jnp.asarray(test_idx, jnp.int32))
    np.testing.assert_allclose(np.exp(log_probs), results["probs"][test_idx], atol=1e-5)
