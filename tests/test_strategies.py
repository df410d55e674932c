"""Every strategy and loop gives the same predictions (4 simulated CPU devices, subprocess):
'vmap' with one fold per device (the CPU default), 'vmap' with several folds per device (a real
vmap inside each device), 'sequential' (batch over 4 devices), 'scan' epochs, and 'auto'."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import jax
from mjfn_jax.runner import Runners
from mjfn_jax.train import train_and_evaluate
sys.path.insert(0, "tests")
from conftest import make_smoke_config as smoke_config, make_tiny_dataset as tiny_dataset

assert jax.device_count() == 4, jax.devices()
out, dataset = {}, tiny_dataset(3, 3)
common = ["train.num_epochs=2", "checkpoint.every_epochs=1"]
class Killed(Exception):
    pass
def kill_after_first(done):
    raise Killed(done)
runners = Runners().__enter__()  # the runs share their programs (the resumed vmap: vmap's)
def run(name, strategy, *extra, after=None):
    config = smoke_config(*common, f"parallel.strategy={strategy}", *extra)
    r = train_and_evaluate(config, f"{sys.argv[1]}/{name}", dataset=dataset, after_epochs=after,
                           runners=runners)
    out[name] = {"probs": r["probs"].tolist(), "y_pred": r["y_pred"].tolist(),
                 "mesh": r["timing"]["mesh"], "trained": r["timing"]["folds_trained_this_run"],
                 "strategy": r["timing"]["strategy"], "auto": r["timing"]["auto"]}
run("vmap", "vmap")
run("sequential_scan", "sequential", "parallel.loop=scan", "parallel.epochs_per_call=2")
try:  # vmap group interrupted after its first epoch, then resumed
    run("vmap_resumed", "vmap", after=kill_after_first)
    raise SystemExit("expected an interruption")
except Killed:
    pass
run("vmap_resumed", "vmap")
if sys.argv[2] == "all":  # the slow tests' runs
    run("sequential", "sequential")  # steps: the loop of every 1-device test
    run("vmap_grouped", "vmap", "parallel.fold_group_size=8")  # 2 folds (or dummies) a device
    run("auto_short", "auto")  # 3 folds x 2 epochs: the trial is not worth it (not cached) ...
    run("auto", "auto", "parallel.auto_trial_budget=0")  # ... the timed trial, always ...
    run("auto_cached", "auto")  # ... then its cached choice
    run("vmap_ema", "vmap", "train.ema_decay=0.5")  # a group's moving averages, exported at once
    run("sequential_ema", "sequential", "train.ema_decay=0.5")
    # seeds x folds: 2 seeds x 3 folds = 6 members of the fold axis, in 2 groups of 4 devices
    config = smoke_config(*common, "parallel.strategy=vmap", "train.seeds=(0, 1)")
    r = train_and_evaluate(config, f"{sys.argv[1]}/vmap_seeds", dataset=dataset, runners=runners)
    out["vmap_seeds"] = {str(s): r["per_seed"][s]["probs"].tolist() for s in (0, 1)}
with open(f"{sys.argv[1]}/out.json", "w") as f:
    json.dump(out, f)
"""


def _run_script(tmp_path_factory, which: str) -> dict:
    workdir = tmp_path_factory.mktemp("strategies")
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
        PYTHONPATH=REPO,
        MJFN_JAX_CACHE_DIR=str(workdir / "cache"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(workdir), which],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(workdir / "out.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """vmap, sequential (scan epochs) and a resumed vmap group: the fast suite's equivalences."""
    return _run_script(tmp_path_factory, "core")


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory):
    """Also grouped vmap, 'auto' (trial, cache, skipped trial), EMA and seeds (slow)."""
    return _run_script(tmp_path_factory, "all")


def test_meshes(runs):
    assert runs["vmap"]["mesh"] == {"fold": 4}  # 3 folds + 1 dummy, one per device
    assert runs["sequential_scan"]["mesh"] == {"data": 4}  # batch of 8 over 4 devices


def test_vmap_and_sequential_agree(runs):
    """vmap's steps and sequential's scan epochs: the fast suite's one sequential run on 4
    devices is the scan loop (the steps loop is every 1-device test's, and the slow tests
    compare it on 4 devices too)."""
    vmap, seq = (np.array(runs[k]["probs"]) for k in ("vmap", "sequential_scan"))
    assert runs["vmap"]["y_pred"] == runs["sequential_scan"]["y_pred"]
    # Same math, different op order (grouped vs plain convolutions, sharded batch statistics)
    np.testing.assert_allclose(vmap, seq, rtol=0, atol=1e-4)
    # the models did learn something fold-specific: predictions are not all equal
    assert np.ptp(vmap, axis=0).max() > 1e-3


