"""What a workdir promises about itself: one run at a time, one dataset, one way of computing.

A LOSO run is resumable (a rerun skips finished folds and continues the others from their
checkpoints), so a workdir outlives processes. Three records make a resumed run give the
numbers an uninterrupted one would, or refuse with the reason:

    <workdir>/.lock            held (flock) by the run using the workdir; released by the
                               kernel when that process ends, even by kill -9
    <workdir>/dataset.json     the identity of the data the folds were trained on: a SHA-256
                               of the images, labels, subjects, sources, clips, class names
    <workdir>/execution.json   how the in-progress checkpoints were computed (strategy, loop,
                               platform, data shards): continuing a fold another way gives
                               other floating-point rounding, so other predictions

Every JSON file the engine writes goes through :func:`write_json` (and every .npz through
:func:`write_npz`; atomic: a kill leaves the old file or the new one) and is read through
:func:`read_json` (a damaged file is an error naming the file and the remedy, not a bare
JSONDecodeError). A workdir may be on object storage (``gs://bucket/run``; mjfn_jax.storage):
writes stay atomic there (one upload per file), but there is no lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import sys

import numpy as np

from mjfn_jax import storage

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"  # the run's config (mjfn_jax.config_io.save_or_check_config)
DATASET_FILE = "dataset.json"
EXECUTION_FILE = "execution.json"
LINEAR_FLOOR_FILE = "linear_floor.npz"  # the linear floor's predictions and probes (train)
ORBAX_COMMIT_FILE = "commit_success.txt"  # Orbax's "complete" mark of a folder on GCS
FINAL_MODEL_FILE = "model"  # a finished fold's model (an Orbax folder), in folds/<fold>/
# The execution fields that change the numbers a fold's training produces. A fold group's
# size under 'vmap' does not: each fold's program is the same, only batched differently.
NUMERIC_FIELDS = ("strategy", "loop", "platform", "data_shards")


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked (the message says why and what to do)."""


class SaveFailed(WorkdirError):
    """A save into the workdir failed (a full disk, a quota): the run stops at its next save
    point, and a rerun once the cause is gone resumes from the last complete save."""


def save_failed(path: str | os.PathLike, error: BaseException) -> SaveFailed:
    """The one-line error of a failed save of ``path``: the cause and the free space left."""
    code = re.search(r"os_error_code='(\d+)'", str(error))  # tensorstore's, in an Orbax save
    if isinstance(error, OSError) and error.strerror:
        cause = error.strerror
    elif code:
        cause = os.strerror(int(code[1]))
    else:
        cause = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        cause = f"{type(error).__name__}: {cause[:200]}"
    return SaveFailed(
        f"cannot save {path}: {cause} ({free_space(path)} free there); free some space and "
        "rerun the same command: it resumes from the last complete save"
    )


def free_space(path: str | os.PathLike) -> str:
    """The free space of the file system holding ``path`` (or its nearest existing parent);
    "unknown space" on object storage."""
    if not storage.is_local(path):
        return "unknown space"
    folder = os.path.abspath(path)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            break
        free /= 1024
    return f"{free:.0f} bytes" if unit == "bytes" else f"{free:.1f} {unit}"


def has_final_model(fold_dir: str) -> bool:
    """Whether a fold folder holds a finished fold's model; here rather than in
    mjfn_jax.checkpoint so that asking needs no Orbax import."""
    model = os.path.join(os.fspath(fold_dir), FINAL_MODEL_FILE)
    if not model.startswith(("gs://", "gcs://")):  # Orbax renames the folder into place
        return storage.is_dir(model)  # once it is complete
    # GCS: Orbax writes the folder in place (no rename there), then this file last
    return storage.exists(os.path.join(model, ORBAX_COMMIT_FILE))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically: a reader (or a run killed mid-write) sees the old file or the new.

    On a local file system through ``<path>.tmp`` renamed; on object storage as one upload
    (mjfn_jax.storage). The temporary file has a fixed name, so one left by a kill -9 is
    overwritten by the next write instead of piling up (the workdir lock rules out two
    writers)."""

    def dump(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8")
        try:
            json.dump(obj, text, indent=1, sort_keys=True)
            text.flush()
        finally:
            text.detach()  # leaves f open: storage.write_with closes it

    storage.write_with(path, dump, tmp_suffix=_tmp_suffix(), fsync=True)


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` atomically (``<path>.tmp`` renamed, or one upload), like write_json; a
    failed write (a full disk) removes its temporary file."""
    storage.write_with(path, lambda f: np.savez(f, **arrays), tmp_suffix=_tmp_suffix())


def _tmp_suffix() -> str:
    """``.tmp``; ``.tmp.process_<i>`` in process i > 0 of a multi-process run, whose processes
    may write the same record (config.json, dataset.json, execution.json) at once: with one
    temporary name one process's os.replace would find the file gone."""
    jax = sys.modules.get("jax")  # not imported: no jax.distributed (the PyTorch baseline)
    index = jax.process_index() if jax and jax.distributed.is_initialized() else 0
    return ".tmp" if index == 0 else f".tmp.process_{index}"


