"""mjfn-summary: parameter counts per part and forward FLOPs of a config's model.

mjfn-summary --config megc2019 [--config.model.dtype=bfloat16 ...] [--json]
"""

from __future__ import annotations

import json

from mjfn_jax import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser("mjfn-summary", __doc__)
    cli.add_config_flag(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args, config = cli.parse_with_config(parser, argv)
    from mjfn_jax.models.summary import format_summary, model_summary

    with cli.expected_errors():
        summary = model_summary(config.model)
    print(format_summary(summary, title=f"MJFN summary for --config={args.config}"))
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def run() -> None:
    """Console script ``mjfn-summary``."""
    cli.run(main)


if __name__ == "__main__":
    run()
