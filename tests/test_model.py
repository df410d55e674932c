"""MJFN model and loss: shapes, dtypes, fusion, train/eval behaviour, validation, summary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import run_cli
from flax import nnx

from mjfn_jax.config import base_model_config
from mjfn_jax.models import HEADS, MJFN, count_params, cross_entropy, mjfn_loss, model_summary


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    cfg = base_model_config()
    cfg.input_size, cfg.stem_stride = 32, 1
    cfg.widths, cfg.blocks_per_stage = (4, 8, 8, 16), (1, 1, 1, 1)
    cfg.dropout = 0.0
    cfg.update(overrides)
    return cfg


@nnx.jit
def forward(model: MJFN, x: jax.Array) -> dict[str, jax.Array]:
    # One compiled call: much faster on CPU than dispatching every op eagerly.
    return model(x)


def batch(n: int = 4, size: int = 32, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 3), jnp.float32)


@pytest.mark.parametrize("fusion", ["mean_prob", "mean_logit", "learned"])
def test_output_shapes_dtypes_and_fusion(fusion):
    model = MJFN(tiny_config(fusion=fusion, num_classes=5), rngs=nnx.Rngs(0))
    model.eval()
    out = forward(model, batch())
    assert set(out) == {*HEADS, "fused"}
    for name, value in out.items():
        assert value.shape == (4, 5) and value.dtype == jnp.float32, name
    np.testing.assert_allclose(jnp.exp(out["fused"]).sum(-1), 1.0, rtol=1e-5)
    stacked = np.stack([np.asarray(out[h]) for h in HEADS])  # [4, B, C]
    probs = np.asarray(jax.nn.softmax(stacked, axis=-1))
    if fusion == "mean_logit":
        expected = jax.nn.log_softmax(stacked.mean(0), axis=-1)
    else:  # 'learned' starts from equal weights
        expected = np.log(probs.mean(0))
    np.testing.assert_allclose(out["fused"], expected, atol=1e-5)


def test_learned_fusion_weights_are_softmax_of_a_param():
    model = MJFN(tiny_config(fusion="learned"), rngs=nnx.Rngs(0))
    model.eval()
    model.fusion_logits[...] = jnp.array([2.0, -1.0, 0.5, 0.0])
    out = forward(model, batch())
    weights = np.asarray(jax.nn.softmax(jnp.array([2.0, -1.0, 0.5, 0.0])))
    probs = np.stack([np.asarray(jax.nn.softmax(out[h], -1)) for h in HEADS])
    expected = np.log(np.einsum("h,hbc->bc", weights, probs))
    np.testing.assert_allclose(out["fused"], expected, atol=1e-5)
    assert "fusion_logits" in nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    cfg32, cfg16 = tiny_config(), tiny_config(dtype="bfloat16")
    model32, model16 = MJFN(cfg32, rngs=nnx.Rngs(0)), MJFN(cfg16, rngs=nnx.Rngs(0))
    for model in (model32, model16):
        model.eval()
    params = nnx.state(model16, nnx.Param)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    x = batch()
    out32, out16 = forward(model32, x), forward(model16, x)
    for name in (*HEADS, "fused"):
        assert out16[name].dtype == jnp.float32
    # Same weights (same seed), bf16 arithmetic: close but not identical.
    diff = np.abs(np.asarray(out16["fused"]) - np.asarray(out32["fused"])).max()
    assert 0.0 < diff < 0.1
    jaxpr = str(jax.make_jaxpr(lambda x: model16(x)["fused"])(x))
    assert "conv_general_dilated" in jaxpr and "bf16[4,32,32,4]" in jaxpr


def test_eval_mode_is_deterministic_and_keeps_batch_stats():
    model = MJFN(tiny_config(dropout=0.5), rngs=nnx.Rngs(0))
    model.eval()
    stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    x = batch()
    a, b = forward(model, x), forward(model, x)
    np.testing.assert_array_equal(a["fused"], b["fused"])
    stats_after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, stats_before, stats_after)


def test_train_mode_uses_dropout_and_updates_batch_stats():
    model = MJFN(tiny_config(dropout=0.5), rngs=nnx.Rngs(0))
    x = batch()
    model.eval()
    eval_out = forward(model, x)
    model.train()
    mean_before = np.asarray(model.stem.bn.mean[...])
    a, b = forward(model, x), forward(model, x)
    assert not np.allclose(a["backbone"], b["backbone"])  # fresh dropout masks
    assert not np.allclose(a["backbone"], eval_out["backbone"])
    assert not np.allclose(np.asarray(model.stem.bn.mean[...]), mean_before)


def test_train_mode_without_dropout_normalises_with_batch_statistics():
    model = MJFN(tiny_config(dropout=0.0), rngs=nnx.Rngs(0))
    x = batch()
    model.train()
    a, b = forward(model, x), forward(model, x)
    np.testing.assert_allclose(a["fused"], b["fused"], atol=1e-6)  # batch stats: same batch
    model.eval()
    c = forward(model, x)  # running stats (initial 0 / 1, one update) differ from the batch stats
    assert np.abs(np.asarray(a["fused"]) - np.asarray(c["fused"])).max() > 1e-3


@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((32, 32, 3), jnp.float32, "NHWC"),
        ((2, 32, 32, 1), jnp.float32, "3 channels"),
        ((2, 3, 32, 32), jnp.float32, "3 channels"),
        ((2, 30, 30, 3), jnp.float32, "32x32"),
        ((2, 32, 32, 3), jnp.uint8, "floating"),
    ],
)
def test_bad_input_raises_clear_error(shape, dtype, match):
    model = MJFN(tiny_config(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        model(jnp.zeros(shape, dtype))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"fusion": "max"}, "fusion"),
        ({"dtype": "float16"}, "dtype"),
        ({"widths": (4, 8, 16)}, "4 entries"),
        ({"input_size": 4}, "total stride"),
        ({"backbone_pool": "max"}, "backbone_pool"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        MJFN(tiny_config(**overrides), rngs=nnx.Rngs(0))


def _reference_ce(logits, labels, smoothing=0.0, weights=None):
    """Straight from the definition, in float64 numpy (torch's weighted, smoothed CE)."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    num_classes = logits.shape[1]
    w = np.ones(num_classes) if weights is None else np.asarray(weights, np.float64)
    targets = (1 - smoothing) * np.eye(num_classes)[labels] + smoothing / num_classes
    per_sample_nll = -(log_p[np.arange(len(labels)), labels]) * w[labels]
    per_sample_smooth = -(log_p * w).sum(-1) / num_classes
    total = (1 - smoothing) * per_sample_nll.sum() + smoothing * per_sample_smooth.sum()
    if weights is None:  # unweighted: plain mean of sum_c targets_c * -log p_c
        assert np.isclose(total, -(targets * log_p).sum())
    return total / w[labels].sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [1.0, 2.5, 0.5]])
