"""The linear floor: a logistic regression on the standardised pixels, on the network's folds.

A network that is no better than a linear model of its input has learnt nothing a linear model
would not; every report shows this floor beside the network's numbers. The probe is the
textbook one (scikit-learn's ``LogisticRegression()`` objective: multinomial cross-entropy
summed over the training clips plus ``0.5 * ||W||^2``, i.e. C = 1; pixels standardised with
the training clips' mean and standard deviation), fitted by L-BFGS for every fold at once
(``jax.vmap`` over folds, the pixels shared). Each fold trains on every clip that is not its
test subject's (validation subjects included) and predicts its test subject once, like the
network; nothing is tuned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mjfn_jax.folds import FoldArrays

NAME = "logistic regression on standardised pixels (C=1, L-BFGS), same folds"


@functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
def _fit_predict(x, x_squared, labels, train, *, num_classes: int, iterations: int):
    """One fold: x float32 [N, D] (shared), train float32 [N] (1 = training clip). Returns the
    log-probabilities of every clip [N, C] under the fold's fitted model."""
    n = jnp.sum(train)
    mean = train @ x / n
    std = jnp.sqrt(jnp.maximum(train @ x_squared / n - mean**2, 0.0))
    scale = 1.0 / jnp.where(std > 1e-6, std, 1.0)  # a constant pixel carries nothing

    def logits_fn(params):
        w, b = params  # standardised inputs: z = (x - mean) * scale; z @ w == x @ (w*scale) - ...
        ws = w * scale[:, None]
        return x @ ws - mean @ ws + b

    def loss(params):
        log_probs = jax.nn.log_softmax(logits_fn(params))
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
        return (jnp.sum(train * nll) + 0.5 * jnp.sum(params[0] ** 2)) / n

    params = (jnp.zeros((x.shape[1], num_classes), jnp.float32), jnp.zeros((num_classes,)))
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=iterations)
    return jax.nn.log_softmax(logits_fn(params))


def linear_floor(
    images: np.ndarray, labels: np.ndarray, arrays: FoldArrays, num_classes: int,
    iterations: int = 100,
) -> np.ndarray:  # fmt: skip
    """Pooled class probabilities [N, C]: each clip predicted by the probe of the fold that
    holds its subject out. images uint8 [N, H, W, 3], labels int [N]."""
    n = len(labels)
    x = jnp.asarray(images.reshape(n, -1), jnp.float32) / 255.0
    tests = [arrays.test_idx[f][arrays.test_mask[f]] for f in range(arrays.num_folds)]
    train = np.ones((arrays.num_folds, n), np.float32)
    for f, idx in enumerate(tests):
        train[f, idx] = 0.0
    fit = jax.vmap(
        functools.partial(_fit_predict, num_classes=num_classes, iterations=iterations),
        in_axes=(None, None, None, 0),
    )
    log_probs = np.asarray(fit(x, x**2, jnp.asarray(labels, jnp.int32), jnp.asarray(train)))
    probs = np.zeros((n, num_classes), np.float32)
    for f, idx in enumerate(tests):
        probs[idx] = np.exp(log_probs[f, idx])
    return probs
