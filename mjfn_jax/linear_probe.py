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
import logging
import os
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from mjfn_jax import storage
from mjfn_jax.folds import FoldArrays
from mjfn_jax.workdir import LINEAR_FLOOR_FILE, write_npz

log = logging.getLogger(__name__)

NAME = "logistic regression on standardised pixels (C=1, L-BFGS), same folds"


# L-BFGS without while loops. XLA:CPU runs code inside while loops many times slower than
# straight-line code (a convolution 50-70x, jax-ml/jax#12868; here a vmapped optax.lbfgs step,
# whose two-loop recursion and zoom line search are while loops, took ~270 ms for 68 folds on
# 2 cores, its gradient alone ~3 ms). So: the two-loop recursion unrolled over a fixed memory,
# and a backtracking line search that scores every candidate step at once (the logits are
# linear in the step, so that costs one extra matmul), one jitted call per iteration.
MEMORY = 10  # curvature pairs kept
# A fit runs its small step program 150 times: always compiled at XLA's default level (3), also
# where XLA_FLAGS lower it for faster compiles (the test suite's level 0 ran a fit ~8x slower).
FLOOR_COMPILE = {"xla_backend_optimization_level": 3}
STEPS = 2.0 ** -np.arange(12)  # line-search candidates 1, 1/2, ..., 1/2048
ARMIJO = 1e-4


def _standardisation(x, x_squared, train):
    """The fold's pixel statistics over its training clips: (count, mean [D], 1/std [D])."""
    n = jnp.sum(train)
    mean = train @ x / n
    std = jnp.sqrt(jnp.maximum(train @ x_squared / n - mean**2, 0.0))
    return n, mean, 1.0 / jnp.where(std > 1e-6, std, 1.0)  # a constant pixel carries nothing


class _Problem:
    """One fold's objective over flat params p = [w (D*C), b (C)] on standardised pixels;
    stats: _standardisation's (computed once per fold, carried in the state)."""

    def __init__(self, x, labels, train, stats, num_classes: int):
        self.x, self.labels, self.train = x, labels, train
        self.d, self.c = x.shape[1], num_classes
        self.n, self.mean, self.scale = stats

    def logits(self, p):  # z = (x - mean) * scale; z @ w + b == x @ (w*scale) - mean @ ... + b
        w, b = p[: self.d * self.c].reshape(self.d, self.c), p[self.d * self.c :]
        ws = w * self.scale[:, None]
        return self.x @ ws - self.mean @ ws + b

    def loss_of_logits(self, logits, p):
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, self.labels[:, None], axis=1)[:, 0]
        w = p[: self.d * self.c]
        return (jnp.sum(self.train * nll) + 0.5 * jnp.sum(w**2)) / self.n

    def loss(self, p):
        return self.loss_of_logits(self.logits(p), p)


def _init(x, x_squared, labels, train, *, num_classes: int):
    stats = _standardisation(x, x_squared, train)
    problem = _Problem(x, labels, train, stats, num_classes)
    p = jnp.zeros(problem.d * num_classes + num_classes, jnp.float32)
    value, grad = jax.value_and_grad(problem.loss)(p)
    history = jnp.zeros((MEMORY, p.size), jnp.float32)
    return {"p": p, "value": value, "grad": grad, "s": history, "y": history,
            "rho": jnp.zeros((MEMORY,), jnp.float32), "stats": stats}  # fmt: skip


def _direction(grad, s, y, rho):
    """-H grad by the L-BFGS two-loop recursion (pairs oldest first; an empty pair has rho 0
    and changes nothing)."""
    q, alphas = grad, []
    for i in reversed(range(MEMORY)):
        alpha = rho[i] * jnp.dot(s[i], q)
        q = q - alpha * y[i]
        alphas.append(alpha)
    yy = jnp.dot(y[-1], y[-1])
    gamma = jnp.where(rho[-1] > 0, jnp.dot(s[-1], y[-1]) / jnp.maximum(yy, 1e-30), 0.0)
    first = 1.0 / jnp.maximum(jnp.linalg.norm(grad), 1e-12)  # no pair yet: a scaled gradient
    r = q * jnp.where(rho[-1] > 0, gamma, first)
    for i, alpha in zip(range(MEMORY), reversed(alphas), strict=True):
        beta = rho[i] * jnp.dot(y[i], r)
        r = r + s[i] * (alpha - beta)
    return -r


