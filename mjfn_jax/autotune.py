"""``parallel.strategy='auto'``: the strategy and loop chosen by a short timed trial of the real
program on the machine it runs on, cached per (device kind, program shape).

Candidates (``candidates``): 'vmap' with one fold per device (several devices), 'vmap' with
several folds per device (on TPU over all folds, unmeasured there; elsewhere only when
``parallel.fold_group_size`` asks for more folds than devices: it lost on XLA:CPU and on an
H200, 1.7x slower per fold, where its trial alone cost 50 s of compiles), 'sequential'; loops
'steps' and, except on CPU,
'scan' (a whole epoch as one ``lax.scan``: XLA:CPU ran this network's step 5-25x slower inside
a while loop and took 30-90 s to compile it, so the CPU trial skips it). Each candidate trains
the first fold group for one epoch (the call that compiles it, timed apart); then the
candidates train one more epoch each, in turn, for ``ROUNDS`` rounds, and each keeps its best
round (seconds per fold-epoch). Alternating rounds after every compile keep the order out of it:
on an H200 the first candidate's only measured epoch once came out 2.9x slower than the same
program's steady rate. The winner is cached in
``$MJFN_JAX_CACHE_DIR`` (default ``~/.cache/mjfn_jax``) ``/auto_strategy.json`` and reused
without a trial; its compiled programs are reused by the run itself. A trial that would cost
more than ``parallel.auto_trial_budget`` of the run's estimated training time (a short run on
a fresh machine) is skipped after
timing the first candidate (see ``choose``). With ``parallel.auto_trial=False`` 'auto' is the
measured rule of ``parallel.resolve_strategy``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np

from mjfn_jax import parallel
from mjfn_jax import workdir as workdir_lib
from mjfn_jax.config_io import config_to_dict

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One way to run the folds: the config fields it sets."""

    strategy: str  # 'vmap' or 'sequential'
    loop: str  # 'steps' or 'scan'
    fold_group_size: int  # folds trained together under 'vmap' (0 under 'sequential')

    def apply(self, config):
        """A copy of ``config`` with this choice in ``config.parallel``."""
        config = config.copy_and_resolve_references()
        config.parallel.strategy = self.strategy
        config.parallel.loop = self.loop
        config.parallel.fold_group_size = self.fold_group_size
        return config


def candidates(platform: str, num_devices: int, num_folds: int, group_size: int) -> list[Choice]:
    """The candidates worth a trial here (see the module docstring), without duplicates. The
    first is what the run does without a trial (``parallel.resolve_strategy`` and
    ``resolve_loop``'s rule): ``choose`` times it first, and keeps it when a trial is not
    worth its cost."""
    loops = ("steps",) if platform == "cpu" else ("scan", "steps")
    out = [Choice("vmap", loops[0], num_devices) if num_devices > 1 else  # the rule
           Choice("sequential", loops[0], 0)]  # fmt: skip
    for loop in loops:
        # One fold per device; on one device that is 'sequential' with a fold axis of 1 (on an
        # H200 as fast with 'steps', 3.7x slower with 'scan'): not tried there.
        if num_devices > 1:
            out.append(Choice("vmap", loop, num_devices))
        if platform == "tpu" or group_size > num_devices:
            out.append(Choice("vmap", loop, group_size or num_folds))
        out.append(Choice("sequential", loop, 0))
    return list(dict.fromkeys(out))


def cache_root() -> str:
    """``$MJFN_JAX_CACHE_DIR``, default ``~/.cache/mjfn_jax``: the strategy trials and XLA's
    persistent compilation cache."""
    return os.environ.get("MJFN_JAX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mjfn_jax"
    )


