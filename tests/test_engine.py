"""Engine pieces that carry the speed work: convolutions as matmuls on tiny maps, the flat
Adam(W), the flat train state, the exported model, and the generated benchmark data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mjfn_jax.config import base_config
from mjfn_jax.data import dataset_from_config
from mjfn_jax.engine import FoldInputs, FoldProgram, jit_init, make_optimizer
from mjfn_jax.models.layers import conv_as_matmul


@pytest.mark.parametrize(
    "kernel,stride,size", [(3, 1, 2), (3, 2, 4), (3, 2, 5), (1, 1, 3), (1, 2, 4), (3, 1, 6)]
)
def test_conv_as_matmul_equals_the_convolution(kernel, stride, size):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (3, size, size, 5))
    w = jax.random.normal(kw, (kernel, kernel, 5, 7))
    pad = kernel // 2
    expected = jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = conv_as_matmul(x, w, stride, pad)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and its gradients (the training step differentiates through it)
    grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, w)
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    for a, b in zip(grad(lambda x, w: conv_as_matmul(x, w, stride, pad)), grad(conv), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("optimizer,clip", [("adamw", 0.0), ("adam", 0.0), ("adamw", 0.5)])
def test_flat_optimizer_equals_optax_adamw(optimizer, clip):
    """The flattened chain computes what optax.adam/adamw (masked decay) computes."""
    train = base_config().train
    train.optimizer, train.grad_clip_norm, train.weight_decay = optimizer, clip, 0.1
    train.num_epochs, train.warmup_epochs = 3, 1
    ours = make_optimizer(train, steps_per_epoch=2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, 2, 6, 0.0)
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    if optimizer == "adamw":
        reference = optax.adamw(schedule, weight_decay=0.1, mask=mask)
    else:
        reference = optax.adam(schedule)
    if clip:
        reference = optax.chain(optax.clip_by_global_norm(clip), reference)
    keys = jax.random.split(jax.random.key(1), 3)
    params = {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4)), "bias": jnp.ones((4,))}
    p_ours, p_ref = params, params
    s_ours, s_ref = ours.init(params), reference.init(params)
    for step in range(5):
        grads = jax.tree.map(lambda x, s=step: jnp.cos(x * (s + 1)), p_ours)
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = reference.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for name in params:
        np.testing.assert_allclose(p_ours[name], p_ref[name], rtol=1e-6, atol=1e-7)
    assert not np.allclose(p_ours["kernel"], params["kernel"])  # it did move


def _program(**model):
    config = base_config()
    config.model.input_size, config.model.stem_stride = 16, 1
    config.model.widths, config.model.blocks_per_stage = (4, 4, 8, 8), (1, 1, 1, 1)
    config.model.update(model)
    return FoldProgram(config, steps_per_epoch=2)


def _random_data(n: int = 16) -> dict:
    """n random 16x16 uint8 flow images and labels of 3 classes (the data pytree)."""
    rng = np.random.default_rng(0)
    return {
        "images": jnp.asarray(rng.integers(0, 255, (n, 16, 16, 3), np.uint8)),
        "labels": jnp.asarray(rng.integers(0, 3, (n,)), jnp.int32),
    }


def test_train_state_is_flat_and_exports_the_model_only():
    program = _program()
    state = jit_init(program)(jax.random.key(0))
    assert isinstance(state.params, dict) and all(
        isinstance(k, str) and isinstance(v, jax.Array) for k, v in state.params.items()
    )
    assert "['stem']['conv']['kernel']" in state.params and state.best is None
    exported = program.export(state)
    assert set(exported) == {"params", "batch_stats"}
    data = {
        "images": jnp.asarray(np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), np.uint8)),
        "labels": jnp.zeros((5,), jnp.int32),
    }
    idx = jnp.arange(5, dtype=jnp.int32)
    np.testing.assert_array_equal(
        program.predict(state, data, idx), program.predict(exported, data, idx)
    )


def test_one_folds_init_is_the_runners_bit_for_bit():
    """engine.jit_init (what tools and tests call) gives a fold the bits that the engine's
    runner gives it inside a vmapped group (both compiled with engine.init_compile_options)."""
    from jax.sharding import Mesh

    from mjfn_jax.runner import GroupRunner

    program = _program()
    keys = jax.random.split(jax.random.key(3), 2)
    mesh = Mesh(np.array(jax.devices()[:1]), ("fold",))
    group = GroupRunner(program, mesh, vmapped=True, scan=False, clock=None).init(keys)
    for i in range(2):
        alone = jit_init(program)(keys[i])
        for name in alone.params:
            np.testing.assert_array_equal(group.params[name][i], alone.params[name], name)
    assert any(not np.array_equal(v[0], v[1]) for v in group.params.values())  # 2 folds, 2 inits


def test_the_init_compiles_at_level_1_unless_xla_flags_set_a_level(monkeypatch):
    from mjfn_jax.engine import INIT_COMPILE, init_compile_options

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert init_compile_options() == INIT_COMPILE == {"xla_backend_optimization_level": 1}
    monkeypatch.delenv("XLA_FLAGS")
    assert init_compile_options() == INIT_COMPILE
    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
    )
    assert init_compile_options() == {}  # XLA_FLAGS' level, as for every other program


def test_generated_dataset_from_config():
    config = base_config()
    config.data.name, config.data.generated_subjects, config.data.generated_samples = (
        "generated",
        5,
        23,
    )
    dataset = dataset_from_config(config.data, 16, seed=3)
    assert dataset.images.shape == (23, 16, 16, 3) and len(set(dataset.subjects)) == 5
    again = dataset_from_config(config.data, 16, seed=3)
    np.testing.assert_array_equal(dataset.images, again.images)


def test_compilation_cache_goes_under_the_cache_root_per_machine(tmp_path, monkeypatch):
    from mjfn_jax.parallel import enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs  # (the suite's: 0)
    monkeypatch.setenv("MJFN_JAX_CACHE_DIR", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        path = enable_compilation_cache()
        assert (
            path.startswith(str(tmp_path / "xla")) and jax.config.jax_compilation_cache_dir == path
        )
        assert enable_compilation_cache() is None  # a cache already set (e.g. by the user) stays
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)


def test_save_policy():
    from mjfn_jax.checkpoint import SavePolicy

    every3 = SavePolicy(3)
    assert [every3.what_to_save(e, finished=False) for e in (1, 2, 3, 6)] == [
        None,
        None,
        "progress",
        "progress",
    ]
    assert every3.what_to_save(4, finished=True) == "final"
    assert every3.epochs_until_save(0) == 3 and every3.epochs_until_save(4) == 2
    never = SavePolicy(0)
    assert never.epochs_until_save(5) is None and never.what_to_save(5, finished=False) is None


@pytest.mark.parametrize(
    "model",
    [{}, pytest.param({"ststnet_branch": True, "ststnet_copies": 2}, marks=pytest.mark.slow)],
    ids=["mjfn", "with_ststnets"],  # the branch also trains in test_flow_images' 28 px recipe
)
def test_one_training_step(model):
    """One step moves every parameter that gets a gradient (with model.ststnet_branch, the
    branch's too, here two copies of it: one copy trains in the 28 px recipe's test), updates
    the BN statistics and the optimizer count, is a pure function of its inputs, and repeated on
    one batch lowers the loss (the gradient points downhill)."""
    program = _program(**model)
    config = program.config
    config.train.warmup_epochs, config.train.learning_rate = 0, 1e-2
    program = FoldProgram(config, steps_per_epoch=2)
    data = _random_data()
    fold = FoldInputs.whole_dataset(jax.random.key(1), 16, 3)
    state = jit_init(program)(fold.key)
    assert any("branch" in name for name in state.params) == bool(model)
    plan = jax.jit(program.epoch_plan)(fold, jnp.int32(0))
    step = jax.jit(program.train_step_at)
    new, (loss, correct) = step(state, fold, data, plan, 0)
    again, (loss_again, _) = step(state, fold, data, plan, 0)
    assert np.isfinite(loss) and 0 <= int(correct) <= config.train.batch_size
    assert float(loss) == float(loss_again)
    for name in state.params:
        np.testing.assert_array_equal(new.params[name], again.params[name])
        assert not np.array_equal(new.params[name], state.params[name]), name
    assert any(
        not np.array_equal(new.batch_stats[k], state.batch_stats[k]) for k in state.batch_stats
    )
    counts = [x for x in jax.tree.leaves(new.opt_state) if jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts and all(int(c) == 1 for c in counts)
    losses = [float(loss)]
    for _ in range(8):  # the same batch again and again
        new, (loss, _) = step(new, fold, data, plan, 0)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses


def test_test_time_flip_averages_the_image_and_its_mirror():
    """augment.test_hflip: each prediction is the log of the mean of the fused probabilities of
    the image and of its flow-aware mirror image (u -> 255 - u, mirrored), nothing else."""
    plain = _program()
    config = plain.config.copy_and_resolve_references()  # the plain program reads its own
    config.augment.test_hflip = True
    mirrored = FoldProgram(config, steps_per_epoch=2)
    state = jit_init(plain)(jax.random.key(0))
    rng = np.random.default_rng(0)  # random weights: the zero-initialised heads predict uniformly
    noise = {k: 0.05 * rng.standard_normal(v.shape, np.float32) for k, v in state.params.items()}
    params = {k: v + noise[k] for k, v in state.params.items()}
    state = {"params": params, "batch_stats": state.batch_stats}  # an exported model
    images = rng.integers(0, 256, (5, 16, 16, 3), np.uint8)
    flipped = images[:, :, ::-1].copy()
    flipped[..., 0] = 255 - flipped[..., 0]
    idx = jnp.arange(5, dtype=jnp.int32)

    def probs(program, x):
        data = {"images": jnp.asarray(x), "labels": jnp.zeros((5,), jnp.int32)}
        return np.exp(np.asarray(program.predict(state, data, idx), np.float64))

    expected = (probs(plain, images) + probs(plain, flipped)) / 2
    np.testing.assert_allclose(probs(mirrored, images), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(probs(mirrored, images) - probs(plain, images)).max() > 1e-4


def test_moving_average_of_the_parameters_is_the_model():
    """train.ema_decay: the exported model's params are the debiased moving average of the
    steps' params (sum_t d^(n-t) (1-d) p_t / (1 - d^n)), the BN statistics the running ones;
    the steps themselves train exactly as without it."""
    config = _program().config
    config.train.warmup_epochs, config.train.learning_rate = 0, 1e-2
    plain = FoldProgram(config, steps_per_epoch=2)
    config = config.copy_and_resolve_references()
    config.train.ema_decay = 0.9
    averaged = FoldProgram(config, steps_per_epoch=2)
    data = _random_data()
    fold = FoldInputs.whole_dataset(jax.random.key(1), 16, 3)
    plan = jax.jit(plain.epoch_plan)(fold, jnp.int32(0))
    state = jit_init(plain)(fold.key)
    # The averaged program's init is the plain one's plus the moving average's (its structure
    # checked without compiling a second init, the slowest of the programs to compile)
    assert state.ema is None and jax.eval_shape(averaged.init, fold.key).ema is not None
    ema_state = state.replace(ema=averaged.ema.init(state.params))
    # before any step the model is the initial one
    np.testing.assert_array_equal(
        averaged.export(ema_state)["params"]["['stem']['conv']['kernel']"],
        state.params["['stem']['conv']['kernel']"],
    )
    history = []
    plain_step, averaged_step = jax.jit(plain.train_step_at), jax.jit(averaged.train_step_at)
    for step in (0, 1, 0):
        state = plain_step(state, fold, data, plan, step)[0]
        ema_state = averaged_step(ema_state, fold, data, plan, step)[0]
        history.append(state.params)
    for name in state.params:  # same training (two programs: their last bits may differ)
        np.testing.assert_allclose(ema_state.params[name], state.params[name], rtol=0, atol=1e-6)
    n, d = len(history), 0.9
    exported = jax.jit(averaged.export)(ema_state)
    for name in state.params:
        expected = sum(d ** (n - 1 - t) * (1 - d) * p[name] for t, p in enumerate(history))
        np.testing.assert_allclose(
            exported["params"][name], expected / (1 - d**n), rtol=1e-5, atol=1e-6
        )
    assert any(not np.allclose(exported["params"][k], state.params[k]) for k in state.params)
    for name in state.batch_stats:  # the running statistics, as the plain program's
        np.testing.assert_allclose(
            exported["batch_stats"][name], state.batch_stats[name], rtol=0, atol=1e-6
        )
    idx = jnp.arange(16, dtype=jnp.int32)
    np.testing.assert_allclose(  # two programs: XLA may fuse them apart (last bits)
        jax.jit(averaged.predict)(ema_state, data, idx),
        jax.jit(plain.predict)(exported, data, idx),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.slow  # ~20-40 s of step compiles; EMA alone and early stopping alone are fast
def test_early_stopping_keeps_the_moving_average_it_validated():
    """With train.ema_decay and early stopping, the validation scores the averaged model and an
    improvement keeps that model (not the last step's parameters)."""
    config = _program().config
    config.train.warmup_epochs, config.train.learning_rate = 0, 1e-2
    config.train.ema_decay, config.train.early_stopping_patience = 0.9, 2
    config.folds.val_subject_fraction = 0.5
    program = FoldProgram(config, steps_per_epoch=2)
    data = _random_data()
    fold = FoldInputs.whole_dataset(jax.random.key(1), 16, 3).replace(
        val_idx=jnp.arange(4, dtype=jnp.int32), val_mask=jnp.ones((4,), bool)
    )
    state = jit_init(program)(fold.key)
    plan = jax.jit(program.epoch_plan)(fold, jnp.int32(0))
    for step in (0, 1):
        state, (loss, correct) = jax.jit(program.train_step_at)(state, fold, data, plan, step)
    state, metrics = jax.jit(program.end_epoch)(state, fold, data, (loss, loss), (correct, correct))
    current = program.current_model(state)
    assert np.isfinite(metrics["val_loss"]) and int(state.best.since_best) == 0
    for name in state.params:
        np.testing.assert_array_equal(state.best.params[name], current["params"][name])
    assert any(not np.allclose(current["params"][k], state.params[k]) for k in state.params)


@pytest.mark.slow  # ~30 s: two more step compiles
def test_mixup_changes_the_step_but_not_the_batch_plan():
    """augment.mixup_alpha: the step trains on a mixed batch (other parameters and loss than
    without), the loss finite; the epoch's batch order is the same as without."""
    config = _program().config
    config.train.warmup_epochs, config.train.learning_rate = 0, 1e-2  # step 0 moves the params
    plain = FoldProgram(config, steps_per_epoch=2)
    config = config.copy_and_resolve_references()
    config.augment.mixup_alpha = 0.4
    mixed = FoldProgram(config, steps_per_epoch=2)
    data, fold = _random_data(), FoldInputs.whole_dataset(jax.random.key(1), 16, 3)
    state = jit_init(plain)(fold.key)
    plan = jax.jit(plain.epoch_plan)(fold, jnp.int32(0))
    np.testing.assert_array_equal(plan[0], jax.jit(mixed.epoch_plan)(fold, jnp.int32(0))[0])
    a, (loss_a, _) = jax.jit(plain.train_step_at)(state, fold, data, plan, 0)
    b, (loss_b, _) = jax.jit(mixed.train_step_at)(state, fold, data, plan, 0)
    assert np.isfinite(loss_b) and float(loss_a) != float(loss_b)
    assert any(not np.allclose(a.params[k], b.params[k]) for k in a.params)