def _step(state, x, labels, train, *, num_classes: int):
    problem = _Problem(x, labels, train, state["stats"], num_classes)
    p, value, grad = state["p"], state["value"], state["grad"]
    d = _direction(grad, state["s"], state["y"], state["rho"])
    slope = jnp.dot(grad, d)
    d = jnp.where(slope < 0, d, -grad)  # not a descent direction: the gradient
    slope = jnp.where(slope < 0, slope, -jnp.dot(grad, grad))
    base, along = problem.logits(p), problem.logits(d)  # logits are linear in the params
    steps = jnp.asarray(STEPS, jnp.float32)
    values = jax.vmap(lambda t: problem.loss_of_logits(base + t * along, p + t * d))(steps)
    ok = values <= value + ARMIJO * steps * slope
    t = jnp.where(jnp.any(ok), steps[jnp.argmax(ok)], 0.0)  # the longest step that is ok
    new_p = p + t * d
    new_value, new_grad = jax.value_and_grad(problem.loss)(new_p)
    s_new, y_new = new_p - p, new_grad - grad
    sy = jnp.dot(s_new, y_new)
    keep = sy > 1e-10  # curvature condition; else the memory is left as it is
    shift = lambda h, new: jnp.where(keep, jnp.concatenate([h[1:], new[None]]), h)
    return {
        "p": new_p,
        "value": new_value,
        "grad": new_grad,
        "s": shift(state["s"], s_new),
        "y": shift(state["y"], y_new),
        "rho": shift(state["rho"], jnp.where(keep, 1.0 / jnp.where(keep, sy, 1.0), 0.0)),
        "stats": state["stats"],
    }


def _predict(state, x, labels, train, *, num_classes: int):
    problem = _Problem(x, labels, train, state["stats"], num_classes)
    return jax.nn.log_softmax(problem.logits(state["p"]))


def _over_folds(fn, *, stateful: bool = True, donate: bool = False):
    """fn(x, x_squared, labels, train) or fn(state, x, labels, train) vmapped over the folds
    (their states and train masks; the pixels and labels shared), jitted with ``num_classes``
    static. Made once, here: every fit of a process (one per seed, per run) reuses its
    traced and compiled programs."""
    in_axes = (0, None, None, 0) if stateful else (None, None, None, 0)

    def over_folds(a, b, c, d, *, num_classes: int):
        return jax.vmap(functools.partial(fn, num_classes=num_classes), in_axes=in_axes)(a, b, c, d)

    over_folds.__name__ = over_folds.__qualname__ = f"floor{fn.__name__}"
    donated = (0,) if donate else ()
    return jax.jit(
        over_folds,
        static_argnames="num_classes",
        donate_argnums=donated,
        compiler_options=FLOOR_COMPILE,
    )


_FOLDS_INIT = _over_folds(_init, stateful=False)
_FOLDS_STEP = _over_folds(_step, donate=True)
_FOLDS_PREDICT = _over_folds(_predict)


def linear_floor(
    images: np.ndarray, labels: np.ndarray, arrays: FoldArrays, num_classes: int,
    iterations: int = 150,
) -> np.ndarray:  # fmt: skip
    """Pooled class probabilities [N, C]: each clip predicted by the probe of the fold that
    holds its subject out. images uint8 [N, H, W, 3], labels int [N]."""
    return fit_floor(images, labels, arrays, num_classes, iterations)[0]


