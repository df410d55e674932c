"""Where a training step's time goes, and where a LOSO run's time goes outside the steps.

    python -m experiments.profile_step [--config experiments/configs/benchmark.py:cpu]
        [--steps 50] [--machine NAME]

1. The engine's training step of ONE fold (jitted alone): its wall time, then the same model cut
   into parts (forward; forward + backward; the optimizer update alone), each jitted alone.
2. A jax.profiler trace of the step, summarised per XLA op category (convolutions, YNN/XNN
   library fusions, copies and transposes, loop fusions ...): thread time per step, op count.
3. A short LOSO run through ``train_and_evaluate``: compile, training and the rest (init,
   predict, saves, result files) per fold.
Writes experiments/results/<machine>/profile_step.{md,json}.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.results_io import write_result  # noqa: E402
from mjfn_jax.config_io import load_config  # noqa: E402
from mjfn_jax.data import dataset_from_config  # noqa: E402
from mjfn_jax.engine import FoldInputs, FoldProgram, jit_init  # noqa: E402
from mjfn_jax.models import mjfn_loss  # noqa: E402
from mjfn_jax.parallel import OUTSIDE_TRAINING_CALLS  # noqa: E402


def _time(compiled, args, steps: int, donate: bool = False) -> tuple[float, tuple]:
    """Median seconds per call over 3 rounds of ``steps`` calls (after 5 warm-up calls), and
    the arguments to continue with (a donated first argument is replaced by the output's)."""
    out = None
    for _ in range(5):
        out = compiled(*args)
        args = (out[0], *args[1:]) if donate else args
    rounds = []
    for _ in range(3):
        jax.block_until_ready(out)
        start = time.perf_counter()
        for _ in range(steps):
            out = compiled(*args)
            args = (out[0], *args[1:]) if donate else args
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - start) / steps)
    return float(np.median(rounds)), args


def _category(name: str) -> str:
    base = re.sub(r"\.\d+$", "", name)
    if "conv" in base or "implicit_gemm" in base:  # GPU: cuDNN's convolution kernels
        return "convolution"
    if base.startswith(("ynn_fusion", "xnn_fusion")):
        return "YNN/XNN library fusion (dots, reductions)"
    if base in ("copy", "transpose_copy_fusion", "copy_reverse_fusion", "copy_bitcast_fusion"):
        return "copy / transpose"
    if base.startswith("while"):
        return "while loop"
    if base.startswith(("dot", "cublas")) or "gemm" in base:
        return "dot"
    return "other fusions (elementwise, BN, gather, augmentation)"


