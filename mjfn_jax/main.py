"""CLI: train and evaluate every fold of a config, then print the results table.

    python -m mjfn_jax.main --config mjfn_jax/configs/synthetic.py --workdir workdirs/syn \
        [--config.train.num_epochs=3 --config.parallel.strategy=vmap ...]

Rerunning the same command resumes: finished folds are skipped, the others continue from
their latest checkpoint. A different config in the same workdir is refused.

Several processes (one global mesh over all their devices; mjfn_jax.distributed): start one
per process, same config and workdir, with --coordinator_address HOST:PORT (process 0's)
--num_processes N --process_id I; or --distributed where JAX detects the cluster itself (TPU
VM, Slurm, Open MPI). Process 0 prints; the others log to <workdir>/logs/process_<i>.log.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from mjfn_jax import cli, distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, predictions, report).")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator."
)
flags.DEFINE_integer("num_processes", None, "Multi-process: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's id, 0..num_processes-1.")
flags.DEFINE_bool(
    "distributed", False, "Multi-process, the cluster (TPU VM, Slurm, Open MPI) detected by JAX."
)
flags.DEFINE_integer(
    "distributed_timeout",
    distributed.DEFAULT_TIMEOUT_S,
    "Multi-process: seconds to wait for every process to join, then end with an error.",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with cli.expected_errors():  # checked before anything starts
        cluster = distributed.settings(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            FLAGS.distributed,
            FLAGS.distributed_timeout,
        )
    config = cli.config_flag()
    from mjfn_jax.parallel import split_cpu_devices

    split_cpu_devices()  # configures devices only; JAX's backends start after initialize
    from mjfn_jax.report import format_results_table
    from mjfn_jax.train import setup_logging, train_and_evaluate

    setup_logging()
    with cli.expected_errors():
        distributed.initialize(cluster)
    if cluster is not None:  # (jax.process_index() starts the backends: not before checks)
        distributed.setup_process_logging(FLAGS.workdir)
    with cli.expected_errors():
        results = train_and_evaluate(config, FLAGS.workdir)
    if cluster is not None and not distributed.is_main():
        return  # process 0 prints the results
    print(format_results_table(results))
    print(timing_lines(results["timing"], FLAGS.workdir))


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
