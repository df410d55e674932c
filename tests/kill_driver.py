"""A training run for the fault-injection test: ``python tests/kill_driver.py WORKDIR OVERRIDE...``.

Trains the tiny synthetic dataset with experiments/configs/synthetic.py:smoke plus the
overrides, printing ``EPOCHS <n>`` (flushed) after every training call so that the test can
kill it at a chosen point; a finished run writes WORKDIR/out.npz with the pooled results.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mjfn_jax.config_io import load_config  # noqa: E402
from mjfn_jax.data import Dataset  # noqa: E402
from mjfn_jax.synthetic import make_flow_arrays  # noqa: E402
from mjfn_jax.train import train_and_evaluate  # noqa: E402


def main(workdir: str, *overrides: str) -> None:
    config = load_config("experiments/configs/synthetic.py:smoke", overrides)
    dataset = Dataset.from_synthetic_arrays(make_flow_arrays(4, 3, 32, 0))
    print("START", flush=True)
    results = train_and_evaluate(
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
