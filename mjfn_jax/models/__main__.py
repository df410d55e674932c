"""Print parameter counts per part and forward FLOPs of the model in a config file.

Usage: python -m mjfn_jax.models --config experiments/configs/megc2019.py[:arg]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from mjfn_jax.models.summary import format_summary, model_summary


def load_config_file(spec: str):
    """Loads ``get_config(arg)`` from 'path/to/config.py[:arg]' by importlib."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} defines no get_config(arg)")
    return module.get_config(arg or None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args(argv)
    config = load_config_file(args.config)
    summary = model_summary(config.model)
    print(format_summary(summary, title=f"MJFN summary for {args.config}"))
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
