"""Per-fold Orbax checkpoints, finished folds' models and predictions (``FoldCheckpointer``),
and when a fold group saves (``SavePolicy``).

Layout under the workdir::

    folds/<fold>/checkpoints/<epoch>/   Orbax: {"state": flat train state, "meta": JSON}; only
                                        while the fold is in progress (deleted when it is done)
    folds/<fold>/final.npz              the finished fold's model (mjfn_jax.model_file)
    folds/<fold>/predictions.npz        test indices + log-probs (written when the fold ends)
    folds/<fold>/done.json              history; written last, so its presence means "finished"

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
import glob
import logging
import os
import shutil
import zipfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from mjfn_jax.model_file import (
    FINAL_DTYPES,
    WrongShape,
    abstract,
    decode_final,
    encode_final,
    flatten,
    unflatten_like,
)
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


def _solo(key: str) -> dict:
    """Multi-process: the Orbax keyword arguments for a checkpoint that one process saves or
    restores alone (process 0 saves every fold; by default Orbax expects every process to
    call save and meets them at barriers, so a save by one process would wait for the others
    forever). Empty with one process: Orbax's defaults."""
    if jax.process_count() == 1:
        return {}
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"{key}@{me}"
    )
    return {"multiprocessing_options": options}


class CheckpointDamaged(Exception):
    """An in-progress checkpoint step that cannot be restored (the message names it)."""