def one_fold(config) -> tuple[dict, FoldInputs, int]:
    """The setting of the step measurements here (and in bn_passes, handover_copy): the config's
    dataset on the device, one fold that trains on all of it, and its steps per epoch."""
    dataset = dataset_from_config(config.data, config.model.input_size, config.seed)
    n = len(dataset.labels)
    data = {"images": jnp.asarray(dataset.images), "labels": jnp.asarray(dataset.labels)}
    fold = FoldInputs.whole_dataset(jax.random.key(0), n, config.model.num_classes)
    return data, fold, max(1, n // config.train.batch_size)


def step_args(program: FoldProgram, data: dict, fold: FoldInputs) -> tuple:
    """Arguments of ``program.train_step_at`` for the first step of a fresh train state."""
    state = jit_init(program)(fold.key)
    plan = jax.jit(program.epoch_plan)(fold, jnp.int32(0))
    return state, fold, data, plan, jnp.int32(0)


def profile_step(config, steps: int) -> dict:
    data, fold, steps_per_epoch = one_fold(config)
    program = FoldProgram(config, steps_per_epoch=steps_per_epoch)
    args = step_args(program, data, fold)
    start = time.perf_counter()
    step = jax.jit(program.train_step_at, donate_argnums=0).lower(*args).compile()
    compile_s = time.perf_counter() - start
    flops = (step.cost_analysis() or {}).get("flops")
    result = {"compile_s": compile_s, "flops_per_step_xla": flops}
    seconds, args = _time(step, args, steps, donate=True)
    result["step_ms"] = 1e3 * seconds
    state = args[0]

    batch = config.train.batch_size
    images = data["images"][:batch].astype(jnp.float32) / 255.0
    labels = data["labels"][:batch]
    key = jax.random.key(1)
    weights = tuple(config.model.head_loss_weights)

    def loss(params, stats):
        model = program.bind(params, stats, key, train=True)
        return mjfn_loss(model(images), labels, head_loss_weights=weights)[0]

    def forward(params, stats):
        return program.bind(params, stats, key, train=True)(images)["fused"]

    def optimizer(params, opt_state):
        updates, opt_state = program.tx.update(params, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    parts = {
        "forward": (forward, (state.params, state.batch_stats)),
        "forward + backward": (jax.grad(loss), (state.params, state.batch_stats)),
        "optimizer update": (optimizer, (state.params, state.opt_state)),
    }
    result["parts_ms"] = {
        name: 1e3 * _time(jax.jit(fn).lower(*a).compile(), a, steps)[0]
        for name, (fn, a) in parts.items()
    }

    try:
        result.update(_trace(step, args, steps))
    except Exception as e:  # noqa: BLE001 - e.g. no CUPTI on a GPU machine: the rest still runs
        result["trace_error"] = f"{type(e).__name__}: {e}"
    return result


def _trace(step, args, steps: int) -> dict:
    """A jax.profiler trace of ``steps`` calls of ``step``, summarised per op category."""
    trace_dir = tempfile.mkdtemp(prefix="mjfn_trace_")
    jax.block_until_ready(args)
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
        args = (step(*args)[0], *args[1:])
    jax.block_until_ready(args)
    jax.profiler.stop_trace()
    xspace = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    thread_ns, count, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    for _plane, line in _op_lines(jax.profiler.ProfileData.from_file(xspace)):
        for event in line.events:
            if event.name.startswith(("ThunkExecutor", "end:", "Threadpool", "Slinky")):
                continue
            thread_ns[_category(event.name)] += event.duration_ns
            count[_category(event.name)] += 1
            by_op[_short(event.name)] += event.duration_ns
    return {
        "xla_ops_per_step": {
            name: {"thread_ms": ns / steps / 1e6, "ops": count[name] / steps}
            for name, ns in thread_ns.most_common()
        },
        "top_ops_ms_per_step": {k: ns / steps / 1e6 for k, ns in by_op.most_common(12)},
    }


def _short(name: str) -> str:
    """An op or kernel name without instance numbers or argument lists, at most 90 chars."""
    return re.sub(r"\.\d+$", "", name.split("(")[0].split(" = ")[0])[:90]


def _op_lines(profile):
    """The trace lines that hold XLA's ops: XLA:CPU's worker threads ("XLAEigen"); on a GPU
    the device plane's "XLA Ops" line (kernel time on the device, not host threads)."""
    planes = list(profile.planes)
    gpu = [p for p in planes if p.name.startswith("/device:GPU")]
    if gpu:
        lines = [(p, ln) for p in gpu for ln in p.lines if ln.name == "XLA Ops"]
        return lines or [(p, ln) for p in gpu for ln in p.lines if ln.name.startswith("Stream")]
    return [(p, ln) for p in planes for ln in p.lines if "XLAEigen" in ln.name]


def profile_loso(config, subjects: int, samples: int) -> dict:
    from mjfn_jax.train import train_and_evaluate

    config = config.copy_and_resolve_references()
    config.data.generated_subjects, config.data.generated_samples = subjects, samples
    config.parallel.auto_trial = False  # the rule (the CPU trial's winner): compiles in the run
    config.parallel.compilation_cache = False  # cold compiles, whatever ran before
    with tempfile.TemporaryDirectory(prefix="mjfn_profile_") as workdir:
        timing = train_and_evaluate(config, workdir)["timing"]
    compiles = timing["compile_by_program"]
    outside = OUTSIDE_TRAINING_CALLS
    train_compile_s = sum(v for k, v in compiles.items() if k not in outside)
    steps_s = timing["train_s"] - train_compile_s
    # engine time outside the training calls and outside every compile: init and predict calls,
    # host transfers, saves, result files, progress bars
    other = timing["wall_s"] - timing["train_s"] - sum(compiles.get(k, 0.0) for k in outside)
    phases = dict(timing["phases_s"])  # less the compiles their first calls paid
    phases["init"] -= compiles.get("the init", 0.0)
    phases["predict"] -= compiles.get("the prediction", 0.0)
    phases["training calls"] -= train_compile_s
    return timing | {
        "phases_per_fold_ms": {k: 1e3 * v / subjects for k, v in phases.items()},
        "folds": subjects,
        "steps_s": steps_s,
        "other_s": other,
        "other_per_fold_ms": 1e3 * other / subjects,
    }


def to_markdown(result: dict) -> str:
    step = result["step"]
    lines = [
        f"# Training-step profile: `{result['config']}` ({result['machine']})",
        "",
        f"`{result['command']}`, {result['date']}, jax {jax.__version__}, {result['device']}.",
        "",
        f"- one fold's training step: **{step['step_ms']:.2f} ms** "
        f"(compile {step['compile_s']:.1f} s); "
        f"XLA counts {step['flops_per_step_xla'] / 1e9:.3f} GFLOP/step"
        + (
            " (on a GPU without cuDNN's convolutions: benchmark.md counts on XLA:CPU)"
            if "(gpu)" in result["device"]
            else ""
        ),
        "- parts, each jitted alone: "
        + "; ".join(f"{k} {v:.2f} ms" for k, v in step["parts_ms"].items()),
        "",
        "| XLA op category | thread time / step (ms) | ops / step |",
        "|---|---:|---:|",
    ]
    busy = sum(row["thread_ms"] for row in step.get("xla_ops_per_step", {}).values())
    lines.insert(
        -3,
        f"- ops' busy time per step in the trace (device time on a GPU, summed over "
        f"threads on a CPU): {busy:.2f} ms against the step's {step['step_ms']:.2f} ms",
    )
    if "trace_error" in step:
        lines.append(f"| (no trace: {step['trace_error']}) | | |")
    for name, row in step.get("xla_ops_per_step", {}).items():
        lines.append(f"| {name} | {row['thread_ms']:.2f} | {row['ops']:.0f} |")
    loso = result["loso"]
    lines += [
        "",
        f"LOSO of {loso['folds']} folds ({loso['strategy']}, mesh {loso['mesh']}): wall "
        f"{loso['wall_s']:.1f} s = compiles {loso['compile_s']:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in loso['compile_by_program'].items())}) + "
        f"training steps {loso['steps_s']:.1f} s + other {loso['other_s']:.1f} s "
        f"({loso['other_per_fold_ms']:.0f} ms per fold: init and predict calls, host transfers, "
        "saves, result files).",
        "",
        "Host time per fold by phase, compiles left out (ms): "
        + "; ".join(f"{k} {v:.1f}" for k, v in loso["phases_per_fold_ms"].items())
        + ".",
    ]
    if step.get("top_ops_ms_per_step"):
        lines += ["", "| op (instance numbers dropped) | ms / step |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in step["top_ops_ms_per_step"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/configs/benchmark.py:cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--loso_subjects", type=int, default=16)
    parser.add_argument("--machine", default=None)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    import datetime
    import platform

    from mjfn_jax.parallel import split_cpu_devices

    split_cpu_devices()  # as the CLI does (the LOSO part then runs one fold per CPU core)
    config = load_config(args.config)
    machine = args.machine or f"cpu-{os.cpu_count()}core"
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"
    result = {
        "config": args.config,
        "machine": machine,
        "device": device if jax.default_backend() != "cpu" else platform.processor() or "cpu",
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "command": " ".join(["python -m experiments.profile_step", *(argv or sys.argv[1:])]),
        "step": profile_step(config, args.steps),
        "loso": profile_loso(config, args.loso_subjects, round(6.5 * args.loso_subjects)),
    }
    write_result(os.path.join(args.out, machine), "profile_step", result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
