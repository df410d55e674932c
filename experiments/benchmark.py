"""JAX engine vs. the conventional PyTorch LOSO trainer, in ONE process, on the same data.

Measures (all on synthetic flow images from ``mjfn_jax.synthetic.make_flow_arrays``; no tfds):
- training throughput (samples/s) of one training step per batch size: JAX jitted engine step,
  the engine's epoch-as-one-``lax.scan`` call, PyTorch eager and ``torch.compile``d; the
  frameworks alternate and medians are taken; compile / warm-up time separately;
- forward+backward FLOPs per sample (XLA cost analysis of the grad fn), achieved FLOP/s;
- peak memory (host RSS on CPU, device allocator peaks on GPU);
- the full LOSO wall time at composite scale (442 samples, 68 subjects) for JAX vmap, JAX
  sequential, PyTorch eager and compiled, and UF1/UAR parity of both trainers over seeds; a
  longer LOSO (10 epochs on the cpu preset) of JAX ``auto`` and PyTorch eager; each run's disk
  use (its workdir after the run);
- the engine's own figures from the first ``auto`` LOSO: its step program inside the LOSO vs
  the same program called alone (the engine's overhead per step), the engine's time per fold
  outside the training calls and compiles, and FLOP/s against the machine's measured
  convolution rate (a lone 3x3 convolution forward + backward) with the ceiling it implies.

Usage: python experiments/benchmark.py --preset cpu|gpu|quick [--machine NAME] [--out DIR]
Writes <out>/<machine>/benchmark.md and benchmark.json (default out: experiments/results).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import benchmark_lib as lib  # noqa: E402
from experiments import benchmark_report as report  # noqa: E402
from experiments.results_io import write_result  # noqa: E402
from mjfn_jax import cli
from mjfn_jax.config_io import parse_args_with_overrides  # noqa: E402

# Model / data / budget per preset. 'cpu' must finish in < 15 min on the 2-core dev machine.
PRESETS = {
    "quick": dict(  # the end-to-end test: seconds of work, most of it XLA compiles
        config="mjfn_jax/configs/benchmark.py:quick",
        overrides=[],
        batch_sizes=(8,),
        steps=2,
        repeats=2,
        scan_steps=2,
        step_variants=("jax_step", "torch_eager"),
        loso=dict(num_subjects=2, num_samples=8),
        seeds=(0,),
        loso_variants=("jax_auto", "torch_eager"),
        parity_variants=("jax_auto", "torch_eager"),
        # the epochs above: the rows' plumbing, without compiling another program
        long_loso=dict(epochs=1, variants=("jax_auto", "torch_eager")),
        alone_calls=4,
        conv_peak=dict(repeats=3),
        arithmetic=dict(calls=2, rounds=1),
    ),
    "cpu": dict(  # ~15 min on the 2-core dev machine (XLA:CPU compiles and while loops)
        config="mjfn_jax/configs/benchmark.py:cpu",  # shared with both trainers' CLIs
        overrides=[],
        batch_sizes=(16, 32, 64),
        # Compiling these costs 30-90 s per shape on 2 cores: measured at batch 32 only.
        single_batch_variants=("jax_scan", "torch_compiled"),
        steps=5,
        repeats=3,
        scan_steps=8,
        loso=dict(num_subjects=68, num_samples=442),
        seeds=(0, 1, 2),
        loso_variants=("jax_auto", "jax_sequential", "torch_eager", "torch_compiled"),
        parity_variants=("jax_auto", "torch_eager"),
        long_loso=dict(epochs=10, variants=("jax_auto", "torch_eager")),  # the first seed
        alone_calls=200,  # the LOSO's step program alone, for the engine's overhead per step
        conv_peak=dict(repeats=30),  # 3x3, 32 channels, 16x16: the cpu model's middle layers
        arithmetic=dict(calls=30, rounds=5),  # the step's own convolutions and matmuls alone
    ),
    "gpu": dict(
        config="mjfn_jax/configs/benchmark.py:gpu",
        # 17 folds per vmapped group: 68 x ResNet-18-size states + activations fit one GPU.
        overrides=["parallel.fold_group_size=17"],
        batch_sizes=(32, 64, 128, 256),
        steps=20,
        repeats=5,
        scan_steps=14,
        loso=dict(num_subjects=68, num_samples=442),
        seeds=(0, 1, 2),
        loso_variants=lib.LOSO_VARIANTS,
        parity_variants=("jax_auto", "torch_eager"),
        alone_calls=200,
        conv_peak=dict(repeats=50, size=14, channels=256),  # the reference model's stage 3
        # No DataLoader workers: the data are in memory, and workers fork this process, which
        # holds JAX's threads (PyTorch warned of a deadlock on the H200, where the in-process
        # run with 4 workers did not finish in 120 s; the CLI with none took 111 s).
        torch_workers=0,
    ),
}
STEP_VARIANTS = ("jax_step", "jax_scan", "torch_eager", "torch_compiled")


def bench_throughput(config, preset: dict, compile_torch: bool) -> dict:
    """Per batch size: compile/warm-up, then ``repeats`` rounds alternating the variants."""
    rows = []
    for batch in preset["batch_sizes"]:
        only_at = preset.get("single_batch_variants", ())  # at the config's batch size only
        variants = [
            v
            for v in preset.get("step_variants", STEP_VARIANTS)
            if (compile_torch or v != "torch_compiled")
            and (v not in only_at or batch == config.train.batch_size)
        ]
        runners, row = {}, {"batch_size": batch, "variants": {}}
        for name in variants:  # build + warm up each; memory peak while it runs
            with lib.PeakMemory(name) as mem:
                try:
                    runner = lib.make_runner(name, config, batch, preset["scan_steps"])
                    warm_s = runner.warm_up()
                    runner.run(preset["steps"])
                except Exception as e:  # noqa: BLE001 (recorded honestly, e.g. compile fails)
                    row["variants"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
                    print(f"  {name} B={batch}: FAILED {e!r:.200}", flush=True)
                    continue
            runners[name] = runner
            row["variants"][name] = {"warmup_s": warm_s, "memory": mem.result}
        times = {name: [] for name in runners}
        for _ in range(preset["repeats"]):
            for name, runner in runners.items():  # alternate frameworks within a round
                times[name].append(runner.run(preset["steps"]))
        for name, runner in runners.items():
            samples = runner.samples_per_run(preset["steps"])
            med = float(np.median(times[name]))
            row["variants"][name] |= {
                "samples_per_s": samples / med,
                "step_s": med * batch / samples,
                "times_s": times[name],
            }
            print(f"  B={batch} {name}: {samples / med:.1f} samples/s", flush=True)
        del runners
        rows.append(row)
    return {"rows": rows, "steps_per_timing": preset["steps"], "repeats": preset["repeats"]}


def bench_loso(config, dataset, preset: dict, compile_torch: bool, root: str) -> list[dict]:
    """Full LOSO runs: every variant at the first seed, parity variants at the others."""
    runs = []
    for i, seed in enumerate(preset["seeds"]):
        names = preset["loso_variants"] if i == 0 else preset["parity_variants"]
        for name in names:
            if name == "torch_compiled" and not compile_torch:
                continue
            workdir = tempfile.mkdtemp(prefix=f"{name}_s{seed}_", dir=root)
            print(f"LOSO {name} seed {seed} ...", flush=True)
            with lib.PeakMemory(name) as mem:
                run = lib.run_loso(
                    name, config, dataset, seed, workdir, preset.get("torch_workers", 0)
                )
            run |= {"variant": name, "seed": seed, "memory": mem.result}
            print(
                f"  {name} seed {seed}: {run.get('wall_s', float('nan')):.1f}s "
                f"UF1 {run.get('uf1')} {run.get('error', '')}",
                flush=True,
            )
            if name == "jax_auto" and i == 0 and "error" not in run and preset.get("alone_calls"):
                run["step_alone"] = lib.engine_step_alone(
                    config, dataset, workdir, run["execution"], preset["alone_calls"]
                )
            runs.append(run)
            shutil.rmtree(workdir, ignore_errors=True)
    return runs


def bench_long_loso(config, dataset, preset: dict, root: str) -> list[dict]:
    """The preset's longer LOSO (``long_loso``: more epochs, first seed, a few variants)."""
    spec, runs = preset["long_loso"], []
    for name in spec["variants"]:
        workdir = tempfile.mkdtemp(prefix=f"{name}_long_", dir=root)
        print(f"LOSO {name} {spec['epochs']} epochs ...", flush=True)
        run = lib.run_loso(name, config, dataset, preset["seeds"][0], workdir,
                           preset.get("torch_workers", 0), epochs=spec["epochs"])  # fmt: skip
        run |= {"variant": name, "seed": preset["seeds"][0]}
        print(f"  {name}: {run.get('wall_s', float('nan')):.1f}s {run.get('error', '')}")
        runs.append(run)
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _merge_previous(result: dict, path: str) -> dict:
    """Sections this run skipped, and LOSO runs of (variant, seed) pairs it did not run, from
    an earlier run of the same preset and config (a GPU session may allow ~10 min per
    command: run --skip_loso, then --skip_throughput --seeds 0, then --seeds 1,2 ...)."""
    if not os.path.exists(path):
        return result
    with open(path) as f:
        previous = json.load(f)
    same_config = previous.get("config") == json.loads(json.dumps(result["config"]))
    if previous.get("preset") != result["preset"] or not same_config:
        return result
    merged = False
    for key in ("throughput", "loso", "loso_data", "loso_long", "conv_peak", "arithmetic"):
        if key not in result and key in previous:
            result[key], merged = previous[key], True
    if "throughput" in previous and result["throughput"] is not previous["throughput"]:
        # variants this run did not measure, per batch size, from the earlier run
        rows = {r["batch_size"]: r for r in result["throughput"]["rows"]}
        for old in previous["throughput"]["rows"]:
            row = rows.setdefault(old["batch_size"], {"batch_size": old["batch_size"]})
            extra = {
                k: v for k, v in old["variants"].items() if k not in row.setdefault("variants", {})
            }
            row["variants"] = extra | row["variants"]
            merged = merged or bool(extra)
        result["throughput"]["rows"] = sorted(rows.values(), key=lambda r: r["batch_size"])
    if "loso" in previous and result.get("loso") is not previous["loso"]:
        done = {(r["variant"], r["seed"]) for r in result["loso"]}
        older = [r for r in previous["loso"] if (r["variant"], r["seed"]) not in done]
        if older:
            result["loso"], merged = sorted(older + result["loso"], key=lambda r: r["seed"]), True
    if merged:
        result["merged_from"] = {"env": previous["env"], "total_s": previous.get("total_s")}
        result["total_s"] += previous.get("total_s") or 0.0
    return result


