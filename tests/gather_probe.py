"""mjfn-train with its all-gathers recorded, for tests/test_distributed_engine.py:
``python tests/gather_probe.py OUT.json ARGS...`` runs ``mjfn_jax.main`` with ARGS and writes to
OUT.json the largest leaf (bytes, global) handed to ``multihost_utils.process_allgather`` (what
``parallel.to_host`` uses), and the largest leaf of the train states the run saved. A run that
gathered a train state to save it would make the first at least the second.
"""

import json
import sys

import jax
from jax.experimental import multihost_utils


def _largest(tree) -> int:
    return max((x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)), default=0)


def main(out: str, *argv: str) -> int:
    from mjfn_jax.main import main as train
    from mjfn_jax.unit_checkpoints import UnitCheckpoints

    record = {"largest_gathered": 0, "largest_state_leaf": 0, "progress_saves": 0}
    gather, save = multihost_utils.process_allgather, UnitCheckpoints.save_progress

    def gathering(tree, *args, **kwargs):
        record["largest_gathered"] = max(record["largest_gathered"], _largest(tree))
        return gather(tree, *args, **kwargs)

    def saving(self, states, *args, **kwargs):
        record["largest_state_leaf"] = max(record["largest_state_leaf"], _largest(states))
        record["progress_saves"] += 1
        return save(self, states, *args, **kwargs)

    multihost_utils.process_allgather, UnitCheckpoints.save_progress = gathering, saving
    try:
        return train(list(argv))
    finally:
        with open(out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