def test_cross_entropy_matches_definition(smoothing, weights):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype(np.float32) * 3
    labels = np.array([0, 1, 2, 1, 1, 0], np.int32)
    cw = None if weights is None else jnp.asarray(weights, jnp.float32)
    got = cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), label_smoothing=smoothing, class_weights=cw
    )
    np.testing.assert_allclose(got, _reference_ce(logits, labels, smoothing, weights), rtol=1e-5)


def test_class_weights_and_smoothing_behaviour():
    logits = jnp.array([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])  # sample 0 right, sample 1 wrong
    labels = jnp.array([0, 1])
    plain = cross_entropy(logits, labels)
    uniform = cross_entropy(logits, labels, class_weights=jnp.array([3.0, 3.0, 3.0]))
    np.testing.assert_allclose(plain, uniform, rtol=1e-6)  # a common scale cancels
    upweight_wrong = cross_entropy(logits, labels, class_weights=jnp.array([1.0, 5.0, 1.0]))
    assert upweight_wrong > plain  # the misclassified class counts more
    confident_right = jnp.array([[8.0, 0.0, 0.0]])
    smoothed = cross_entropy(confident_right, jnp.array([0]), label_smoothing=0.2)
    assert smoothed > cross_entropy(confident_right, jnp.array([0]))


