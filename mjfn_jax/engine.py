"""Pure per-fold programs: init, a scan over epochs of a scan over steps, and prediction.

Everything here works on ONE fold's pytrees (no fold axis); ``mjfn_jax.train`` lifts these
functions over a leading fold axis (jax.vmap, or a squeeze for one fold at a time) and jits
them. The model lives as ``nnx.split`` pieces: a static graphdef plus state pytrees (params,
BN statistics), merged with ``copy=True`` inside the traced functions. Random streams are pure
functions of (fold key, epoch, step), so a resumed run draws exactly what an uninterrupted one
would, whatever the chunking of epochs into calls.

Pytrees (one fold): ``TrainState`` (params and BN statistics as flat {module path: array}
dicts, the optimizer state, with early stopping the ``EarlyStopping`` record, with
``train.ema_decay`` the parameters' moving average), ``FoldInputs``
(the fold's key and index arrays), and data = {"images": uint8 [N, H, W, 3], "labels": int32
[N]} (the whole dataset, on device). A model alone (what a finished fold keeps) is
{"params", "batch_stats"}.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding

from mjfn_jax.augment import augment_batch, hflip_batch, mixup
from mjfn_jax.folds import epoch_batches
from mjfn_jax.models import MJFN, mjfn_loss
from mjfn_jax.views import config_layout


def make_optimizer(train: ml_collections.ConfigDict, steps_per_epoch: int):
    """Adam/AdamW with per-step linear warmup + cosine decay to 0, optional clipping.

    Weight decay (adamw) applies to kernels only (ndim > 1), not to BN scales or biases.
    The Adam moments run over ONE flat vector (``optax.flatten``): per-leaf updates of the
    ~100 small parameter arrays cost 1.32 ms a step on the 2-core CPU, the flat form 0.55 ms
    (same math as ``optax.adamw``, which is this same chain without the flattening).
    """
    total = max(1, train.num_epochs * steps_per_epoch)
    warmup = min(train.warmup_epochs * steps_per_epoch, total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, warmup_steps=max(warmup, 0), decay_steps=total, end_value=0.0
    )
    if train.optimizer not in ("adam", "adamw"):
        raise ValueError(f"train.optimizer must be 'adam' or 'adamw', got {train.optimizer!r}")
    parts = [optax.flatten(optax.scale_by_adam())]
    if train.optimizer == "adamw":
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        parts.append(optax.add_decayed_weights(train.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    if train.grad_clip_norm > 0:
        parts.insert(0, optax.clip_by_global_norm(train.grad_clip_norm))
    return optax.chain(*parts)


@flax.struct.dataclass
class FoldInputs:
    """One fold's inputs ([G, ...] with a leading fold axis when lifted over a group)."""

    key: jax.Array  # typed PRNG key []: every random stream of the fold derives from it
    train_idx: jax.Array  # int32 [T] dataset indices, valid in the first train_count slots
    train_count: jax.Array  # int32 []
    val_idx: jax.Array  # int32 [V] validation indices (training subjects only)
    val_mask: jax.Array  # bool [V]
    class_weights: jax.Array  # float32 [C] (used with loss.class_weights='balanced')

    @classmethod
    def whole_dataset(cls, key: jax.Array, num_samples: int, num_classes: int) -> FoldInputs:
        """Train on every sample, no validation (benchmarks and profiles)."""
        return cls(
            key=key,
            train_idx=jnp.arange(num_samples, dtype=jnp.int32),
            train_count=jnp.asarray(num_samples, jnp.int32),
            val_idx=jnp.zeros((1,), jnp.int32),
            val_mask=jnp.zeros((1,), bool),
            class_weights=jnp.ones((num_classes,), jnp.float32),
        )


@flax.struct.dataclass
class EarlyStopping:
    """The best-on-VALIDATION model so far and the patience counter."""

    params: dict
    batch_stats: dict
    best_val: jax.Array  # float32 [] validation loss of that model
    since_best: jax.Array  # int32 [] epochs without improvement
    stopped: jax.Array  # bool []


