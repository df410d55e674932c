"""Suite-wide settings."""

import os

import pytest


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
