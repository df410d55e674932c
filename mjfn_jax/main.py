"""mjfn-train: train and evaluate every fold of a config, then print the results table.

    mjfn-train --config synthetic --workdir workdirs/syn [--config.train.num_epochs=3 ...]
    mjfn-train --config my_config.py:smoke --workdir W --seeds 0 1 2

Rerunning the same command resumes: finished folds are skipped, the others continue from
their latest checkpoint. A different config in the same workdir is refused.

Several processes (one global mesh over all their devices; mjfn_jax.distributed): start one
per process, same config and workdir, with --coordinator_address HOST:PORT (process 0's)
--num_processes N --process_id I; or --distributed where JAX detects the cluster itself (TPU
VM, Slurm, Open MPI). Process 0 prints; the others log to <workdir>/logs/process_<i>.log (to
their stderr when the workdir is on object storage, gs://...).
"""

from __future__ import annotations

import argparse

from mjfn_jax import cli, distributed


class _ListConfigs(argparse.Action):
    """--list_configs: print the shipped configs' names and first lines, then exit."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mjfn_jax.config_io import config_summaries

        for name, line in config_summaries().items():
            print(f"{name:12s} {line}")
        parser.exit()


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser("mjfn-train", __doc__)
    cli.add_config_flag(p)
    p.add_argument("--workdir", required=True, help="output folder: checkpoints, report")
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED",
        help="train these seeds in one run (config.train.seeds); seeds/<s>/ holds each",
    )  # fmt: skip
    p.add_argument("--list_configs", nargs=0, action=_ListConfigs, help="list the shipped configs")
    multi = p.add_argument_group("several processes (docs/multi_host.md)")
    multi.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator")
    multi.add_argument("--num_processes", type=int, help="the number of processes")
    multi.add_argument("--process_id", type=int, help="this process's id, 0..num_processes-1")
    multi.add_argument(
        "--distributed", action="store_true",
        help="the cluster (TPU VM, Slurm, Open MPI) as JAX detects it",
    )  # fmt: skip
    multi.add_argument(
        "--distributed_timeout", type=int, default=distributed.DEFAULT_TIMEOUT_S,
        help="seconds to wait for every process to join, then end with an error",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args, config = cli.parse_with_config(parser(), argv)
    if args.seeds:
        config.train.seeds = tuple(args.seeds)
    with cli.expected_errors():  # checked before anything starts
        from mjfn_jax.config import validate_config

        validate_config(config)
        cluster = distributed.settings(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            args.distributed,
            args.distributed_timeout,
        )
    from mjfn_jax.parallel import split_cpu_devices

    split_cpu_devices()  # configures devices only; JAX's backends start after initialize
    from mjfn_jax.report import format_results_table
    from mjfn_jax.train import setup_logging, train_and_evaluate

    setup_logging()
    with cli.expected_errors():
        distributed.initialize(cluster)
    if cluster is not None:  # (jax.process_index() starts the backends: not before checks)
        distributed.setup_process_logging(args.workdir)
    with cli.expected_errors():
        results = train_and_evaluate(config, args.workdir)
    if cluster is not None and not distributed.is_main():
        return 0  # process 0 prints the results
    print(format_results_table(results))
    print(timing_lines(results["timing"], args.workdir))
    return 0


def timing_lines(timing: dict, workdir: str) -> str:
    """How the run went (the strategy, compile and training seconds), for the console; a
    nested selection's timing sums its candidates' runs."""
    runs = timing.get("candidates") or [timing]
    lines = []
    auto = runs[0].get("auto") or {}
    if "estimate" in auto:  # the trial was not worth this run: the rule's choice, timed
        est = auto["estimate"]
        lines.append(
            f"parallel.strategy=auto: no trial (it would cost ~{est['trial_extra_s']:.1f} s, over "
            f"{est['budget']:g} of ~{est['run_s']:.1f} s of training; "
            "parallel.auto_trial_budget=0 forces it)"
        )
    elif not auto.get("cached", True) and "trial_s" in auto:
        lines.append(
            f"parallel.strategy=auto: timed trial {auto['trial_s']:.1f} s (cached from now on)"
        )
    train_s = sum(r["train_s"] for r in runs)
    samples = sum((r["samples_per_s"] or 0) * r["train_s"] for r in runs)
    first = runs[0]
    what = f" ({len(runs)} candidates)" if "candidates" in timing else ""
    lines.append(
        f"strategy {first['strategy']} on {first['platform']} {first['mesh']}{what}: "
        f"compile {sum(r['compile_s'] for r in runs):.1f} s, train {train_s:.1f} s, "
        f"{samples / train_s if train_s else 0:.0f} samples/s; report in {workdir}/report.md"
    )
    return "\n".join(lines)


def run() -> None:
    """Console script ``mjfn-train``."""
    cli.run(main)


if __name__ == "__main__":
    run()
