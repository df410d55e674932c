"""`make demo`: build the synthetic dataset if needed, train it under LOSO, print the table.

    python -m experiments.demo --data_dir data/tfds --workdir workdirs/demo

Uses mjfn_jax/configs/synthetic.py (CPU-sized). Rerunning resumes / reuses finished folds.
"""

from __future__ import annotations

import os
import time

from mjfn_jax import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser("python -m experiments.demo", __doc__)
    parser.add_argument("--data_dir", default="data/tfds", help="where the dataset is, or goes")
    parser.add_argument("--workdir", default="workdirs/demo", help="the training run's folder")
    cli.add_config_flag(parser, required=False, default="synthetic")
    args, config = cli.parse_with_config(parser, argv)
    with cli.expected_errors():
        run_demo(config, args.data_dir, args.workdir)
    return 0


def run_demo(config, data_dir: str, workdir: str) -> None:
    from mjfn_jax.parallel import split_cpu_devices
    from mjfn_jax.report import format_results_table
    from mjfn_jax.train import setup_logging, train_and_evaluate

    split_cpu_devices()
    setup_logging()

    config.data.data_dir = data_dir
    dataset, data_s = _dataset(config)
    results = train_and_evaluate(config, workdir, dataset=dataset)
    timing = results["timing"]
    print(format_results_table(results))
    print(
        f"data {data_s:.0f} s;{_trial_text(timing)} training {timing['wall_s']:.0f} s "
        f"({timing['strategy']}, compile {timing['compile_s']:.0f} s, "
        f"{timing['samples_per_s'] or 0:.0f} samples/s); "
        f"chance UF1 is about {1 / len(dataset.class_names):.2f}; "
        f"report: {os.path.join(workdir, 'report.md')}"
    )


def _dataset(config):
    """(the demo dataset, seconds to load or build it): built on first use."""
    from mjfn_jax.data import builder_config_name, load_dataset

    start = time.perf_counter()
    name = config.data.name
    builder_config = builder_config_name(config.data, config.model.input_size)
    try:
        dataset = load_dataset(name, builder_config, config.data.data_dir)
    except FileNotFoundError:
        from data_builders.build import build_dataset, format_summary

        print(f"building {name}/{builder_config} in {config.data.data_dir} ...")
        summary = build_dataset(name, builder_config=builder_config, data_dir=config.data.data_dir)
        print(format_summary(summary))
        dataset = load_dataset(name, builder_config, config.data.data_dir)
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