@pytest.mark.slow  # its runs: the whole script again (~2 min)
def test_grouped_vmap_and_auto_agree_with_sequential(all_runs):
    """A real vmap over 2 folds per device, and 'auto' (on CPU: one fold per device)."""
    runs = all_runs
    seq = np.array(runs["sequential"]["probs"])
    for name in ("vmap_grouped", "auto"):
        assert runs[name]["y_pred"] == runs["sequential"]["y_pred"], name
        np.testing.assert_allclose(np.array(runs[name]["probs"]), seq, rtol=0, atol=1e-4)


@pytest.mark.slow  # its runs: the whole script again (~2 min)
def test_auto_trial_on_simulated_devices_then_its_cache(all_runs):
    """'auto' timed both CPU candidates on the real program, kept the faster, and the next run
    took the cached choice without a trial."""
    runs = all_runs
    record = runs["auto"]["auto"]
    assert not record["cached"]
    trial = {(t["strategy"], t["fold_group_size"]): t for t in record["trial"]}
    assert set(trial) == {("vmap", 4), ("sequential", 0)}
    assert all(t["s_per_fold_epoch"] > 0 and t["compile_s"] >= 0 for t in trial.values())
    fastest = min(trial.values(), key=lambda t: t["s_per_fold_epoch"])
    assert runs["auto"]["strategy"] == fastest["strategy"] == record["choice"]["strategy"]
    cached = runs["auto_cached"]["auto"]  # (its budget is the default: the cache comes first)
    assert cached["cached"] and cached["choice"] == record["choice"]
    assert runs["auto_cached"]["y_pred"] == runs["auto"]["y_pred"]


@pytest.mark.slow  # its runs: the whole script again (~2 min)
def test_scan_loop_matches_step_loop(all_runs):
    """Epochs as one lax.scan call == one call per step (the CPU default), both sequential."""
    runs = all_runs
    assert runs["sequential"]["mesh"] == {"data": 4}
    assert runs["sequential_scan"]["y_pred"] == runs["sequential"]["y_pred"]
    np.testing.assert_allclose(
        np.array(runs["sequential_scan"]["probs"]), np.array(runs["sequential"]["probs"]), atol=1e-4
    )


def test_vmap_group_resumes_exactly(runs):
    assert runs["vmap_resumed"]["trained"] == 3
    np.testing.assert_allclose(
        np.array(runs["vmap_resumed"]["probs"]), np.array(runs["vmap"]["probs"]), atol=1e-6
    )


@pytest.mark.slow  # its runs: the whole script again (~2 min)
def test_moving_average_under_vmap_and_sequential(all_runs):
    """train.ema_decay: a vmap group's models (exported together) predict what sequential
    training's do, and not what the last step's parameters predict."""
    runs = all_runs
    ema, seq = np.array(runs["vmap_ema"]["probs"]), np.array(runs["sequential_ema"]["probs"])
    np.testing.assert_allclose(ema, seq, atol=1e-4)
    assert np.abs(ema - np.array(runs["vmap"]["probs"])).max() > 1e-3


@pytest.mark.slow  # its runs: the whole script again (~2 min)
def test_seeds_share_the_fold_axis(all_runs):
    """Seed 0's members of a 2-seed vmap run (mixed with seed 1's in the same groups) give
    what the one-seed vmap run gives; seed 1 differs."""
    runs = all_runs
    np.testing.assert_allclose(
        np.array(runs["vmap_seeds"]["0"]), np.array(runs["vmap"]["probs"]), rtol=0, atol=1e-6
    )
    assert np.abs(np.array(runs["vmap_seeds"]["1"]) - np.array(runs["vmap"]["probs"])).max() > 1e-3


@pytest.mark.slow  # its runs: the whole script again (~2 min)
def test_auto_skips_a_trial_that_costs_more_than_its_budget(all_runs):
    """3 folds x 2 epochs: the rule's choice (one fold per device) timed for one epoch, the
    trial judged too dear for the run, nothing cached (the next run still had its trial)."""
    runs = all_runs
    record = runs["auto_short"]["auto"]
    assert record["reason"].startswith("the trial's estimated cost") and not record["cached"]
    estimate = record["estimate"]
    assert estimate["trial_extra_s"] > estimate["budget"] * estimate["run_s"] > 0
    assert record["choice"] == {"strategy": "vmap", "loop": "steps", "fold_group_size": 4}
    assert runs["auto_short"]["strategy"] == "vmap"
    assert runs["auto_short"]["y_pred"] == runs["vmap"]["y_pred"]
