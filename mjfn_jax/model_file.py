"""A finished fold's model on disk: ``folds/<fold>/final.npz``, its params and BatchNorm
statistics as {key path: array}, in ``checkpoint.final_dtype`` (float32, bfloat16 or int8).

The model is one .npz rather than an Orbax checkpoint because Orbax's fixed cost per save was a
quarter of a CPU LOSO run's loop (docs/performance.md#checkpoints); it is also readable without
JAX (``numpy.load``). Writing it (atomically, on a run's writer thread) is
mjfn_jax.checkpoint's job; this module is the format and the copy to the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FINAL_DTYPES = ("float32", "bfloat16", "int8")  # checkpoint.final_dtype
_BF16_KEYS = "__bfloat16_keys__"  # the entries of final.npz stored as bfloat16 bit patterns
_INT8_SCALE = "__int8_scale__"  # + key: the per-output-channel scales of an int8 entry


class WrongShape(ValueError):
    """A saved entry's shape is not the one the config's model has."""


def flatten(tree) -> dict[str, jax.Array]:
    """A pytree as {key path: leaf}: what checkpoints and final.npz store (any pytree, nnx.State
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


def encode_final(flat: dict, final_dtype: str) -> dict[str, np.ndarray]:
    """The entries of final.npz for a model as a flat {key path: host array}. Floating arrays
    are stored in ``final_dtype``: float32; bfloat16 (as uint16 bit patterns, rounded to
    nearest); or int8, where kernels (2 or more axes, output channels last: HWIO convolutions,
    [in, out] dense layers) become symmetric per-output-channel int8 (x ~ q * max|x| / 127, the
    scales kept in float32) and 1-axis arrays (biases, BatchNorm) stay float32."""
    arrays, bf16 = {}, []
    for key, x in flat.items():
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating) and final_dtype == "bfloat16":
            x = x.astype(jnp.bfloat16).view(np.uint16)  # .npy has no bfloat16
            bf16.append(key)
        elif np.issubdtype(x.dtype, np.floating) and final_dtype == "int8" and x.ndim >= 2:
            x32 = x.astype(np.float32)
            scale = np.abs(x32).reshape(-1, x.shape[-1]).max(axis=0) / 127.0  # [out]
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            x = np.clip(np.rint(x32 / scale), -127, 127).astype(np.int8)
            arrays[_INT8_SCALE + key] = scale
        arrays[key] = x
    arrays[_BF16_KEYS] = np.asarray(bf16, dtype=str)
    return arrays


def decode_final(arrays, wanted: dict) -> dict[str, np.ndarray]:
    """``encode_final``'s entries (a dict, or an open .npz) back to {key path: array} in the
    shapes and dtypes of ``wanted`` ({key: ShapeDtypeStruct}). A missing entry raises
    KeyError, a wrong shape WrongShape naming the key."""
    bf16 = set(arrays[_BF16_KEYS].tolist())
    flat = {}
    for key, spec in wanted.items():
        x = arrays[key]
        if key in bf16:
            x = x.view(jnp.bfloat16)
        elif x.dtype == np.int8 and _INT8_SCALE + key in arrays:
            x = x.astype(np.float32) * arrays[_INT8_SCALE + key]
        if x.shape != spec.shape:
            raise WrongShape(f"{key} has shape {x.shape}, this config's model {spec.shape}")
        flat[key] = x.astype(spec.dtype)
    return flat


def round_trip_final(model, final_dtype: str):
    """``model`` as a saved final.npz of ``final_dtype`` would give it back (host arrays)."""
    flat = decode_final(encode_final(flatten(model), final_dtype), abstract(model))
    return unflatten_like(model, flat)


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
