"""parallel.strategy='auto': candidates, the timed trial's choice and its cache (no training
here; the trial on the real program runs in test_strategies.py on 4 simulated devices)."""

from __future__ import annotations

import json

import pytest

from mjfn_jax import autotune
from mjfn_jax.autotune import Choice


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MJFN_JAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_candidates_per_platform():
    assert autotune.candidates("cpu", 1, 68, 0) == [Choice("sequential", "steps", 0)]
    assert autotune.candidates("cpu", 2, 68, 0) == [
        Choice("vmap", "steps", 2),
        Choice("sequential", "steps", 0),
    ]
    gpu = autotune.candidates("gpu", 1, 68, 17)  # fold_group_size=17 asks for vmap x17
    assert Choice("vmap", "scan", 17) in gpu and Choice("sequential", "steps", 0) in gpu
    assert len(gpu) == len(set(gpu)) == 4  # vmap x17 and sequential; 2 loops
    assert len(autotune.candidates("gpu", 8, 68, 17)) == 6  # + one fold per device
    # By default no candidate vmaps several folds on one device (it lost on CPU and GPU) ...
    assert autotune.candidates("gpu", 1, 68, 0) == [
        Choice("sequential", "scan", 0),
        Choice("sequential", "steps", 0),
    ]
    assert Choice("vmap", "scan", 4) in autotune.candidates("gpu", 4, 68, 0)
    assert Choice("vmap", "scan", 68) in autotune.candidates("tpu", 4, 68, 0)  # ... unmeasured


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("num_devices,group_size", [(1, 0), (1, 17), (2, 0), (8, 17)])
def test_the_first_candidate_is_the_rule(platform, num_devices, group_size):
    """What the run does without a trial comes first: the trial's budget times it first."""
    from mjfn_jax.parallel import resolve_loop, resolve_strategy

    strategy = resolve_strategy("auto", num_devices)
    devices = num_devices if strategy == "vmap" else 0
    rule = Choice(strategy, resolve_loop("auto", platform), devices)
    options = autotune.candidates(platform, num_devices, 68, group_size)
    assert options[0] == rule and len(options) == len(set(options))


def test_rule_without_a_trial_one_fold_per_device_else_sequential():
    from mjfn_jax.parallel import resolve_strategy

    # the same on every platform: measured on the 2-core CPU and on an H200
    assert resolve_strategy("auto", 1) == "sequential"
    assert resolve_strategy("auto", 2) == resolve_strategy("auto", 8) == "vmap"
    assert resolve_strategy("vmap", 1) == "vmap"  # an explicit choice stands
    with pytest.raises(ValueError, match="parallel.strategy"):
        resolve_strategy("pmap", 1)


def _starter(speeds: dict, events: list):
    """A fake trial: candidate -> (compile_s, epoch()), epoch times from ``speeds`` by strategy,
    each a list of the rounds' seconds; ``events`` records the order of compiles and epochs."""

    def start(choice):
        events.append(("compile", choice))
        times = iter(speeds[choice.strategy])
        return 1.0, lambda: events.append(("epoch", choice)) or next(times)

    return start


def test_choose_times_every_candidate_picks_the_fastest_and_caches(cache_dir):
    # sequential's first round is slow (a first-run effect), its best round is the fastest
    events = []
    start = _starter({"vmap": [0.5, 0.4], "sequential": [0.9, 0.2]}, events)
    options = autotune.candidates("cpu", 2, 10, 0)
    choice, record = autotune.choose("program-A", options, start)
    assert choice == Choice("sequential", "steps", 0)
    # every compile first, then alternating rounds
    assert [e[0] for e in events] == ["compile"] * 2 + ["epoch"] * 2 * autotune.ROUNDS
    assert [e[1] for e in events[2:4]] == options
    assert not record["cached"] and len(record["trial"]) == 2 and record["trial_s"] >= 0
    by_strategy = {t["strategy"]: t for t in record["trial"]}
    assert by_strategy["sequential"]["s_per_fold_epoch"] == 0.2
    assert by_strategy["sequential"]["rounds_s"] == [0.9, 0.2]
    calls = [e[1] for e in events if e[0] == "compile"]
    measure = _starter({"vmap": [0.5] * 2, "sequential": [0.2] * 2}, events)
    # the second time: from the cache, no trial
    again, record = autotune.choose("program-A", options, measure)
    compiles = lambda: sum(e[0] == "compile" for e in events)  # noqa: E731
    assert again == choice and record["cached"] and compiles() == len(calls) == 2
    # another program shape gets its own trial
    autotune.choose("program-B", options, measure)
    assert compiles() == 4
    with open(cache_dir / "auto_strategy.json") as f:
        assert set(json.load(f)) == {"program-A", "program-B"}