@flax.struct.dataclass
class TrainState:
    params: dict  # {module path: float32 array}
    batch_stats: dict  # {module path: float32 array} BN running statistics
    opt_state: Any  # optax state
    best: EarlyStopping | None = None  # with train.early_stopping_patience > 0
    ema: optax.EmaState | None = None  # with train.ema_decay > 0: the params' moving average


# The init runs once per fold and computes little: XLA's default level compiled it several
# times slower than level 1, and level 0 ran it several times slower (a fold's init at the
# reference size). Level 1 gives every group size the same values (they differ from level 0's
# in the last bit of some values). Figures: docs/performance.md#fast-compiles-for-small-programs.
INIT_COMPILE = {"xla_backend_optimization_level": 1}


def init_compile_options() -> dict:
    """The init's compiler options: INIT_COMPILE, unless XLA_FLAGS sets
    ``--xla_backend_optimization_level`` itself. A level in XLA_FLAGS is the user's choice for
    every program (the test suite's fast compiles set 0), and the init follows it."""
    if "--xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(INIT_COMPILE)


def jit_init(program: FoldProgram):
    """``program.init`` for one fold, jitted as the engine's runner compiles it."""
    return jax.jit(program.init, compiler_options=init_compile_options())


# Prediction chunks traced as straight-line code up to this count, else a lax.map (a while
# loop): XLA:CPU runs convolutions inside loops far slower, and a LOSO test subject or a
# validation split is one or two chunks.
_UNROLLED_EVAL_CHUNKS = 4


class _FlatState:
    """An nnx.State <-> a flat {module path: array} dict, e.g. "['stem']['conv']['kernel']".

    The engine's train state holds plain dicts: every jitted call flattens its arguments and
    unflattens its results, and nnx.State (Variable objects) made that several ms of Python
    per training step; the model is rebuilt from the dicts inside the traced functions."""

    def __init__(self, like):
        leaves = jax.tree_util.tree_flatten_with_path(like)[0]
        # keystr ends in ".value" (the Variable's field); the module path alone is the name
        self.names = [jax.tree_util.keystr(path).removesuffix(".value") for path, _ in leaves]
        self.treedef = jax.tree.structure(like)

    def to_flat(self, state) -> dict:
        return dict(zip(self.names, jax.tree.leaves(state), strict=True))

    def to_state(self, flat: dict):
        return jax.tree.unflatten(self.treedef, [flat[name] for name in self.names])


