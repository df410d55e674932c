"""Per-fold Orbax checkpoints, finished folds' models and predictions.

Layout under the workdir::

    folds/<fold>/checkpoints/<epoch>/   Orbax: {"state": flat train state, "meta": JSON}; only
                                        while the fold is in progress (deleted when it is done)
    folds/<fold>/final.npz              the finished fold's model, params + BN statistics, as
                                        {key path: array} (``checkpoint.final_dtype``; runs
                                        before 2026-11-26 wrote an Orbax folder final/, read too)
    folds/<fold>/predictions.npz        test indices + log-probs (written when the fold ends)
    folds/<fold>/done.json              history; written last, so its presence means "finished"

The step number of a checkpoint is the number of COMPLETED epochs. The train state is saved as
a flat {key path: array} dict, which round-trips any pytree (nnx.State, optax states) exactly.
Random streams are functions of (seed, fold, epoch, step), so no key needs saving.
A finished fold keeps only what prediction and weight export need: at the reference size the
optimizer state (two Adam moments) is two thirds of a full checkpoint, and 68 folds of full
checkpoints would be ~14 GB (disk use is reported by experiments/benchmark.py). The model is
one .npz, not an Orbax checkpoint: an Orbax save cost ~30 ms of CPU per fold even for a 1 MB
model, and on 2 cores it took a quarter of a LOSO run's loop (19.5 s vs 14.8 s, cpu preset,
2026-11-26); it is also readable without JAX (``numpy.load``).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mjfn_jax.workdir import (
    FINAL_MODEL_FILE,
    LEGACY_FINAL_DIR,
    WorkdirError,
    has_final_model,
    read_json,
    write_json,
    write_npz,
)

# Orbax's save() spends ~40 ms of Python per call (handlers, futures, metadata) before its own
# asynchronous write starts; one worker thread takes that off the training loop, which waits on
# XLA (GIL released) most of the time. One worker keeps every fold's saves in order.
_BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mjfn-save")


def copy_to_host(tree, pinned: bool | None = None):
    """``tree``'s arrays as numpy arrays. ``pinned`` (default: on any platform but the CPU,
    where the device has such memory): each leaf is first moved to its device's pinned host
    memory, then read there. A finished fold's model on an H200 (67.5 MB, 168 leaves) took
    11 ms that way against 43 ms for ``jax.device_get``'s transfers into pageable memory
    (experiments/handover_copy.py, 2026-11-27)."""
    if pinned is None:
        pinned = all(_has_pinned_host(x) for x in jax.tree.leaves(tree))
    if pinned:
        tree = jax.tree.map(
            lambda x: jax.device_put(x, x.sharding.with_memory_kind("pinned_host")), tree
        )
    return jax.device_get(tree)


def _has_pinned_host(x) -> bool:
    """Whether ``x`` is an accelerator's array whose devices all have pinned host memory."""
    devices = getattr(getattr(x, "sharding", None), "device_set", ())
    return bool(devices) and all(
        d.platform != "cpu" and "pinned_host" in {m.kind for m in d.addressable_memories()}
        for d in devices
    )


def to_host_later(tree) -> concurrent.futures.Future:
    """``tree``'s arrays copied to the host (``copy_to_host``) on the background thread, after
    everything handed to it before (FIFO): the training thread goes on (to the predictions,
    the next fold group) while a GPU copies a finished group's models. One process only: with
    several, the copy is a collective that every process joins (``parallel.to_host``)."""
    return _BACKGROUND.submit(copy_to_host, tree)


def _drop_closed_loop_reports() -> None:
    """After a failed restore, tensorstore still completes the reads in flight and calls back
    into the asyncio loop that Orbax has closed; Python reports each call as an unraisable
    "RuntimeError: Event loop is closed" (hundreds of traceback lines on stderr, for reads
    whose results nobody wants). Drop exactly those reports, from now on."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(report) -> None:
        closed_loop = report.exc_type is RuntimeError and "Event loop is closed" in str(
            report.exc_value
        )
        if not closed_loop:
            previous(report)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


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


def _flatten(tree) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


FINAL_DTYPES = ("float32", "bfloat16", "int8")  # checkpoint.final_dtype
_BF16_KEYS = "__bfloat16_keys__"  # the entries of final.npz stored as bfloat16 bit patterns
_INT8_SCALE = "__int8_scale__"  # + key: the per-output-channel scales of an int8 entry


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


class WrongShape(ValueError):
    """A saved entry's shape is not the one the config's model has."""


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
    flat = decode_final(encode_final(_flatten(model), final_dtype), _abstract(model))
    return _unflatten_like(model, flat)


def _abstract(like) -> dict[str, jax.ShapeDtypeStruct]:
    """The flat {key path: ShapeDtypeStruct} that Orbax restores into."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _flatten(like).items()}


def _unflatten_like(like, flat: dict):
    """A restored flat dict back into the structure of ``like`` (host arrays)."""
    leaves = [np.asarray(flat[k]) for k in _flatten(like)]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


