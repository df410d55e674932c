"""Summary ratios and the markdown rendering of ``experiments/benchmark.py``'s results."""

from __future__ import annotations

import numpy as np

from mjfn_jax.report_md import fmt

JAX_LOSO = ("jax_auto", "jax_vmap", "jax_sequential")
TORCH_LOSO = ("torch_eager", "torch_compiled")


def _ok(v: dict) -> bool:
    return isinstance(v, dict) and "error" not in v


def _ratio(a, b):
    return a / b if a and b else None


def _loso_table(runs: list[dict]) -> dict:
    """Per variant: median wall time over its seeds; UF1/UAR mean, std, min, max."""
    table = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        ok = [r for r in mine if _ok(r)]
        row = {"runs": len(mine), "failed": len(mine) - len(ok)}
        if not ok:
            row["error"] = mine[0]["error"]
        else:
            row["wall_s_median"] = float(np.median([r["wall_s"] for r in ok]))
            # The first seed's run is the cold one (nothing compiled yet in this process).
            row["wall_s_first"] = float(ok[0]["wall_s"])
            row["seeds"] = [r["seed"] for r in ok]
            for key in ("uf1", "uar", "accuracy"):
                vals = np.array([r[key] for r in ok], float)
                row[key] = {"mean": vals.mean(), "std": vals.std(), "min": vals.min(),
                            "max": vals.max(), "values": vals.tolist()}  # fmt: skip
            if ok[0].get("compile_s") is not None:  # later seeds hit in-process caches
                row["compile_s_first"] = float(ok[0]["compile_s"])
            for key in ("strategy", "other_per_fold_ms"):  # JAX: what ran, fixed cost per fold
                if ok[0].get(key) is not None:
                    row[key] = ok[0][key]
            if ok[0].get("disk_mb") is not None:
                row["disk_mb"] = float(ok[0]["disk_mb"])
                row["disk_mb_per_fold"] = row["disk_mb"] / (ok[0].get("num_folds") or 1)
        table[name] = row
    return table


def engine_summary(result: dict) -> dict | None:
    """The engine's figures from the ``jax_auto`` LOSO runs (benchmark_lib's engine_figures;
    the first seed's run also has engine_step_alone), against the machine's convolution rate.
    The first run is cold (nothing compiled in the process yet); later seeds' runs are warm."""
    runs = [r for r in result.get("loso", []) if r["variant"] == "jax_auto" and _ok(r)
            and r.get("fold_steps")]  # fmt: skip
    if not runs:
        return None
    run = runs[0]
    batch = result["config"]["train"]["batch_size"]
    flops = result["flops"]
    step_flops = flops["train_flops_per_sample"] * batch  # one fold's step, as the program runs
    conv_form = flops.get("train_flops_per_sample_conv_form")
    gflops = lambda r, f: r["fold_steps"] * f / r["training_calls_net_s"] / 1e9  # noqa: E731
    e = {
        "strategy": run["strategy"],
        "fold_steps": run["fold_steps"],
        "group_steps": run["group_steps"],
        "step_gflop": step_flops / 1e9,
        "inside_group_step_ms": 1e3 * run["training_calls_net_s"] / run["group_steps"],
        "inside_fold_step_ms": 1e3 * run["training_calls_net_s"] / run["fold_steps"],
        "inside_gflops": gflops(run, step_flops),
        "per_fold_ms": run["other_per_fold_ms"],
        "warm_inside_gflops": [gflops(r, step_flops) for r in runs[1:]],
        "warm_per_fold_ms": [r["other_per_fold_ms"] for r in runs[1:]],
        "phases_per_fold_ms": run.get("phases_per_fold_ms", {}),
        "warm_phases_per_fold_ms": [r.get("phases_per_fold_ms", {}) for r in runs[1:]],
    }
    if conv_form:
        e["step_gflop_conv_form"] = conv_form * batch / 1e9
        e["inside_gflops_conv_form"] = [gflops(r, conv_form * batch) for r in runs]
    alone = run.get("step_alone")
    if alone:
        e["alone_group_step_ms"] = 1e3 * alone["group_step_s"]
        e["alone_gflops"] = alone["real_folds"] * step_flops / alone["group_step_s"] / 1e9
        e["overhead_per_step_ms"] = e["inside_group_step_ms"] - e["alone_group_step_ms"]
    for row in result.get("throughput", {"rows": []})["rows"]:
        v = row["variants"].get("jax_step")
        if row["batch_size"] == batch and v is not None and _ok(v):
            e["one_fold_step_ms"] = 1e3 * v["step_s"]
            e["one_fold_gflops"] = step_flops / v["step_s"] / 1e9
    peak = result.get("conv_peak")
    if peak and peak.get("gflops"):
        e["conv_peak_gflops"] = peak["gflops"]
        e["inside_over_peak"] = e["inside_gflops"] / peak["gflops"]
        # the physical ceiling: the LOSO's training FLOPs at the convolution's rate
        e["ceiling_training_s"] = run["fold_steps"] * step_flops / (peak["gflops"] * 1e9)
        e["training_calls_net_s"] = run["training_calls_net_s"]
    arithmetic = result.get("arithmetic")
    if arithmetic and arithmetic.get("seconds"):
        # the step's convolutions and matmuls alone, one per device at once: the step's FLOPs
        # over their summed time is the rate of its arithmetic as XLA's kernels run it alone
        lanes = arithmetic["lanes"]
        e["arithmetic_ms"] = 1e3 * arithmetic["seconds"]
        e["arithmetic_less_calls_ms"] = 1e3 * arithmetic["seconds_less_calls"]
        e["arithmetic_ops"] = arithmetic["ops"]
        e["arithmetic_lanes"] = lanes
        e["arithmetic_gflops"] = [lanes * step_flops / arithmetic[k] / 1e9
                                  for k in ("seconds", "seconds_less_calls")]  # fmt: skip
        e["inside_over_arithmetic"] = [e["inside_gflops"] / g for g in e["arithmetic_gflops"]]
    return e


