"""Parity of MJFN (JAX) with its PyTorch twin MJFNTorch through mjfn_jax.torch_interop."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mjfn_jax.config import base_model_config
from mjfn_jax.models import HEADS, MJFN, count_params, mjfn_loss
from mjfn_jax.torch_interop import load_torch_state_dict, to_torch_state_dict

TOL = 1e-4


def import_torch():
    """torch and the twin, imported when a test needs them, not when pytest collects this file
    (every xdist worker collects every file; one runs these). Other files that use these
    helpers call it first."""
    global torch, MJFNTorch, mjfn_loss_torch
    torch = pytest.importorskip("torch")
    from experiments.pytorch_baseline.model import MJFNTorch, mjfn_loss_torch


@pytest.fixture(autouse=True, scope="module")
def _torch():
    import_torch()


def tiny_config(size=32, blocks=(1, 1, 1, 1), fusion="mean_prob"):
    cfg = base_model_config()
    cfg.input_size, cfg.stem_stride, cfg.widths = size, 1, (4, 8, 8, 16)
    cfg.blocks_per_stage, cfg.fusion, cfg.dropout = blocks, fusion, 0.0
    return cfg


def random_torch_model(cfg, seed: int = 0) -> MJFNTorch:
    """Random weights, and random BN affine/statistics so that eval mode is non-trivial."""
    torch.manual_seed(seed)
    model = MJFNTorch(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        if cfg.fusion == "learned":
            model.fusion_logits.normal_()
    return model


def twin_pair(cfg, seed: int = 0) -> tuple[MJFNTorch, MJFN]:
    torch_model = random_torch_model(cfg, seed)
    jax_model = MJFN(cfg, rngs=nnx.Rngs(seed + 1))  # different init, then overwritten
    load_torch_state_dict(jax_model, torch_model.state_dict())
    return torch_model, jax_model


def inputs(cfg, n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = cfg.get("input_channels", 3)  # 3 per flow view (mjfn_jax.views)
    return rng.uniform(size=(n, cfg.input_size, cfg.input_size, channels)).astype(np.float32)


def assert_outputs_close(torch_out, jax_out, tol=TOL):
    for name in (*HEADS, "fused"):
        diff = np.abs(torch_out[name].detach().numpy() - np.asarray(jax_out[name])).max()
        assert diff <= tol, f"{name}: max abs diff {diff}"


def assert_state_close(torch_model, jax_model, tol=TOL, what="all"):
    expected = torch_model.state_dict()
    got = to_torch_state_dict(jax_model)
    keys = [k for k in expected if not k.endswith("num_batches_tracked")]
    if what == "stats":
        keys = [k for k in keys if "running_" in k]
    for key in keys:
        diff = (expected[key].float() - got[key]).abs().max().item()
        assert diff <= tol, f"{key}: max abs diff {diff}"


@pytest.mark.parametrize(
    "size, blocks, fusion",
    [
        (32, (1, 1, 1, 1), "mean_prob"),
        (48, (1, 1, 1, 1), "learned"),
        (32, (2, 2, 2, 2), "mean_logit"),
    ],
)
def test_eval_outputs_match(size, blocks, fusion):
    assert_eval_twins_match(tiny_config(size, blocks, fusion))


def assert_eval_twins_match(cfg):
    """Same parameter count, and the same eval-mode outputs on random inputs."""
    torch_model, jax_model = twin_pair(cfg)
    assert count_params(jax_model)["total"] == sum(p.numel() for p in torch_model.parameters())
    torch_model.eval()
    jax_model.eval()
    x = inputs(cfg)
    with torch.no_grad():
        torch_out = torch_model(torch.from_numpy(x))
    assert_outputs_close(torch_out, jax_model(jnp.asarray(x)))
    return jax_model


@pytest.mark.parametrize("size, stem", [(28, 1), (48, 2)])
def test_flattened_backbone_head_matches(size, stem):
    """model.backbone_pool='flatten': both flatten the last map in NHWC order, so the head's
    weights map 1:1 and the outputs agree (28 px: a 4x4 map; 48 px, stem 2: 3x3)."""
    cfg = tiny_config(size)
    cfg.stem_stride, cfg.backbone_pool = stem, "flatten"
    jax_model = assert_eval_twins_match(cfg)
    side = {28: 4, 48: 3}[size]
    assert jax_model.backbone_head.kernel.shape == (16 * side * side, cfg.num_classes)


@pytest.mark.parametrize("size", [32, 48])
def test_train_mode_outputs_and_running_stats_match(size):
    cfg = tiny_config(size)
    torch_model, jax_model = twin_pair(cfg, seed=3)
    torch_model.train()
    jax_model.train()
    # A small batch makes torch's unbiased running variance (n / (n - 1), n = 2*4*4 at stage 4)
    # clearly distinguishable from the biased one that nnx.BatchNorm would store.
    x = inputs(cfg, n=2, seed=1)
    torch_out = torch_model(torch.from_numpy(x))
    assert_outputs_close(torch_out, jax_model(jnp.asarray(x)))
    assert_state_close(torch_model, jax_model, tol=1e-5, what="stats")


def test_one_sgd_step_matches():
    cfg = tiny_config(32, (2, 2, 2, 2), "learned")
    torch_model, jax_model = twin_pair(cfg, seed=5)
    x, labels = inputs(cfg, n=6, seed=2), np.array([0, 1, 2, 2, 1, 0], np.int32)
    loss_kwargs = dict(head_loss_weights=(1.0, 0.5, 0.5, 2.0), label_smoothing=0.1)
    weights = np.array([1.0, 2.0, 3.0], np.float32)

    before = {k: v.clone() for k, v in torch_model.state_dict().items()}
    torch_model.train()
    torch_opt = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    torch_loss, _ = mjfn_loss_torch(
        torch_model(torch.from_numpy(x)),
        torch.from_numpy(labels),
        class_weights=torch.from_numpy(weights),
        **loss_kwargs,
    )
    torch_loss.backward()
    torch_opt.step()

    jax_model.train()
    optimizer = nnx.Optimizer(jax_model, optax.sgd(0.1), wrt=nnx.Param)

    def loss_fn(model):
        out = model(jnp.asarray(x))
        return mjfn_loss(
            out, jnp.asarray(labels), class_weights=jnp.asarray(weights), **loss_kwargs
        )[0]

    jax_loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(jax_model)  # one compile, not one per op
    optimizer.update(jax_model, grads)

    assert abs(float(jax_loss) - torch_loss.item()) <= TOL
    assert_state_close(torch_model, jax_model)  # params and running stats after the step
    step_size = max((torch_model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert step_size > 1e-2  # the step really moved the weights


def test_reverse_interop_round_trips_exactly():
    cfg = tiny_config(32, (1, 1, 1, 1), "learned")
    jax_model = MJFN(cfg, rngs=nnx.Rngs(7))
    jax_model.fusion_logits[...] = jnp.array([0.3, -0.2, 0.1, 0.0])
    state_dict = to_torch_state_dict(jax_model)
    torch_model = MJFNTorch(cfg)
    torch_model.load_state_dict(state_dict, strict=True)
    # torch -> JAX into a differently initialised model: every array comes back bit-exact.
    back = MJFN(cfg, rngs=nnx.Rngs(8))
    load_torch_state_dict(back, torch_model.state_dict())
    original = nnx.to_flat_state(nnx.state(jax_model, nnx.Any(nnx.Param, nnx.BatchStat)))
    restored = dict(nnx.to_flat_state(nnx.state(back, nnx.Any(nnx.Param, nnx.BatchStat))))
    for path, var in original:
        np.testing.assert_array_equal(
            np.asarray(var[...]), np.asarray(restored[path][...]), err_msg=str(path)
        )
    torch_model.eval()
    jax_model.eval()
    x = inputs(cfg)
    with torch.no_grad():
        assert_outputs_close(torch_model(torch.from_numpy(x)), jax_model(jnp.asarray(x)))


def test_bad_state_dicts_name_the_key():
    cfg = tiny_config()
    torch_model, jax_model = twin_pair(cfg)
    good = torch_model.state_dict()
    missing = {k: v for k, v in good.items() if k != "jfms.1.fuse.conv.weight"}
    with pytest.raises(KeyError, match="jfms.1.fuse.conv.weight"):
        load_torch_state_dict(jax_model, missing)
    with pytest.raises(KeyError, match="extra.weight"):
        load_torch_state_dict(jax_model, {**good, "extra.weight": torch.zeros(1)})
    bad_shape = {**good, "backbone_head.weight": torch.zeros(3, 17)}
    with pytest.raises(ValueError, match=r"backbone_head.weight.*\(3, 17\).*\(3, 16\)"):
        load_torch_state_dict(jax_model, bad_shape)


def test_library_does_not_import_torch():
    code = (
        "import sys, mjfn_jax, mjfn_jax.models, mjfn_jax.torch_interop; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
