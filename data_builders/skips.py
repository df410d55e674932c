"""Counted, logged skips: every clip a builder leaves out is counted by reason."""

from __future__ import annotations

import collections
import logging

log = logging.getLogger("data_builders")


class SkipLog:
    """Counts clips that are left out, by reason, and logs where each one came from."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        log.warning("skipped %s: %s", where, reason)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
