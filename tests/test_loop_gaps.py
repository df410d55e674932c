"""experiments/loop_gaps.py's gap arithmetic on a hand-made trace (the GPU trace it reads is
only on accelerators)."""

from types import SimpleNamespace as NS

import pytest

from experiments.loop_gaps import summarise_gaps


def _ev(name, start_us, dur_us):
    return NS(name=name, start_ns=int(start_us * 1e3), duration_ns=int(dur_us * 1e3))


def test_gaps_by_transition_and_host_event():
    step = "jit_mjfn_program__the_training_step(123)"
    end = "jit_mjfn_program__the_epoch_end(7)"
    gpu = NS(
        name="/device:GPU:0",
        lines=[
            NS(name="XLA Modules", events=[
                _ev(step, 0, 100), _ev(step, 110, 100), _ev(end, 400, 50), _ev(step, 455, 100),
            ]),
        ],
    )  # fmt: skip
    host = NS(
        name="/host:CPU",
        lines=[
            NS(name="main", events=[
                _ev("PjitFunction(mjfn_program__the_training_step)", 0, 20),
                _ev("device_get", 250, 100),  # the gap 210..400 has its middle (305) here
            ]),
            NS(name="other thread", events=[_ev("busy elsewhere", 0, 1000)]),  # no jit: ignored
        ],
    )  # fmt: skip
    out = summarise_gaps([host, gpu], min_gap_us=8)
    assert out["device_busy_ms"] == 0.35
    assert abs(out["device_span_ms"] - 0.555) < 1e-9
    assert abs(out["idle_ms"] - 0.205) < 1e-9
    gaps = out["gaps_by_transition_ms"]
    # the 10 us gap step -> step is counted, the 5 us one (end -> step) is under min_gap_us
    assert gaps["the_training_step -> the_training_step"]["count"] == 1
    assert abs(gaps["the_training_step -> the_epoch_end"]["total"] - 0.19) < 1e-9
    assert "the_epoch_end -> the_training_step" not in gaps
    assert abs(out["gaps_by_host_event_ms"]["device_get"] - 0.19) < 1e-9
    assert abs(out["gaps_by_host_event_ms"]["(no JAX event: Python)"] - 0.01) < 1e-9


def test_no_gpu_plane_is_a_note():
    assert "note" in summarise_gaps([NS(name="/host:CPU", lines=[])])


@pytest.mark.slow  # ~45 s of compiles on 2 cores; the summary's logic is tested above
def test_the_command_on_the_quick_preset(tmp_path):
    """Warm runs of two loop shapes and the trace (on a CPU: a note, no gap analysis); a
    process of its own, as the command splits the CPU into devices before JAX starts."""
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "experiments.loop_gaps",
           "--config", "experiments/configs/benchmark.py:quick", "--subjects", "3", "--samples",
           "12", "--repeats", "1", "--variants", "steps:1,scan:1", "--machine", "m",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "m" / "loop_gaps.json") as f:
        result = json.load(f)
    assert [r["variant"] for r in result["runs"]] == ["steps:1", "scan:1"]
    assert all(r["training_calls_per_fold_ms"] > 0 and r["steps_per_epoch"] == 1
               for r in result["runs"])  # fmt: skip
    assert "gap analysis is for accelerators" in result["trace"]["note"]
    assert "| steps:1 | 1 |" in (tmp_path / "m" / "loop_gaps.md").read_text()