class FoldProgram:
    """The jit-able functions of one fold, closed over the (static) config."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        *,
        steps_per_epoch: int,
        data_sharding: NamedSharding | None = None,
    ):
        self.config = config
        self.steps = steps_per_epoch
        self.data_sharding = data_sharding  # batch sharding for the 'data' axis, or None
        self.early_stopping = config.train.early_stopping_patience > 0
        # Validation subjects (drawn from the fold's training subjects) are scored after every
        # epoch: for early stopping, and for nested model selection (mjfn_jax.select).
        self.validate = config.folds.val_subject_fraction > 0
        abstract = nnx.eval_shape(lambda: MJFN(config.model, rngs=nnx.Rngs(0)))
        self.graphdef, params, stats, self.rng_template = nnx.split(
            abstract, nnx.Param, nnx.BatchStat, ...
        )
        self._params, self._stats = _FlatState(params), _FlatState(stats)
        self.tx = make_optimizer(config.train, steps_per_epoch)
        decay = config.train.ema_decay
        self.ema = optax.ema(decay, debias=False) if decay > 0 else None  # debiased at use

    # Model assembly ---------------------------------------------------------------------

    def bind(self, params, batch_stats, key: jax.Array, *, train: bool) -> MJFN:
        """The network with these parameters and BN statistics, in train or eval mode.

        Also the way tools outside the loop (tools/repredict.py, the benchmark) call a fold's
        model."""
        # Each dropout stream i gets fold_in(key, i): the same function of the step key
        # in every run, so nothing random has to be checkpointed.
        leaves, treedef = jax.tree.flatten(self.rng_template)
        fresh = [
            jax.random.fold_in(key, i)
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            else jnp.zeros(leaf.shape, leaf.dtype)
            for i, leaf in enumerate(leaves)
        ]
        rng_state = jax.tree.unflatten(treedef, fresh)
        model = nnx.merge(
            self.graphdef,
            self._params.to_state(params),
            self._stats.to_state(batch_stats),
            rng_state,
            copy=True,
        )
        model.train() if train else model.eval()
        return model

    @functools.cached_property
    def state_structure(self) -> TrainState:
        """The train state's shapes and dtypes (``jax.eval_shape`` of ``init``): what a checkpoint
        restores into. Traced once per program: ``mjfn-predict --fold all`` restores every fold
        of a run into it."""
        return jax.eval_shape(self.init, jax.random.key(0))

    @functools.cached_property
    def model_structure(self) -> dict:
        """The exported model's shapes and dtypes (``export`` of ``state_structure``): what a
        finished fold's ``model/`` restores into."""
        return jax.eval_shape(self.export, self.state_structure)

    def init(self, fold_key: jax.Array) -> TrainState:
        """A fresh train state from the fold's key (init key = fold_in(fold_key, 0))."""
        init_key = jax.random.fold_in(fold_key, 0)
        model = MJFN(self.config.model, rngs=nnx.Rngs(init_key))
        _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        params, batch_stats = self._params.to_flat(params), self._stats.to_flat(batch_stats)
        ema = self.ema.init(params) if self.ema is not None else None
        best = None
        if self.early_stopping:
            best = EarlyStopping(
                params=params,
                batch_stats=batch_stats,
                best_val=jnp.array(jnp.inf, jnp.float32),
                since_best=jnp.array(0, jnp.int32),
                stopped=jnp.array(False),
            )
        return TrainState(params, batch_stats, self.tx.init(params), best, ema)

    # Training ---------------------------------------------------------------------------

    def train_step(self, state: TrainState, xs, fold: FoldInputs, data: dict):
        """One training step on the batch ``xs = (batch_idx [B] int32, step_key)`` of
        ``data`` {"images": uint8 [N, H, W, 3], "labels": int32 [N]}.
        Returns (state, (loss, correct))."""
        batch_idx, step_key = xs  # [B] int32, key
        cfg = self.config
        aug_key, dropout_key = jax.random.split(step_key)
        images = data["images"][batch_idx].astype(jnp.float32) / 255.0  # [B, H, W, 3]
        if self.data_sharding is not None:
            images = jax.lax.with_sharding_constraint(images, self.data_sharding)
        images = augment_batch(
            aug_key,
            images,
            hflip=cfg.augment.hflip,
            max_translate=cfg.augment.max_translate,
            layout=config_layout(cfg.data),  # the views' flip (mjfn_jax.views)
        )
        labels = data["labels"][batch_idx]  # [B] int32
        class_weights = fold.class_weights if cfg.loss.class_weights != "none" else None
        loss_of = lambda outputs, labels: mjfn_loss(
            outputs,
            labels,
            head_loss_weights=tuple(cfg.model.head_loss_weights),
            label_smoothing=cfg.loss.label_smoothing,
            class_weights=class_weights,
        )[0]
        if cfg.augment.mixup_alpha > 0:  # its own stream: the others draw what they did without
            images, pair, lam = mixup(
                jax.random.fold_in(step_key, 2), images, cfg.augment.mixup_alpha
            )

        def loss_fn(params):
            model = self.bind(params, state.batch_stats, dropout_key, train=True)
            outputs = model(images)
            loss = loss_of(outputs, labels)
            if cfg.augment.mixup_alpha > 0:
                loss = lam * loss + (1.0 - lam) * loss_of(outputs, labels[pair])
            return loss, (self._stats.to_flat(nnx.state(model, nnx.BatchStat)), outputs["fused"])

        (loss, (batch_stats, fused)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(fused, -1) == labels)
        new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
        if self.ema is not None:
            new_state = new_state.replace(ema=self.ema.update(params, state.ema)[1])
        return new_state, (loss, correct)

    def epoch_plan(self, fold: FoldInputs, epoch: jax.Array):
        """The epoch's batches [steps, B] int32 and step keys [steps]: f(fold key, epoch)."""
        epoch_key = jax.random.fold_in(jax.random.fold_in(fold.key, 1), epoch)
        order = epoch_batches(
            jax.random.fold_in(epoch_key, 0),
            fold.train_idx,
            fold.train_count,
            self.steps,
            self.config.train.batch_size,
        )
        return order, jax.random.split(jax.random.fold_in(epoch_key, 1), self.steps)

    def train_step_at(self, state: TrainState, fold: FoldInputs, data: dict, plan, step):
        """Step ``step`` alone (the one-call-per-step mode), given the epoch's plan from
        ``epoch_plan`` (computed once per epoch, not once per step).
        Returns (state, (loss, correct))."""
        order, step_keys = plan  # [steps, B] int32, [steps] keys
        return self.train_step(state, (order[step], step_keys[step]), fold, data)

    def end_epoch(self, state: TrainState, fold: FoldInputs, data: dict, losses, correct):
        """Epoch metrics from per-step losses/correct counts ([steps], or a tuple of ``steps``
        scalars: the per-step calls' outputs as they come); early stopping."""
        if isinstance(losses, tuple | list):
            losses, correct = jnp.stack(losses), jnp.stack(correct)
        finite = jnp.isfinite(losses)
        metrics = {
            "loss": jnp.mean(losses),
            "train_acc": jnp.sum(correct) / (self.steps * self.config.train.batch_size),
            # First step with a non-finite loss, or -1.
            "nonfinite_step": jnp.where(jnp.all(finite), -1, jnp.argmin(finite)),
        }
        if self.early_stopping:
            state, val_metrics = self._early_stopping(state, fold, data)
            metrics |= val_metrics
        elif self.validate:
            val_loss, val_acc = self._validate(state, fold, data)
            metrics |= {"val_loss": val_loss, "val_acc": val_acc}
        return state, metrics

    def _epoch(self, state: TrainState, epoch: jax.Array, fold: FoldInputs, data: dict):
        order, step_keys = self.epoch_plan(fold, epoch)  # [steps, B], [steps]

        def step(s, xs):
            return self.train_step(s, xs, fold, data)

        state, (losses, correct) = jax.lax.scan(step, state, (order, step_keys))
        return self.end_epoch(state, fold, data, losses, correct)

    def _validate(self, state: TrainState, fold: FoldInputs, data: dict):
        """(loss, accuracy) of the current model on the fold's validation subjects."""
        model = self.current_model(state)
        log_probs = self._predict(model["params"], model["batch_stats"], data, fold.val_idx)
        labels = data["labels"][fold.val_idx]
        mask = fold.val_mask.astype(jnp.float32)
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        count = jnp.maximum(jnp.sum(mask), 1.0)
        val_loss = jnp.sum(nll * mask) / count
        val_acc = jnp.sum((jnp.argmax(log_probs, -1) == labels) * mask) / count
        return val_loss, val_acc

    def _early_stopping(self, state: TrainState, fold: FoldInputs, data: dict):
        """Validation loss after the epoch; keep the best-on-VALIDATION params."""
        val_loss, val_acc = self._validate(state, fold, data)
        best, current = state.best, self.current_model(state)
        improved = (val_loss < best.best_val) & ~best.stopped
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, old)
        since = jnp.where(improved, 0, best.since_best + jnp.where(best.stopped, 0, 1))
        best = EarlyStopping(
            params=pick(current["params"], best.params),
            batch_stats=pick(current["batch_stats"], best.batch_stats),
            best_val=jnp.where(improved, val_loss, best.best_val),
            since_best=since,
            stopped=best.stopped | (since >= self.config.train.early_stopping_patience),
        )
        metrics = {"val_loss": val_loss, "val_acc": val_acc, "stopped": best.stopped}
        return state.replace(best=best), metrics

    def train_epochs(self, state: TrainState, fold: FoldInputs, data: dict, epochs: jax.Array):
        """Train the epochs listed in ``epochs`` (int32 [E]); metrics come back as [E]."""
        epoch_fn = lambda s, e: self._epoch(s, e, fold, data)
        return jax.lax.scan(epoch_fn, state, epochs)

    # Prediction -------------------------------------------------------------------------

    def _predict(self, params, batch_stats, data: dict, idx: jax.Array) -> jax.Array:
        """Eval-mode fused log-probs [M, C] float32 for dataset indices idx [M]."""
        m = idx.shape[0]
        chunk = min(self.config.train.eval_batch_size, m)
        padded = -(-m // chunk) * chunk
        idx_chunks = jnp.pad(idx, (0, padded - m)).reshape(-1, chunk)
        model_key = jax.random.key(0)  # dropout is off in eval mode; any key will do

        mirror = self.config.augment.test_hflip
        layout = config_layout(self.config.data)

        def one(chunk_idx):  # [chunk] -> [chunk, C]
            model = self.bind(params, batch_stats, model_key, train=False)
            images = data["images"][chunk_idx].astype(jnp.float32) / 255.0
            log_probs = model(images)["fused"]
            if mirror:  # log of the mean of the two probabilities
                both = jnp.stack([log_probs, model(hflip_batch(images, layout))["fused"]])
                log_probs = jax.nn.logsumexp(both, axis=0) - jnp.log(2.0)
            return log_probs

        if idx_chunks.shape[0] <= _UNROLLED_EVAL_CHUNKS:  # a test subject: one or two chunks
            log_probs = jnp.concatenate([one(chunk_idx) for chunk_idx in idx_chunks])
        else:
            log_probs = jax.lax.map(one, idx_chunks).reshape(padded, -1)
        return log_probs[:m]

    def current_model(self, state: TrainState) -> dict:
        """The model {"params", "batch_stats"} as of now: the last step's parameters, or with
        ``train.ema_decay`` their moving average (debiased: the average over the steps so far,
        each step's weight decaying by ``ema_decay``), with the running BN statistics."""
        params = state.params
        if self.ema is not None:  # count: [] for one fold, [G] for a group's stacked states
            count = state.ema.count.astype(jnp.float32)
            scale = 1.0 / (1.0 - jnp.power(jnp.float32(self.config.train.ema_decay), count))

            def debiased(average, last):
                shape = count.shape + (1,) * (last.ndim - count.ndim)
                return jnp.where(count.reshape(shape) > 0, average * scale.reshape(shape), last)

            params = jax.tree.map(debiased, state.ema.ema, params)
        return {"params": params, "batch_stats": state.batch_stats}

    def export(self, state: TrainState) -> dict:
        """The fold's model {"params", "batch_stats"}: the final one (see ``current_model``), or
        with early stopping the best-on-validation one. What a finished fold keeps (no optimizer
        state)."""
        if self.early_stopping:
            return {"params": state.best.params, "batch_stats": state.best.batch_stats}
        return self.current_model(state)

    def predict(self, state: TrainState | dict, data: dict, idx: jax.Array) -> jax.Array:
        """Test predictions of a train state's exported model (see ``export``) or of an
        exported model itself. idx [M] int32 -> log-probs [M, C] float32."""
        model = self.export(state) if isinstance(state, TrainState) else state
        return self._predict(model["params"], model["batch_stats"], data, idx)
