"""TFDS builders of MJFN-JAX: synthetic, casme2, samm, smic, the megc2019 composite, and
flow_images (a published folder of composite flow images, imported).

Importing ``data_builders`` is cheap (no tensorflow_datasets). Importing ``data_builders.<name>``
registers that builder with tfds; :func:`builder_cls` returns its class directly, which is what
``data_builders.build`` and ``mjfn_jax.data`` use (no dependence on tfds's global registry).
"""

from __future__ import annotations

import importlib

BUILDERS = ("synthetic", "casme2", "samm", "smic", "megc2019", "flow_images")


def builder_cls(name: str) -> type:
    """The `Builder` class of data_builders/<name>; a clear error for an unknown name."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(BUILDERS)}")
    return importlib.import_module(f"data_builders.{name}.{name}_dataset_builder").Builder
