"""Weight interop between MJFN (flax.nnx) and its PyTorch twin MJFNTorch.

The two models use the same module paths (experiments/pytorch_baseline/model.py), so a JAX
state path maps to a torch state-dict key by joining it with '.' and renaming the leaf:

  conv  kernel [kh, kw, I, O] (HWIO)  <->  weight [O, I, kh, kw] (OIHW)
  linear kernel [I, O]                 <->  weight [O, I]
  BN scale / bias / mean / var         <->  weight / bias / running_mean / running_var
  linear bias, fusion_logits           <->  same name, same layout

torch's ``num_batches_tracked`` is ignored on load (it only matters for momentum=None) and
written as 0 by :func:`to_torch_state_dict`. torch is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

_WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)  # what a torch state dict holds
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _is_bn_path(path: tuple) -> bool:
    return len(path) >= 2 and str(path[-2]) == "bn"


def _torch_key(path: tuple) -> str:
    prefix, leaf = [str(p) for p in path[:-1]], str(path[-1])
    if _is_bn_path(path):
        leaf = _BN_LEAVES[leaf]
    elif leaf == "kernel":
        leaf = "weight"
    return ".".join([*prefix, leaf])


def _to_torch_layout(array: np.ndarray, path: tuple) -> np.ndarray:
    if str(path[-1]) != "kernel":
        return array
    if array.ndim == 4:  # HWIO -> OIHW
        return np.transpose(array, (3, 2, 0, 1))
    return array.T  # linear [I, O] -> [O, I]


def _from_torch_layout(array: np.ndarray, path: tuple) -> np.ndarray:
    if str(path[-1]) != "kernel":
        return array
    if array.ndim == 4:  # OIHW -> HWIO
        return np.transpose(array, (2, 3, 1, 0))
    return array.T


def _as_numpy(value) -> np.ndarray:
    """A private copy: on CPU, jnp.asarray can alias a numpy buffer, and tensor.numpy() aliases
    the tensor, so without a copy torch's in-place BN updates would leak into the JAX model."""
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def _model_variables(model: nnx.Module) -> dict[str, tuple[tuple, nnx.Variable]]:
    """torch key -> (JAX path, Variable) for every Param and BatchStat of the model."""
    state = nnx.state(model, _WEIGHTS)
    return {_torch_key(path): (path, var) for path, var in nnx.to_flat_state(state)}


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping) -> nnx.Module:
    """Copies an MJFNTorch ``state_dict()`` (tensors or numpy arrays) into ``model`` in place.

    Raises KeyError naming missing or unexpected keys and ValueError naming a key whose
    shape does not match. Values are cast to the JAX variable's dtype (float32). Returns model.
    """
    expected = _model_variables(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"state dict does not match the MJFN model: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    updates = []
    for key, (path, var) in expected.items():
        value = _from_torch_layout(_as_numpy(given[key]), path)
        if tuple(value.shape) != tuple(var.shape):
            torch_shape = tuple(_as_numpy(given[key]).shape)
            want = tuple(_to_torch_layout(np.zeros(var.shape), path).shape)
            raise ValueError(f"state dict key {key!r}: shape {torch_shape}, model expects {want}")
        updates.append((path, jnp.asarray(value, dtype=var.dtype)))
    state = nnx.state(model, _WEIGHTS)
    flat = nnx.to_flat_state(state)
    by_path = dict(updates)
    for path, var in flat:
        var[...] = by_path[path]
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def to_torch_state_dict(model: nnx.Module) -> dict:
    """The model's parameters and BN statistics as an MJFNTorch state dict (float32 tensors)."""
    import torch

    state_dict = {}
    for key, (path, var) in _model_variables(model).items():
        array = np.array(_to_torch_layout(np.asarray(var[...], dtype=np.float32), path))
        state_dict[key] = torch.from_numpy(np.ascontiguousarray(array))
        if _is_bn_path(path) and str(path[-1]) == "var":
            bn_prefix = key.rsplit(".", 1)[0]
            state_dict[f"{bn_prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state_dict