class FoldCheckpointer:
    """Checkpoints and results of one fold, in ``workdir/folds/<fold_name>``."""

    def __init__(
        self, workdir: str, fold_name: str, *, max_to_keep: int = 2, final_dtype: str = "float32"
    ):
        """final_dtype: the floating dtype of the finished fold's saved model (FINAL_DTYPES)."""
        if final_dtype not in FINAL_DTYPES:
            raise ValueError(f"checkpoint.final_dtype must be one of {FINAL_DTYPES}")
        self.final_dtype = final_dtype
        self.fold_dir = os.path.abspath(os.path.join(workdir, "folds", fold_name))
        os.makedirs(self.fold_dir, exist_ok=True)
        # No best_fn: with best_fn Orbax may delete the latest step (docs/design.md#checkpoints);
        # we only ever need the latest. Saves are asynchronous so that writing one fold's final
        # model overlaps the next fold's training; Orbax writes into a temporary folder and
        # renames it when complete (final.npz likewise, as a temporary file), so a killed run
        # never resumes from a half-written step, and write_result() waits for the saves (FIFO
        # on one thread) before it marks the fold done.
        self._max_to_keep = max(1, max_to_keep)
        self._manager = None  # created on first use: a fold saved once needs none
        self._pending: list[concurrent.futures.Future] = []  # saves handed to _BACKGROUND

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.fold_dir, "checkpoints")

    @property
    def final_path(self) -> str:
        return os.path.join(self.fold_dir, FINAL_MODEL_FILE)

    @property
    def legacy_final_dir(self) -> str:
        """Where runs before 2026-11-26 kept the model (an Orbax checkpoint)."""
        return os.path.join(self.fold_dir, LEGACY_FINAL_DIR)

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            solo = _solo(self.fold_dir)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep,
                create=not solo,  # not allowed with active_processes: made below
                enable_async_checkpointing=True,
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

    def save(self, epochs_done: int, state, meta: dict) -> None:
        """state: this fold's train-state pytree of HOST arrays (no fold axis); meta: JSON-able.
        Returns at once; the save runs on the background thread (see _BACKGROUND)."""
        host_state = jax.tree.map(np.asarray, _flatten(state))
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
        )
        self._pending.append(_BACKGROUND.submit(self.manager.save, epochs_done, args=args))

    def restore(self, epochs_done: int, like):
        """Restore into the structure of ``like`` (a pytree of arrays or ShapeDtypeStructs).

        Raises CheckpointDamaged (naming the step's folder) when the step cannot be read:
        files deleted, truncated or emptied, metadata unreadable, arrays of other shapes."""
        _drop_closed_loop_reports()  # before: the reports can come while the error propagates
        try:
            restored = self.manager.restore(
                epochs_done,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(like)), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = _unflatten_like(like, restored["state"]), dict(restored["meta"])
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

    def save_final(self, model_state, index: int | None = None) -> None:
        """The finished fold's model {"params", "batch_stats"}: arrays, or the Future of
        ``to_host_later``; with ``index``, item ``index`` of a fold group's stacked arrays
        [G, ...]. Its floating arrays are saved in ``final_dtype``. Returns at once: copied,
        converted and written on the background thread, atomically (a temporary file, renamed
        when complete)."""
        self._pending.append(_BACKGROUND.submit(self._write_final, model_state, index))

    def _write_final(self, model_state, index: int | None) -> None:
        if isinstance(model_state, concurrent.futures.Future):
            model_state = model_state.result()  # done: submitted before this task (FIFO)
        flat = _flatten(model_state)
        if index is not None:
            flat = {key: np.asarray(x)[index] for key, x in flat.items()}
        write_npz(self.final_path, **encode_final(flat, self.final_dtype))

    def has_final(self) -> bool:
        return has_final_model(self.fold_dir)

    def restore_final(self, like):
        """The finished fold's model into the structure and dtypes of ``like`` (a model saved
        in bfloat16 comes back as float32 where ``like`` says so). A damaged or mismatched
        file raises WorkdirError naming it."""
        if not os.path.exists(self.final_path):  # a run from before 2026-11-26
            with ocp.StandardCheckpointer(**_solo(self.fold_dir)) as checkpointer:
                restored = checkpointer.restore(self.legacy_final_dir, _abstract(like))
            return _unflatten_like(like, restored)
        try:
            with np.load(self.final_path) as z:
                flat = decode_final(z, _abstract(like))
        except WrongShape as e:
            raise WorkdirError(f"{self.final_path}: {e}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise WorkdirError(
                f"{self.final_path} is damaged or is not this config's model "
                f"({type(e).__name__}: {e})"
            ) from None
        return _unflatten_like(like, flat)

    @property
    def done_path(self) -> str:
        return os.path.join(self.fold_dir, "done.json")

    def is_done(self) -> bool:
        return os.path.exists(self.done_path)

    def write_result(self, test_idx: np.ndarray, log_probs: np.ndarray, summary: dict) -> None:
        """test_idx [M] int (dataset indices), log_probs [M, C] float32; summary JSON-able.
        Returns at once: written on the background thread after this fold's saves (FIFO)."""
        test_idx = np.asarray(test_idx, np.int64)
        log_probs = np.asarray(log_probs, np.float32)
        self._pending.append(_BACKGROUND.submit(self._write_result, test_idx, log_probs, summary))

    def _write_result(self, test_idx: np.ndarray, log_probs: np.ndarray, summary: dict) -> None:
        self._wait_orbax()  # "done" promises complete saves (final.npz: earlier on this thread)
        path = os.path.join(self.fold_dir, "predictions.npz")
        write_npz(path, test_idx=test_idx, log_probs=log_probs)
        write_json(self.done_path, summary)  # atomic: a fold is done once everything is there
        self._close_orbax()
        self.tidy()

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
        self._wait()
        self._close_orbax()
