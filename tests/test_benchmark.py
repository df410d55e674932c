"""experiments/benchmark.py --preset quick runs end to end and reports both frameworks."""

import json
import os
import subprocess
import sys

import pytest

from experiments import benchmark_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(300)
@pytest.mark.slow  # ~80-110 s: make bench end to end; its parts have fast tests below
def test_quick_benchmark_end_to_end(tmp_path):
    # The GPU image has no tensorflow_datasets: a stand-in that fails on import proves that
    # the benchmark never imports it.
    blocker = tmp_path / "blocked" / "tensorflow_datasets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tfds is blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "blocked"))
    cmd = [sys.executable, "experiments/benchmark.py", "--preset", "quick", "--out",
           str(tmp_path), "--machine", "testbox", "--no_torch_compile"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "testbox" / "benchmark.json") as f:
        result = json.load(f)
    md = (tmp_path / "testbox" / "benchmark.md").read_text()
    row = result["throughput"]["rows"][0]
    for name in ("jax_step", "torch_eager"):
        assert row["variants"][name]["samples_per_s"] > 0, name
        assert name in md
    assert result["flops"]["train_flops_per_sample"] > result["flops"]["forward_flops_per_sample"]
    loso = result["summary"]["loso"]
    for name in ("jax_auto", "torch_eager"):
        assert "error" not in loso[name], loso[name]
        assert 0.0 <= loso[name]["uf1"]["mean"] <= 1.0
    assert loso["jax_auto"]["strategy"].startswith(("vmap:steps", "sequential:steps"))
    assert loso["jax_auto"]["other_per_fold_ms"] > 0
    assert result["loso_data"] == {"n": 8, "subjects": 2}
    assert result["summary"]["headline"]["torch_eager_over_fastest_jax"] > 0
    assert "Headline" in md and md.strip() in proc.stdout  # the table is printed last
    # each run's disk use; the longer LOSO; the engine's figures against the conv rate
    assert loso["jax_auto"]["disk_mb"] > 0 and loso["torch_eager"]["disk_mb"] > 0
    assert {r["variant"]: r["epochs"] for r in result["loso_long"]} == {
        "jax_auto": 1, "torch_eager": 1}  # fmt: skip
    engine = result["summary"]["engine"]
    folds_per_step = 2 if engine["strategy"].startswith("vmap") else 1  # 2 folds, 1 group
    assert engine["fold_steps"] == folds_per_step * engine["group_steps"]
    assert engine["alone_group_step_ms"] > 0 and engine["inside_group_step_ms"] > 0
    assert engine["overhead_per_step_ms"] == pytest.approx(
        engine["inside_group_step_ms"] - engine["alone_group_step_ms"])  # fmt: skip
    assert result["conv_peak"]["gflops"] > 0 and engine["ceiling_training_s"] > 0
    assert "engine overhead per step" in md and "Convolution rate" in md
    # the step's convolutions and matmuls alone: most of its FLOPs, none beyond them
    arithmetic = result["arithmetic"]
    step_flops = result["flops"]["train_flops_per_sample"] * result["config"]["train"]["batch_size"]
    assert 0.5 * step_flops < arithmetic["flops"] <= step_flops
    assert arithmetic["ops"] >= arithmetic["distinct"] > 0 and arithmetic["seconds"] > 0
    low, high = engine["arithmetic_gflops"]
    assert 0 < low <= high and "The step's arithmetic alone" in md


