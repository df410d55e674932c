"""Multi-process runs through ``jax.distributed``: flag checks, initialization, per-process logs.

    # every process, same config and workdir, its own --process_id:
    mjfn-train --config ... --workdir W \
        --coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 0
    # or, on a TPU VM / Slurm / Open MPI job, let JAX detect the cluster:
    mjfn-train --config ... --workdir W --distributed

Without these flags nothing changes: one process. With them the devices of all processes form
one global mesh (``jax.devices()``); on CPU the processes' collectives run over gloo.

What JAX does by itself when processes do not match up (measured, jax 0.10.2; docs/multi_host.md):
a process that cannot register with the coordinator (no process 0, a process missing, two
processes with one id, process 0 expecting more processes than were started) ABORTS the
whole interpreter (C++ LOG(FATAL), exit status 134, a multi-line stack trace, not a Python
exception) after about ``initialization_timeout`` + 5 s. So ``initialize`` runs a watchdog
thread that ends the process first, after ``timeout`` seconds, with one line naming the flags
to check (JAX gets a longer timeout than the watchdog). A process whose --num_processes is
larger than process 0's joins silently (the coordinator's count wins): an all-gather of every
process's flags after initialization turns that into the same one-line error on every process.
A second process 0 is refused before it binds the coordinator's port (check_port_free).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import sys
import threading

import jax

from mjfn_jax import storage

DEFAULT_TIMEOUT_S = 300
# JAX's own timeout is this much longer than the watchdog's, so that the watchdog's one-line
# error comes first (JAX aborted ~5 s after its initialization_timeout, measured).
_JAX_TIMEOUT_MARGIN_S = 30
LOGS_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class Settings:
    """A validated multi-process setup. ``auto``: let JAX detect the cluster (the three explicit
    fields are None)."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    auto: bool
    timeout_s: int

    def describe(self) -> str:
        if self.auto:
            return "--distributed (cluster detected by JAX)"
        return (
            f"process {self.process_id} of {self.num_processes}, "
            f"coordinator {self.coordinator_address}"
        )


def check_address(address: str) -> tuple[str, int]:
    """(host, port) of a ``HOST:PORT`` address (IPv6 hosts in brackets: ``[::1]:1234``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={address!r}: expected HOST:PORT")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"--coordinator_address={address!r}: port {port} not in 1..65535")
    if host.startswith("[") != host.endswith("]") or ":" in host and not host.startswith("["):
        raise ValueError(
            f"--coordinator_address={address!r}: expected HOST:PORT (an IPv6 host in brackets)"
        )
    return host.strip("[]"), int(port)


def settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    distributed: bool = False,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> Settings | None:
    """Check the flags (ValueError naming the flag); None when the run is single-process."""
    explicit = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    given = [name for name, value in explicit.items() if value is not None]
    if timeout_s is None or timeout_s < 1:
        raise ValueError(f"--distributed_timeout={timeout_s}: needs an int >= 1 (seconds)")
    if distributed and given:
        raise ValueError(
            f"--distributed lets JAX detect the cluster; drop {', '.join(given)} "
            "(or drop --distributed and give all three explicit flags)"
        )
    if distributed:
        return Settings(None, None, None, True, int(timeout_s))
    if not given:
        return None
    if len(given) < len(explicit):
        missing = [name for name in explicit if name not in given]
        raise ValueError(
            f"{', '.join(given)} needs {' and '.join(missing)}: --coordinator_address, "
            "--num_processes and --process_id go together"
        )
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: needs an int >= 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id={process_id}: needs 0 <= --process_id < --num_processes={num_processes}"
        )
    check_address(coordinator_address)
    return Settings(coordinator_address, num_processes, process_id, False, int(timeout_s))


def _reachable(address: str) -> bool:
    host, port = check_address(address)
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def check_port_free(s: Settings) -> None:
    """Process 0 serves the coordinator on its port. A second process 0 (two processes given
    --process_id=0) would bind it too (gRPC sets SO_REUSEPORT) and one of them would then die
    in JAX's C++ abort: refuse here, with one line, when something already listens there."""
    _, port = check_address(s.coordinator_address)
    for family, address in ((socket.AF_INET6, ("::", port)), (socket.AF_INET, ("", port))):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    continue  # e.g. that family unavailable: JAX reports what matters
                raise ValueError(
                    f"--process_id=0: port {port} of --coordinator_address="
                    f"{s.coordinator_address} is already in use on this machine (another "
                    "process given --process_id=0, or another program): give --process_id=0 "
                    "to one process only, and each run its own port"
                ) from None


