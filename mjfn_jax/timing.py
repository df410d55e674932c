"""Where a run's wall time goes: host seconds per named phase, and the training calls' work."""

from __future__ import annotations

import collections
import contextlib
import time


class Chrono:
    """Phase timing for the training loop (big_vision's ``chrono`` is the model): ``with
    chrono.phase("predict"): ...`` adds the block's seconds to that phase; ``count`` adds the
    samples and epochs that the training calls did. Compiles count in the phase whose call
    triggered them."""

    TRAINING = "training calls"

    def __init__(self):
        self.phases: collections.Counter[str] = collections.Counter()
        self.samples = 0  # samples the training calls processed
        self.epochs = 0  # epochs trained, all groups

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] += time.perf_counter() - start

    def count(self, *, samples: int, epochs: int) -> None:
        self.samples += samples
        self.epochs += epochs

    @property
    def train_s(self) -> float:
        return self.phases[self.TRAINING]

    def summary(self) -> dict:
        """train_s, samples_per_s and phases_s, for a run's timing record."""
        return {
            "train_s": self.train_s,
            "samples_per_s": self.samples / self.train_s if self.train_s else None,
            "phases_s": dict(self.phases),
        }
