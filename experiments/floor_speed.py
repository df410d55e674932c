"""The linear floor's optimiser before/after, in one process: optax's L-BFGS in a lax.scan (the
floor until 2026-11-25, kept here as the reference) vs mjfn_jax.linear_probe's (no while loops).

    python -m experiments.floor_speed --data_dir DATA [--name flow_images --config imported_28]

Same folds (LOSO), same objective; prints each one's seconds (compile included in round 0)
and mean training loss, twice, alternating.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.floor_vs_sklearn import built_dataset_and_loso_folds
from mjfn_jax import linear_probe


def _optax_floor(images, labels, arrays, num_classes: int, iterations: int = 100):
    """The previous implementation: vmap over folds of optax.lbfgs in a lax.scan.
    Returns (probs [N, C], each fold's final training loss [F])."""
    n = len(labels)
    x = jnp.asarray(images.reshape(n, -1), jnp.float32) / 255.0
    y = jnp.asarray(labels, jnp.int32)
    train, tests = linear_probe.training_masks(arrays, n)

    def fit(tr):
        stats = linear_probe._standardisation(x, x**2, tr)
        problem = linear_probe._Problem(x, y, tr, stats, num_classes)
        p = jnp.zeros(problem.d * num_classes + num_classes, jnp.float32)
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(problem.loss)

        def step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = opt.update(
                grad, state, p, value=value, grad=grad, value_fn=problem.loss
            )
            return (optax.apply_updates(p, updates), state), value

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=iterations)
        return jax.nn.log_softmax(problem.logits(p)), problem.loss(p)

    log_probs, losses = jax.jit(jax.vmap(fit))(jnp.asarray(train))
    return linear_probe.pool(np.asarray(log_probs), tests, num_classes), np.asarray(losses)


def main(argv=None) -> None:
    data, arrays = built_dataset_and_loso_folds(argv, __doc__.splitlines()[0])
    variants = (
        ("optax.lbfgs in a lax.scan, 100 iterations (before)", _optax_floor),
        ("mjfn_jax.linear_probe, 150 iterations (after)", linear_probe.fit_floor),
    )
    for round_ in range(2):  # round 0 includes the compiles
        for name, fit in variants:
            start = time.perf_counter()
            probs, losses = fit(data.images, data.labels, arrays, data.num_classes)
            seconds = time.perf_counter() - start
            classes = np.bincount(probs.argmax(-1), minlength=data.num_classes).tolist()
            print(f"round {round_}: {name}: {seconds:.1f} s, mean training loss "
                  f"{np.mean(losses):.5f}, predicted classes {classes}")  # fmt: skip


if __name__ == "__main__":
    main()