def test_mjfn_loss_is_weighted_sum_of_heads():
    rng = np.random.default_rng(1)
    outputs = {h: jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for h in HEADS}
    labels = jnp.array([0, 1, 2, 0, 1])
    weights = (1.0, 0.5, 0.25, 2.0)
    loss, aux = mjfn_loss(outputs, labels, head_loss_weights=weights, label_smoothing=0.1)
    assert set(aux) == {f"loss/{h}" for h in HEADS}
    for h in HEADS:
        np.testing.assert_allclose(
            aux[f"loss/{h}"], _reference_ce(outputs[h], labels, 0.1), rtol=1e-5
        )
    np.testing.assert_allclose(
        loss, sum(w * aux[f"loss/{h}"] for w, h in zip(weights, HEADS, strict=True)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="head_loss_weights"):
        mjfn_loss(outputs, labels, head_loss_weights=(1.0, 1.0))


def test_loss_gradients_are_finite_under_jit():
    model = MJFN(tiny_config(dropout=0.2), rngs=nnx.Rngs(0))
    model.train()

    @nnx.jit
    def loss_and_grads(model, x, y):
        def loss_fn(model):
            return mjfn_loss(model(x), y, head_loss_weights=(1.0,) * 4)[0]

        return nnx.value_and_grad(loss_fn)(model)

    loss, grads = loss_and_grads(model, batch(), jnp.array([0, 1, 2, 1]))
    assert np.isfinite(loss) and loss > 0
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.abs(g).max() > 0 for g in leaves)


