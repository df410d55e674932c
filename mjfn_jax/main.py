"""CLI: train and evaluate every fold of a config, then print the results table.

    python -m mjfn_jax.main --config experiments/configs/synthetic.py --workdir workdirs/syn \
        [--config.train.num_epochs=3 --config.parallel.strategy=vmap ...]

Rerunning the same command resumes: finished folds are skipped, the others continue from
their latest checkpoint. A different config in the same workdir is refused.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from mjfn_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, predictions, report).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mjfn_jax.parallel import split_cpu_devices

    split_cpu_devices()
    from mjfn_jax.report import format_results_table
    from mjfn_jax.train import setup_logging, train_and_evaluate

    setup_logging()

    config = cli.config_flag()
    with cli.expected_errors():
        results = train_and_evaluate(config, FLAGS.workdir)
    timing = results["timing"]
    print(format_results_table(results))
    auto = timing.get("auto") or {}
    if not auto.get("cached", True) and "trial_s" in auto:
        print(f"parallel.strategy=auto: timed trial {auto['trial_s']:.1f} s (cached from now on)")
    print(
        f"strategy {timing['strategy']} on {timing['platform']} {timing['mesh']}: "
        f"compile {timing['compile_s']:.1f} s, train {timing['train_s']:.1f} s, "
        f"{timing['samples_per_s'] or 0:.0f} samples/s; report in {FLAGS.workdir}/report.md"
    )


def run() -> None:
    """Console script ``mjfn-train``."""
    cli.run(main)


if __name__ == "__main__":
    run()
