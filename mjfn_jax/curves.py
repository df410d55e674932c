"""Training curves while a run trains: each unit's per-epoch metrics as TensorBoard event files,
``<workdir>/tensorboard/<unit>/`` (``tensorboard --logdir <workdir>/tensorboard``).

Written with tensorboardX: a small, maintained writer of TensorBoard's event format that needs
neither TensorFlow nor the tensorboard package (which are not dependencies of this project).
One run (folder) per unit, the same tags in each (``loss``, ``accuracy`` and, with validation
subjects, ``val_loss``, ``val_accuracy``), the step being the 1-based epoch. A resumed unit
starts its writer at the first epoch it trains again: events of that epoch or later, left by a
killed run, are dropped (tensorboardX's ``purge_step``), so each curve has one point per epoch.
"""

from __future__ import annotations

import os
import uuid

TAGS = ("loss", "accuracy", "val_loss", "val_accuracy")  # the history records' keys
DIRNAME = "tensorboard"


class Curves:
    """The TensorBoard writers of a fold group's units (open while the group trains).

    ``enabled=False`` (a process other than 0 of a multi-process run) writes nothing."""

    def __init__(self, workdir: str, names, first_epoch: int, *, enabled: bool = True):
        """names: the units' names (``sub01``, ``seed1/sub01``); first_epoch: epochs done."""
        self._writers = {}
        if enabled:
            from tensorboardX import SummaryWriter  # lazy: only a training run writes curves

            # The file name holds the time in seconds and the host; a writer reopened within the
            # same second (a quick resume) must not replace the file before it.
            suffix = "." + uuid.uuid4().hex[:8]
            for name in names:
                logdir = os.path.join(workdir, DIRNAME, name)
                self._writers[name] = SummaryWriter(
                    logdir, purge_step=first_epoch + 1, filename_suffix=suffix
                )

    def add(self, name: str, records) -> None:
        """History records ({"epoch": 1-based, "loss": ..., ...}) of unit ``name``."""
        writer = self._writers.get(name)
        if writer is None:
            return
        for record in records:
            for tag in TAGS:
                if tag in record:
                    writer.add_scalar(tag, record[tag], global_step=record["epoch"])

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