def test_summary_counts_and_flops():
    cfg = tiny_config()
    summary = model_summary(cfg)
    real = count_params(MJFN(cfg, rngs=nnx.Rngs(0)))
    assert summary["params"] == real
    total = sum(
        int(np.prod(v.shape))
        for v in jax.tree.leaves(nnx.state(MJFN(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    )
    assert real["total"] == total
    # Heads: 4 linear layers C x width + C biases.
    assert real["heads"] == 3 * (16 + 8 + 8 + 16) + 4 * 3
    # Spatial cost scales with the pixel count: 48x48 vs 32x32 is 2.25x (heads are negligible).
    bigger = model_summary(tiny_config(input_size=48))
    ratio = bigger["flops_per_sample"] / summary["flops_per_sample"]
    assert 2.0 < ratio < 2.5
    # Conv FLOPs lower bound: the stem alone is 2 * 32*32 * 3*3*3 * 4 multiply-adds.
    assert summary["flops_per_sample"] > 2 * 32 * 32 * 27 * 4


def test_summary_cli_prints_table(capsys):
    import json
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "mjfn_jax.models",
        "--config",
        "mjfn_jax/configs/synthetic.py:smoke",
        "--config.model.dropout=0.5",
        "--json",
    ]
    printed = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    for part in ("backbone", "jfm1", "jfm2", "jfm3", "heads", "total", "FLOPs"):
        assert part in printed
    summary = json.loads(printed[printed.index("\n{") :])
    assert f"{summary['params']['total']:,}" in printed
    from mjfn_jax.models.__main__ import main

    status, _, stderr = run_cli(main, cmd[3:] + ["--config.model.fusion=bogus"], capsys)
    assert status == 1 and stderr.strip().startswith("error: model.fusion")


@pytest.mark.parametrize("copies", [1, 3])
def test_ststnet_branch_is_the_published_network_and_half_the_prediction(copies):
    """model.ststnet_branch: the fifth head computes STSTNet as its authors define it (checked
    against the network written with lax.conv and reduce_window, as PyTorch's layers are), and
    'fused' is log(1/2 p_MJFN + 1/2 p_STSTNet), p_MJFN the four heads' mean probability. With
    model.ststnet_copies=3 each copy is that network on its own slice of the parameters,
    p_STSTNet their mean probability and the loss term their mean cross-entropy."""
    from mjfn_jax.models.mjfn import BRANCH, COPIES
    from tests.test_ststnet import _reference_logits

    config = tiny_config(input_size=28, ststnet_branch=True, ststnet_copies=copies)
    model = MJFN(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    branch, channels = model.branch, 16 * copies
    branch.bn.scale[...] = jnp.asarray(rng.normal(size=channels), jnp.float32)  # signs matter
    branch.bn.mean[...] = jnp.asarray(rng.normal(0.2, 0.1, channels), jnp.float32)
    branch.bn.var[...] = jnp.asarray(rng.uniform(0.01, 0.1, channels), jnp.float32)
    model.eval()
    x = batch(3, 28)
    out = forward(model, x)
    assert set(out) == {*HEADS, BRANCH, COPIES, "mjfn", "fused"}
    assert out[BRANCH].shape == (3, 3) and out[COPIES].shape == (3, copies, 3)
    kernel = branch.conv.kernel[...].reshape(27, channels)
    if copies == 1:
        fc, fc_bias = branch.head.kernel[...][None], branch.head.bias[...][None]
    else:
        fc, fc_bias = branch.head_kernel[...], branch.head_bias[...]
    for k in range(copies):  # copy k: channels 16k..16k+15 and its own linear layer
        own = slice(16 * k, 16 * (k + 1))
        params = {
            "conv": kernel[:, own],
            "conv_bias": branch.conv.bias[...][own],
            "bn_scale": branch.bn.scale[...][own],
            "bn_bias": branch.bn.bias[...][own],
            "fc": fc[k],
            "fc_bias": fc_bias[k],
        }
        stats = (branch.bn.mean[...][own], branch.bn.var[...][own])
        np.testing.assert_allclose(
            out[COPIES][:, k], _reference_logits(params, stats, x), rtol=1e-4, atol=1e-4
        )
    if copies > 1:  # each copy drew its own parameters
        assert not np.allclose(kernel[:, :16], kernel[:, 16:32])
        assert not np.allclose(fc[0], fc[1])
    ststnet = np.asarray(jax.nn.softmax(out[COPIES], -1)).mean(1)
    np.testing.assert_allclose(out[BRANCH], np.log(ststnet), atol=1e-5)
    mjfn = np.stack([np.asarray(jax.nn.softmax(out[h], -1)) for h in HEADS]).mean(0)
    np.testing.assert_allclose(out["mjfn"], np.log(mjfn), atol=1e-5)  # the heads' fusion
    np.testing.assert_allclose(out["fused"], np.log(0.5 * mjfn + 0.5 * ststnet), atol=1e-5)
    # its cross-entropy (the copies' mean) is one more term of the loss, weight 1
    labels = jnp.array([0, 2, 1])
    loss, aux = mjfn_loss(out, labels, head_loss_weights=(1.0,) * 4)
    each = [cross_entropy(out[COPIES][:, k], labels) for k in range(copies)]
    np.testing.assert_allclose(aux[f"loss/{BRANCH}"], np.mean(each), rtol=1e-6)
    np.testing.assert_allclose(loss, sum(aux.values()), rtol=1e-6)
    without = count_params(MJFN(tiny_config(input_size=28), rngs=nnx.Rngs(0)))
    counts = count_params(model)  # STSTNet's 1,683 parameters at 3 classes, as published
    assert 27 * 16 + 16 + 2 * 16 + 5 * 5 * 16 * 3 + 3 == 1683
    assert counts["ststnet"] == 1683 * copies
    assert "ststnet" not in without and counts["total"] == without["total"] + 1683 * copies


def test_ststnet_copies_without_the_branch_is_refused():
    with pytest.raises(ValueError, match="model.ststnet_copies=2 needs model.ststnet_branch"):
        MJFN(tiny_config(input_size=28, ststnet_copies=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.ststnet_copies must be an integer >= 1"):
        MJFN(tiny_config(input_size=28, ststnet_branch=True, ststnet_copies=0), rngs=nnx.Rngs(0))
