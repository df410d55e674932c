"""Late fusion of finished runs on the same clips: MJFN-JAX, STSTNet (tools/ststnet.py) and
the linear floor, every combination, seed by seed.

    python -m tools.fuse_runs --workdir W --ststnet RESULTS.json --data_dir DIR
        [--machine cpu-2core] [--stem fusion_ststnet]

W is a finished MJFN-JAX run (one seed, or several: seeds/<s>/predictions.csv); RESULTS.json
is what tools/ststnet.py wrote, on the same dataset with the same seeds. The rule is
fixed, as the reports' network + floor row: each clip's class probabilities averaged over the
models with equal weights, then argmax; nothing is tuned and no subject is looked at. Seed s of
MJFN-JAX is fused with seed s of STSTNet. Writes experiments/results/<machine>/<stem>.{json,md}.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import os
import sys

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mjfn_jax import cli
from mjfn_jax.workdir import CONFIG_FILE, read_json  # noqa: E402


def read_predictions(path: str, class_names) -> dict[str, np.ndarray]:
    """A run's predictions.csv as {"subject/clip": class probabilities [C]}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [f"prob_{c}" for c in class_names if rows and f"prob_{c}" not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]}")
    out = {}
    for line, r in enumerate(rows, start=2):
        try:
            probs = np.array([float(r[f"prob_{c}"]) for c in class_names])
        except (TypeError, ValueError):
            probs = np.array([np.nan])
        if not np.all(np.isfinite(probs)):
            raise ValueError(f"{path}, line {line}: a prob_ value is not a finite number")
        out[f"{r['subject']}/{r['clip']}"] = probs
    return out


def saved_config(workdir: str) -> dict:
    """The run's config.json as a dict; {} where the workdir has none."""
    path = os.path.join(workdir, CONFIG_FILE)
    return read_json(path) if os.path.isfile(path) else {}


def run_name(workdir: str) -> str:
    """The run's name in the tables: a run with model.ststnet_branch already holds an STSTNet."""
    model = saved_config(workdir).get("model", {})
    if not model.get("ststnet_branch", False):
        return "MJFN-JAX"
    copies = int(model.get("ststnet_copies", 1))
    return "MJFN-JAX with its STSTNet branch" + (f" ({copies} copies)" if copies > 1 else "")


def mjfn_probs(workdir: str, clips, class_names) -> dict[int, np.ndarray]:
    """{seed: [N, C]} of a finished MJFN-JAX run, clips in the given order."""
    seeds_dir = os.path.join(workdir, "seeds")
    if os.path.isdir(seeds_dir):
        seeds = [s for s in os.listdir(seeds_dir) if s.isdigit()]  # seeds/<s>/, s an int
        paths = {int(s): os.path.join(seeds_dir, s, "predictions.csv") for s in seeds}
    else:
        config = saved_config(workdir)
        if "seed" not in config:
            raise FileNotFoundError(f"{workdir}: no {CONFIG_FILE} with a seed (not a run?)")
        seed = int(config["seed"])
        paths = {seed: os.path.join(workdir, "predictions.csv")}
    out = {}
    for seed, path in sorted(paths.items()):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found (is {workdir} a finished run?)")
        probs = read_predictions(path, class_names)
        absent = [c for c in clips if c not in probs]
        if absent or len(probs) != len(clips):
            raise ValueError(
                f"{path}: {len(probs)} clips, the STSTNet results {len(clips)}"
                + (f"; {absent[0]} is not in it" if absent else "")
                + ": not the same dataset"
            )
        out[seed] = np.stack([probs[c] for c in clips])
    return out


