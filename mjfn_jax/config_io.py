"""Loading config files, command-line style overrides, and the workdir's saved config.

``load_config("synthetic:smoke")`` imports the shipped config ``mjfn_jax/configs/synthetic.py``
and calls ``get_config("smoke")`` (big_vision's convention); a
path to a config file (``"my_config.py:smoke"``) works the same way.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
from collections.abc import Iterable

import ml_collections

from mjfn_jax import storage
from mjfn_jax.workdir import CONFIG_FILE, WorkdirError, read_json, write_json

# Settings that change HOW a run executes, not WHAT it computes: a resumed run may change them
# (e.g. continue on a machine with a different device count).
RESUMABLE_KEYS = ("parallel", "checkpoint", "report", "data.data_dir")


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_names() -> list[str]:
    """The shipped configs' names (``mjfn_jax/configs/<name>.py``)."""
    return sorted(
        f.removesuffix(".py") for f in os.listdir(CONFIGS_DIR) if f.endswith(".py") and f[0] != "_"
    )


def config_summaries() -> dict[str, str]:
    """{name: the first line of its docstring} of the shipped configs."""
    out = {}
    for name in config_names():
        with open(os.path.join(CONFIGS_DIR, name + ".py")) as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        out[name] = doc.splitlines()[0] if doc else ""
    return out


def config_path(name_or_path: str) -> str:
    """A shipped config's file for its name ("casme2"), else the path as given."""
    if os.sep not in name_or_path and not name_or_path.endswith(".py"):
        return os.path.join(CONFIGS_DIR, name_or_path + ".py")
    return name_or_path


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Config from "name[:arg]" (a shipped config) or "path/to/file.py[:arg]", then overrides
    such as "train.num_epochs=3"."""
    name, _, arg = spec.partition(":")
    path = config_path(name)
    if not os.path.isfile(path):
        shipped = ", ".join(config_names())
        raise FileNotFoundError(
            f"config file not found: {name!r} (from {spec!r}); shipped configs: {shipped}"
        )
    module_spec = importlib.util.spec_from_file_location("_mjfn_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    return apply_overrides(config, overrides)


def parse_args_with_overrides(parser: argparse.ArgumentParser, argv=None):
    """(args, overrides) of an argparse command that takes config overrides:
    ``--config.<group>.<field>=value``."""
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.") and "=" in a]
    unknown = [a for a in rest if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides: --config.x.y=value)")
    return args, overrides


def load_config_or_exit(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """load_config for a command line: a missing or failing config file, or a bad override,
    ends the command with one line ``error: ...``."""
    try:
        return load_config(spec, overrides)
    except (OSError, ValueError, KeyError, AttributeError, SyntaxError) as e:
        message = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        if message.startswith("override "):  # the override is the flag at fault
            raise SystemExit(f"error: {message.removeprefix('override ')}") from None
        raise SystemExit(f"error: --config={spec}: {message}") from None


def _parse_value(text: str, current):
    """Parse an override's text like the type of the field it replaces."""
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        raise ValueError(f"{text!r} is not True or False")  # bool('no') would be True
    if isinstance(current, float) and isinstance(value, int | str):
        return float(value)  # also "inf", "nan"; a non-number raises naming the text
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[str]
) -> ml_collections.ConfigDict:
    """Apply "a.b.c=value" overrides (an optional leading "--config." is accepted)."""
    for item in overrides:
        key, sep, text = item.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form field=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if part not in node:
                hint = _near_match(node, part)
                raise KeyError(f"override {item!r}: no config group {part!r}{hint}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {item!r}: no config field {key!r}{_near_match(node, leaf)}")
        try:
            node[leaf] = _parse_value(text, node[leaf])
        except (ValueError, TypeError) as e:  # also ConfigDict's type check
            raise ValueError(f"override {item!r}: {e}") from None
    return config


def _near_match(node: ml_collections.ConfigDict, name: str) -> str:
    """ml_collections' own suggestion for a name ``node`` lacks (see did_you_mean)."""
    try:
        node[name]
    except KeyError as e:
        return did_you_mean(e)
    return ""


def unknown_name(error: BaseException) -> str | None:
    """The field name of ml_collections' KeyError (or AttributeError wrapping one) for a field
    a config lacks: its message is the quoted name, then its "Did you mean" line."""
    text = error
    while isinstance(text, BaseException) and text.args:
        text = text.args[0]
    if isinstance(error, KeyError | AttributeError) and isinstance(text, str):
        match = re.match(r"'([^']+)'", text)
        return match[1] if match else None
    return None


def did_you_mean(error: BaseException) -> str:
    """' (did you mean "num_epochs"?)' from an ml_collections error's suggestion, or ''."""
    match = re.search(r'Did you mean "([^"]+)"', str(error))
    return f' (did you mean "{match[1]}"?)' if match else ""


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """JSON-friendly plain dict (tuples become lists)."""
    return json.loads(config.to_json())


def without_resumable(d: dict) -> dict:
    """A config dict without the RESUMABLE_KEYS (what a resumed run may change)."""
    d = json.loads(json.dumps(d))
    for key in RESUMABLE_KEYS:
        *parents, leaf = key.split(".")
        node = d
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return d


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Each field where two config dicts differ, as "group.field: saved A != new B"."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: saved {va!r} != new {vb!r}")
    return out


# Fields that only apply when another field has a given value: (field, (condition field,
# the values under which it applies)). config.json leaves them out otherwise.
CONDITIONAL_FIELDS = (
    ("data.generated_subjects", ("data.name", ("generated",))),
    ("data.generated_samples", ("data.name", ("generated",))),
    ("folds.num_folds", ("folds.protocol", ("kfold",))),
)


def applicable(d: dict) -> dict:
    """A config dict without the fields that do not apply to its run (CONDITIONAL_FIELDS)."""
    d = json.loads(json.dumps(d))

    def get(path: str):
        node = d
        for part in path.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node

    for field, (condition, values) in CONDITIONAL_FIELDS:
        *parents, leaf = field.split(".")
        if get(condition) not in values:
            parent = get(".".join(parents))
            if isinstance(parent, dict):
                parent.pop(leaf, None)
    return d


def config_from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A run's config.json as a ConfigDict, with the defaults of the fields it leaves out."""
    from mjfn_jax.config import base_config

    def merge(base: dict, over: dict) -> dict:
        return base | {
            k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
            for k, v in over.items()
        }

    return ml_collections.ConfigDict(merge(config_to_dict(base_config()), saved))


def save_or_check_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Write workdir/config.json, or refuse if a different config was saved there before.

    Resuming with a different model, data, fold or training setting would silently mix two
    experiments in one results table; only the RESUMABLE_KEYS may differ.
    """
    storage.makedirs(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    new = applicable(config_to_dict(config))
    exists = storage.exists(path)
    if exists:
        saved = read_json(path, "restore it, or use a new --workdir")
        diffs = config_differences(without_resumable(applicable(saved)), without_resumable(new))
        if diffs:
            raise WorkdirError(
                f"workdir {workdir!r} holds a run with a different config ({path}); "
                "use a new --workdir or the same config. Differences:\n  " + "\n  ".join(diffs)
            )
    if not exists or saved != new:  # e.g. another data.data_dir
        write_json(path, new)