def timeout_message(s: Settings) -> str:
    """The one line the watchdog prints when initialization did not finish in time."""
    within = f"within --distributed_timeout={s.timeout_s} s"
    if s.auto:
        return f"error: --distributed: jax.distributed.initialize() did not finish {within}"
    if s.process_id != 0 and not _reachable(s.coordinator_address):
        return (
            f"error: --process_id={s.process_id}: no coordinator answered at "
            f"--coordinator_address={s.coordinator_address} {within}; start process 0 "
            "(--process_id=0) with the same address, or check the address"
        )
    return (
        f"error: --process_id={s.process_id}: the --num_processes={s.num_processes} processes "
        f"did not all join the coordinator at {s.coordinator_address} {within}; start each "
        f"--process_id in 0..{s.num_processes - 1} exactly once, all with the same "
        "--coordinator_address and --num_processes"
    )


def _watchdog(s: Settings) -> threading.Timer:
    def fire() -> None:  # JAX would abort later with a C++ stack trace: end it with one line
        sys.stderr.write(timeout_message(s) + "\n")
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(s.timeout_s, fire)
    timer.daemon = True
    return timer


def initialize(s: Settings | None) -> None:
    """Join the cluster (nothing for None). Call before anything starts JAX's backends (after
    jax_num_cpu_devices is set: parallel.split_cpu_devices composes with this, either order).
    Ends the process with one line after ``s.timeout_s`` if the processes do not all join;
    raises ValueError if they joined with disagreeing flags."""
    if s is None:
        return
    # CPU collectives across processes (already the default in jax 0.10.2; explicit here).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not s.auto and s.process_id == 0:
        check_port_free(s)
    jax_timeout = s.timeout_s + _JAX_TIMEOUT_MARGIN_S
    timer = _watchdog(s)
    timer.start()
    try:
        if s.auto:
            jax.distributed.initialize(initialization_timeout=jax_timeout)
        else:
            jax.distributed.initialize(
                s.coordinator_address,
                s.num_processes,
                s.process_id,
                initialization_timeout=jax_timeout,
            )
    except (ValueError, RuntimeError) as e:  # e.g. --distributed outside a detectable cluster
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{s.describe()}: jax.distributed.initialize: {first}") from None
    finally:
        timer.cancel()
    if not s.auto:
        _check_agreement(s)
    logging.getLogger(__name__).info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip


def _check_agreement(s: Settings) -> None:
    """Every process's --num_processes, all-gathered: the same ValueError on every process
    when they disagree (JAX accepts a process that claims a larger --num_processes than
    process 0's). The ids need no check: JAX's process index IS the given --process_id, and
    processes with one id never form a cluster (module docstring)."""
    import numpy as np
    from jax.experimental import multihost_utils

    flags = np.asarray(
        multihost_utils.process_allgather(np.array([s.process_id, s.num_processes], np.int32))
    )  # [process_count, 2], row k from process k
    counts = flags[:, 1].tolist()
    if any(n != jax.process_count() for n in counts):
        detail = ", ".join(f"process {k} has {n}" for k, n in enumerate(counts))
        raise ValueError(
            f"the processes disagree on --num_processes ({detail}; the coordinator's, "
            f"process 0's, is {jax.process_count()}); give every process the same value"
        )


def process_index() -> int:
    """This process's index (0 without jax.distributed). Starts JAX's backends."""
    return jax.process_index()


def is_main() -> bool:
    """Whether this process talks to the user: console log, progress bars, printed results."""
    return process_index() == 0


class _LazyFileHandler(logging.FileHandler):
    """A FileHandler that makes its folder (and file) at the first record, not before."""

    def _open(self):
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()


def log_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, LOGS_DIR, f"process_{index}.log")


def setup_process_logging(workdir: str) -> str | None:
    """Process 0 logs as a single process does (call after train.setup_logging). Any other
    process logs to ``<workdir>/logs/process_<i>.log`` instead of the console; returns that
    path (None for process 0). On object storage (``gs://``), where a file cannot be appended
    to, the others log to their own stderr, each line naming its process (returns None)."""
    index = process_index()
    if index == 0:
        return None
    path = log_path(workdir, index) if storage.is_local(workdir) else None
    handler = _LazyFileHandler(path, delay=True) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [process {index}] %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return path