def fuse(models: dict[str, np.ndarray], labels, class_names, sources=None) -> list[dict]:
    """UF1/UAR of every non-empty combination of the models' probabilities (mean, argmax),
    and with ``sources`` [N] each source dataset's UF1 ("uf1/<source>")."""
    from mjfn_jax.metrics import per_group_metrics, pooled_metrics

    rows = []
    for k in range(1, len(models) + 1):
        for names in itertools.combinations(models, k):
            pred = np.mean([models[n] for n in names], axis=0).argmax(-1)
            m = pooled_metrics(labels, pred, class_names)
            row = {"models": " + ".join(names), "uf1": m["uf1"], "uar": m["uar"]}
            if sources is not None:
                for source, g in per_group_metrics(labels, pred, sources, class_names).items():
                    row[f"uf1/{source}"] = g["uf1"]
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = cli.ArgumentParser("python -m tools.fuse_runs", __doc__)
    p.add_argument("--workdir", required=True, help="a finished MJFN-JAX run")
    p.add_argument("--ststnet", required=True, help="tools/ststnet.py's results .json")
    p.add_argument("--data_dir", required=True, help="where the dataset was built")
    p.add_argument("--dataset", default="flow_images/imported_28", help="NAME/CONFIG, built")
    p.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--stem", default="fusion_ststnet")
    args = p.parse_args(argv)
    from experiments.results_io import write_result
    from mjfn_jax.data import load_dataset
    from mjfn_jax.folds import make_folds, pad_folds
    from mjfn_jax.linear_probe import linear_floor
    from mjfn_jax.report import mean_sd

    name, _, config = args.dataset.partition("/")
    try:
        dataset = load_dataset(name, config, args.data_dir)
        st = read_json(args.ststnet)
        clips = [f"{s}/{c}" for s, c in zip(dataset.subjects, dataset.clips, strict=True)]
        if st["clips"] != clips:
            raise ValueError(f"{args.ststnet}: its clips are not those of {args.dataset}")
        mjfn = mjfn_probs(args.workdir, clips, dataset.class_names)
        name = run_name(args.workdir)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = sorted(set(mjfn) & {int(s) for s in st["probs"]})
    if not seeds:
        print(f"error: no seed in both runs (MJFN-JAX {sorted(mjfn)}, STSTNet "
              f"{sorted(st['probs'])})", file=sys.stderr)  # fmt: skip
        return 2
    folds = pad_folds(make_folds(dataset.subjects, protocol="loso"))
    floor = linear_floor(dataset.images, dataset.labels, folds, dataset.num_classes)
    per_seed = {
        s: fuse(
            {name: mjfn[s], "STSTNet": np.asarray(st["probs"][str(s)]), "floor": floor},
            dataset.labels,
            dataset.class_names,
            dataset.sources,
        )  # fmt: skip
        for s in seeds
    }
    combos = [r["models"] for r in per_seed[seeds[0]]]
    lines = [
        f"# Late fusion: {name}, STSTNet and the linear floor ({args.dataset})",
        "",
        f"`python -m tools.fuse_runs --workdir {args.workdir} --ststnet {args.ststnet} "
        f"--data_dir {args.data_dir}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} "
        "UTC. Each clip's class probabilities averaged over the models with equal weights "
        "(fixed, untuned), seed s with seed s; LOSO, the last epoch of each network.",
        "",
        "| models | " + " | ".join(f"seed {s} UF1 / UAR" for s in seeds) + " | mean ± sd UF1 | "
        "mean ± sd UAR |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    summary = {}
    for i, combo in enumerate(combos):
        rows = [per_seed[s][i] for s in seeds]
        stats = {k: tuple(mean_sd([r[k] for r in rows]).values()) for k in ("uf1", "uar")}
        summary[combo] = stats
        cells = " | ".join(f"{r['uf1']:.4f} / {r['uar']:.4f}" for r in rows)
        ms = " | ".join(f"{stats[k][0]:.4f} ± {stats[k][1]:.4f}" for k in ("uf1", "uar"))
        lines.append(f"| {combo} | {cells} | {ms} |")
    sources = sorted(set(dataset.sources.tolist()))
    lines += [
        "",
        "UF1 per source dataset, mean ± sd over the seeds:",
        "",
        "| models | " + " | ".join(sources) + " |",
        "|---|" + "---:|" * len(sources),
    ]
    for i, combo in enumerate(combos):
        cells = []
        for source in sources:
            m = mean_sd([per_seed[s][i][f"uf1/{source}"] for s in seeds])
            cells.append(f"{m['mean']:.4f} ± {m['sd']:.4f}")
        lines.append(f"| {combo} | " + " | ".join(cells) + " |")
    record = {"seeds": seeds, "per_seed": per_seed, "mean_sd": summary, "args": vars(args)}
    write_result(os.path.join(args.out, args.machine), args.stem, record, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
