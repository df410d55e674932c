"""Multi-process flags (mjfn_jax.distributed): checked before anything starts, and the ways
processes fail to meet end in one line within --distributed_timeout (subprocesses of
``python -m mjfn_jax.main`` on 127.0.0.1; each fails before any training)."""

import os
import socket
import subprocess
import sys
import time

import pytest

from mjfn_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_flags_is_one_process():
    assert distributed.settings() is None


def test_explicit_flags():
    s = distributed.settings("127.0.0.1:1234", 2, 1, timeout_s=7)
    assert (s.coordinator_address, s.num_processes, s.process_id, s.auto, s.timeout_s) == (
        "127.0.0.1:1234", 2, 1, False, 7,
    )  # fmt: skip
    assert distributed.settings("[::1]:80", 1, 0).coordinator_address == "[::1]:80"
    assert distributed.settings(distributed=True).auto


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator_address="h:1"), "--coordinator_address needs --num_processes and "),
        (dict(num_processes=2, process_id=0), "needs --coordinator_address: "),
        (dict(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes=0: "),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), "--process_id=2: needs"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=-1), "--process_id=-1: "),
        (dict(coordinator_address="h", num_processes=2, process_id=0), "'h': expected HOST:PORT"),
        (dict(coordinator_address=":80", num_processes=1, process_id=0), "expected HOST:PORT"),
        (dict(coordinator_address="h:x", num_processes=1, process_id=0), "expected HOST:PORT"),
        (dict(coordinator_address="h:0", num_processes=1, process_id=0), "port 0 not in"),
        (dict(coordinator_address="h:65536", num_processes=1, process_id=0), "port 65536 not"),
        (dict(coordinator_address="::1:80", num_processes=1, process_id=0), "IPv6 host in br"),
        (dict(distributed=True, process_id=0), "--distributed lets JAX detect the cluster; drop"),
        (dict(distributed=True, timeout_s=0), "--distributed_timeout=0: needs an int >= 1"),
    ],
)
def test_invalid_flags(kwargs, message):
    with pytest.raises(ValueError) as e:
        distributed.settings(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_other_processes_log_to_a_file_in_the_workdir(tmp_path, monkeypatch):
    import logging

    assert distributed.setup_process_logging(str(tmp_path / "w")) is None  # process 0: as is
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    assert not distributed.is_main()
    path = distributed.setup_process_logging(str(tmp_path / "w"))
    assert path == str(tmp_path / "w" / "logs" / "process_1.log")
    assert not (tmp_path / "w").exists()  # made at the first record, not before
    logging.getLogger("mjfn_jax.test").warning("hello from process 1")
    for handler in root.handlers:
        handler.close()
    with open(path) as f:
        assert "[process 1] mjfn_jax.test: hello from process 1" in f.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main(workdir, port: int, num_processes: int, process_id: int, timeout_s: int = 2):
    cmd = [
        sys.executable, "-m", "mjfn_jax.main",
        "--config", "mjfn_jax/configs/synthetic.py:smoke",
        "--config.data.name=generated",
        "--config.train.num_epochs=1",
        "--workdir", str(workdir),
        "--coordinator_address", f"127.0.0.1:{port}",
        "--num_processes", str(num_processes),
        "--process_id", str(process_id),
        "--distributed_timeout", str(timeout_s),
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc, limit_s: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running after {limit_s} s") from None
    return proc.returncode, err


def _error_line(err: str) -> str:
    """The process's one error line; no Python traceback, no C++ check failure."""
    assert "Traceback" not in err and "Check failure" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def test_unreachable_coordinator_is_one_line_within_the_timeout(tmp_path):
    # Process 1 alone: JAX itself would abort with a C++ stack trace after ~timeout + 5 s.
    start = time.perf_counter()
    rc, err = _finish(_main(tmp_path / "w", _free_port(), 2, 1, timeout_s=2))
    seconds = time.perf_counter() - start
    line = _error_line(err)
    assert rc == 1 and "--process_id=1: no coordinator answered at" in line, err[-2000:]
    assert "--distributed_timeout=2 s" in line
    assert seconds < 2 + 20, seconds  # the timeout plus the imports, not JAX's abort
    assert not (tmp_path / "w").exists()


def test_missing_process_is_one_line_on_process_0(tmp_path):
    rc, err = _finish(_main(tmp_path / "w", _free_port(), 2, 0, timeout_s=2))
    line = _error_line(err)
    assert rc == 1 and "--num_processes=2 processes did not all join the coordinator" in line
    assert "--process_id in 0..1 exactly once" in line


def test_duplicate_ids_without_process_0_are_one_line(tmp_path):
    port = _free_port()
    procs = [_main(tmp_path / f"w{k}", port, 2, 1) for k in range(2)]
    for proc in procs:
        rc, err = _finish(proc)
        assert rc == 1 and "no coordinator answered" in _error_line(err)


def test_a_second_process_0_is_one_line(tmp_path):
    """Two processes given --process_id=0: the second finds the coordinator's port taken (JAX
    alone would bind it too, and one of the two would die in a C++ abort)."""
    port = _free_port()
    first = _main(tmp_path / "w", port, 2, 0, timeout_s=30)
    try:
        deadline = time.monotonic() + 30
        while not distributed._reachable(f"127.0.0.1:{port}"):
            assert time.monotonic() < deadline and first.poll() is None, "no coordinator came up"
            time.sleep(0.1)
        rc, err = _finish(_main(tmp_path / "w2", port, 2, 0, timeout_s=30))
        line = _error_line(err)
        assert rc == 1 and f"--process_id=0: port {port} of --coordinator_address" in line
        assert "already in use" in line
    finally:
        first.kill()
        first.communicate()


def test_disagreeing_num_processes_is_one_line_on_every_process(tmp_path):
    # JAX accepts process 1 (it believes in 3 processes, process 0 in 2) without complaint.
    port = _free_port()
    procs = [_main(tmp_path / "w", port, 2, 0, 20), _main(tmp_path / "w", port, 3, 1, 20)]
    for proc in procs:
        rc, err = _finish(proc)
        line = _error_line(err)
        assert rc == 1 and "the processes disagree on --num_processes" in line, err[-2000:]
        assert "process 0 has 2, process 1 has 3" in line
    assert not (tmp_path / "w").exists()


def test_distributed_outside_a_cluster_is_one_line(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "TPU_", "MEGASCALE"))
    }
    cmd = [
        sys.executable, "-m", "mjfn_jax.main",
        "--config", "mjfn_jax/configs/synthetic.py:smoke",
        "--workdir", str(tmp_path / "w"),
        "--distributed", "--distributed_timeout", "5",
    ]  # fmt: skip
    env |= dict(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    line = _error_line(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert line == (
        "error: --distributed (cluster detected by JAX): jax.distributed.initialize: "
        "coordinator_address should be defined."
    )
    assert not (tmp_path / "w").exists()
