"""A run's writer thread, and the filters of Orbax's noise that a run keeps open.

Orbax's save() spends tens of ms of Python per call before its write starts; the saves of a run
(every unit's checkpoints, models and results) go through one background thread that the run
owns (``Writer``), in the order they were handed over. Nothing here is started at import.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import sys

from mjfn_jax.model_file import copy_to_host


class Writer:
    """One background thread that runs a run's saves in the order they were handed over
    (FIFO). Orbax's save() spends tens of ms of Python per call before it writes; the thread
    takes that and the write off the training loop, which waits on XLA (GIL released) most of
    the time. Started on first use; ``close()`` waits for what was handed
    over and ends the thread.

    Once a task has failed (``failure``), the later ones are not run: each raises that failure.
    Nothing is written after a failed save (a fold marked done without its model)."""

    def __init__(self):
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.failure: BaseException | None = None

    def submit(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mjfn-save")
        return self._pool.submit(self._run, fn, args, kwargs)

    def _run(self, fn, args, kwargs):
        if self.failure is not None:
            raise self.failure
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            self.failure = e
            raise

    def copy_to_host(self, tree) -> concurrent.futures.Future:
        """``tree``'s arrays copied to the host (``model_file.copy_to_host``) on this thread,
        after everything handed to it before: the training thread goes on (to the predictions,
        the next fold group) while a GPU copies a finished group's models. Arrays of this
        process's devices only (``parallel.owned_blocks``): no collective."""
        return self.submit(copy_to_host, tree)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def closed_loop_reports_dropped():
    """While open, drop Python's "Event loop is closed" unraisable reports. After a failed
    restore, tensorstore still completes the reads in flight and calls back into the asyncio
    loop that Orbax has closed; Python reports each call (hundreds of traceback lines on
    stderr, for reads whose results nobody wants). Other reports pass through; the previous
    hook is put back on exit."""
    previous = sys.unraisablehook

    def hook(report) -> None:
        closed_loop = report.exc_type is RuntimeError and "Event loop is closed" in str(
            report.exc_value
        )
        if not closed_loop:
            previous(report)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def orbax_errors_in_one_line():
    """While open, Orbax's error logs (the absl logger) come without their tracebacks. A failed
    save (a full disk) logs its exception with a traceback from each of Orbax's threads it
    passes through, dozens of lines before the run's own one-line error (SaveFailed)."""

    def strip(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True

    logger = logging.getLogger("absl")
    logger.addFilter(strip)
    try:
        yield
    finally:
        logger.removeFilter(strip)
