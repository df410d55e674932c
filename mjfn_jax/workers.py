"""Process-pool workers that exit with their parent.

A ProcessPoolExecutor worker waits for work on a queue whose write end it holds itself, so when
the parent is killed (kill -9, the OOM killer) the worker never sees end-of-file and blocks
forever (issue 10, case 15). `exit_with_parent`, run from a pool's initializer, starts a daemon
thread that polls the parent's pid and ends the worker once it has changed (re-parented to init
or a subreaper). Polling works on Linux and macOS alike; PR_SET_PDEATHSIG would be Linux-only
and fires when the parent *thread* that started the worker ends, which in a pool is not the
parent's death.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)  # No cleanup to do: the parent that wanted the results is gone.


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process: exit (within POLL_S) once `parent_pid` is no longer the parent.

    Pass the parent's pid from the parent (initargs=(os.getpid(),)): a worker started just as
    the parent died would otherwise take its new parent for the real one.
    """
    threading.Thread(
        target=_watch, args=(parent_pid,), daemon=True, name="exit-with-parent"
    ).start()