def summarize(result: dict) -> dict:
    s = {"throughput_ratios": []}
    for row in result.get("throughput", {"rows": []})["rows"]:
        v = row["variants"]
        sps = {k: x["samples_per_s"] for k, x in v.items() if _ok(x)}
        best_jax = max((sps[k] for k in ("jax_step", "jax_scan") if k in sps), default=None)
        best_torch = max((sps[k] for k in TORCH_LOSO if k in sps), default=None)
        s["throughput_ratios"].append({
            "batch_size": row["batch_size"],
            "jax_step/torch_eager": _ratio(sps.get("jax_step"), sps.get("torch_eager")),
            "jax_scan/torch_eager": _ratio(sps.get("jax_scan"), sps.get("torch_eager")),
            "best_jax/best_torch": _ratio(best_jax, best_torch),
        })  # fmt: skip
    if "loso_long" in result:
        s["loso_long"] = _loso_table(result["loso_long"])
    engine = engine_summary(result)
    if engine:
        s["engine"] = engine
    if "loso" in result:
        table = _loso_table(result["loso"])
        s["loso"] = table
        wall = {k: r["wall_s_first"] for k, r in table.items() if "wall_s_first" in r}
        jax_best = min((k for k in JAX_LOSO if k in wall), key=wall.get, default=None)
        torch_best = min((k for k in TORCH_LOSO if k in wall), key=wall.get, default=None)
        if jax_best and torch_best:
            s["headline"] = {
                "fastest_jax": jax_best,
                "fastest_torch": torch_best,
                "torch_eager_over_fastest_jax": _ratio(wall.get("torch_eager"), wall[jax_best]),
                "fastest_torch_over_fastest_jax": _ratio(wall[torch_best], wall[jax_best]),
            }
    return s


