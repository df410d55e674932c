"""What the training loop talks to: every unit's checkpointer, and the multi-process rules of
saving (``UnitCheckpoints``)."""

from __future__ import annotations

import concurrent.futures
import logging

import jax
import numpy as np

from mjfn_jax import distributed, parallel
from mjfn_jax.checkpoint import CheckpointDamaged, FoldCheckpointer
from mjfn_jax.writer import Writer

log = logging.getLogger(__name__)


class UnitCheckpoints:
    """The checkpointers of a run's units (``units[u]``: ``roots[u]/folds/<fold_names[u]>``),
    their shared writer thread, and the multi-process rules: a unit's files (checkpoints, model,
    predictions, done.json) are written by the process that owns its row of the group's arrays
    (``parallel.owned_blocks``: the one holding replica 0 of it), from its own shards, alone;
    no train state or model is gathered across processes. Closing waits for every save and
    result (completed folds are kept even if a later one failed) and ends the writer thread.

    A failed write (a full disk) stops the run at the next save point (``SaveFailed``), not at
    its end: each save point first waits for the writes handed over at the previous one."""

    def __init__(self, roots, fold_names, *, max_to_keep: int, final_dtype: str):
        self.writer = Writer()
        self.folds = [
            FoldCheckpointer(
                root, name, max_to_keep=max_to_keep, final_dtype=final_dtype, writer=self.writer
            )
            for root, name in zip(roots, fold_names, strict=True)
        ]
        self.owned: set[int] = set()  # the units this process writes (noted per group)
        self._handed_over: list[concurrent.futures.Future] = []  # since the last save point

    def __getitem__(self, unit: int) -> FoldCheckpointer:
        return self.folds[unit]

    def check(self) -> None:
        """Re-raise a failed write now, without waiting for the writes in flight."""
        if self.writer.failure is not None:
            raise self.writer.failure

    def _save_point(self) -> None:
        """Wait for the writes handed over since the previous save point (normally long done:
        they had a training call's time) and re-raise their failure."""
        self.check()
        handed_over, self._handed_over = self._handed_over, []
        for future in handed_over:
            future.result()

    def pending(self) -> np.ndarray:
        """The units still to train, int64 [P]. A finished unit's result is read now (a damaged
        one is found before hours of training, not after) and its spent checkpoints tidied;
        what killed or failed saves left half written is removed (by process 0, before any
        process writes)."""
        for fold in self.folds:
            if fold.is_done():
                fold.read_result()
                fold.tidy()
            if distributed.is_main():
                fold.remove_partial()
        return np.array([u for u, f in enumerate(self.folds) if not f.is_done()], np.int64)

    def restore(self, states, members: np.ndarray, names, sharding):
        """Restore a group from the newest epoch count checkpointed by ALL its real units
        (members >= 0; the units of a group train in lockstep, so they normally share it; a run
        killed between two units' saves falls back to the previous common one). A damaged
        checkpoint is skipped, with a warning, for the next older one; the steps after the one
        restored are deleted (training writes them again). ``states``: the group's fresh
        states [G, ...], what is returned when nothing is restored. Notes which of the group's
        units this process writes (``owned``).

        Each process reads the states of the rows its devices hold only, and places them
        there (``parallel.from_rows``); every process reads every unit's history (JSON).
        Returns (states, epochs_done, {unit: history records})."""
        real = [int(m) for m in members if m >= 0]
        owned = {int(members[pos]) for pos in parallel.rows_of(parallel.owned_blocks(states))}
        self.owned |= owned - {-1}
        common = set.intersection(*(set(self.folds[m].epochs()) for m in real))
        histories = {m: [] for m in real}
        local = parallel.local_rows(states)
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), states)
        for done in sorted(common, reverse=True):
            rows, metas, damaged = {}, {}, None
            try:
                for pos in local:
                    if members[pos] >= 0:
                        rows[pos], metas[int(members[pos])] = self.folds[members[pos]].restore(
                            done, shapes
                        )
                for m in set(real) - set(metas):  # other processes' units: their history
                    metas[m] = self.folds[m].restore_meta(done)
            except CheckpointDamaged as e:
                damaged = e
            if not parallel.everywhere(damaged is None):  # every process takes the same step
                log.warning("%s; trying an older checkpoint", damaged or f"epoch {done}: a "
                            "checkpoint another process reads is damaged")  # fmt: skip
                continue
            for m in real:
                histories[m] = metas[m]["history"][:done]
                if m in owned:
                    self.folds[m].discard_after(done)
            for pos in local:  # dummy members keep their fresh state
                if members[pos] < 0:
                    rows[pos] = parallel.local_row(states, pos)
            log.info("resumed folds %s from epoch %d", ", ".join(names[m] for m in real), done)
            return parallel.from_rows(rows, states, sharding), done, histories
        if common:
            log.warning(
                "no readable checkpoint of folds %s: training them from the start",
                ", ".join(names[m] for m in real),
            )
        for m in real:
            if m in owned:
                self.folds[m].discard_after(0)
        return states, 0, histories

    def save_models(self, models, members: np.ndarray) -> None:
        """The finished group's models [G, ...] (never donated again): each real member this
        process owns to its unit's model, copied to the host and written on the writer thread
        (the loop goes on). Nothing is gathered: each process writes its own rows."""
        self._save_point()
        blocks = parallel.owned_blocks(models)
        host = self.writer.copy_to_host(blocks)  # one copy for the group, on the writer thread
        for pos in parallel.rows_of(blocks):
            if members[pos] >= 0:
                self._handed_over.append(self.folds[members[pos]].save_final(host, pos))

    def save_progress(self, states, members: np.ndarray, epochs_done: int, histories) -> None:
        """The group's full train states [G, ...] as in-progress checkpoints: each process
        copies the rows it owns to the host here (the next training call donates the states'
        buffers), and its writer thread writes them."""
        self._save_point()
        host = jax.device_get(parallel.owned_blocks(states))  # this process's rows only
        for pos in parallel.rows_of(host):
            m = int(members[pos])
            if m >= 0:
                meta = {"epochs_done": epochs_done, "history": histories[m]}
                future = self.folds[m].save(epochs_done, parallel.take_row(host, pos), meta)
                self._handed_over.append(future)

    def write_result(self, unit: int, test_idx, log_probs, summary: dict) -> None:
        """A finished unit's test predictions and summary (marks it done, after its saves)."""
        self.check()
        if unit in self.owned:  # after its model, on this process's writer thread
            future = self.folds[unit].write_result(test_idx, log_probs, summary)
            self._handed_over.append(future)

    def close(self) -> None:
        """Waits for every write and ends the writer thread; after a failed write, removes what
        it left half written and raises the first failure."""
        errors = []
        for fold in self.folds:
            try:
                fold.close()
            except Exception as e:  # the others are still closed (their completed folds kept)
                errors.append(e)
        self.writer.close()
        if self.writer.failure is not None:
            for unit in self.owned:
                self.folds[unit].remove_partial()
        if errors:
            raise self.writer.failure or errors[0]

    def __enter__(self) -> UnitCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
