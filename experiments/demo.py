"""`make demo`: build the synthetic dataset if needed, train it under LOSO, print the table.

    python -m experiments.demo --data_dir data/tfds --workdir workdirs/demo

Uses mjfn_jax/configs/synthetic.py (CPU-sized). Rerunning resumes / reuses finished folds.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from mjfn_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "data/tfds", "Where the synthetic TFDS dataset lives / goes.")
flags.DEFINE_string("workdir", "workdirs/demo", "Output directory of the training run.")
flags.DEFINE_string("config", "mjfn_jax/configs/synthetic.py", "Config file (path.py[:arg]).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run_demo()
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # Expected errors (a damaged dataset, a bad config, a diverged run): the cause, without
        # a traceback, as mjfn_jax.main does.
        raise SystemExit(f"error: {e}") from None


def run_demo() -> None:
    from mjfn_jax.config_io import load_config
    from mjfn_jax.parallel import split_cpu_devices
    from mjfn_jax.report import format_results_table
    from mjfn_jax.train import setup_logging, train_and_evaluate

    split_cpu_devices()
    setup_logging()

    with cli.expected_errors():
        config = load_config(FLAGS.config)
        config.data.data_dir = FLAGS.data_dir
        dataset, data_s = _dataset(config)
        results = train_and_evaluate(config, FLAGS.workdir, dataset=dataset)
    timing = results["timing"]
    print(format_results_table(results))
    print(
        f"data {data_s:.0f} s;{_trial_text(timing)} training {timing['wall_s']:.0f} s "
        f"({timing['strategy']}, compile {timing['compile_s']:.0f} s, "
        f"{timing['samples_per_s'] or 0:.0f} samples/s); "
        f"chance UF1 is about {1 / len(dataset.class_names):.2f}; "
        f"report: {os.path.join(FLAGS.workdir, 'report.md')}"
    )


def _dataset(config):
    """(the demo dataset, seconds to load or build it): built on first use."""
    from mjfn_jax.data import builder_config_name, load_dataset

    start = time.perf_counter()
    name = config.data.name
    builder_config = builder_config_name(config.data, config.model.input_size)
    try:
        dataset = load_dataset(name, builder_config, FLAGS.data_dir)
    except FileNotFoundError:
        from data_builders.build import build_dataset, format_summary

        print(f"building {name}/{builder_config} in {FLAGS.data_dir} ...")
        summary = build_dataset(name, builder_config=builder_config, data_dir=FLAGS.data_dir)
        print(format_summary(summary))
        dataset = load_dataset(name, builder_config, FLAGS.data_dir)
    return dataset, time.perf_counter() - start


def _trial_text(timing: dict) -> str:
    """' auto trial 23 s (vmap x2);' when parallel.strategy=auto timed its candidates."""
    auto = timing.get("auto") or {}
    if auto.get("cached", True) or "trial_s" not in auto:
        return ""
    choice = auto["choice"]
    return (
        f" auto trial {auto['trial_s']:.0f} s ({choice['strategy']} x{choice['fold_group_size']});"
    )


if __name__ == "__main__":
    cli.run(main)