def _throughput_md(result: dict) -> list[str]:
    rows = result["throughput"]["rows"]
    names = list(dict.fromkeys(k for r in rows for k in r["variants"]))
    flops = result["flops"]["train_flops_per_sample"]
    lines = [
        "## Training step throughput (samples/s, median of "
        f"{result['throughput']['repeats']} alternating rounds)",
        "",
        "| batch | " + " | ".join(names) + " | jax_step / torch_eager | jax_scan / torch_eager |",
        "|---:|" + "---:|" * (len(names) + 2),
    ]
    ratios = {r["batch_size"]: r for r in result["summary"]["throughput_ratios"]}
    for row in rows:
        cells = []
        for n in names:
            v = row["variants"].get(n)
            rate = fmt(v.get("samples_per_s"), "{:.1f}") if v is not None and _ok(v) else None
            cells.append("-" if v is None else rate or "failed")
        r = ratios[row["batch_size"]]
        cells += [
            fmt(r["jax_step/torch_eager"], "{:.2f}x"),
            fmt(r["jax_scan/torch_eager"], "{:.2f}x"),
        ]
        lines.append(f"| {row['batch_size']} | " + " | ".join(cells) + " |")
    lines += ["", "Compile / warm-up (first call, s), achieved GFLOP/s, memory peak (MiB):", "",
              "| batch | variant | warm-up s | GFLOP/s | host peak RSS | device peak |",
              "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        for n, v in row["variants"].items():
            if not _ok(v):
                lines.append(f"| {row['batch_size']} | {n} | failed: {v['error'][:80]} | | | |")
                continue
            m, gflops = v["memory"], flops * v["samples_per_s"] / 1e9
            host, dev = m.get("host_peak_rss_mib"), m.get("device_peak_mib")
            lines.append(
                f"| {row['batch_size']} | {n} | {fmt(v['warmup_s'], '{:.1f}')} | "
                f"{fmt(gflops, '{:.1f}')} | "
                f"{fmt(host, '{:.0f}')} | {fmt(dev, '{:.0f}')} |"
            )
    return lines


def _loso_md(result: dict) -> list[str]:
    table = result["summary"]["loso"]
    d = result["loso_data"]
    lines = [
        f"## Full LOSO ({d['n']} samples, {d['subjects']} subjects = folds, "
        f"{result['config']['train']['num_epochs']} epochs)",
        "",
        "| variant | runs (seeds) | wall s, first seed (cold) | wall s, median | JAX compile s "
        "(first seed) | UF1 mean ± sd | UAR mean ± sd | UF1 range | JAX strategy "
        "(`auto`'s choice) | engine ms per fold outside training | disk MB (per fold) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in table.items():
        if "error" in r:
            lines.append(f"| {name} | {r['runs']} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        uf1, uar = r["uf1"], r["uar"]
        lines.append(
            f"| {name} | {r['runs']} ({', '.join(map(str, r['seeds']))}) | "
            f"{fmt(r['wall_s_first'], '{:.1f}')} | {fmt(r['wall_s_median'], '{:.1f}')} | "
            f"{fmt(r.get('compile_s_first'), '{:.1f}')} | "
            f"{uf1['mean']:.4f} ± {uf1['std']:.4f} | {uar['mean']:.4f} ± {uar['std']:.4f} | "
            f"{uf1['min']:.4f}-{uf1['max']:.4f} | {r.get('strategy', '')} | "
            f"{fmt(r.get('other_per_fold_ms'), '{:.0f}')} | {_disk(r)} |"
        )
    h = result["summary"].get("headline")
    if h:
        lines += [
            "",
            "**Headline (LOSO wall time, first seed, compiles included): PyTorch eager / "
            f"fastest JAX ({h['fastest_jax']}) = "
            f"{fmt(h['torch_eager_over_fastest_jax'], '{:.2f}x')}; fastest PyTorch "
            f"({h['fastest_torch']}) / fastest JAX = "
            f"{fmt(h['fastest_torch_over_fastest_jax'], '{:.2f}x')}** (> 1 means JAX is faster).",
        ]
    return lines


def _disk(r: dict) -> str:
    if r.get("disk_mb") is None:
        return ""
    return f"{r['disk_mb']:.1f} ({r['disk_mb_per_fold']:.2f})"


def _long_loso_md(result: dict) -> list[str]:
    table = result["summary"]["loso_long"]
    epochs = {r.get("epochs") for r in result["loso_long"] if _ok(r)}
    lines = [
        f"## Full LOSO, {'/'.join(map(str, sorted(epochs))) or '?'} epochs (first seed, one "
        "run each)",
        "",
        "| variant | wall s | UF1 | JAX strategy | disk MB (per fold) |",
        "|---|---:|---:|---|---:|",
    ]
    for name, r in table.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} | | | |")
            continue
        lines.append(
            f"| {name} | {r['wall_s_first']:.1f} | {r['uf1']['mean']:.4f} | "
            f"{r.get('strategy', '')} | {_disk(r)} |"
        )
    wall = {k: r["wall_s_first"] for k, r in table.items() if "wall_s_first" in r}
    if "jax_auto" in wall and "torch_eager" in wall:
        ratio = wall["torch_eager"] / wall["jax_auto"]
        lines += ["", f"PyTorch eager / JAX auto: **{ratio:.2f}x**"]
    return lines


def _values(values: list, spec: str) -> str:
    return ", ".join(spec.format(v) for v in values) or "-"


def _engine_md(e: dict) -> list[str]:
    f1 = lambda v, spec="{:.2f}": fmt(v, spec)  # noqa: E731
    lines = [
        "## The engine's figures (first seed's `jax_auto` LOSO)",
        "",
        f"Strategy {e['strategy']}; {e['fold_steps']} fold-steps in {e['group_steps']} group "
        f"steps; one fold's step is {e['step_gflop']:.3f} GFLOP (XLA's count of the program "
        f"that runs, as above; {f1(e.get('step_gflop_conv_form'), '{:.3f}')} GFLOP counting "
        "its few im2col matmuls on 2x2 maps as the convolutions they compute, without the "
        "padding's zeros). The first row of figures is the cold first run's.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| one fold's step alone (`jax_step` above), ms | {f1(e.get('one_fold_step_ms'))} |",
        f"| one fold's step alone, GFLOP/s | {f1(e.get('one_fold_gflops'), '{:.1f}')} |",
        "| the LOSO's group step program alone (same group, back to back), ms | "
        f"{f1(e.get('alone_group_step_ms'))} |",
        f"| the same, GFLOP/s | {f1(e.get('alone_gflops'), '{:.1f}')} |",
        "| inside the LOSO (training calls without their compiles) per group step, ms | "
        f"{f1(e['inside_group_step_ms'])} |",
        f"| inside the LOSO, per fold-step, ms | {f1(e['inside_fold_step_ms'])} |",
        f"| **inside the LOSO, GFLOP/s** | **{f1(e['inside_gflops'], '{:.1f}')}** |",
        f"| the same, later seeds' runs (warm) | {_values(e['warm_inside_gflops'], '{:.1f}')} |",
        "| the same by the convolution form's count (first run, later runs) | "
        f"{_values(e.get('inside_gflops_conv_form', []), '{:.1f}')} |",
        "| **engine overhead per step** (inside minus alone), ms | "
        f"**{f1(e.get('overhead_per_step_ms'))}** |",
        "| **engine time per fold** outside the training calls and the compiles, ms | "
        f"**{f1(e['per_fold_ms'], '{:.1f}')}** |",
        f"| the same, later seeds' runs (warm) | {_values(e['warm_per_fold_ms'], '{:.1f}')} |",
    ]
    for name, cold in e.get("phases_per_fold_ms", {}).items():
        warm = [p.get(name) for p in e.get("warm_phases_per_fold_ms", [])]
        lines.append(f"| phase `{name}` per fold, ms: cold; warm | {cold:.1f}; "
                     f"{_values([w for w in warm if w is not None], '{:.1f}')} |")  # fmt: skip
    if "conv_peak_gflops" in e:
        lines += [
            "| the machine's convolution rate (see below), GFLOP/s | "
            f"{e['conv_peak_gflops']:.1f} |",
            f"| inside the LOSO / that rate | {e['inside_over_peak']:.2f} |",
            "| ceiling: the LOSO's training FLOPs at that rate, s (actual training calls) | "
            f"{e['ceiling_training_s']:.2f} ({e['training_calls_net_s']:.2f}) |",
        ]
    if "arithmetic_gflops" in e:
        low, high = e["arithmetic_gflops"]
        ratios = e["inside_over_arithmetic"]
        lines += [
            f"| the step's {e['arithmetic_ops']} convolutions and matmuls, each alone, "
            f"{e['arithmetic_lanes']} at once (one per device), summed, ms (less a trivial "
            f"call's time per op) | {e['arithmetic_ms']:.2f} "
            f"({e['arithmetic_less_calls_ms']:.2f}) |",
            "| the step's FLOPs over that time (its arithmetic's rate alone), GFLOP/s | "
            f"{low:.1f}-{high:.1f} |",
            "| **inside the LOSO / that rate** (>= 1: the step runs no slower than its "
            f"convolutions and matmuls called one by one) | **{min(ratios):.2f}-"
            f"{max(ratios):.2f}** |",
        ]
    return lines


def _arithmetic_md(a: dict, top: int = 8) -> list[str]:
    lines = [
        "## The step's arithmetic alone",
        "",
        f"The {a['ops']} convolutions and matmuls ({a['distinct']} distinct) of one fold's "
        f"training step at batch {a['batch']}, forward and backward as `jax.grad` emits them, "
        f"each jitted alone and run {a['lanes']} at once (one per device, as the LOSO's folds "
        f"run): {a['flops'] / 1e9:.3f} GFLOP per device in {1e3 * a['seconds']:.2f} ms "
        f"({a['gflops']:.1f} GFLOP/s; a trivial call takes {1e6 * a['call_s']:.0f} us). "
        f"The {top} that take longest:",
        "",
        "| op | inputs | count | ms each | share of the sum | GFLOP/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in a["rows"][:top]:
        lines.append(
            f"| {r['op']} | {r['inputs']} | {r['count']} | {1e3 * r['s']:.3f} | "
            f"{r['s'] * r['count'] / a['seconds']:.0%} | "
            f"{a['lanes'] * r['flops'] / r['s'] / 1e9:.1f} |"
        )
    return lines


def to_markdown(result: dict) -> str:
    env, cfg = result["env"], result["config"]
    m = cfg["model"]
    fl = result["flops"]
    merged = result.get("merged_from", {}).get("env")
    lines = [
        f"# MJFN benchmark: JAX engine vs. PyTorch baseline ({result['machine']})",
        "",
        f"- date (UTC): {env['date']}; device: {env['device']}; torch device: "
        f"{env['torch_device']} ({env['torch_threads']} threads); XLA_FLAGS: "
        f"`{env.get('xla_flags') or '(none)'}`; load average at start: "
        f"{', '.join(f'{x:.2f}' for x in env['load_avg_at_start'])}, at end: "
        f"{', '.join(f'{x:.2f}' for x in env.get('load_avg_at_end', ()))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- command: `{env['command']}` (preset `{result['preset']}`, total "
        f"{result['total_s'] / 60:.1f} min)",
        f"- model: {m['input_size']}x{m['input_size']} input, stem stride {m['stem_stride']}, "
        f"widths {tuple(m['widths'])}, blocks {tuple(m['blocks_per_stage'])}, dtype {m['dtype']}; "
        f"train FLOPs/sample (fwd+bwd, XLA cost analysis) {fl['train_flops_per_sample'] / 1e6:.1f}"
        f" MFLOP, forward {fl['forward_flops_per_sample'] / 1e6:.1f} MFLOP",
        "- data: synthetic flow images (mjfn_jax.synthetic.make_flow_arrays, true displacement "
        "fields), same arrays and same config for both frameworks, in one process",
        "",
    ]
    if result.get("note"):
        lines[-1:-1] = [f"- note: {result['note']}"]
    if merged:
        lines[-1:-1] = [
            f"- merged with an earlier command ({merged['date']}): `{merged['command']}`"
        ]
    if "throughput" in result:
        lines += _throughput_md(result)
    if "loso" in result:
        lines += [""] + _loso_md(result)
    if "loso_long" in result:
        lines += [""] + _long_loso_md(result)
    if result["summary"].get("engine"):
        lines += [""] + _engine_md(result["summary"]["engine"])
    if result.get("conv_peak"):
        p = result["conv_peak"]
        lines += [
            "",
            f"Convolution rate: {p['shape']}, forward + backward (input and kernel gradients), "
            f"jitted alone: {p['flops'] / 1e6:.1f} MFLOP (XLA's count) in "
            f"{1e3 * p['s_median']:.3f} ms (median), **{p['gflops']:.1f} GFLOP/s**.",
        ]
    if result.get("arithmetic"):
        lines += [""] + _arithmetic_md(result["arithmetic"])
    lines += [
        "",
        "Notes: a step = uint8 batch resident on the device -> float, forward, 4-head loss, "
        "backward, optimizer update; the JAX step also runs the engine's on-device augmentation, "
        "the PyTorch step does not (host DataLoader augmentation is outside it). `jax_scan` is "
        "the engine's `parallel.loop=scan` path (a whole epoch of steps in one `lax.scan` call, "
        "the default on accelerators); on CPU `loop=auto` makes one call per step, as `jax_step` "
        "does, because XLA:CPU runs this step several times slower inside a while loop. LOSO wall "
        "times include compilation, data loading, per-fold checkpoints and reports; later seeds "
        "reuse in-process compile caches (hence first-seed and median columns); torch.compile's "
        "on-disk caches are off. Host RSS is the whole process's (both frameworks loaded).",
        "",
    ]
    return "\n".join(lines)
