"""Per-fold Orbax checkpoints, finished folds' models and predictions (``FoldCheckpointer``),
and when a fold group saves (``SavePolicy``).

Layout under the workdir::

    folds/<fold>/checkpoints/<epoch>/   Orbax: {"state": flat train state, "meta": JSON}; only
                                        while the fold is in progress (deleted when it is done)
    folds/<fold>/model/                 Orbax: the finished fold's model, {"params": {...},
                                        "batch_stats": {...}} (mjfn_jax.model_file); plain
                                        ``ocp.StandardCheckpointer().restore(path)`` reads it
    folds/<fold>/predictions.npz        test indices + log-probs (written when the fold ends)
    folds/<fold>/done.json              history; written last, so its presence means "finished"

Each fold's files are written by one process, the one whose devices hold the fold's rows
(replica 0), from its own shards, alone (mjfn_jax.orbax_io): nothing is gathered across
processes, and every checkpoint is a fold's own, so any process count restores it. Several
hosts need one shared workdir (a network file system, or cloud storage).

The step number of a checkpoint is the number of COMPLETED epochs. The train state is saved as
a flat {key path: array} dict, which round-trips any pytree (nnx.State, optax states) exactly.
Random streams are functions of (seed, fold, epoch, step), so no key needs saving. A finished
fold keeps only what prediction and weight export need (its model, not the optimizer state,
which is two thirds of a full checkpoint at the reference size).

The training loop talks to ``mjfn_jax.unit_checkpoints.UnitCheckpoints`` (every unit's
checkpointer and the multi-process rules); the saves run on the run's writer thread
(``mjfn_jax.writer``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import zipfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from mjfn_jax import parallel, storage
from mjfn_jax.model_file import (
    FINAL_DTYPES,
    abstract,
    flatten,
    restore_model,
    save_model,
    unflatten_like,
)
from mjfn_jax.orbax_io import ORBAX_TMP, restore_args, solo, tree_handler
from mjfn_jax.workdir import (
    FINAL_MODEL_FILE,
    SaveFailed,
    WorkdirError,
    has_final_model,
    read_json,
    save_failed,
    write_json,
    write_npz,
)
from mjfn_jax.writer import Writer

log = logging.getLogger(__name__)


class CheckpointDamaged(Exception):
    """An in-progress checkpoint step that cannot be restored (the message names it)."""


@contextlib.contextmanager
def _saving(path: str):
    """A failure while saving ``path`` (a full disk, a quota, Orbax's tensorstore errors) is
    raised as SaveFailed: one line naming the path and the free space left."""
    try:
        yield
    except SaveFailed:
        raise
    except Exception as e:
        raise save_failed(path, e) from e


class SavePolicy:
    """When a fold group saves: every ``every_epochs`` completed epochs (0: never) an
    in-progress checkpoint, and when the folds finish their model alone."""

    def __init__(self, every_epochs: int):
        self.every = max(0, int(every_epochs))

    def epochs_until_save(self, epochs_done: int) -> int | None:
        """Epochs to train before the next periodic save (a training call stops there)."""
        return self.every - epochs_done % self.every if self.every else None

    def what_to_save(self, epochs_done: int, finished: bool) -> str | None:
        """'final' (the finished folds' models), 'progress' (full train states) or None."""
        if finished:
            return "final"
        if self.every and epochs_done % self.every == 0:
            return "progress"
        return None


class FoldCheckpointer:
    """Checkpoints and results of one fold, in ``workdir/folds/<fold_name>``."""

    def __init__(
        self,
        workdir: str,
        fold_name: str,
        *,
        max_to_keep: int = 2,
        final_dtype: str = "float32",
        writer: Writer | None = None,
    ):
        """final_dtype: the floating dtype of the finished fold's saved model (FINAL_DTYPES).
        writer: the run's writer thread (shared by its folds, so that their saves keep their
        order); without one the checkpointer makes its own and closes it in ``close()``."""
        if final_dtype not in FINAL_DTYPES:
            raise ValueError(f"checkpoint.final_dtype must be one of {FINAL_DTYPES}")
        self.final_dtype = final_dtype
        self.fold_dir = storage.absolute(os.path.join(os.fspath(workdir), "folds", fold_name))
        storage.makedirs(self.fold_dir)
        # No best_fn: with best_fn Orbax may delete the latest step (docs/design.md#checkpoints);
        # we only ever need the latest. Saves run on the writer thread so that writing one
        # fold's final model overlaps the next fold's training (Orbax's own asynchronous mode
        # is off: a failed write then raises in the save that made it, not in Orbax's threads
        # or at the next save); Orbax writes a step or the model into a temporary folder and
        # renames it when complete, so a killed run never resumes from a half-written step,
        # and write_result() runs after the saves (FIFO on one thread) before it marks the
        # fold done.
        self._max_to_keep = max(1, max_to_keep)
        self._manager = None  # created on first use: a fold saved once needs none
        self._own_writer = writer is None
        self.writer = Writer() if writer is None else writer
        self._pending: list[concurrent.futures.Future] = []  # saves handed to the writer

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.fold_dir, "checkpoints")

    @property
    def final_path(self) -> str:
        return os.path.join(self.fold_dir, FINAL_MODEL_FILE)

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            key = self.checkpoints_dir
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep,
                create=jax.process_count() == 1,  # not allowed with active_processes: made below
                enable_async_checkpointing=False,  # the writer thread is the asynchrony
                multiprocessing_options=solo(key),
            )
            storage.makedirs(self.checkpoints_dir)
            handlers = {
                "state": tree_handler(key),
                "meta": ocp.JsonCheckpointHandler(multiprocessing_options=solo(key)),
            }
            self._manager = ocp.CheckpointManager(
                self.checkpoints_dir, options=options, item_handlers=handlers
            )
        return self._manager

    def epochs(self) -> list[int]:
        """Completed-epoch counts that have an in-progress checkpoint."""
        self._wait()
        if self._manager is None and not storage.is_dir(self.checkpoints_dir):
            return []
        return sorted(self.manager.all_steps())

    def has_progress(self) -> bool:
        """Whether an in-progress checkpoint folder exists (cheap: no Orbax)."""
        return any(name.isdigit() for name in storage.listdir(self.checkpoints_dir))

    def save(self, epochs_done: int, state, meta: dict) -> concurrent.futures.Future:
        """state: this fold's train-state pytree of HOST arrays (no fold axis); meta: JSON-able.
        Returns the save's Future at once; the save runs on the writer thread."""
        host_state = jax.tree.map(np.asarray, flatten(state))
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(host_state), meta=ocp.args.JsonSave(meta)
        )
        return self._hand_over(self._save, epochs_done, args)

    def _save(self, epochs_done: int, args) -> None:
        with _saving(self.step_dir(epochs_done)):
            self.manager.save(epochs_done, args=args)

    def _hand_over(self, fn, *args) -> concurrent.futures.Future:
        future = self.writer.submit(fn, *args)
        self._pending.append(future)
        return future

    def restore(self, epochs_done: int, like):
        """Restore into the structure of ``like`` (a pytree of arrays or ShapeDtypeStructs).

        Raises CheckpointDamaged (naming the step's folder) when the step cannot be read:
        files deleted, truncated or emptied, metadata unreadable, arrays of other shapes."""
        try:
            restored = self.manager.restore(
                epochs_done,
                args=ocp.args.Composite(
                    state=restore_args(abstract(like)), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = unflatten_like(like, restored["state"]), dict(restored["meta"])
            if not isinstance(meta.get("history"), list):
                raise KeyError("meta has no 'history' list")
        except Exception as e:  # Orbax/tensorstore raise many types; all mean "unreadable"
            raise self._damaged(epochs_done, e) from e
        return state, meta

    def restore_meta(self, epochs_done: int) -> dict:
        """The meta of a checkpoint alone (JSON: epochs done, history), without its state."""
        try:
            meta = self.manager.restore(
                epochs_done, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
            if not isinstance(meta.get("history"), list):
                raise KeyError("meta has no 'history' list")
        except Exception as e:
            raise self._damaged(epochs_done, e) from e
        return dict(meta)

    def _damaged(self, epochs_done: int, e: Exception) -> CheckpointDamaged:
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        return CheckpointDamaged(
            f"checkpoint {self.step_dir(epochs_done)} is unreadable ({type(e).__name__}: {cause})"
        )

    def step_dir(self, epochs_done: int) -> str:
        return os.path.join(self.checkpoints_dir, str(epochs_done))

    def discard_after(self, epochs_done: int) -> None:
        """Delete the in-progress checkpoints of more than ``epochs_done`` epochs (damaged
        ones, or ones other folds of the group lack): training writes them again."""
        for step in self.epochs():
            if step > epochs_done:
                storage.remove(self.step_dir(step))
        if self._manager is not None:
            self._manager.reload()

    # Finished folds -------------------------------------------------------------------------

    def save_final(self, model_state, row: int | None = None) -> concurrent.futures.Future:
        """The finished fold's model {"params", "batch_stats"}: arrays, or the Future of
        ``Writer.copy_to_host``; with ``row``, row ``row`` of a fold group's blocks
        (``parallel.owned_blocks``: {first row: arrays [rows, ...]}). Its floating arrays are
        saved in ``final_dtype``. Returns the write's Future at once: copied, converted and
        written on the writer thread, atomically (Orbax renames a temporary folder when the
        model is complete)."""
        return self._hand_over(self._write_final, model_state, row)

    def _write_final(self, model_state, row: int | None) -> None:
        if isinstance(model_state, concurrent.futures.Future):
            model_state = model_state.result()  # done: submitted before this task (FIFO)
        if row is not None:
            model_state = parallel.take_row(model_state, row)
        with _saving(self.final_path):
            save_model(self.final_path, model_state, self.final_dtype, key=self.final_path)

    def has_final(self) -> bool:
        return has_final_model(self.fold_dir)

    def restore_final(self, like):
        """The finished fold's model into the structure and dtypes of ``like`` (a model saved
        in bfloat16 comes back as float32 where ``like`` says so). A damaged or mismatched
        model raises WorkdirError naming its folder."""
        return restore_model(self.final_path, like, key=self.final_path)

    @property
    def done_path(self) -> str:
        return os.path.join(self.fold_dir, "done.json")

    def is_done(self) -> bool:
        return storage.exists(self.done_path)

    def write_result(
        self, test_idx: np.ndarray, log_probs: np.ndarray, summary: dict
    ) -> concurrent.futures.Future:
        """test_idx [M] int (dataset indices), log_probs [M, C] float32; summary JSON-able.
        Returns the write's Future at once: written on the writer thread after this fold's
        saves (FIFO)."""
        test_idx = np.asarray(test_idx, np.int64)
        log_probs = np.asarray(log_probs, np.float32)
        return self._hand_over(self._write_result, test_idx, log_probs, summary)

    def _write_result(self, test_idx: np.ndarray, log_probs: np.ndarray, summary: dict) -> None:
        self._wait_orbax()  # "done" promises complete saves (the model: earlier on this thread)
        path = os.path.join(self.fold_dir, "predictions.npz")
        with _saving(path):
            write_npz(path, test_idx=test_idx, log_probs=log_probs)
        with _saving(self.done_path):
            write_json(self.done_path, summary)  # atomic: a fold is done once all is there
        self._close_orbax()
        self.tidy()

    def remove_partial(self) -> None:
        """Remove what failed or killed saves left half written (``*.tmp`` files, Orbax's
        temporary folders of steps and of the model): nothing reads them, and on a full disk
        they hold the space a rerun needs. Only while no save of this fold is in flight."""
        for path in storage.glob(self.fold_dir, "*.tmp*"):
            storage.remove(path)
        for folder in (self.fold_dir, self.checkpoints_dir):
            for path in storage.glob(folder, f"*{ORBAX_TMP}*"):
                storage.remove(path)

    def tidy(self) -> None:
        """A finished fold's in-progress checkpoints (optimizer state included) are spent:
        deleted when it finishes, or by the next run if a kill came in between."""
        if self.is_done() and self.has_final():
            storage.remove(self.checkpoints_dir)

    def read_result(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """(test_idx, log_probs, summary) of a finished fold. A damaged file raises
        WorkdirError naming it and how to retrain the fold."""
        remedy = f"delete {self.done_path} to train fold {os.path.basename(self.fold_dir)} again"
        path = os.path.join(self.fold_dir, "predictions.npz")
        try:
            with storage.load_npz(path) as z:
                test_idx, log_probs = z["test_idx"], z["log_probs"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise WorkdirError(f"{path} is damaged ({type(e).__name__}: {e}); {remedy}") from None
        summary = read_json(self.done_path, remedy)
        if (
            test_idx.ndim != 1
            or log_probs.shape[:1] != test_idx.shape
            or not isinstance(summary, dict)
            or not isinstance(summary.get("history"), list)
        ):
            raise WorkdirError(f"the result files of {self.fold_dir} disagree; {remedy}")
        return test_idx, log_probs, summary

    def _wait(self) -> None:
        """Every save and result of this fold is complete on disk (re-raises a failure)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        self._wait_orbax()

    def _wait_orbax(self) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()

    def _close_orbax(self) -> None:
        self._wait_orbax()
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def close(self) -> None:
        """Waits for every save and result of this fold (re-raises a failure)."""
        try:
            self._wait()
            self._close_orbax()
        finally:
            if self._own_writer:
                self.writer.close()
