"""Mean +- sd over runs that differ only in their seed, beside the linear floor.

    python -m tools.seeds_table --out experiments/results/cpu-2core/flow_images_28.md \
        --title "..." --command "..." WORKDIR...

Reads each workdir's results.json (mjfn_jax.report); every run must have the same config but
the seed (a one-seed folder, seeds/<s>, of a several-seed run counts as a run) and the same data
(its dataset.json digest). Writes a markdown table: one row per seed, the mean +- sd (sample
sd, n-1), the linear floor, and the time of each run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

from mjfn_jax.report import load_results, mean_sd
from mjfn_jax.report_md import fmt


def _same_but_seed(configs: list[dict]) -> None:
    """Configs equal but for the seed and what a run may change (mjfn_jax.config_io)."""
    from mjfn_jax.config_io import config_differences, without_resumable

    strip = [without_resumable(c) for c in configs]
    for c in strip:  # the seed, and the training seeds of one seed's folder of a several-seed run
        c.pop("seed")
        c["train"].pop("seeds")
    for other in strip[1:]:
        diffs = config_differences(strip[0], other)
        if diffs:
            raise SystemExit(f"error: the runs' configs differ in more than the seed: {diffs}")


def table(workdirs: list[str]) -> tuple[list[str], dict]:
    results = [load_results(w) for w in workdirs]
    _same_but_seed([r["config"] for r in results])
    digests = set()
    for w in workdirs:
        with open(os.path.join(w, "dataset.json")) as f:
            digests.add(json.load(f)["sha256"])
    if len(digests) != 1:
        raise SystemExit("error: the runs were trained on different data")
    lines = ["| seed | UF1 | UAR | accuracy | linear floor UF1 / UAR | fold loop (s) |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        p, floor = r["pooled"], r.get("linear_floor") or {}
        seed = (r["config"]["train"].get("seeds") or [r["config"]["seed"]])[0]
        lines.append(
            f"| {seed} | {fmt(p['uf1'])} | {fmt(p['uar'])} | {fmt(p['accuracy'])} "
            f"| {fmt(floor.get('uf1'))} / {fmt(floor.get('uar'))} "
            f"| {fmt((r.get('timing') or {}).get('wall_s'), '{:.0f}')} |"
        )
    summary = {}
    for key in ("uf1", "uar", "accuracy"):
        m = mean_sd([r["pooled"][key] for r in results])
        summary[key] = (m["mean"], m["sd"])
    lines.append(
        f"| **mean +- sd** | **{summary['uf1'][0]:.4f} +- {summary['uf1'][1]:.4f}** | "
        f"{summary['uar'][0]:.4f} +- {summary['uar'][1]:.4f} | "
        f"{summary['accuracy'][0]:.4f} +- {summary['accuracy'][1]:.4f} | | |"
    )
    return lines, summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", required=True, help="the command that trained each run")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    lines, _ = table(args.workdirs)
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    head = [
        f"# {args.title}",
        "",
        f"Machine: {os.cpu_count()}-core {cpu or platform.processor()}; Python "
        f"{platform.python_version()}; table written "
        f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')} from "
        f"{len(args.workdirs)} runs.",
        "",
        f"Command (per seed): `{args.command}`",
        "",
        "Protocol: LOSO over every subject, the model after its last epoch predicts its test "
        "subject once, predictions pooled over folds (MEGC2019 UF1/UAR); nothing selected on "
        "test subjects.",
        "",
    ]
    text = "\n".join(head + ([args.note, ""] if args.note else []) + lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
