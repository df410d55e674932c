"""Pieces of ``experiments/benchmark.py``: step runners, LOSO runs, memory, environment.

JAX runners reuse the engine (``mjfn_jax.engine.FoldProgram``): its per-step function (jitted
on its own, one Python call per step) and its epoch program (all steps of an epoch in one
``lax.scan``). PyTorch runners reuse the baseline's ``make_train_step`` (eager or
``torch.compile``). Each runner keeps one uint8 batch resident on the device; a step converts
it to float, runs forward + 4-head loss + backward + the optimizer update. The JAX step also
applies the engine's on-device augmentation (flip + translation); the PyTorch step does not
(its augmentation runs in the DataLoader, outside the step), which favours PyTorch slightly.
"""

from __future__ import annotations

import copy
import datetime
import gc
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.pytorch_baseline.train import (
    dataset_from_arrays,
    make_optimizer,
    make_train_step,
    train_loso_torch,
)
from mjfn_jax.config_io import load_config_or_exit
from mjfn_jax.models import count_flops
from mjfn_jax.parallel import fold_groups
from mjfn_jax.report import json_safe, package_versions
from mjfn_jax.runner import OUTSIDE_TRAINING_CALLS

MIB = 1024.0 * 1024.0


def cold_torch_compile() -> None:
    """No on-disk caches of generated code: every torch.compile pays its full cost, as a
    peer's first run would (JAX's persistent compilation cache is off by default too)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def default_machine_name() -> str:
    """'cpu-<n>core' on CPU, else the accelerator's name (e.g. 'nvidia-h100-80gb-hbm3')."""
    if jax.default_backend() == "cpu":
        return f"cpu-{os.cpu_count()}core"
    kind = jax.devices()[0].device_kind
    return "".join(c if c.isalnum() else "-" for c in kind.lower()).strip("-")


def environment(command: str) -> dict:
    versions = package_versions()
    dev = jax.devices()[0]
    device = f"{dev.device_kind} ({jax.default_backend()})"
    if jax.default_backend() == "cpu":
        device = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "jax_devices": len(jax.devices()),
        "torch_device": torch_device(),
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "versions": versions,
    }


def load_preset_config(spec: str, overrides):
    config = load_config_or_exit(spec, overrides)
    config.checkpoint.every_epochs = 0  # one save per fold at its end, like the torch baseline
    return config


def config_dict(config) -> dict:
    return json_safe(config.to_dict())


def synthetic_dataset(config, *, num_subjects: int, num_samples: int):
    from mjfn_jax.synthetic import make_flow_arrays

    arrays = make_flow_arrays(
        num_subjects, None, config.model.input_size, 0, num_samples=num_samples
    )
    return dataset_from_arrays(arrays)


