"""Print parameter counts per part and forward FLOPs of the model in a config file.

Usage: python -m mjfn_jax.models --config experiments/configs/megc2019.py[:arg]
           [--set model.dtype=bfloat16 ...] [--json]
"""

from __future__ import annotations

import argparse
import json

from mjfn_jax.config_io import load_config
from mjfn_jax.models.summary import format_summary, model_summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    summary = model_summary(config.model)
    print(format_summary(summary, title=f"MJFN summary for {args.config}"))
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