def test_a_trial_over_its_budget_is_skipped_and_not_cached(cache_dir):
    """The first candidate is compiled and timed once; the trial (one more compile at 1 s and
    2 x 2 epochs at 0.5 s: 3 s) is over 0.1 of a 20-fold-epoch run at 0.5 s (10 s)."""
    events = []
    start = _starter({"vmap": [0.9] + [0.5] * 3, "sequential": [0.2] * 2}, events)
    options = autotune.candidates("cpu", 2, 10, 0)
    choice, record = autotune.choose("short", options, start, run_fold_epochs=20, budget=0.1)
    assert choice == options[0] and not record["cached"]
    assert events == [("compile", options[0])] + [("epoch", options[0])] * 2  # the better: 0.5
    assert record["estimate"] == {
        "run_s": 10.0, "trial_extra_s": 3.0, "budget": 0.1, "s_per_fold_epoch": 0.5
    }  # fmt: skip
    assert not (cache_dir / "auto_strategy.json").exists()
    # 40 times longer (400 s of training): 3 s is within 0.1 of it, the trial runs and caches
    events.clear()
    choice, record = autotune.choose("long", options, start, run_fold_epochs=800, budget=0.1)
    assert choice == Choice("sequential", "steps", 0) and "trial" in record
    assert [e[0] for e in events] == ["compile", "epoch", "epoch", "compile"] + ["epoch"] * 4
    with open(cache_dir / "auto_strategy.json") as f:
        assert set(json.load(f)) == {"long"}


def test_a_damaged_cache_means_a_new_trial(cache_dir):
    cache_dir.mkdir(parents=True)
    (cache_dir / "auto_strategy.json").write_text("{not json")
    events = []
    autotune.choose("k", autotune.candidates("cpu", 4, 8, 0), _starter({"vmap": [1.0] * 2,
                    "sequential": [1.0] * 2}, events))  # fmt: skip
    assert sum(e[0] == "compile" for e in events) == 2


def test_one_candidate_needs_no_trial():
    def measure(choice):
        raise AssertionError("no trial expected")

    choice, record = autotune.choose("k", [Choice("sequential", "steps", 0)], measure)
    assert choice.strategy == "sequential" and record["reason"] == "one candidate"


def test_choice_applies_to_a_config_copy():
    from mjfn_jax.config import base_config

    config = base_config()
    applied = Choice("vmap", "steps", 4).apply(config)
    assert (applied.parallel.strategy, applied.parallel.loop) == ("vmap", "steps")
    assert applied.parallel.fold_group_size == 4 and config.parallel.strategy == "auto"


def test_the_console_says_why_there_was_no_trial():
    from mjfn_jax.main import timing_lines

    timing = {"strategy": "sequential", "platform": "gpu", "mesh": {"data": 1}, "compile_s": 1.0,
              "train_s": 2.0, "samples_per_s": 10.0}  # fmt: skip
    skipped = {"estimate": {"trial_extra_s": 18.0, "budget": 0.1, "run_s": 27.5}, "cached": False}
    line = timing_lines(timing | {"auto": skipped}, "W").splitlines()[0]
    assert "no trial (it would cost ~18.0 s, over 0.1 of ~27.5 s" in line
    trial = {"trial": [], "trial_s": 29.7, "cached": False}
    assert "timed trial 29.7 s (cached" in timing_lines(timing | {"auto": trial}, "W")
    assert "trial" not in timing_lines(timing | {"auto": trial | {"cached": True}}, "W")


@pytest.mark.parametrize("value", ["-1", "-0.5"])
def test_a_bad_budget_is_refused(smoke_config, value):
    from mjfn_jax.config import validate_config

    config = smoke_config(f"parallel.auto_trial_budget={value}")
    with pytest.raises(ValueError, match="parallel.auto_trial_budget=.*needs a number >= 0"):
        validate_config(config)
    validate_config(smoke_config("parallel.auto_trial_budget=0.25"))  # a fraction is fine