# Memory --------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory while the block runs. Host: the process's peak RSS (VmHWM, reset through
    /proc/self/clear_refs where Linux allows, else ru_maxrss, which never resets). GPU: the
    torch allocator's peak (reset here) or JAX's peak_bytes_in_use (never reset: monotone)."""

    def __init__(self, name: str):
        self.name, self.result = name, {}

    def __enter__(self):
        gc.collect()
        self.resettable = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.resettable = True
        except OSError:
            pass
        self.rss_before = _proc_status_kib("VmRSS")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        peak = _proc_status_kib("VmHWM") if self.resettable else None
        if peak is None:  # ru_maxrss is KiB on Linux; process lifetime peak
            peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        r = {"host_peak_rss_mib": peak / 1024.0, "host_peak_resettable": self.resettable}
        if self.rss_before is not None:
            r["host_rss_before_mib"] = self.rss_before / 1024.0
        if on_gpu() and self.name.startswith("jax"):
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                r["device_peak_mib"] = stats["peak_bytes_in_use"] / MIB
                r["device_peak_note"] = "jax peak_bytes_in_use (process lifetime, monotone)"
        elif torch.cuda.is_available() and self.name.startswith("torch"):
            r["device_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
        self.result = r
        return False


# FLOPs ---------------------------------------------------------------------------------------


def _training_loss(config, batch: int):
    """The model's training loss (train mode, 4-head loss) as a function of (params, the rest
    of its state, images, labels), and abstract arguments for it at ``batch``."""
    from flax import nnx

    from mjfn_jax.models import MJFN, mjfn_loss

    abstract = nnx.eval_shape(lambda: MJFN(config.model, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    size = config.model.input_size
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    weights = tuple(config.model.head_loss_weights)

    def loss_fn(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train()
        return mjfn_loss(model(x), y, head_loss_weights=weights)[0]

    spec = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return loss_fn, (spec(params), spec(rest), x, y)


def flops_per_sample(config, batch: int) -> dict:
    """Forward+backward FLOPs per training sample: XLA cost analysis of the grad fn (train
    mode, 4-head loss), and of the forward alone, at batch ``batch``."""
    from mjfn_jax.models import layers

    loss_fn, args = _training_loss(config, batch)
    grad = count_flops(jax.grad(loss_fn), *args)
    fwd = count_flops(loss_fn, *args)
    # The model's math: every convolution counted as one (XLA skips the taps on zero padding),
    # where the program runs those on <= 2x2 maps as im2col matmuls, which multiply the
    # padding's zeros too (layers.MATMUL_CONV_MAX_SIDE; same function, more FLOPs counted).
    max_side, layers.MATMUL_CONV_MAX_SIDE = layers.MATMUL_CONV_MAX_SIDE, 0
    try:
        conv_form = count_flops(jax.grad(loss_fn), *args)
    finally:
        layers.MATMUL_CONV_MAX_SIDE = max_side
    return {
        "train_flops_per_sample": grad / batch,
        "forward_flops_per_sample": fwd / batch,
        "train_flops_per_sample_conv_form": conv_form / batch,
        "batch": batch,
        "method": "XLA cost_analysis()['flops'] of jax.grad(loss) (fwd+bwd), train mode",
    }


_ARITHMETIC = ("conv_general_dilated", "dot_general")


def _arithmetic_ops(jaxpr, found: dict, multiplier: int = 1) -> None:
    """Count the convolutions and matmuls of ``jaxpr`` (and of the jaxprs inside its
    equations: jit, custom_vjp, a scan's body times its length) into ``found``:
    {key: [primitive, input avals, params, count]}."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _ARITHMETIC:
            avals = tuple((v.aval.shape, v.aval.dtype) for v in eqn.invars)
            key = repr((eqn.primitive.name, avals, sorted(eqn.params.items())))
            found.setdefault(key, [eqn.primitive, avals, eqn.params, 0])[3] += multiplier
            continue
        if eqn.primitive.name == "while":
            raise ValueError("a while loop in the training loss: its trip count is unknown")
        inner_multiplier = multiplier * (
            eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        )
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr, or a Jaxpr
                if hasattr(inner, "eqns"):
                    _arithmetic_ops(inner, found, inner_multiplier)


def arithmetic_alone(config, batch: int, calls: int = 30, rounds: int = 3) -> dict:
    """The training step's convolutions and matmuls (forward and backward, as ``jax.grad``
    emits them for the training loss at ``batch``), each jitted alone and timed as the LOSO's
    folds run: one copy per local device at once (a shard_map over all of them; one device: a
    plain jit). Their summed time is what one step per device would take if everything else in
    it (BatchNorm, activations, augmentation, the optimizer, copies) were free and its
    arithmetic ran as fast as alone: a step inside the LOSO as fast or faster spends no
    measurable time outside its convolutions and matmuls (XLA overlaps independent ops).

    Each op's time is the median over ``rounds`` of ``calls`` calls dispatched back to back
    (then waited for), so it includes whatever of a call's dispatch is not hidden behind the
    previous call; ``call_s`` is that time for a trivial op (``seconds_less_calls``: the sum
    less it per op, a lower bound of the ops' own time)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    loss_fn, args = _training_loss(config, batch)
    found: dict = {}
    _arithmetic_ops(jax.make_jaxpr(jax.grad(loss_fn))(*args).jaxpr, found)
    devices = jax.local_devices()
    lanes = len(devices)
    mesh = Mesh(np.array(devices), ("lane",))
    rng = np.random.default_rng(0)

    def timed(op, avals) -> float:
        if lanes > 1:
            body = lambda *xs: op(*(x[0] for x in xs))[None]  # noqa: E731
            fn = jax.shard_map(body, mesh=mesh, in_specs=P("lane"), out_specs=P("lane"))
            where = NamedSharding(mesh, P("lane"))
        else:
            fn, where = op, devices[0]
        inputs = [
            jax.device_put(rng.standard_normal((lanes, *shape) if lanes > 1 else shape)
                           .astype(np.float32).astype(dtype), where)
            for shape, dtype in avals
        ]  # fmt: skip
        compiled = jax.jit(fn).lower(*inputs).compile()
        jax.block_until_ready(compiled(*inputs))
        per_call = []
        for _ in range(rounds):
            start = time.perf_counter()
            outs = [compiled(*inputs) for _ in range(calls)]
            jax.block_until_ready(outs)
            per_call.append((time.perf_counter() - start) / calls)
        return float(np.median(per_call))

    rows = []
    for primitive, avals, params, count in found.values():
        op = lambda *xs, p=primitive, kw=params: p.bind(*xs, **kw)  # noqa: E731
        flops = count_flops(op, *(jax.ShapeDtypeStruct(s, d) for s, d in avals))
        shapes = " x ".join(str(tuple(s)) for s, _ in avals)
        rows.append({"op": primitive.name, "inputs": shapes, "count": count, "flops": flops,
                     "s": timed(op, avals)})  # fmt: skip
    call_s = timed(lambda x: x + 1.0, [((1,), jnp.float32)])
    seconds = sum(r["s"] * r["count"] for r in rows)
    flops = sum(r["flops"] * r["count"] for r in rows)
    ops = sum(r["count"] for r in rows)
    rows.sort(key=lambda r: -r["s"] * r["count"])
    return {
        "lanes": lanes, "batch": batch, "ops": ops, "distinct": len(rows), "flops": flops,
        "seconds": seconds, "call_s": call_s,
        "seconds_less_calls": max(seconds - ops * call_s, 1e-9),
        "gflops": lanes * flops / seconds / 1e9, "rows": rows,
        "method": "jax.make_jaxpr(jax.grad(training loss)): its conv_general_dilated and "
                  "dot_general equations, each jitted alone, one copy per device at once",
    }  # fmt: skip


# Step runners --------------------------------------------------------------------------------


def _random_batch(config, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = config.model.input_size
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)  # [n, S, S, 3] uint8
    labels = rng.integers(0, config.model.num_classes, n).astype(np.int32)  # [n]
    return images, labels


class JaxRunner:
    """'jax_step': the engine's train step, jitted alone (one dispatch per step);
    'jax_scan': the engine's epoch call, ``scan_steps`` steps in one ``lax.scan``."""

    def __init__(self, config, batch: int, scan: bool, scan_steps: int):
        from mjfn_jax.engine import FoldInputs, FoldProgram, jit_init

        self.batch, self.scan = batch, scan
        self.steps_per_call = scan_steps if scan else 1
        n = batch * self.steps_per_call
        self.program = FoldProgram(config, steps_per_epoch=self.steps_per_call)
        images, labels = _random_batch(config, n)
        self.data = {"images": jnp.asarray(images), "labels": jnp.asarray(labels)}
        self.fold = FoldInputs.whole_dataset(jax.random.key(0), n, config.model.num_classes)
        self.state = jit_init(self.program)(self.fold.key)
        if scan:
            self.fn = jax.jit(self.program.train_epochs, donate_argnums=0)
        else:
            idx = jnp.arange(batch, dtype=jnp.int32)
            step = lambda state, fold, data, key: self.program.train_step(
                state, (idx, key), fold, data
            )
            self.fn = jax.jit(step, donate_argnums=0)
        self.calls = 0

    def _call(self):
        self.calls += 1
        if self.scan:
            epochs = jnp.asarray([self.calls], jnp.int32)
            self.state, out = self.fn(self.state, self.fold, self.data, epochs)
            return out["loss"]
        key = jax.random.fold_in(self.fold.key, self.calls)
        self.state, (loss, _) = self.fn(self.state, self.fold, self.data, key)
        return loss

    def calls_for(self, steps: int) -> int:
        return max(1, round(steps / self.steps_per_call))

    def samples_per_run(self, steps: int) -> int:
        return self.calls_for(steps) * self.steps_per_call * self.batch

    def warm_up(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self._call())  # compile + first call
        return time.perf_counter() - start

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(self.calls_for(steps)):
            loss = self._call()
        jax.block_until_ready(loss)
        return time.perf_counter() - start


class TorchRunner:
    """The baseline's train step on a resident batch, eager or torch.compile'd."""

    def __init__(self, config, batch: int, compiled: bool):
        from experiments.pytorch_baseline.model import MJFNTorch

        self.device = torch.device(torch_device())
        self.batch = batch
        torch.manual_seed(0)
        self.model = MJFNTorch(config.model).to(self.device).train()
        if compiled:  # a cold dynamo cache: every compiled measurement pays its own tracing
            torch._dynamo.reset()
        forward = torch.compile(self.model) if compiled else self.model
        opt, sched = make_optimizer(self.model, config.train, steps_per_epoch=100_000)
        amp = config.model.dtype == "bfloat16"
        self.step = make_train_step(self.model, forward, opt, sched, config, amp=amp,
                                    device=self.device)  # fmt: skip
        images, labels = _random_batch(config, batch)
        self.images = torch.from_numpy(images).to(self.device)
        self.labels = torch.from_numpy(labels).long().to(self.device)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _call(self):
        x = self.images.float() / 255.0  # [B, S, S, 3] float32
        return self.step(x, self.labels)[0]

    def samples_per_run(self, steps: int) -> int:
        return steps * self.batch

    def warm_up(self) -> float:
        start = time.perf_counter()
        float(self._call())  # torch.compile traces and generates code here
        self._sync()
        return time.perf_counter() - start

    def run(self, steps: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            loss = self._call()
        float(loss)
        self._sync()
        return time.perf_counter() - start


def make_runner(name: str, config, batch: int, scan_steps: int):
    if name in ("jax_step", "jax_scan"):
        return JaxRunner(config, batch, scan=name == "jax_scan", scan_steps=scan_steps)
    if name in ("torch_eager", "torch_compiled"):
        return TorchRunner(config, batch, compiled=name == "torch_compiled")
    raise ValueError(f"unknown variant {name!r}")


# The engine's own figures --------------------------------------------------------------------


def engine_figures(timing: dict, config) -> dict:
    """What a JAX LOSO run's ``timing`` says about the engine: the training calls without the
    compiles inside them, fold-steps and group-steps, and the engine's time per fold outside
    the training calls and every compile."""
    compiles = timing["compile_by_program"]
    outside = sum(compiles.get(k, 0.0) for k in OUTSIDE_TRAINING_CALLS)
    inside = sum(v for k, v in compiles.items() if k not in OUTSIDE_TRAINING_CALLS)
    folds = timing["folds_trained_this_run"] or 1
    batch, epochs = config.train.batch_size, config.train.num_epochs
    fold_steps = round((timing["samples_per_s"] or 0.0) * timing["train_s"] / batch)
    if timing["strategy"] == "vmap":  # the groups the run trained (padded to the mesh)
        groups = fold_groups(folds, int(timing["fold_group_size"]), timing["mesh"].get("fold", 1))
        num_groups, group = len(groups), len(groups[0])
    else:
        num_groups, group = folds, 1
    steps_per_epoch = fold_steps / (folds * epochs)
    return {
        "compile_s": timing.get("compile_s"),
        "train_s": timing.get("train_s"),
        "strategy": f"{timing['strategy']}:{timing['loop']} x{timing['fold_group_size']}",
        "execution": {k: timing[k] for k in ("strategy", "loop", "fold_group_size")},
        "auto": timing.get("auto"),
        "training_calls_net_s": timing["train_s"] - inside,  # program loads/compiles out
        "fold_steps": fold_steps,
        "group_steps": round(num_groups * epochs * steps_per_epoch),
        "group_slots": group,  # folds per group step, padding included
        # engine time outside the training calls and the compiles, per fold
        "other_per_fold_ms": 1e3 * (timing["wall_s"] - timing["train_s"] - outside) / folds,
        "phases_per_fold_ms": {  # where it goes (compiles inside the phase that ran them)
            name: 1e3 * seconds / folds for name, seconds in timing["phases_s"].items()
        },
    }


def engine_step_alone(config, dataset, workdir: str, execution: dict, calls: int) -> dict:
    """The LOSO run's own step program (its strategy, loop and fold group; loaded from the
    persistent compilation cache that the run filled) on its first fold group, called
    ``calls`` times back to back with nothing between the calls: seconds per group step, the
    reference for the engine's overhead per step inside the LOSO. The steps of a ``scan`` loop
    are timed as whole epochs."""
    from mjfn_jax import autotune
    from mjfn_jax.runner import Runners
    from mjfn_jax.units import make_units

    cfg = autotune.Choice(**execution).apply(config)
    units = make_units(cfg, dataset, workdir)
    with Runners() as runners:
        runner, data, members, folds, states = runners.first_group(cfg, units, dataset)
        steps = runner.program.steps
        if runner.scan:
            epochs = max(1, round(calls / steps))

            def run(states, n):
                for e in range(n):
                    states, metrics = runner.train(states, folds, data, e, 1)
                return states, metrics

            states, out = run(states, 1)  # warm-up
            jax.block_until_ready(out)
            start = time.perf_counter()
            states, out = run(states, epochs)
            calls = epochs * steps
        else:
            plan = runner.epoch_plan(folds, 0)

            def run(states, n):
                for i in range(n):
                    states, out = runner.step(states, folds, data, plan, i % steps)
                return states, out

            states, out = run(states, steps)  # warm-up
            jax.block_until_ready(out)
            start = time.perf_counter()
            states, out = run(states, calls)
        jax.block_until_ready(out)
        seconds = (time.perf_counter() - start) / calls
    return {"group_step_s": seconds, "group_slots": len(members),
            "real_folds": int(np.sum(members >= 0)), "calls": calls}  # fmt: skip


def conv_peak(repeats: int, batch: int = 32, size: int = 16, channels: int = 32) -> dict:
    """The machine's measured convolution rate: a lone 3x3 convolution (NHWC, ``channels`` in
    and out, ``size`` x ``size`` maps), forward + backward (gradients of the input and the
    kernel), jitted; XLA's FLOP count over the median time of ``repeats`` calls."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, size, size, channels), jnp.float32)
    w = 0.1 * jax.random.normal(key, (3, 3, channels, channels), jnp.float32)

    def loss(w, x):
        dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
        return jnp.sum(y * y)

    grad_fn = jax.grad(loss, argnums=(0, 1))
    grad = jax.jit(grad_fn)
    flops = count_flops(grad_fn, w, x)  # on XLA:CPU (see count_flops)
    jax.block_until_ready(grad(w, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(w, x))
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"shape": f"3x3 conv, batch {batch}, {size}x{size}, {channels}->{channels} channels",
            "flops": flops, "s_median": seconds, "gflops": flops / seconds / 1e9}  # fmt: skip


def disk_mb(path: str) -> float:
    """Bytes of the files under ``path``, in MB (10^6)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


# LOSO ----------------------------------------------------------------------------------------

LOSO_VARIANTS = ("jax_auto", "jax_vmap", "jax_sequential", "torch_eager", "torch_compiled")


def run_loso(
    name: str, config, dataset, seed: int, workdir: str, torch_workers: int = 0, epochs: int = 0
) -> dict:
    """One full LOSO run (``epochs``: the config's unless > 0); errors are recorded (not
    raised) so the benchmark still reports. The workdir's size is measured after the run."""
    cfg = copy.deepcopy(config)
    cfg.seed = seed
    if epochs > 0:
        cfg.train.num_epochs = epochs
    start = time.perf_counter()
    try:
        if name.startswith("jax_"):
            from mjfn_jax.train import train_and_evaluate

            cfg.parallel.strategy = name.removeprefix("jax_")
            res = train_and_evaluate(cfg, workdir, dataset=dataset)
            t = res["timing"]
            extra = engine_figures(t, cfg)
        else:
            if name == "torch_compiled":
                torch._dynamo.reset()  # pay the whole compile inside this run
            res = train_loso_torch(
                cfg,
                dataset,
                workdir,
                compile=name == "torch_compiled",
                num_workers=torch_workers,
            )
            t = res["timing"]
            extra = {"train_s": float(np.sum(t["fold_train_s"]))}
    except Exception as e:  # noqa: BLE001 (a failing variant is a result, e.g. torch.compile)
        return {"error": f"{type(e).__name__}: {e}"[:500], "wall_s": time.perf_counter() - start}
    pooled = res["pooled"]
    return {
        "wall_s": time.perf_counter() - start,
        "engine_wall_s": t.get("wall_s"),
        **extra,
        "epochs": cfg.train.num_epochs,
        "disk_mb": disk_mb(workdir),
        "uf1": pooled["uf1"],
        "uar": pooled["uar"],
        "accuracy": pooled["accuracy"],
        "num_folds": res.get("num_folds"),
    }
