"""MJFN loss: cross-entropy on each of the four heads, weighted sum (PyTorch semantics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from mjfn_jax.models.mjfn import BRANCH, COPIES, HEADS


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
) -> jax.Array:
    """Mean cross-entropy as ``torch.nn.functional.cross_entropy(weight=, label_smoothing=)``.

    logits [B, C] float, labels int [B], class_weights [C] or None. With class weights the
    mean is weighted: sum_i w_{y_i} * nll_i / sum_i w_{y_i}; the smoothing term
    sum_i sum_c w_c * (-log p_ic) / C is normalised by the same sum_i w_{y_i} (as torch does).
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
    num_classes = log_probs.shape[-1]
    nll = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if class_weights is None:
        weights = jnp.ones((num_classes,), jnp.float32)
    else:
        weights = jnp.asarray(class_weights, jnp.float32)
    sample_weights = weights[labels]  # [B]
    norm = jnp.sum(sample_weights)
    loss = jnp.sum(sample_weights * nll) / norm
    if label_smoothing:
        smooth = -jnp.sum(log_probs * weights, axis=-1)  # [B]
        loss = (1.0 - label_smoothing) * loss + label_smoothing / num_classes * (
            jnp.sum(smooth) / norm
        )
    return loss


def mjfn_loss(
    outputs: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    head_loss_weights: Sequence[float],
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum over HEADS of each head's cross-entropy, plus (weight 1) the STSTNet
    branch's where the outputs hold one (``model.ststnet_branch``).

    outputs: the MJFN output dict (logits [B, C] per head); labels int32 [B];
    head_loss_weights: one weight per head in HEADS order; class_weights float32 [C] or None.
    Returns (loss scalar float32, {"loss/backbone": ..., "loss/jfm1": ..., ...}).
    """
    if len(head_loss_weights) != len(HEADS):
        raise ValueError(
            f"head_loss_weights needs {len(HEADS)} entries {HEADS}, got {tuple(head_loss_weights)}"
        )
    if labels.ndim != 1 or labels.shape[0] != outputs[HEADS[0]].shape[0]:
        raise ValueError(
            f"labels must be [B] with B={outputs[HEADS[0]].shape[0]}; got {tuple(labels.shape)}"
        )
    aux, total = {}, jnp.zeros((), jnp.float32)
    for name, weight in zip(HEADS, head_loss_weights, strict=True):
        head_loss = cross_entropy(
            outputs[name], labels, label_smoothing=label_smoothing, class_weights=class_weights
        )
        aux[f"loss/{name}"] = head_loss
        total = total + weight * head_loss
    if COPIES in outputs:  # its own parameters: only this term reaches them
        copies = outputs[COPIES]  # [B, K, C]; every copy sees the same labels, so the mean of
        k = copies.shape[1]  # the K cross-entropies is one over the B * K rows
        aux[f"loss/{BRANCH}"] = cross_entropy(
            copies.reshape(-1, copies.shape[-1]),
            jnp.repeat(labels, k),
            label_smoothing=label_smoothing,
            class_weights=class_weights,
        )
        total = total + aux[f"loss/{BRANCH}"]
    return total, aux
