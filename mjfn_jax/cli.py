"""What every command of the package shares: one flag convention, and errors in one line.

Every command (mjfn-train, mjfn-build, mjfn-predict, mjfn-compare, mjfn-summary, the PyTorch
trainer, the benchmark and the tools) parses its flags with ``ArgumentParser``: flags spelled
with underscores, ``--help`` listing them all (exit 0), a flag error as one line
``error: ... (--help lists the flags)`` (exit 2). Commands that train or describe a model take
``--config NAME[:ARG]`` (a shipped config) or ``--config FILE.py[:ARG]``, and any config field
as ``--config.<group>.<field>=value`` (``parse_with_config``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the package's conventions: the module docstring as the description (its
    layout kept), no abbreviated flags, errors in one line."""

    def __init__(self, prog: str | None = None, doc: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("description", doc)
        super().__init__(prog=prog, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the flags)\n")


def add_config_flag(parser: argparse.ArgumentParser, *, required: bool = True, default=None):
    """``--config`` (a shipped config's name or a config file, ``:ARG`` a variant)."""
    from mjfn_jax.config_io import config_names

    parser.add_argument(
        "--config",
        required=required,
        default=default,
        metavar="NAME[:ARG]",
        help=f"a shipped config ({', '.join(config_names())}) or a config file FILE.py; ARG "
        "picks a variant (e.g. synthetic:smoke). Any config field can be set after it as "
        "--config.<group>.<field>=value (fields and defaults: mjfn_jax/config.py)",
    )


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE = "%H:%M:%S"
# Third-party loggers whose INFO lines say nothing to a user: JAX's search for a TPU or GPU
# backend on a CPU machine, TFDS's and Orbax's (absl's) per-dataset and per-save lines.
QUIET = ("jax._src.xla_bridge", "absl", "tensorflow_datasets", "orbax")


def setup_logging() -> None:
    """The one log format of every command (time, level, logger: message), INFO for this
    project's loggers, warnings only from the chatty third-party ones."""
    root = logging.getLogger()
    # absl's first log call (Orbax logs at import) gives the root logger a plain stream handler
    # of Python's default format: that one takes ours; a test runner's own handlers are kept.
    plain = [h for h in root.handlers if type(h) is logging.StreamHandler]
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, datefmt=LOG_DATE)
    for handler in plain:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE))
    root.setLevel(logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _KnownNoise) for f in absl.filters):
        absl.addFilter(_KnownNoise())


class _KnownNoise(logging.Filter):
    """TFDS's warning for every fresh build of a manual dataset (a builder made before its
    dataset_info.json exists): it says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


def parse_with_config(parser: argparse.ArgumentParser, argv=None):
    """(args, config): the flags, and ``--config`` loaded with its ``--config.x=y`` overrides;
    a config that fails to load, or a bad override, ends the command with one line."""
    from mjfn_jax.config_io import load_config_or_exit, parse_args_with_overrides

    args, overrides = parse_args_with_overrides(parser, argv)
    return args, load_config_or_exit(args.config, overrides)


@contextlib.contextmanager
def expected_errors():
    """Expected errors (an invalid config, a missing dataset, a workdir in use or holding
    another run, a diverged run, a full disk) end the command with ``error: <cause>``, no
    traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:  # a full disk or quota, a read-only file system: the file and the cause
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or not e.filename:
            raise
        from mjfn_jax.workdir import save_failed

        raise SystemExit(f"error: {save_failed(e.filename, e)}") from None


def run(main) -> None:
    """A console script's entry point: ``main(argv) -> exit status``."""
    sys.exit(main(sys.argv[1:]))