def read_json(path: str | os.PathLike, remedy: str = ""):
    """The JSON in ``path``; a damaged file raises WorkdirError naming it (and ``remedy``)."""
    try:
        return json.loads(storage.as_path(path).read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        hint = f"; {remedy}" if remedy else ""
        raise WorkdirError(f"{path} is damaged ({type(e).__name__}: {e}){hint}") from None


class Lock:
    """An exclusive, non-blocking lock on a workdir for the length of a run.

    flock(2) is released by the kernel when the holding process ends, however it ends, so a
    killed run never leaves a stale lock. (On network file systems without flock support the
    lock may not exclude runs on other machines.) Object storage (``gs://``) has no lock at all:
    the run warns once that nothing stops a second run on the same workdir, and goes on.
    """

    def __init__(self, workdir: str | os.PathLike, process: int = 0):
        """process: the jax.distributed process index. Each process of a multi-process run
        locks its own file (``.lock``, ``.lock.process_<i>``): the processes of one run share
        the workdir, and a second run's process i still finds it in use."""
        name = LOCK_FILE if process == 0 else f"{LOCK_FILE}.process_{process}"
        self.path = os.path.join(workdir, name)
        self._fd: int | None = None

    def __enter__(self) -> Lock:
        workdir = os.path.dirname(self.path)
        if not storage.is_local(workdir):
            if reason := storage.unreachable(workdir):
                raise WorkdirError(f"cannot use {workdir!r} as a workdir: {reason}")
            log.warning(
                "workdir %s is on object storage, which has no file lock: nothing stops a "
                "second run on it, so do not start two runs on this workdir at once",
                workdir,
            )
            return self
        try:
            os.makedirs(workdir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a file, a path under a file, a read-only file system
            raise WorkdirError(
                f"cannot use {workdir!r} as a workdir: {_unusable(workdir, e)}; "
                "give --workdir a folder that can be created and written"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise WorkdirError(
                    f"workdir {os.path.dirname(self.path)!r} is in use by another run "
                    f"({holder}); wait for it to end or use another --workdir"
                ) from None
            raise
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _unusable(workdir: str, error: OSError) -> str:
    """Why a workdir could not be created or opened, naming the file in the way."""
    if isinstance(error, FileExistsError) or os.path.isfile(workdir):
        return "it is a file"
    if isinstance(error, NotADirectoryError):
        parent = os.path.dirname(os.path.abspath(workdir))
        while parent != os.path.dirname(parent) and not os.path.isfile(parent):
            parent = os.path.dirname(parent)
        if os.path.isfile(parent):
            return f"{parent} is a file, not a folder"
    return error.strerror or str(error)


def dataset_identity(dataset) -> dict:
    """A fingerprint of everything a fold's result depends on in a ``mjfn_jax.data.Dataset``.

    Hashing the images as well as the labels catches a rebuild with another flow method or
    crop (same clips, different pixels); ~30 ms for 442 clips at 112 px.
    """
    digest = hashlib.sha256()
    for name in ("class_names", "subjects", "sources", "clips"):
        digest.update(json.dumps([name, [str(x) for x in getattr(dataset, name)]]).encode())
    for array in (dataset.labels, dataset.images):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return {
        "sha256": digest.hexdigest(),
        "num_samples": len(dataset.labels),
        "num_subjects": len(set(dataset.subjects.tolist())),
        "class_names": list(dataset.class_names),
        "image_shape": list(dataset.images.shape[1:]),
        # Not part of the identity: how the images were made, for predict (mjfn_jax.predict).
        "preprocessing": json.loads(json.dumps(dict(getattr(dataset, "preprocessing", {})))),
    }


def check_dataset(workdir: str, dataset) -> None:
    """Record the dataset's identity in a new workdir, or refuse a different dataset.

    Finished folds' predictions are indices into the dataset they were made on: scored
    against another build's labels they would give a silently wrong report.
    """
    path = os.path.join(workdir, DATASET_FILE)
    identity = dataset_identity(dataset)
    if storage.exists(path):
        saved = read_json(path, "delete it only if you are sure the data did not change")
        if saved.get("sha256") != identity["sha256"]:
            changed = [
                k
                for k in identity
                if k not in ("sha256", "preprocessing") and saved.get(k) != identity[k]
            ]
            detail = ", ".join(f"{k} {saved.get(k)!r} -> {identity[k]!r}" for k in changed)
            raise WorkdirError(
                f"workdir {workdir!r} was trained on different data than data.data_dir holds "
                f"now ({detail or 'same sizes, different content'}; recorded in {path}); "
                "use a new --workdir, or the data it was trained on"
            )
        if saved == identity:
            return
    write_json(path, identity)  # new, or a record of the same data from an older version


def recorded_execution(workdir: str) -> dict | None:
    path = os.path.join(workdir, EXECUTION_FILE)
    return read_json(path) if storage.exists(path) else None


def check_execution(workdir: str, execution: dict, in_progress: list[str]) -> None:
    """Refuse to continue in-progress folds under another execution; then record this one.

    execution: {field: value} with at least NUMERIC_FIELDS. in_progress: names of the folds
    that have checkpoints to continue from. Folds not started yet, or finished, may use any
    execution (each fold is trained start to end one way; done.json records which).
    """
    saved = recorded_execution(workdir)
    if saved is not None and in_progress:
        diffs = [f for f in NUMERIC_FIELDS if saved.get(f) != execution.get(f)]
        if diffs:
            detail = ", ".join(f"{f} {saved.get(f)!r} -> {execution.get(f)!r}" for f in diffs)
            flags = {"strategy": "strategy", "loop": "loop", "data_shards": "num_devices"}
            fix = " ".join(
                f"--config.parallel.{flag}={saved[f]}" for f, flag in flags.items() if f in diffs
            )
            raise WorkdirError(
                f"folds {', '.join(in_progress[:3])}{' ...' if len(in_progress) > 3 else ''} of "
                f"workdir {workdir!r} were checkpointed under another execution ({detail}); "
                "continuing them this way would not give the numbers of an uninterrupted run. "
                + (f"Rerun with {fix}, " if fix else "Rerun where they were trained, ")
                + "or use a new --workdir"
            )
    if saved != execution:
        write_json(os.path.join(workdir, EXECUTION_FILE), execution)