def test_arithmetic_ops_counts_nested_and_scanned_calls():
    """The training loss's convolutions and matmuls, found in nested jaxprs (a jit inside, a
    scan's body counted once per iteration); a while loop's unknown trip count is an error."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmark_lib import _arithmetic_ops

    def f(x, w, m):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")  # [1, 2, 4, 4]
        z = jax.jit(lambda a: a @ m)(y.reshape(8, 4))
        z, _ = jax.lax.scan(lambda c, _: (c @ m, None), z, length=3)
        return jnp.sum(z)

    args = (jnp.ones((1, 3, 4, 4)), jnp.ones((2, 3, 3, 3)), jnp.ones((4, 4)))
    found = {}
    _arithmetic_ops(jax.make_jaxpr(f)(*args).jaxpr, found)
    counts = sorted((prim.name, count) for prim, _, _, count in found.values())
    # one jitted matmul and three scanned ones (same shapes: one entry)
    assert sum(c for n, c in counts if n == "dot_general") == 4
    assert [c for n, c in counts if n == "conv_general_dilated"] == [1]
    loop = jax.make_jaxpr(lambda m: jax.lax.while_loop(lambda c: c[0, 0] < 9, lambda c: c @ m, m))
    with pytest.raises(ValueError, match="while loop"):
        _arithmetic_ops(loop(jnp.ones((4, 4))).jaxpr, {})


def test_summary_ratios_and_failures():
    result = {
        "throughput": {"rows": [{"batch_size": 4, "variants": {
            "jax_step": {"samples_per_s": 30.0}, "torch_eager": {"samples_per_s": 10.0},
            "torch_compiled": {"error": "RuntimeError: no compiler"}}}]},
        "loso": [
            {"variant": "jax_sequential", "seed": 0, "wall_s": 10.0, "uf1": 0.5, "uar": 0.5,
             "accuracy": 0.6},
            {"variant": "torch_eager", "seed": 0, "wall_s": 40.0, "uf1": 0.4, "uar": 0.5,
             "accuracy": 0.5},
            {"variant": "torch_compiled", "seed": 0, "wall_s": 1.0, "error": "boom"},
        ],
    }  # fmt: skip
    s = benchmark_report.summarize(result)
    assert s["throughput_ratios"][0]["jax_step/torch_eager"] == pytest.approx(3.0)
    assert s["throughput_ratios"][0]["best_jax/best_torch"] == pytest.approx(3.0)
    assert s["loso"]["torch_compiled"]["failed"] == 1 and "error" in s["loso"]["torch_compiled"]
    assert s["headline"]["torch_eager_over_fastest_jax"] == pytest.approx(4.0)
    assert s["headline"]["fastest_torch"] == "torch_eager"


def test_merge_keeps_other_commands_results(tmp_path):
    from experiments.benchmark import _merge_previous

    def run(variant, seed):
        return {"variant": variant, "seed": seed, "wall_s": 1.0 + seed}

    previous = {"preset": "gpu", "config": {"a": [1, 2]}, "env": {"date": "d", "command": "c"},
                "total_s": 5.0, "throughput": {"rows": []},
                "loso": [run("jax_vmap", 0), run("torch_eager", 0)]}  # fmt: skip
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(previous))
    current = {"preset": "gpu", "config": {"a": (1, 2)}, "total_s": 1.0,
               "loso": [run("jax_vmap", 1), run("torch_eager", 0)]}  # fmt: skip
    merged = _merge_previous(current, str(path))
    assert merged["throughput"] == {"rows": []} and merged["total_s"] == 6.0
    assert [(r["variant"], r["seed"]) for r in merged["loso"]] == [
        ("jax_vmap", 0), ("torch_eager", 0), ("jax_vmap", 1)]  # fmt: skip
    other = {"preset": "cpu", "config": {"a": (1, 2)}, "total_s": 1.0}
    assert "throughput" not in _merge_previous(other, str(path))  # another preset: no merge


def test_merge_keeps_throughput_variants_of_other_commands(tmp_path):
    """A command that measured only torch_compiled at batch 32 keeps the earlier command's
    jax_step at 32 and its batch 64 row; its own figure wins where both measured."""
    from experiments.benchmark import _merge_previous

    def rows(**by_batch):
        return {"rows": [{"batch_size": int(b[1:]), "variants": v} for b, v in by_batch.items()]}

    previous = {"preset": "gpu", "config": {}, "env": {"date": "d", "command": "c"},
                "total_s": 5.0, "throughput": rows(b32={"jax_step": {"step_s": 1.0},
                "torch_compiled": {"step_s": 9.0}}, b64={"jax_step": {"step_s": 2.0}})}  # fmt: skip
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(previous))
    current = {"preset": "gpu", "config": {}, "total_s": 1.0,
               "throughput": rows(b32={"torch_compiled": {"step_s": 3.0}})}  # fmt: skip
    merged = _merge_previous(current, str(path))["throughput"]["rows"]
    assert [r["batch_size"] for r in merged] == [32, 64]
    assert merged[0]["variants"] == {"jax_step": {"step_s": 1.0}, "torch_compiled": {"step_s": 3.0}}
    assert merged[1]["variants"] == {"jax_step": {"step_s": 2.0}}


@pytest.mark.slow
def test_seeds_wallclock_quick(tmp_path):
    """3 seeds in one process vs 3 processes (5 CLI processes of the quick preset, ~45 s): the
    per-seed UF1 must agree (the script checks it) and the table is written."""
    from experiments import seeds_wallclock

    seeds_wallclock.main(
        ["--config", "mjfn_jax/configs/benchmark.py:quick", "--epochs", "1",
         "--out", str(tmp_path), "--machine", "m"]
    )  # fmt: skip
    with open(tmp_path / "m" / "seeds_wallclock.json") as f:
        row = json.load(f)["rows"][0]
    assert set(row["one_run"]["seed_uf1"]) == {"0", "1", "2"}
    assert len(row["separate"]) == 3 and row["separate_wall_s"] > 0
    assert "speed-up" in (tmp_path / "m" / "seeds_wallclock.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_session_script_on_the_quick_preset(tmp_path):
    """experiments/gpu_session.sh end to end on the quick preset (~3 min on 2 cores): every
    step runs, each under its limit, and what a lease brings back is written to OUT."""
    out, results = tmp_path / "out", tmp_path / "results"
    env = dict(os.environ, PYTHON=sys.executable, RESULTS=str(results),
               MJFN_JAX_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    cmd = ["bash", "experiments/gpu_session.sh", str(out), "500", "quick"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=580, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    steps = ("imports", "loso_cli_jax", "loso_cli_torch", "profile", "loso_cli_jax_warm")
    for step in (*steps, "loso_cli_jax_bf16", "loso_cli_torch_again", "throughput_fp32"):
        assert f"== {step}: rc=0" in log, log[-3000:]
    machine = next(results.glob("*-quick"))
    for name in ("loso_cli_jax", "loso_cli_jax_warm", "loso_cli_jax_bf16", "loso_cli_torch"):
        assert json.loads((machine / f"{name}_results.json").read_text())["pooled"]["uf1"] >= 0
    warm = json.loads((machine / "loso_cli_jax_warm_results.json").read_text())["timing"]
    cold = json.loads((machine / "loso_cli_jax_results.json").read_text())["timing"]
    if "estimate" in cold["auto"]:  # the trial was not worth this tiny run: not cached either
        assert "estimate" in warm["auto"] and not warm["auto"]["cached"]
    else:  # the cold run's trial chose; the warm one reused it
        assert warm["auto"]["cached"]
    assert warm["auto"]["choice"] == cold["auto"]["choice"]
    assert (out / "results.tgz").stat().st_size > 0 and len(list(out.iterdir())) <= 8
    bench = json.loads(machine.joinpath("benchmark.json").read_text())
    variants = bench["throughput"]["rows"][0]["variants"]  # merged over the script's commands
    assert {"jax_step", "jax_scan", "torch_eager"} <= set(variants)


def test_engine_figures_from_a_runs_timing():
    """Fold-steps from the samples trained, group steps from the groups the run formed
    (padded to the mesh), the compiles inside and outside the training calls taken out."""
    from experiments.benchmark_lib import engine_figures
    from mjfn_jax.config_io import load_config

    config = load_config("mjfn_jax/configs/benchmark.py:cpu")  # batch 32, 2 epochs
    timing = {
        "compile_by_program": {"the init": 0.5, "the prediction": 0.25, "the training step": 1.0},
        "folds_trained_this_run": 68, "samples_per_s": 1904 * 32 / 10.0, "train_s": 10.0,
        "strategy": "vmap", "loop": "steps", "fold_group_size": 2, "mesh": {"fold": 2},
        "wall_s": 12.75, "phases_s": {"init": 1.36, "training calls": 10.0},
    }  # fmt: skip
    f = engine_figures(timing, config)
    assert (f["fold_steps"], f["group_steps"], f["group_slots"]) == (1904, 952, 2)
    assert f["training_calls_net_s"] == pytest.approx(9.0)  # the step's compile taken out
    assert f["other_per_fold_ms"] == pytest.approx(1e3 * (12.75 - 10.0 - 0.75) / 68)
    assert f["phases_per_fold_ms"]["init"] == pytest.approx(20.0)
    # 17 folds a group on one device: 4 groups (68 = 4 x 17), 14 steps an epoch
    f = engine_figures(timing | {"fold_group_size": 17, "mesh": {"fold": 1}}, config)
    assert (f["group_steps"], f["group_slots"]) == (4 * 2 * 14, 17)
    f = engine_figures(timing | {"strategy": "sequential", "fold_group_size": 0}, config)
    assert (f["group_steps"], f["group_slots"]) == (1904, 1)
