"""On-device augmentation of min-max normalised flow images (inside the jitted step).

Channels are (u, v, strain), each min-max normalised per sample to [0, 1]. Mirroring a face
left-right negates the horizontal flow u; since minmax(-u) = 1 - minmax(u), the flipped image's
u channel is 1 - u (v and strain are only mirrored). Several views stacked as channels
(mjfn_jax.views): each flow view flips so, and a direction map (the hue of a flow view's
(u, v)) is recomputed from its mirrored flow view; ``layout`` (mjfn_jax.views.layout) says
which views are which.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mjfn_jax.views import ONE_VIEW, Layout, direction_table


def hflip_batch(images: jax.Array, layout: Layout = ONE_VIEW) -> jax.Array:
    """Mirror along W and replace channel u by 1 - u. images: [B, H, W, 3] float in [0, 1].

    Several views [B, H, W, 3 V] (``layout``, static): every flow view so, and each direction
    map recomputed from its mirrored flow view's (u, v) (as 8-bit values, through
    mjfn_jax.views.direction_table: what mjfn_jax.views.hflip_views gives, to the bit)."""
    mirrored = images[:, :, ::-1, :]
    if tuple(layout) == ONE_VIEW:
        return mirrored.at[..., 0].set(1.0 - mirrored[..., 0])
    u = [3 * k for k, source in enumerate(layout) if source is None]
    mirrored = mirrored.at[..., u].set(1.0 - mirrored[..., u])
    table = None
    for k, source in enumerate(layout):
        if source is not None:
            if table is None:  # [256 * 256, 3] colours, indexed u * 256 + v
                table = direction_table().reshape(-1, 3).astype(np.float32) / np.float32(255)
                table = jnp.asarray(table, images.dtype)  # divided here: XLA would multiply
            uv = jnp.round(mirrored[..., 3 * source : 3 * source + 2] * 255.0).astype(jnp.int32)
            colours = table[jnp.clip(uv[..., 0], 0, 255) * 256 + jnp.clip(uv[..., 1], 0, 255)]
            mirrored = mirrored.at[..., 3 * k : 3 * k + 3].set(colours)
    return mirrored


def translate(images: jax.Array, shifts: jax.Array, pad: int) -> jax.Array:
    """Shift each image by (dy, dx) pixels with zero padding; positive dx moves content right.

    images [B, H, W, C]; shifts [B, 2] int32 in [-pad, pad] (pad static) -> [B, H, W, C].
    """
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, shift):  # img [H + 2p, W + 2p, C]
        start = (pad - shift[0], pad - shift[1], 0)
        return jax.lax.dynamic_slice(img, start, (h, w, c))

    return jax.vmap(one)(padded, shifts)


def augment_batch(
    key: jax.Array,
    images: jax.Array,
    *,
    hflip: bool,
    max_translate: int,
    layout: Layout = ONE_VIEW,
) -> jax.Array:
    """Random flow-aware flip (p = 0.5) and translation (uniform in [-t, t]^2, zero pad).

    images: [B, H, W, 3] (3 per view of ``layout``) float32 in [0, 1] -> same shape and dtype.
    """
    flip_key, shift_key = jax.random.split(key)
    if hflip:
        flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
        images = jnp.where(flip[:, None, None, None], hflip_batch(images, layout), images)
    if max_translate > 0:
        shifts = jax.random.randint(
            shift_key, (images.shape[0], 2), -max_translate, max_translate + 1
        )
        images = translate(images, shifts, max_translate)
    return images


def mixup(
    key: jax.Array, images: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup (Zhang et al., 2018) over the batch: lam ~ Beta(alpha, alpha), one per batch, and a
    random pairing ``perm`` of the batch; returns (lam * images + (1 - lam) * images[perm], perm,
    lam). The training loss is then lam * loss(labels) + (1 - lam) * loss(labels[perm]), which
    equals the cross-entropy against the mixed one-hot labels."""
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha)
    perm = jax.random.permutation(perm_key, images.shape[0])
    return lam * images + (1.0 - lam) * images[perm], perm, lam