# What Orbax names a step folder while it writes it (renamed to the step number when complete).
ORBAX_TMP = ".orbax-checkpoint-tmp"


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
        self.fold_dir = os.path.abspath(os.path.join(workdir, "folds", fold_name))
        os.makedirs(self.fold_dir, exist_ok=True)
        # No best_fn: with best_fn Orbax may delete the latest step (docs/design.md#checkpoints);
        # we only ever need the latest. Saves run on the writer thread so that writing one
        # fold's final model overlaps the next fold's training (Orbax's own asynchronous mode
        # is off: a failed write then raises in the save that made it, not in Orbax's threads
        # or at the next save); Orbax writes into a temporary folder and renames it when
        # complete (final.npz likewise, as a temporary file), so a killed run never resumes
        # from a half-written step, and write_result() runs after the saves (FIFO on one
        # thread) before it marks the fold done.
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
            solo = _solo(self.fold_dir)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep,
                create=not solo,  # not allowed with active_processes: made below
                enable_async_checkpointing=False,  # the writer thread is the asynchrony
                **solo,
            )
            os.makedirs(self.checkpoints_dir, exist_ok=True)
            self._manager = ocp.CheckpointManager(self.checkpoints_dir, options=options)
        return self._manager

    def epochs(self) -> list[int]:
        """Completed-epoch counts that have an in-progress checkpoint."""
        self._wait()
        if self._manager is None and not os.path.isdir(self.checkpoints_dir):
            return []
        return sorted(self.manager.all_steps())

    def has_progress(self) -> bool:
        """Whether an in-progress checkpoint folder exists (cheap: no Orbax)."""
        try:
            return any(name.isdigit() for name in os.listdir(self.checkpoints_dir))
        except FileNotFoundError:
            return False

    def save(self, epochs_done: int, state, meta: dict) -> concurrent.futures.Future:
        """state: this fold's train-state pytree of HOST arrays (no fold axis); meta: JSON-able.
        Returns the save's Future at once; the save runs on the writer thread."""
        host_state = jax.tree.map(np.asarray, flatten(state))
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
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
                    state=ocp.args.StandardRestore(abstract(like)), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = unflatten_like(like, restored["state"]), dict(restored["meta"])
            if not isinstance(meta.get("history"), list):
                raise KeyError("meta has no 'history' list")
        except Exception as e:  # Orbax/tensorstore raise many types; all mean "unreadable"
            cause = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointDamaged(
                f"checkpoint {self.step_dir(epochs_done)} is unreadable "
                f"({type(e).__name__}: {cause})"
            ) from e
        return state, meta

    def step_dir(self, epochs_done: int) -> str:
        return os.path.join(self.checkpoints_dir, str(epochs_done))

    def discard_after(self, epochs_done: int) -> None:
        """Delete the in-progress checkpoints of more than ``epochs_done`` epochs (damaged
        ones, or ones other folds of the group lack): training writes them again."""
        for step in self.epochs():
            if step > epochs_done:
                shutil.rmtree(self.step_dir(step), ignore_errors=True)
        if self._manager is not None:
            self._manager.reload()

    # Finished folds -------------------------------------------------------------------------

    def save_final(self, model_state, index: int | None = None) -> concurrent.futures.Future:
        """The finished fold's model {"params", "batch_stats"}: arrays, or the Future of
        ``Writer.copy_to_host``; with ``index``, item ``index`` of a fold group's stacked arrays
        [G, ...]. Its floating arrays are saved in ``final_dtype``. Returns the write's Future
        at once: copied, converted and written on the writer thread, atomically (a temporary
        file, renamed when complete)."""
        return self._hand_over(self._write_final, model_state, index)

    def _write_final(self, model_state, index: int | None) -> None:
        if isinstance(model_state, concurrent.futures.Future):
            model_state = model_state.result()  # done: submitted before this task (FIFO)
        flat = flatten(model_state)
        if index is not None:
            flat = {key: np.asarray(x)[index] for key, x in flat.items()}
        with _saving(self.final_path):
            write_npz(self.final_path, **encode_final(flat, self.final_dtype))

    def has_final(self) -> bool:
        return has_final_model(self.fold_dir)

    def restore_final(self, like):
        """The finished fold's model into the structure and dtypes of ``like`` (a model saved
        in bfloat16 comes back as float32 where ``like`` says so). A damaged or mismatched
        file raises WorkdirError naming it."""
        try:
            with np.load(self.final_path) as z:
                flat = decode_final(z, abstract(like))
        except WrongShape as e:
            raise WorkdirError(f"{self.final_path}: {e}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise WorkdirError(
                f"{self.final_path} is damaged or is not this config's model "
                f"({type(e).__name__}: {e})"
            ) from None
        return unflatten_like(like, flat)

    @property
    def done_path(self) -> str:
        return os.path.join(self.fold_dir, "done.json")

    def is_done(self) -> bool:
        return os.path.exists(self.done_path)

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
        self._wait_orbax()  # "done" promises complete saves (final.npz: earlier on this thread)
        path = os.path.join(self.fold_dir, "predictions.npz")
        with _saving(path):
            write_npz(path, test_idx=test_idx, log_probs=log_probs)
        with _saving(self.done_path):
            write_json(self.done_path, summary)  # atomic: a fold is done once all is there
        self._close_orbax()
        self.tidy()

    def remove_partial(self) -> None:
        """Remove what failed or killed saves left half written (``*.tmp`` files, Orbax's
        temporary step folders): nothing reads them, and on a full disk they hold the space a
        rerun needs. Only while no save of this fold is in flight."""
        for path in glob.glob(os.path.join(glob.escape(self.fold_dir), "*.tmp*")):
            os.unlink(path)
        pattern = os.path.join(glob.escape(self.checkpoints_dir), f"*{ORBAX_TMP}*")
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)

    def tidy(self) -> None:
        """A finished fold's in-progress checkpoints (optimizer state included) are spent:
        deleted when it finishes, or by the next run if a kill came in between."""
        if self.is_done() and self.has_final():
            shutil.rmtree(self.checkpoints_dir, ignore_errors=True)

    def read_result(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """(test_idx, log_probs, summary) of a finished fold. A damaged file raises
        WorkdirError naming it and how to retrain the fold."""
        remedy = f"delete {self.done_path} to train fold {os.path.basename(self.fold_dir)} again"
        path = os.path.join(self.fold_dir, "predictions.npz")
        try:
            with np.load(path) as z:
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
