"""A training run for the fault-injection test: ``python tests/kill_driver.py WORKDIR OVERRIDE...``.

Trains conftest's tiny dataset with its smoke config plus the overrides, printing
``EPOCHS <n>`` (flushed) after every training call so that the test can kill it at a chosen
point; a finished run writes WORKDIR/out.npz with the pooled results.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import make_smoke_config, make_tiny_dataset  # noqa: E402

from mjfn_jax.train import train_and_evaluate  # noqa: E402


def main(workdir: str, *overrides: str, run=train_and_evaluate) -> None:
    """The run; ``run`` is ``train_and_evaluate`` or a stand-in with its signature (the test's
    uninterrupted reference runs in the test process, through conftest's)."""
    config = make_smoke_config(*overrides)
    dataset = make_tiny_dataset(4, 3)
    print("START", flush=True)
    results = run(
        config,
        workdir,
        dataset=dataset,
        after_epochs=lambda done: print(f"EPOCHS {done.trained_this_run}", flush=True),
    )
    losses = [
        [record["loss"] for record in results["history"][fold]]
        for fold in sorted(results["history"])
    ]
    np.savez(
        os.path.join(workdir, "out.npz"),
        probs=results["probs"],
        y_pred=results["y_pred"],
        epochs=np.array([len(x) for x in losses]),
        losses=np.array([x + [np.nan] * (10 - len(x)) for x in losses]),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
