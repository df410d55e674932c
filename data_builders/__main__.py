"""CLI: python -m data_builders build NAME[/CONFIG] --data_dir DIR [--manual_dir DIR] [--workers N]

No TensorFlow involved. Examples:
  python -m data_builders build synthetic --data_dir data/tfds
  python -m data_builders build megc2019/tvl1_112 --data_dir data/tfds --manual_dir ~/megc2019
"""

from __future__ import annotations

import argparse
import logging
import sys

import data_builders


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_builders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build one dataset/config to array_record files")
    build.add_argument(
        "name",
        help=f"NAME[/CONFIG]; NAME: {', '.join(data_builders.BUILDERS)}"
        "; CONFIG <method>_<size> e.g. tvl1_112 (default), tvl1_48, farneback_112",
    )
    build.add_argument("--data_dir", required=True, help="TFDS data dir (e.g. data/tfds)")
    build.add_argument(
        "--manual_dir",
        default=None,
        help="folder holding the downloaded dataset (not for synthetic)",
    )
    build.add_argument(
        "--workers", type=int, default=None, help="flow processes (default: CPU count)"
    )
    build.add_argument(
        "--crop",
        choices=("haar", "center", "none"),
        default=None,
        help="override the crop chosen from the manual folder (default: per source)",
    )
    build.add_argument(
        "--apex",
        choices=("annotated", "spotted", "middle"),
        default="annotated",
        help="apex frame: the sheet's (SMIC: middle, as before), spotted (the summary then "
        "reports spotted vs annotated), or the clip's middle frame",
    )
    build.add_argument(
        "--apex_fraction",
        type=float,
        default=None,
        help="smic/megc2019: SMIC apex position in a clip (default 0.5, the middle)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from data_builders.build import build_dataset, format_summary

    kwargs = {} if args.apex_fraction is None else {"apex_fraction": args.apex_fraction}
    summary = build_dataset(
        args.name,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        workers=args.workers,
        crop=args.crop,
        apex=args.apex,
        builder_kwargs=kwargs,
    )
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
