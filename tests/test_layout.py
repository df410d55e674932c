"""The layout's rules: tools and experiments use mjfn_jax's public names only; importing the
library starts nothing (no thread, no JAX listener, no patched hook): a run owns those."""

import ast
import os
import pkgutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _private_uses(path: str) -> list[str]:
    """``from mjfn_jax.x import _y`` and ``<module imported from mjfn_jax>._y`` in a file."""
    tree = ast.parse(open(path).read(), path)
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mjfn_jax"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{path}:{node.lineno}: {node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("mjfn_jax")}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_tools_and_experiments_use_public_names_only():
    found = []
    for folder in ("experiments", "tools"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            found += [p for f in files if f.endswith(".py")
                      for p in _private_uses(os.path.join(dirpath, f))]  # fmt: skip
    assert not found, found


def test_the_checker_finds_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mjfn_jax.train import _check_finite\nfrom mjfn_jax import runner\n"
                   "runner._lift\n")  # fmt: skip
    assert len(_private_uses(str(bad))) == 2


def test_importing_every_module_starts_nothing():
    import mjfn_jax

    modules = sorted(m.name for m in pkgutil.walk_packages(mjfn_jax.__path__, "mjfn_jax."))
    assert "mjfn_jax.runner" in modules and "mjfn_jax.checkpoint" in modules
    code = f"""
import importlib, sys, threading
import jax
from jax._src import monitoring
def state():
    return (threading.active_count(), sys.unraisablehook, sys.excepthook,
            len(monitoring.get_event_duration_listeners()), len(monitoring.get_event_listeners()),
            len(monitoring.get_event_time_span_listeners()), len(monitoring.get_scalar_listeners()))
before = state()
for name in {modules!r}:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
after = state()
assert before == after, (before, after)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
