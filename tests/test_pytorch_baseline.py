"""The PyTorch LOSO baseline: same augmentation, schedule and report format as the JAX engine."""

import json
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mjfn_jax.augment import hflip_batch, translate
from mjfn_jax.config_io import load_config
from mjfn_jax.synthetic import make_flow_arrays

SMOKE = "mjfn_jax/configs/synthetic.py:smoke"


@pytest.fixture(autouse=True, scope="module")
def _torch():
    """torch and the baseline, imported when this file's tests run, not when pytest collects
    it: every xdist worker collects every file, and only one runs these."""
    global torch, augment_image, dataset_from_arrays, lr_lambda, make_optimizer, train_loso_torch
    torch = pytest.importorskip("torch")
    from experiments.pytorch_baseline.train import (
        augment_image,
        dataset_from_arrays,
        lr_lambda,
        make_optimizer,
        train_loso_torch,
    )


@pytest.mark.parametrize("flip,shift", [(True, (0, 0)), (False, (1, -2)), (True, (-2, 2))])
def test_augment_image_matches_jax_augment(flip, shift):
    img = np.random.default_rng(0).random((6, 7, 3)).astype(np.float32)
    want = jnp.asarray(img)[None]
    if flip:
        want = hflip_batch(want)
    want = translate(want, jnp.asarray([shift], jnp.int32), 2)[0]
    got = augment_image(img, flip=flip, shift=shift, pad=2)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-7)
    if flip and shift == (0, 0):  # mirrored, and u -> 1 - u; v and strain only mirrored
        np.testing.assert_allclose(got[:, ::-1, 0], 1.0 - img[..., 0], atol=1e-7)
        np.testing.assert_allclose(got[:, ::-1, 1:], img[..., 1:], atol=1e-7)


def test_schedule_matches_optax_warmup_cosine():
    warmup, total = 5, 23
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total, end_value=0.0)
    fn = lr_lambda(warmup, total)
    for step in range(total + 2):
        assert fn(step) == pytest.approx(float(schedule(step)), abs=1e-6), step


def test_optimizer_decays_kernels_only_and_steps_lr():
    config = load_config(SMOKE)
    from experiments.pytorch_baseline.model import MJFNTorch

    model = MJFNTorch(config.model)
    opt, sched = make_optimizer(model, config.train, steps_per_epoch=4)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == config.train.weight_decay and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert opt.param_groups[0]["lr"] == 0.0  # warmup starts at 0, like optax
    opt.step()
    sched.step()
    assert 0.0 < opt.param_groups[0]["lr"] <= config.train.learning_rate


@pytest.fixture(scope="module")
def tiny_torch_dataset():
    return dataset_from_arrays(make_flow_arrays(3, 4, 32, 0))


def test_torch_loso_writes_same_results_as_jax(tiny_torch_dataset, tmp_path):
    config = load_config(SMOKE, ["train.num_epochs=1", "parallel.strategy=sequential"])
    torch.manual_seed(0)
    res = train_loso_torch(config, tiny_torch_dataset, str(tmp_path / "torch"))
    with open(tmp_path / "torch" / "results.json") as f:
        saved = json.load(f)
    assert saved["framework"] == "pytorch" and saved["num_folds"] == 3 and saved["n"] == 12
    assert sorted(res["per_fold"][0]) == sorted(saved["per_fold"][0])
    assert os.path.exists(tmp_path / "torch" / "folds" / "synthetic__s01.pt")
    assert len(saved["timing"]["fold_train_s"]) == 3

    from mjfn_jax.train import train_and_evaluate

    jax_res = train_and_evaluate(config, str(tmp_path / "jax"), dataset=tiny_torch_dataset)
    with open(tmp_path / "jax" / "results.json") as f:
        jax_saved = json.load(f)
    assert set(saved) == set(jax_saved)
    assert set(saved["pooled"]) == set(jax_saved["pooled"])
    assert set(saved["per_source"]) == set(jax_saved["per_source"]) == {"synthetic"}
    assert [r["fold"] for r in saved["per_fold"]] == [r["fold"] for r in jax_saved["per_fold"]]
    assert saved["pooled"]["n"] == jax_res["pooled"]["n"] == 12


@pytest.mark.parametrize("field", ["train.ema_decay", "augment.mixup_alpha"])
def test_rejects_what_it_does_not_have(tiny_torch_dataset, tmp_path, field):
    config = load_config(SMOKE, ["train.num_epochs=1", f"{field}=0.4"])
    with pytest.raises(ValueError, match=f"{field} > 0 has no PyTorch twin"):
        train_loso_torch(config, tiny_torch_dataset, str(tmp_path), write=False)


@pytest.mark.parametrize(
    "setting", ["input_standardize=True", "ststnet_branch=True", "ststnet_copies=3"]
)
def test_the_twin_refuses_model_fields_it_does_not_have(setting):
    from experiments.pytorch_baseline.model import MJFNTorch

    config = load_config(SMOKE, [f"model.{setting}"])
    with pytest.raises(ValueError, match=f"model.{setting} has no PyTorch twin"):
        MJFNTorch(config.model)


def test_rejects_unknown_class_weights(tiny_torch_dataset, tmp_path):
    config = load_config(SMOKE, ["train.num_epochs=1", "loss.class_weights=inverse"])
    with pytest.raises(ValueError, match="class_weights"):
        train_loso_torch(config, tiny_torch_dataset, str(tmp_path), write=False)


def test_a_config_the_baseline_cannot_run_is_one_error_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "experiments/pytorch_baseline/train.py", "--config",
           "mjfn_jax/configs/benchmark.py:quick", "--workdir", str(tmp_path / "w"),
           "--config.model.input_standardize=True"]  # fmt: skip
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "error: model.input_standardize=True has no PyTorch twin (JAX only)"
    )
