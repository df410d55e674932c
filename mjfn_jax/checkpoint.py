"""Per-fold Orbax checkpoints and finished-fold predictions.

Layout under the workdir::

    folds/<fold>/checkpoints/<epoch>/   Orbax: {"state": flat train state, "meta": JSON}
    folds/<fold>/predictions.npz        test indices + log-probs (written when the fold ends)
    folds/<fold>/done.json              history; written last, so its presence means "finished"

The step number of a checkpoint is the number of COMPLETED epochs. The train state is saved as
a flat {key path: array} dict, which round-trips any pytree (nnx.State, optax states) exactly.
Random streams are functions of (seed, fold, epoch, step), so no key needs saving.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def _flatten(tree) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


class FoldCheckpointer:
    """Checkpoints and results of one fold, in ``workdir/folds/<fold_name>``."""

    def __init__(self, workdir: str, fold_name: str, *, max_to_keep: int = 2):
        self.fold_dir = os.path.abspath(os.path.join(workdir, "folds", fold_name))
        os.makedirs(self.fold_dir, exist_ok=True)
        # No best_fn: with best_fn Orbax may delete the latest step (DESIGN.md §3); we only
        # ever need the latest. Saves are asynchronous so that writing one fold's final state
        # overlaps the next fold's training; Orbax writes into a temporary folder and renames
        # it when complete, so a killed run never resumes from a half-written step, and
        # write_result() waits for the save before it marks the fold done.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(1, max_to_keep), create=True, enable_async_checkpointing=True
        )
        self.manager = ocp.CheckpointManager(
            os.path.join(self.fold_dir, "checkpoints"), options=options
        )

    def epochs(self) -> list[int]:
        """Completed-epoch counts that have a checkpoint."""
        return sorted(self.manager.all_steps())

    def save(self, epochs_done: int, state, meta: dict) -> None:
        """state: this fold's train-state pytree (no fold axis); meta: JSON-able dict."""
        host_state = jax.tree.map(np.asarray, _flatten(state))
        self.manager.save(
            epochs_done,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
            ),
        )  # returns once the arrays are copied; the write finishes in the background

    def restore(self, epochs_done: int, like):
        """Restore into the structure of ``like`` (a pytree of arrays or ShapeDtypeStructs)."""
        flat_like = _flatten(like)
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_like.items()}
        restored = self.manager.restore(
            epochs_done,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        flat = restored["state"]
        leaves = [np.asarray(flat[k]) for k in flat_like]
        treedef = jax.tree.structure(like)
        return jax.tree.unflatten(treedef, leaves), dict(restored["meta"])

    # Finished folds -------------------------------------------------------------------------

    @property
    def done_path(self) -> str:
        return os.path.join(self.fold_dir, "done.json")

    def is_done(self) -> bool:
        return os.path.exists(self.done_path)

    def write_result(self, test_idx: np.ndarray, log_probs: np.ndarray, summary: dict) -> None:
        """test_idx [M] int (dataset indices), log_probs [M, C] float32; summary JSON-able."""
        self.manager.wait_until_finished()  # "done" promises a complete final checkpoint
        np.savez(
            os.path.join(self.fold_dir, "predictions.npz"),
            test_idx=np.asarray(test_idx, np.int64),
            log_probs=np.asarray(log_probs, np.float32),
        )
        tmp = self.done_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, self.done_path)  # atomic: a fold is done only once everything is there

    def read_result(self) -> tuple[np.ndarray, np.ndarray, dict]:
        with np.load(os.path.join(self.fold_dir, "predictions.npz")) as z:
            test_idx, log_probs = z["test_idx"], z["log_probs"]
        with open(self.done_path) as f:
            summary = json.load(f)
        return test_idx, log_probs, summary

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
