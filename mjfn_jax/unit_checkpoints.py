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


def _slice(tree, i: int):
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


class UnitCheckpoints:
    """The checkpointers of a run's units (``units[u]``: ``roots[u]/folds/<fold_names[u]>``),
    their shared writer thread, and the multi-process rules: process 0 writes every fold (Orbax
    writes host numpy arrays from process 0 only: a save by another process leaves a
    checkpoint without data); the others only take part in the all-gathers that bring it the
    folds of their devices. Closing waits for every save and result (completed folds are kept
    even if a later one failed) and ends the writer thread.

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
        self.writes = distributed.is_main()
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
        what killed or failed saves left half written is removed."""
        for fold in self.folds:
            if fold.is_done():
                fold.read_result()
                fold.tidy()
            if self.writes:
                fold.remove_partial()
        return np.array([u for u, f in enumerate(self.folds) if not f.is_done()], np.int64)

    def restore(self, states, members: np.ndarray, names, sharding):
        """Restore a group from the newest epoch count checkpointed by ALL its real units
        (members >= 0; the units of a group train in lockstep, so they normally share it; a run
        killed between two units' saves falls back to the previous common one). A damaged
        checkpoint is skipped, with a warning, for the next older one; the steps after the one
        restored are deleted (training writes them again). ``states``: the group's fresh
        states [G, ...], what is returned when nothing is restored.
        Returns (states, epochs_done, {unit: history records})."""
        real = [int(m) for m in members if m >= 0]
        common = set.intersection(*(set(self.folds[m].epochs()) for m in real))
        histories = {m: [] for m in real}
        # Multi-process: rows of other processes' devices cannot be read (np.asarray raises),
        # so every process restores every real unit from its shapes; dummy members copy one.
        local = parallel.addressable(states)
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), states)
        for done in sorted(common, reverse=True):
            slices, metas = [], {}
            try:
                for pos, m in enumerate(members):
                    like = _slice(states, pos) if local else shapes
                    if m >= 0:
                        like, metas[m] = self.folds[m].restore(done, like)
                    slices.append(like)
            except CheckpointDamaged as e:
                log.warning("%s; trying an older checkpoint", e)
                continue
            for m in real:
                self.folds[m].discard_after(done)
                histories[m] = metas[m]["history"][:done]
            first = next(s for s, m in zip(slices, members, strict=True) if m >= 0)
            slices = [s if local or m >= 0 else first for s, m in zip(slices, members, strict=True)]
            log.info("resumed folds %s from epoch %d", ", ".join(names[m] for m in real), done)
            return parallel.put(_stack(slices), sharding), done, histories
        if common:
            log.warning(
                "no readable checkpoint of folds %s: training them from the start",
                ", ".join(names[m] for m in real),
            )
        for m in real:
            self.folds[m].discard_after(0)
        return states, 0, histories

    def save_models(self, models, members: np.ndarray) -> None:
        """The finished group's models [G, ...] (never donated again), each real member's
        to its unit's final model, written in the background."""
        self._save_point()
        if not parallel.addressable(models):  # several processes: a collective, here
            host = parallel.to_host(models)
        elif self.writes:  # one copy for the group, on the writer thread: the loop goes on
            host = self.writer.copy_to_host(models)
        for pos, m in enumerate(members):
            if m >= 0 and self.writes:
                self._handed_over.append(self.folds[m].save_final(host, pos))

    def save_progress(self, states, members: np.ndarray, epochs_done: int, histories) -> None:
        """The group's full train states [G, ...] as in-progress checkpoints."""
        self._save_point()
        host_states = parallel.to_host(states)  # one batch of copies for the group
        for pos, m in enumerate(members):
            if m >= 0 and self.writes:
                meta = {"epochs_done": epochs_done, "history": histories[m]}
                future = self.folds[m].save(epochs_done, _slice(host_states, pos), meta)
                self._handed_over.append(future)

    def write_result(self, unit: int, test_idx, log_probs, summary: dict) -> None:
        """A finished unit's test predictions and summary (marks it done, after its saves)."""
        self.check()
        if self.writes:
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
        if self.writer.failure is not None and self.writes:
            for fold in self.folds:
                fold.remove_partial()
        if errors:
            raise self.writer.failure or errors[0]

    def __enter__(self) -> UnitCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
