"""What every absl command of the package shares: flag and config-file errors in one line.

absl prints a config file's failure as a multi-line traceback inside "FATAL Flags parsing
error", or as a bare traceback (a missing file with an override, a syntax error, an override of
a field the config lacks); a user needs the flag and the cause. ``run(main)`` is
``absl.app.run`` with that.
"""

from __future__ import annotations

import contextlib
import errno

from absl import app, flags


def one_line(error: BaseException, first: bool = True) -> str:
    """The first (unless ``first`` is False) and the last non-empty line of an error: the
    flag and the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[-1]}" if first and len(lines) > 1 else lines[-1]


def _parse_flags(argv: list[str], flag_values: flags.FlagValues | None = None) -> list[str]:
    """``flag_values(argv)`` (default: absl's FLAGS), every failure one line."""
    try:
        return (flags.FLAGS if flag_values is None else flag_values)(argv)
    except flags.Error as e:
        raise SystemExit(f"error: {one_line(e)} (--helpfull lists the flags)") from None
    except Exception as e:  # config_flags loads the file, and applies overrides, while parsing
        raise SystemExit(f"error: {config_error(e, argv)}") from None


def config_error(error: Exception, argv: list[str], name: str = "config") -> str:
    """A config flag's failure while parsing: the override of a field the config lacks (with
    ml_collections' near match), else the config file and the cause of its failure."""
    from mjfn_jax.config_io import did_you_mean, unknown_name

    field = unknown_name(error)
    prefix = f"--{name}."
    for arg in argv:
        path = arg.partition("=")[0]
        if field and path.startswith(prefix) and field in path.removeprefix(prefix).split("."):
            return f"{arg}: the config has no field {field!r}{did_you_mean(error)}"
    return f"--{name}={_flag_value(argv, name)}: {one_line(error, first=False)}"


def _flag_value(argv: list[str], name: str) -> str:
    """The value given to flag ``name`` in ``argv`` (``--name=value`` or ``--name value``; the
    last one, as absl takes it)."""
    found = ""
    for i, arg in enumerate(argv):
        flag, sep, value = arg.lstrip("-").partition("=")
        if flag == name and arg.startswith("-"):
            found = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
    return found


def config_flag(name: str = "config"):
    """The value of a config_flags flag, loaded now: a file that fails to load (config_flags
    loads lazily, at first use) ends the command with one line."""
    config = flags.FLAGS[name].value
    try:
        config.keys()
    except Exception as e:  # a missing file, a get_config() that raised, a syntax error
        cause = one_line(e, first=False)
        raise SystemExit(f"error: {flags.FLAGS[name].serialize()}: {cause}") from None
    return config


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
    """absl.app.run with one-line flag errors. From a console script (whose __main__ is pip's
    wrapper) the command's module docstring becomes the --help text, as with python -m."""
    import sys

    module = sys.modules.get(main.__module__)
    entry = sys.modules.get("__main__")
    if entry is not None and not entry.__doc__ and module is not None:
        entry.__doc__ = module.__doc__
    app.run(main, flags_parser=_parse_flags)
