"""``mjfn-compare W1 W2 ...``: one table across finished runs, and how their configs differ.

    mjfn-compare workdirs/fi28 workdirs/fi28_lr --out compare.md --csv compare.csv

Each workdir is a finished run of ``mjfn-train`` or of the PyTorch baseline (its results.json);
a several-seed run counts each of its seeds (``seeds/<s>/results.json``). One row per workdir:
its seeds, UF1, UAR and accuracy as mean +- sd over the seeds (sample sd, n - 1), the linear
floor's UF1 and UAR on the same folds, and each source dataset's UF1 (the MEGC2019 composite).
Below the table, every config field in which a run differs from the first (what a resumed run
may change, and the seeds, left out).
"""

from __future__ import annotations

import csv
import os
import sys

from mjfn_jax import storage
from mjfn_jax.config_io import config_differences, without_resumable
from mjfn_jax.report import mean_sd
from mjfn_jax.workdir import WorkdirError, read_json

METRICS = ("uf1", "uar", "accuracy")


def seed_results(workdir: str) -> list[dict]:
    """The results.json of each seed of a finished run (one for a one-seed run)."""
    path = os.path.join(workdir, "results.json")
    if reason := storage.unreachable(workdir):
        raise WorkdirError(f"cannot read workdir {workdir}: {reason}")
    if not storage.as_path(path).is_file():
        raise WorkdirError(f"{workdir}: no results.json (not a finished run's workdir)")
    results = read_json(path)
    if "seeds" not in results:
        return [results]
    return [
        read_json(os.path.join(workdir, row["workdir"], "results.json")) for row in results["seeds"]
    ]


def _config_without_seeds(results: dict) -> dict:
    config = without_resumable(results.get("config") or {})
    config.pop("seed", None)
    config.get("train", {}).pop("seeds", None)
    return config


def summarise(workdir: str) -> dict:
    """A row of the table: {"run", "seeds", "<metric>": (mean, sd), "floor_uf1", "floor_uar",
    "sources": {source: (mean, sd) of UF1}, "config"}."""
    runs = seed_results(workdir)
    row = {"run": workdir, "seeds": [_seed(r) for r in runs], "framework": runs[0]["framework"]}
    for key in METRICS:
        m = mean_sd([r["pooled"][key] for r in runs])
        row[key] = (m["mean"], m["sd"])
    floors = [r["linear_floor"] for r in runs if r.get("linear_floor")]
    for key in ("uf1", "uar"):
        row[f"floor_{key}"] = mean_sd([f[key] for f in floors])["mean"] if floors else None
    sources = sorted(set.intersection(*(set(r.get("per_source", {})) for r in runs)))
    if len(sources) > 1:  # one source: the same as the pooled row
        row["sources"] = {
            s: tuple(mean_sd([r["per_source"][s]["uf1"] for r in runs]).values()) for s in sources
        }
    else:
        row["sources"] = {}
    row["config"] = _config_without_seeds(runs[0])
    return row


def _seed(results: dict) -> int:
    config = results.get("config") or {}
    return int(((config.get("train") or {}).get("seeds") or [config.get("seed", 0)])[0])


def _pm(value: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value[0]:.4f} +- {value[1]:.4f}"


def markdown(rows: list[dict]) -> str:
    """The table, then the config differences, as markdown."""
    sources = sorted({s for row in rows for s in row["sources"]})
    head = ["run", "seeds", "UF1", "UAR", "accuracy", "floor UF1 / UAR"]
    head += [f"{s} UF1" for s in sources]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        floor = "n/a" if row["floor_uf1"] is None else (
            f"{row['floor_uf1']:.4f} / {row['floor_uar']:.4f}"
        )  # fmt: skip
        cells = [row["run"], ",".join(map(str, row["seeds"])), *(_pm(row[k]) for k in METRICS)]
        cells += [floor, *(_pm(row["sources"].get(s)) for s in sources)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *differences(rows)]
    return "\n".join(lines) + "\n"


def differences(rows: list[dict]) -> list[str]:
    """Each run's config fields that differ from the first run's, as markdown lines."""
    if len(rows) < 2:
        return []
    out = [f"Config differences from {rows[0]['run']}:"]
    for row in rows[1:]:
        diffs = config_differences(rows[0]["config"], row["config"])
        diffs = [d.replace("saved ", "").replace(" != new ", " -> ") for d in diffs]
        out.append(f"- {row['run']}: " + ("; ".join(diffs) if diffs else "none"))
    return out


def write_csv(path: str, rows: list[dict]) -> None:
    sources = sorted({s for row in rows for s in row["sources"]})
    fields = ["run", "seeds", "framework"]
    fields += [f"{k}_{stat}" for k in METRICS for stat in ("mean", "sd")]
    fields += ["floor_uf1", "floor_uar"] + [
        f"{s}_uf1_{st}" for s in sources for st in ("mean", "sd")
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for row in rows:
            out = {"run": row["run"], "seeds": " ".join(map(str, row["seeds"]))}
            out |= {"framework": row["framework"], "floor_uf1": row["floor_uf1"]}
            out |= {"floor_uar": row["floor_uar"]}
            for k in METRICS:
                out[f"{k}_mean"], out[f"{k}_sd"] = row[k]
            for s, (mean, sd) in row["sources"].items():
                out[f"{s}_uf1_mean"], out[f"{s}_uf1_sd"] = mean, sd
            writer.writerow(out)


def main(argv: list[str] | None = None) -> int:
    from mjfn_jax import cli

    parser = cli.ArgumentParser("mjfn-compare", __doc__)
    parser.add_argument("workdirs", nargs="+", help="finished runs' workdirs")
    parser.add_argument("--out", help="also write the table as markdown to this file")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    args = parser.parse_args(argv)
    try:
        rows = [summarise(w) for w in args.workdirs]
    except (WorkdirError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = markdown(rows)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def run() -> None:
    """Console script entry point (mjfn-compare)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
