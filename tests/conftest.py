"""Suite-wide settings and the fixtures several test modules share.

The plain functions (``make_tiny_dataset``, ``make_smoke_config``) are also imported by the
scripts that tests run in subprocesses (``tests/kill_driver.py``, test_strategies' script).
"""

import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiny_dataset(num_subjects: int = 4, clips: int = 3):
    """A synthetic ``mjfn_jax.data.Dataset`` of 32x32 flow images, 3 classes."""
    from mjfn_jax.data import Dataset
    from mjfn_jax.synthetic import make_flow_arrays

    return Dataset.from_synthetic_arrays(make_flow_arrays(num_subjects, clips, 32, 0))


def make_smoke_config(*overrides: str):
    """mjfn_jax/configs/synthetic.py:smoke, sequential, 2 epochs, then ``overrides``."""
    from mjfn_jax.config_io import load_config

    return load_config(
        os.path.join(REPO, "mjfn_jax/configs/synthetic.py") + ":smoke",
        ["parallel.strategy=sequential", "train.num_epochs=2", *overrides],
    )


_RUNNERS = None  # this test process's mjfn_jax.runner.Runners, opened on first use


def train_and_evaluate(config, workdir, dataset=None, **kwargs):
    """``mjfn_jax.train.train_and_evaluate`` sharing one ``Runners`` per test process (its
    ``runners`` argument): a run reuses the programs that an earlier test's run of the same
    program config traced and compiled, as several runs in one user's process do. Tracing and
    lowering this network's programs is most of a tiny run's time; the numbers are the same
    (tests/test_train.py checks a run with its own Runners against one sharing them)."""
    global _RUNNERS
    from mjfn_jax.runner import Runners
    from mjfn_jax.train import train_and_evaluate as run

    if _RUNNERS is None:
        _RUNNERS = Runners().__enter__()
    return run(config, workdir, dataset, runners=_RUNNERS, **kwargs)


def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A console script's ``main(argv)`` in this process: (exit status, stdout, stderr) as a
    shell would see them. For a command's expected errors, which end it before any work: a
    subprocess would add only a Python start and JAX's import. An unexpected exception fails
    the test with its traceback."""
    try:
        status = main(argv) or 0
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("error: ...") prints the text and exits 1
            print(e.code, file=sys.stderr)
            status = 1
        else:
            status = e.code or 0
    out = capsys.readouterr()
    return status, out.out, out.err


# Faster XLA:CPU compiles for the suite: it compiles hundreds of programs, most of them run a
# few times (an init, a few steps of a tiny network), so compiling dominates it. LLVM's
# optimisation off, and the older elemental emitters for fusions instead of the MLIR fusion
# emitters: a training step of a tiny MJFN compiles in about a third of the time it takes at
# XLA's default (docs/performance.md#the-test-suite). The programs compute the same
# functions; `make test-all` (MJFN_JAX_TEST_OPTIMIZED=1) runs the suite with XLA's defaults.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a process a test starts: the session's flags plus ``flags``."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


def pytest_configure(config):
    """XLA's persistent compilation cache, one folder for the whole session: every test and
    every process a test starts (through the JAX_* variables, read when jax is imported) loads
    a program that another already compiled instead of compiling it again. Every compile is
    kept (minimum compile time 0). A folder set by the user is used as it is; otherwise a fresh
    one, removed at the end."""
    global _XLA_CACHE_OWNED
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mjfn_jax_test_xla_")
        _XLA_CACHE_OWNED = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if os.environ.get("MJFN_JAX_TEST_OPTIMIZED") != "1":  # (a flag already set is kept)
        given = os.environ.get("XLA_FLAGS", "")
        fast = [f for f in FAST_COMPILE if f.split("=")[0] not in given]
        os.environ["XLA_FLAGS"] = " ".join([given, *fast]).strip()
    if "jax" in sys.modules:  # imported before this hook (a plugin): set it directly too
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


_XLA_CACHE_OWNED = None


def pytest_unconfigure(config):
    if _RUNNERS is not None:
        _RUNNERS.__exit__(None, None, None)
    if _XLA_CACHE_OWNED:
        shutil.rmtree(_XLA_CACHE_OWNED, ignore_errors=True)


# The fast suite's longest files, longest first. `make test` runs a file to a worker
# (pytest -n auto --dist loadfile --no-loadscope-reorder), handing out files in collection order:
# these start first, so that no long file starts while the other workers are running out of
# work. (xdist's own order, most tests first, started these last.)
LONGEST_FILES = (
    "test_strategies.py",
    "test_distributed_engine.py",
    "test_fault_injection.py",
    "test_seeds.py",
    "test_train.py",
    "test_engine.py",
    "test_reliability.py",
    "test_distributed.py",
    "test_predict.py",
    "test_model.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as found


@pytest.fixture(scope="session")
def tiny_dataset():
    """tiny_dataset(num_subjects=4, clips=3) -> Dataset (see make_tiny_dataset)."""
    return make_tiny_dataset


@pytest.fixture(scope="session")
def smoke_config():
    """smoke_config(*overrides) -> ConfigDict (see make_smoke_config)."""
    return make_smoke_config


@pytest.fixture(autouse=True, scope="session")
def _private_strategy_cache(tmp_path_factory):
    """parallel.strategy='auto' caches its trials in ~/.cache/mjfn_jax: the suite (and the CLI
    processes it starts) use a folder of their own instead."""
    old = os.environ.get("MJFN_JAX_CACHE_DIR")
    os.environ["MJFN_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("mjfn_jax_cache"))
    yield
    if old is None:
        os.environ.pop("MJFN_JAX_CACHE_DIR", None)
    else:
        os.environ["MJFN_JAX_CACHE_DIR"] = old
