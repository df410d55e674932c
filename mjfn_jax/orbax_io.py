"""Orbax for checkpoints that one process writes alone, from any process of a run.

Every checkpoint of a run (a fold's in-progress train state, a finished fold's model) is written
by the one process that holds that fold's rows (``mjfn_jax.unit_checkpoints``), from its own
devices' shards: nothing is gathered, and no other process takes part. Two things in Orbax
0.12.8 stand in the way, and this module is where they are handled:

- By default Orbax expects every process to call save and meets them at barriers; a save by one
  process waits for the others forever. ``solo`` gives the options of a checkpoint that one
  process saves (or restores) alone: itself as primary host, no other process active.
- Orbax writes numpy arrays from process 0 only (``NumpyHandler`` serializes when
  ``process_index() == 0``: a save by another process leaves a checkpoint without data), and it
  refuses a host-local ``jax.Array`` with several processes. ``AnyProcessNumpyHandler`` writes
  the arrays from whichever process saves; the files are those of Orbax's own numpy handler, so
  any Orbax (``ocp.StandardCheckpointer().restore(path)``) reads them back, in any process count.
"""

from __future__ import annotations

import asyncio

import jax
import numpy as np
import orbax.checkpoint as ocp

# Orbax's serialization helpers, which NumpyHandler's own write uses (orbax-checkpoint 0.12.8,
# pinned in requirements.txt; tests/test_distributed_engine.py fails if they change).
from orbax.checkpoint._src.serialization import ocdbt_utils
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

# What Orbax names a checkpoint folder while it writes it (renamed when complete).
ORBAX_TMP = ".orbax-checkpoint-tmp"


def solo(key: str) -> ocp.options.MultiprocessingOptions:
    """The options of a checkpoint that this process saves or restores alone (Orbax's defaults
    with one process). ``key``: unique per checkpoint folder, for Orbax's barrier names."""
    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"{key}@{me}"
    )


class AnyProcessNumpyHandler(ocp.type_handlers.NumpyHandler):
    """Orbax's NumpyHandler, writing from any process rather than process 0 only (the body of
    its ``_background_serialize`` without that condition). Same files, same type string."""

    async def _background_serialize(self, values, infos, args=None):
        args = args or [ocp.type_handlers.SaveArgs()] * len(values)
        writes = []
        for value, info, arg in zip(values, infos, args, strict=True):
            await info.await_path_creation()
            spec = ts_utils.build_array_write_spec(
                info=info,
                arg=arg,
                global_shape=value.shape,
                local_shape=value.shape,
                dtype=value.dtype,
                use_ocdbt=info.is_ocdbt_checkpoint,
                process_index=ocdbt_utils.get_process_index_for_subdir(
                    use_ocdbt=info.is_ocdbt_checkpoint,
                    override_ocdbt_process_id=self._override_ocdbt_process_id,
                ),
                metadata_key=self._metadata_key,
            )
            writes.append(self._open_and_write(value, spec.json, info.ts_context))
        await asyncio.gather(*writes)


def _registry():
    # Only numpy arrays are ever saved (host copies); jax.Array is registered so that Orbax keeps
    # its array metadata as it does by default.
    return ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, AnyProcessNumpyHandler()), (jax.Array, ocp.type_handlers.ArrayHandler())
    )


def tree_handler(key: str) -> ocp.PyTreeCheckpointHandler:
    """The handler of a pytree of host arrays saved by this process alone (``solo``)."""
    return ocp.PyTreeCheckpointHandler(
        multiprocessing_options=solo(key), type_handler_registry=_registry()
    )


def checkpointer(key: str) -> ocp.Checkpointer:
    """A synchronous checkpointer of pytrees of host arrays for this process alone (the run's
    writer thread is the asynchrony: a failed write raises in the save that made it)."""
    return ocp.Checkpointer(tree_handler(key), multiprocessing_options=solo(key))


def restore_args(abstract_tree):
    """PyTreeRestore's arguments for a tree of ShapeDtypeStructs: host numpy arrays, cast to
    the structs' dtypes (a bfloat16 model comes back as float32 where the structs say so)."""
    return ocp.args.PyTreeRestore(
        item=abstract_tree,
        restore_args=jax.tree.map(
            lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), abstract_tree
        ),
    )
