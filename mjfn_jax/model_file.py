"""A finished fold's model on disk: ``folds/<fold>/model/``, an Orbax checkpoint of the plain
nested dict ``{"params": {module path: array}, "batch_stats": {module path: array}}``, its
floating arrays in ``checkpoint.final_dtype`` (float32 or bfloat16, stored as such by Orbax).
Plain Orbax reads it without this package::

    import orbax.checkpoint as ocp
    model = ocp.StandardCheckpointer().restore("W/folds/<fold>/model")  # numpy arrays

There is no int8: Orbax stores arrays of one dtype, and a per-output-channel quantized kernel
(int8 values with float32 scales) would need a codec of ours to read (docs/design.md#checkpoints).
Saving it (on a run's writer thread, by the process that holds the fold) is
mjfn_jax.checkpoint's job; this module is the format, the copy to the host, and the flat
{key path: array} form of any pytree that in-progress checkpoints store.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mjfn_jax import orbax_io
from mjfn_jax.workdir import WorkdirError

FINAL_DTYPES = ("float32", "bfloat16")  # checkpoint.final_dtype


class WrongShape(ValueError):
    """A saved entry's shape is not the one the config's model has."""


def flatten(tree) -> dict[str, jax.Array]:
    """A pytree as {key path: leaf}: what in-progress checkpoints store (any pytree, nnx.State
    or optax state, round-trips exactly through ``unflatten_like``)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def abstract(like) -> dict[str, jax.ShapeDtypeStruct]:
    """The flat {key path: ShapeDtypeStruct} of ``like``: what a restore reads into."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flatten(like).items()}


def unflatten_like(like, flat: dict):
    """A flat dict back into the structure of ``like`` (host arrays)."""
    leaves = [np.asarray(flat[k]) for k in flatten(like)]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def in_dtype(model, final_dtype: str):
    """``model``'s arrays on the host, the floating ones in ``final_dtype`` (rounded to
    nearest), the others as they are: what a saved model holds."""
    dtype = jnp.dtype(final_dtype)

    def one(x):
        x = np.asarray(x)
        return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x

    return jax.tree.map(one, model)


def round_trip_final(model, final_dtype: str):
    """``model`` as a model saved in ``final_dtype`` gives it back (host arrays of ``model``'s
    dtypes)."""
    saved = in_dtype(model, final_dtype)
    return jax.tree.map(lambda x, y: np.asarray(y).astype(np.asarray(x).dtype), model, saved)


def save_model(path: str, model: dict, final_dtype: str, key: str) -> None:
    """Write ``model`` ({"params": {name: array}, "batch_stats": {...}}) to the Orbax checkpoint
    ``path``, its floating arrays in ``final_dtype``; by this process alone (``key``: for
    Orbax's barrier names). Orbax writes a temporary folder and renames it when complete; a
    model already there (a fold retrained after a kill) is replaced."""
    host = _plain(in_dtype(model, final_dtype))
    with orbax_io.checkpointer(key) as ckptr:
        ckptr.save(path, args=ocp.args.PyTreeSave(host), force=True)


def _plain(tree):
    """Mappings as plain dicts (what a bare Orbax restore gives back), leaves as they are."""
    if isinstance(tree, Mapping):
        return {key: _plain(value) for key, value in tree.items()}
    return tree


def restore_model(path: str, like, key: str):
    """The model at ``path`` in the structure and dtypes of ``like`` (a pytree of arrays or
    ShapeDtypeStructs; a model saved in bfloat16 comes back as float32 where ``like`` says so),
    host arrays. A damaged or mismatched model raises WorkdirError naming ``path``."""
    try:
        with orbax_io.checkpointer(key) as ckptr:
            saved = ckptr.restore(path)
        flat_saved, flat_like = flatten(saved), abstract(like)
        if set(flat_saved) != set(flat_like):
            missing = sorted(set(flat_like) - set(flat_saved))[:3]
            raise KeyError(f"no {', '.join(missing) or 'match'} among its entries")
        for name, spec in flat_like.items():
            if flat_saved[name].shape != spec.shape:
                raise WrongShape(
                    f"{name} has shape {flat_saved[name].shape}, this config's model {spec.shape}"
                )
    except WrongShape as e:
        raise WorkdirError(f"{path}: {e}") from None
    except KeyError as e:
        raise WorkdirError(f"{path} is not this config's model ({e.args[0]})") from None
    except Exception as e:  # Orbax/tensorstore raise many types; all mean "unreadable"
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        raise WorkdirError(f"{path} is damaged ({type(e).__name__}: {cause})") from None
    flat = {name: np.asarray(flat_saved[name]).astype(x.dtype) for name, x in flat_like.items()}
    return unflatten_like(like, flat)


def copy_to_host(tree, pinned: bool | None = None):
    """``tree``'s arrays as numpy arrays. ``pinned`` (default: on any platform but the CPU,
    where the device has such memory): each leaf is first moved to its device's pinned host
    memory, then read there, which was about 4x faster than ``jax.device_get``'s transfers into
    pageable memory for a reference-size model on an H200 (docs/performance.md#checkpoints)."""
    if pinned is None:
        pinned = all(has_pinned_host(x) for x in jax.tree.leaves(tree))
    if pinned:
        tree = jax.tree.map(
            lambda x: jax.device_put(x, x.sharding.with_memory_kind("pinned_host")), tree
        )
    return jax.device_get(tree)


def has_pinned_host(x) -> bool:
    """Whether ``x`` is an accelerator's array whose devices all have pinned host memory."""
    devices = getattr(getattr(x, "sharding", None), "device_set", ())
    return bool(devices) and all(
        d.platform != "cpu" and "pinned_host" in {m.kind for m in d.addressable_memories()}
        for d in devices
    )
