"""Print parameter counts per part and forward FLOPs of the model in a config file.

    python -m mjfn_jax.models --config mjfn_jax/configs/megc2019.py[:arg] \
        [--config.model.dtype=bfloat16 ...] [--json]
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from mjfn_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:arg]).", lock_config=True)
flags.DEFINE_bool("json", False, "Print the summary as JSON too.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mjfn_jax.models.summary import format_summary, model_summary

    config = cli.config_flag()
    with cli.expected_errors():
        summary = model_summary(config.model)
    print(format_summary(summary, title=f"MJFN summary for {FLAGS['config'].serialize()}"))
    if FLAGS.json:
        print(json.dumps(summary, indent=2))


def run() -> None:
    """Console script ``mjfn-summary``."""
    cli.run(main)


if __name__ == "__main__":
    run()