def fit_floor(
    images: np.ndarray, labels: np.ndarray, arrays: FoldArrays, num_classes: int,
    iterations: int = 150, *, with_weights: bool = False,
) -> tuple:  # fmt: skip
    """(pooled probabilities [N, C] as linear_floor, each fold's final training loss [F]), and
    with ``with_weights`` each fold's probe as weights [F, D, C] and bias [F, C] on the raw
    pixels scaled to [0, 1] (the standardisation folded in; see ``floor_log_probs``)."""
    n = len(labels)
    x = jnp.asarray(images.reshape(n, -1), jnp.float32) / 255.0
    train, tests = training_masks(arrays, n)
    y, train = jnp.asarray(labels, jnp.int32), jnp.asarray(train)
    state = _FOLDS_INIT(x, x**2, y, train, num_classes=num_classes)
    for _ in range(iterations):  # one call per iteration: no while loop (see MEMORY)
        state = _FOLDS_STEP(state, x, y, train, num_classes=num_classes)
    log_probs = np.asarray(_FOLDS_PREDICT(state, x, y, train, num_classes=num_classes))
    out = pool(log_probs, tests, num_classes), np.asarray(state["value"])
    if not with_weights:
        return out
    d = x.shape[1]
    w = state["p"][:, : d * num_classes].reshape(-1, d, num_classes)
    _, mean, scale = state["stats"]
    w = w * scale[:, :, None]  # z @ w + b with z = (x - mean) * scale == x @ w' + b'
    b = state["p"][:, d * num_classes :] - jnp.einsum("fd,fdc->fc", mean, w)
    return (*out, np.asarray(w, np.float32), np.asarray(b, np.float32))


def floor_log_probs(weights: np.ndarray, bias: np.ndarray, images: np.ndarray) -> np.ndarray:
    """A fitted probe's log-probabilities of new images: weights [D, C], bias [C] (one fold's,
    from ``fit_floor(with_weights=True)``), images uint8 [M, H, W, 3] -> [M, C]."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    if x.shape[1] != weights.shape[0]:
        raise ValueError(
            f"the linear floor was fitted on {weights.shape[0]} values per image, this image "
            f"has {x.shape[1]} ({images.shape[1:]})"
        )
    logits = x @ weights.astype(np.float64) + bias.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def training_masks(arrays: FoldArrays, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(float32 [F, N] 1 for a fold's training clips (all but its test subjects'), each
    fold's test indices)."""
    tests = [arrays.test_idx[f][arrays.test_mask[f]] for f in range(arrays.num_folds)]
    train = np.ones((arrays.num_folds, n), np.float32)
    for f, idx in enumerate(tests):
        train[f, idx] = 0.0
    return train, tests


def pool(log_probs: np.ndarray, tests: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Each clip's probabilities from the fold that tests it: log_probs [F, N, C] -> [N, C]."""
    probs = np.zeros((log_probs.shape[1], num_classes), np.float32)
    for f, idx in enumerate(tests):
        probs[idx] = np.exp(log_probs[f, idx])
    return probs


def run_floor(config, workdir: str, dataset, arrays: FoldArrays, memo: dict) -> dict:
    """The linear probe's pooled predictions on the run's folds (mjfn_jax.linear_probe), kept
    with each fold's probe (``weight`` [F, D, C], ``bias`` [F, C], ``folds`` [F]: what
    ``predict --with_floor`` uses) in ``workdir/linear_floor.npz``: the workdir's dataset and
    folds never change. The probe depends only on the test subjects of each fold: ``memo``
    (test split -> the file's arrays) spares the seeds of one run that share them (LOSO) from
    fitting it again."""
    path = os.path.join(workdir, LINEAR_FLOOR_FILE)
    split = tuple(
        tuple(arrays.test_idx[f][arrays.test_mask[f]].tolist()) for f in range(arrays.num_folds)
    )
    shape = (len(dataset.labels), config.model.num_classes)
    folds = [name.rsplit("/", 1)[-1] for name in arrays.names]  # without "seed<s>/"
    saved, write = memo.get(split), True
    if saved is None and storage.exists(path):
        try:
            with storage.load_npz(path) as z:
                saved = {k: z[k] for k in ("probs", "weight", "bias", "folds")}
            if saved["probs"].shape != shape or saved["folds"].tolist() != folds:
                saved = None
            write = saved is None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            saved = None  # damaged, or from before the probes were kept: computed again
    if saved is None:
        start = time.perf_counter()
        probs, _, weight, bias = fit_floor(
            dataset.images, dataset.labels, arrays, config.model.num_classes, with_weights=True
        )
        log.info("linear floor: %.1f s", time.perf_counter() - start)
        saved = {"probs": probs, "weight": weight, "bias": bias, "folds": np.asarray(folds)}
    if write:
        write_npz(path, y_pred=saved["probs"].argmax(-1), **saved)
    memo[split] = saved
    return {"method": NAME, "y_pred": saved["probs"].argmax(-1), "probs": saved["probs"]}