def _names(text: str, known: tuple, flag: str) -> tuple:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("python experiments/benchmark.py", __doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--machine", default=None, help="results folder name (default: derived)")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--no_torch_compile", action="store_true")
    parser.add_argument("--skip_loso", action="store_true", help="throughput only")
    parser.add_argument("--skip_throughput", action="store_true", help="LOSO only")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the preset's)")
    parser.add_argument("--batch_sizes", default="", help="comma-separated (default: preset's)")
    parser.add_argument(
        "--step_variants", default="", help=f"comma-separated of {STEP_VARIANTS} (default: all)"
    )
    parser.add_argument(
        "--loso_variants", default="", help="comma-separated LOSO variants (default: preset's)"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge with <out>/<machine>/benchmark.json of the same preset",
    )
    parser.add_argument("--note", default="", help="a sentence for benchmark.md (conditions)")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: torch's default, all cores)",
    )
    parser.epilog = "Config overrides on top of the preset: --config.<group>.<field>=value."
    args, overrides = parse_args_with_overrides(parser, argv)
    preset = dict(PRESETS[args.preset])
    if args.seeds:
        preset["seeds"] = tuple(args.seeds)
    if args.batch_sizes:
        try:
            preset["batch_sizes"] = tuple(int(x) for x in args.batch_sizes.split(","))
        except ValueError:
            raise SystemExit(
                f"--batch_sizes={args.batch_sizes}: needs integers, e.g. 32,64"
            ) from None
    if args.step_variants:
        preset["step_variants"] = _names(args.step_variants, STEP_VARIANTS, "--step_variants")
    if args.loso_variants:  # at every seed: a split run picks its variants per command
        names = _names(args.loso_variants, lib.LOSO_VARIANTS, "--loso_variants")
        preset["loso_variants"] = preset["parity_variants"] = names
    t0 = time.perf_counter()
    from mjfn_jax.parallel import split_cpu_devices

    split_cpu_devices()  # as the JAX CLI does: jax_vmap trains one fold per CPU core
    lib.cold_torch_compile()
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    env = lib.environment(" ".join(["python", *sys.argv]) if argv is None else str(argv))
    machine = args.machine or lib.default_machine_name()
    config = lib.load_preset_config(preset["config"], [*preset["overrides"], *overrides])
    compile_torch = not args.no_torch_compile
    print(f"benchmark preset {args.preset} on {env['device']} -> {machine}", flush=True)

    result = {"preset": args.preset, "machine": machine, "env": env, "preset_spec": preset}
    if args.note:
        result["note"] = args.note
    result["config"] = lib.config_dict(config)
    result["flops"] = lib.flops_per_sample(config, min(preset["batch_sizes"]))
    if preset.get("conv_peak"):
        result["conv_peak"] = lib.conv_peak(**preset["conv_peak"])
        print(f"conv peak: {result['conv_peak']['gflops']:.1f} GFLOP/s", flush=True)
    if preset.get("arithmetic"):
        a = lib.arithmetic_alone(config, config.train.batch_size, **preset["arithmetic"])
        result["arithmetic"] = a
        print(
            f"the step's convolutions and matmuls alone: {1e3 * a['seconds']:.2f} ms "
            f"({a['ops']} ops, {a['lanes']} at once), {a['gflops']:.1f} GFLOP/s",
            flush=True,
        )
    if not args.skip_throughput:
        result["throughput"] = bench_throughput(config, preset, compile_torch)
    if not args.skip_loso:
        dataset = lib.synthetic_dataset(config, **preset["loso"])
        result["loso_data"] = {"n": len(dataset.labels), "subjects": len(set(dataset.subjects))}
        root = tempfile.mkdtemp(prefix="mjfn_bench_")
        try:
            result["loso"] = bench_loso(config, dataset, preset, compile_torch, root)
            if preset.get("long_loso"):
                result["loso_long"] = bench_long_loso(config, dataset, preset, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    result["total_s"] = time.perf_counter() - t0
    result["env"]["load_avg_at_end"] = os.getloadavg()
    out_dir = os.path.join(args.out, machine)
    os.makedirs(out_dir, exist_ok=True)
    if args.merge:  # a split run: keep the other commands' results
        result = _merge_previous(result, os.path.join(out_dir, "benchmark.json"))
    result["summary"] = report.summarize(result)
    write_result(out_dir, "benchmark", result, report.to_markdown(result))
    return result


if __name__ == "__main__":
    main()
