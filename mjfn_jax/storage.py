"""Where a workdir lives: a local folder, or object storage (``gs://bucket/run``, ``s3://``)
through etils.epath. Every record a run writes into its workdir, and every one a command reads
back, goes through these helpers (docs/design.md#workdirs-on-cloud-storage).

What a write guarantees:

- local file system: the bytes go to ``<path><tmp_suffix>``, which is renamed over ``path``
  (``os.replace``): a reader, or a run killed mid-write, sees the old file or the new one.
- object storage: there is no rename (a "rename" is a copy and a delete, not atomic), so the
  whole file is made in memory and uploaded as ONE object. A single-object upload is atomic on
  GCS and S3: a reader sees the old object or the new one, never a part; an upload cut off
  leaves the old object. No temporary object is ever left behind.

Locks (flock) exist only on a local file system: see mjfn_jax.workdir.Lock.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import IO

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike, *parts: str) -> epath.Path:
    """``path`` (joined with ``parts``) as an epath.Path: a local path, or a ``gs://``/``s3://``
    URI."""
    return epath.Path(path, *parts)


def is_local(path: PathLike) -> bool:
    """Whether ``path`` is on a local file system (where rename and flock work), not an object
    store's URI (``gs://``, ``s3://``, ...)."""
    return "://" not in os.fspath(path)


def unreachable(path: PathLike) -> str | None:
    """Why ``path``'s storage cannot be reached from this environment (its fsspec package is
    not installed: gcsfs for ``gs://``, s3fs for ``s3://``), or None."""
    if is_local(path):
        return None
    try:
        as_path(path).exists()
    except ImportError as e:
        return f"{e} (pip install gcsfs for gs://, s3fs for s3://)"
    return None


def makedirs(path: PathLike) -> None:
    """Make the folder ``path`` (and its parents) on a local file system. Object storage has no
    folders (an object's name holds its path), so nothing is made there: with gcsfs, making
    ``gs://bucket/...`` would even create a missing bucket."""
    if is_local(path):
        os.makedirs(path, exist_ok=True)


def write_with(
    path: PathLike, write: Callable[[IO[bytes]], None], *, tmp_suffix: str = ".tmp", fsync=False
) -> None:
    """Write the file ``path`` atomically; ``write(f)`` writes its bytes to a binary file ``f``.

    Local: into ``<path><tmp_suffix>`` (fsync'ed with ``fsync``) renamed over ``path``; a failed
    write (a full disk) removes the temporary file. Object storage: into memory, then one
    upload. The temporary file has a fixed name, so one left by a kill -9 is overwritten by the
    next write instead of piling up."""
    path = os.fspath(path)
    if not is_local(path):
        buffer = io.BytesIO()
        write(buffer)
        as_path(path).write_bytes(buffer.getvalue())
        return
    tmp = path + tmp_suffix
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: PathLike, data: bytes, **kwargs) -> None:
    """``data`` into ``path`` atomically (see write_with)."""
    write_with(path, lambda f: f.write(data), **kwargs)


def write_text(path: PathLike, text: str, **kwargs) -> None:
    """``text`` (UTF-8) into ``path`` atomically (see write_with)."""
    write_bytes(path, text.encode(), **kwargs)


def save_figure(fig, path: PathLike, dpi: int) -> None:
    """A matplotlib figure into ``path`` atomically, in the format its suffix names."""
    kind = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    write_with(path, lambda f: fig.savefig(f, format=kind, dpi=dpi))


def load_npz(path: PathLike):
    """``np.load`` of an .npz file (an NpzFile: use it in a ``with``). A local file is read
    lazily, one array at a time; an object is downloaded whole first."""
    if is_local(path):
        return np.load(os.fspath(path))
    return np.load(io.BytesIO(as_path(path).read_bytes()))


def absolute(path: PathLike) -> str:
    """``path`` made absolute on a local file system; a URI as it is."""
    return os.path.abspath(path) if is_local(path) else os.fspath(path)


def exists(path: PathLike, *parts: str) -> bool:
    return as_path(path, *parts).exists()


def is_dir(path: PathLike, *parts: str) -> bool:
    return as_path(path, *parts).is_dir()


def listdir(path: PathLike) -> list[str]:
    """The names in the folder ``path`` ([] if there is none)."""
    folder = as_path(path)
    try:
        return [child.name for child in folder.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def glob(folder: PathLike, pattern: str) -> list[str]:
    """The paths in ``folder`` whose names match ``pattern`` (fnmatch, one level)."""
    if not is_dir(folder):
        return []
    return [os.fspath(p) for p in as_path(folder).glob(pattern)]


def remove(path: PathLike) -> None:
    """Delete the file or folder ``path`` if it is there (a folder with what it holds)."""
    target = as_path(path)
    if target.is_dir():
        target.rmtree(missing_ok=True)
    else:
        target.unlink(missing_ok=True)
