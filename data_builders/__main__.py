"""mjfn-build (python -m data_builders): build a dataset's flow images as a TFDS dataset.

    mjfn-build build NAME[/CONFIG] --data_dir DIR [--manual_dir DIR] [--workers N]

No TensorFlow involved. Examples:
  mjfn-build build synthetic --data_dir data/tfds
  mjfn-build build megc2019/tvl1_112 --data_dir data/tfds --manual_dir ~/megc2019
"""

from __future__ import annotations

import argparse
import sys

import data_builders
from mjfn_jax import cli
from mjfn_jax.preprocess.face import CROP_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser("mjfn-build", __doc__)
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
        choices=CROP_MODES,
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
    parser.epilog = build.format_help()  # --help lists every flag, the subcommand's too
    return parser.parse_args(argv)


APEX_FRACTION_BUILDERS = ("smic", "megc2019")  # The builders without an apex annotation.


def check_flags(args: argparse.Namespace) -> None:
    """Flags that would otherwise be ignored, reinterpreted or end in a TypeError traceback."""
    name = args.name.partition("/")[0]
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1 (or left out: CPU count), got {args.workers}")
    if args.apex_fraction is not None and name not in APEX_FRACTION_BUILDERS:
        raise ValueError(
            f"--apex_fraction applies to {' and '.join(APEX_FRACTION_BUILDERS)} only (their "
            f"apex is not annotated), not to {name}"
        )
    if args.manual_dir is not None and name == "synthetic":
        raise ValueError("--manual_dir does not apply to synthetic (it generates its frames)")


def fail(error: Exception) -> None:
    """Ends the CLI with one line `error: <cause>`; a message's further lines (the manual
    folder's expected layout) are printed before it, so the last line is always the cause."""
    cause, _, details = str(error).partition("\n")
    if details:
        print(details, file=sys.stderr)
    raise SystemExit(f"error: {cause}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    from data_builders.build import build_dataset, format_summary
    from data_builders.common import NothingBuilt

    kwargs = {} if args.apex_fraction is None else {"apex_fraction": args.apex_fraction}
    try:
        check_flags(args)
        summary = build_dataset(
            args.name,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            workers=args.workers,
            crop=args.crop,
            apex=args.apex,
            builder_kwargs=kwargs,
        )
    except NothingBuilt as e:
        lines = [f"    {n:4d}  {reason}" for reason, n in e.skipped.items()]
        print("\n".join([f"skipped: {sum(e.skipped.values())}", *lines]), file=sys.stderr)
        fail(e)
    except (ValueError, OSError) as e:
        # Expected errors (bad input, a missing folder or frame): the cause, no traceback. The
        # messages name the file, row and field (parsing.py) or the clip and frame files.
        fail(e)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