def cache_path() -> str:
    return os.path.join(cache_root(), "auto_strategy.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs a new trial


def _write_cache(path: str, cache: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError as e:  # a read-only home still trains
        log.warning("could not write the strategy cache %s: %s", path, e)


ROUNDS = 2  # measured epochs per candidate, in alternating rounds


def choose(
    key: str,
    options: list[Choice],
    start: Callable[[Choice], tuple[float, Callable[[], float]]],
    *,
    run_fold_epochs: float = 0,
    budget: float = 0,
) -> tuple[Choice, dict]:
    """The fastest of ``options`` for the program described by ``key``.

    start(choice) -> (compile_s, epoch): compiles the candidate (training its first epoch);
    epoch() trains one more epoch and returns its seconds per fold.
    run_fold_epochs, budget: with both > 0 the first option (the platform rule's choice, which
    the run compiles anyway) is started and timed for two epochs first, and the trial goes on
    only if its estimated extra cost (the other candidates' compiles, priced at the first's,
    and the rounds' epochs) is at most ``budget`` times the run's estimated training time
    (``run_fold_epochs`` at the first option's rate); otherwise the first option is taken and
    nothing is cached, so that a longer run of the same program still gets its trial.
    Returns (choice, record) where record says how it was chosen (written to results.json).
    """
    if len(options) == 1:
        return options[0], {"choice": dataclasses.asdict(options[0]), "reason": "one candidate"}
    path = cache_path()
    cached = _read_cache(path).get(key)
    if cached:
        choice = Choice(**cached["choice"])
        if choice in options:
            log.info("parallel.strategy=auto -> %s (cached trial in %s)", choice, path)
            return choice, cached | {"cached": True}
    began = time.perf_counter()
    started = [start(options[0])]
    if budget > 0 and run_fold_epochs > 0:
        # s per fold-epoch of the rule's choice: the better of two epochs (on an H200 the first
        # epoch after the compiles ran 2.2x slower than the next)
        rate = min(started[0][1](), started[0][1]())
        estimate = {
            "run_s": rate * run_fold_epochs,
            "trial_extra_s": started[0][0] * (len(options) - 1) + rate * ROUNDS * len(options),
            "budget": budget,
            "s_per_fold_epoch": rate,
        }
        if estimate["trial_extra_s"] > budget * estimate["run_s"]:
            log.info("parallel.strategy=auto -> %s without a trial: it would cost ~%.1f s, over "
                     "%g of this run's ~%.1f s of training (parallel.auto_trial_budget)",
                     options[0], estimate["trial_extra_s"], budget, estimate["run_s"])  # fmt: skip
            return options[0], {
                "choice": dataclasses.asdict(options[0]),
                "reason": "the trial's estimated cost is over parallel.auto_trial_budget",
                "estimate": estimate,
                "trial_s": time.perf_counter() - began,
                "cached": False,
            }
    started += [start(option) for option in options[1:]]  # every compile before any measurement
    rounds = [[epoch() for _, epoch in started] for _ in range(ROUNDS)]
    trial = []
    for i, option in enumerate(options):
        seconds = [r[i] for r in rounds]
        trial.append(
            dataclasses.asdict(option)
            | {"s_per_fold_epoch": min(seconds), "rounds_s": seconds, "compile_s": started[i][0]}
        )
        log.info("auto trial: %s -> %.4f s per fold-epoch (rounds %s; compile %.1f s)", option,
                 min(seconds), [round(x, 4) for x in seconds], started[i][0])  # fmt: skip
    best = min(range(len(options)), key=lambda i: trial[i]["s_per_fold_epoch"])
    record = {
        "choice": dataclasses.asdict(options[best]),
        "trial": trial,
        "trial_s": time.perf_counter() - began,  # compiles included
    }
    cache = _read_cache(path)
    cache[key] = record
    _write_cache(path, cache)
    log.info("parallel.strategy=auto -> %s (trial of %d candidates)", options[best], len(options))
    return options[best], record | {"cached": False}


def choose_strategy(config, units, dataset, workdir: str, runners):
    """(config, record): ``parallel.strategy='auto'`` resolved by a timed trial (mjfn_jax.autotune)
    unless ``parallel.auto_trial`` is off; other strategies pass through (record None). A
    workdir that was trained on this platform before keeps the strategy it was trained with
    (a resumed fold must continue the way it started). runners: the run's
    mjfn_jax.runner.Runners, which keep the programs the trial compiled for the run."""
    if config.parallel.strategy != "auto" or not config.parallel.auto_trial:
        return config, None
    if jax.process_count() > 1:  # each process's trial could choose differently: a deadlock
        log.info("parallel.strategy=auto with %d processes: the platform rule, no trial",
                 jax.process_count())  # fmt: skip
        return config, {"reason": "several processes: the platform rule (no timed trial)"}
    arrays = units.arrays
    recorded = workdir_lib.recorded_execution(workdir)
    if recorded and recorded.get("platform") == jax.default_backend():
        choice = Choice(
            recorded["strategy"], recorded["loop"], int(recorded.get("fold_group_size", 0))
        )
        log.info("parallel.strategy=auto -> %s (recorded in the workdir)", choice)
        return choice.apply(config), {
            "choice": dataclasses.asdict(choice),
            "reason": f"recorded in {workdir_lib.EXECUTION_FILE}",
        }
    num_devices = len(parallel.devices(config.parallel.num_devices))
    platform = jax.default_backend()
    options = candidates(platform, num_devices, arrays.num_folds, config.parallel.fold_group_size)
    fields = config_to_dict(config)
    shape = {  # what the speed of a step depends on
        "model": fields["model"],
        "train": [config.train.batch_size, config.train.optimizer, config.train.grad_clip_norm > 0],
        "early_stopping": config.train.early_stopping_patience > 0,
        "augment": fields["augment"],
        "data": [len(dataset.labels), arrays.num_folds, int(arrays.train_idx.shape[1])],
    }
    device = jax.devices()[0].device_kind  # on CPU just "cpu": the host's model and flags too
    machine = parallel.machine_id() if platform == "cpu" else device
    key = json.dumps([platform, device, machine, num_devices, shape], sort_keys=True)
    choice, record = choose(
        key,
        options,
        lambda option: _trial(option.apply(config), units, dataset, runners),
        run_fold_epochs=arrays.num_folds * config.train.num_epochs,
        budget=config.parallel.auto_trial_budget,
    )
    return choice.apply(config), record


def _trial(config, units, dataset, runners):
    """Start ``config``'s strategy on the first fold group: (the compile time of its training
    call, a function that trains the group one more epoch and returns seconds per fold)."""
    runner, data, group, folds, states = runners.first_group(config, units, dataset)
    state = {"states": states, "epoch": 0}
    before = runner.compile_s

    def epoch() -> float:
        start = time.perf_counter()
        state["states"], metrics = runner.train(state["states"], folds, data, state["epoch"], 1)
        jax.block_until_ready(metrics["loss"])  # waits for the device
        state["epoch"] += 1
        return (time.perf_counter() - start) / int(np.sum(group >= 0))

    epoch()  # compiles
    return runner.compile_s - before, epoch
