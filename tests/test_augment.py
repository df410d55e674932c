"""On-device augmentation: flow-aware flip, zero-padded translation, mixup."""

import jax
import jax.numpy as jnp
import numpy as np

from mjfn_jax.augment import augment_batch, hflip_batch, mixup, translate
from mjfn_jax.models.losses import cross_entropy


def _minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def test_hflip_negates_u_on_normalised_images():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 8, 10)).astype(np.float32)
    strain = np.abs(rng.normal(size=(8, 10))).astype(np.float32)
    image = np.stack([_minmax(u), _minmax(v), _minmax(strain)], -1)[None]  # [1, 8, 10, 3]
    flipped = np.asarray(hflip_batch(jnp.asarray(image)))[0]
    # The mirrored face's true flow is (-u, v) mirrored; normalising it gives the flip.
    expected_u = _minmax(-u[:, ::-1])
    np.testing.assert_allclose(flipped[..., 0], expected_u, atol=1e-6)
    np.testing.assert_allclose(flipped[..., 1], _minmax(v)[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(flipped[..., 2], _minmax(strain)[:, ::-1], atol=1e-6)
    # flipping twice is the identity
    np.testing.assert_allclose(
        np.asarray(hflip_batch(hflip_batch(jnp.asarray(image)))), image, atol=1e-6
    )


def test_translate_shifts_with_zero_padding():
    image = jnp.arange(1, 26, dtype=jnp.float32).reshape(1, 5, 5, 1)
    shifted = np.asarray(translate(image, jnp.array([[1, -2]]), pad=2))[0, ..., 0]
    ref = np.asarray(image)[0, ..., 0]
    # content moves down 1 and left 2; vacated pixels are 0
    np.testing.assert_array_equal(shifted[1:, :3], ref[:-1, 2:])
    assert np.all(shifted[0] == 0) and np.all(shifted[:, 3:] == 0)
    unchanged = np.asarray(translate(image, jnp.zeros((1, 2), jnp.int32), pad=2))
    np.testing.assert_array_equal(unchanged, np.asarray(image))


def test_augment_batch_mixes_flips_and_keeps_range():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(size=(64, 6, 6, 3)).astype(np.float32))
    out = np.asarray(augment_batch(jax.random.key(0), images, hflip=True, max_translate=0))
    flipped = np.asarray(hflip_batch(images))
    is_flip = np.all(np.isclose(out, flipped), axis=(1, 2, 3))
    is_same = np.all(np.isclose(out, np.asarray(images)), axis=(1, 2, 3))
    assert np.all(is_flip | is_same) and 10 < is_flip.sum() < 54  # about half flipped
    out = np.asarray(augment_batch(jax.random.key(0), images, hflip=True, max_translate=2))
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    none = augment_batch(jax.random.key(0), images, hflip=False, max_translate=0)
    np.testing.assert_array_equal(np.asarray(none), np.asarray(images))


def test_mixup_blends_the_batch_with_a_pairing_of_itself_and_its_loss_is_the_soft_label_one():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(8, 4, 4, 3)).astype(np.float32))
    mixed, perm, lam = mixup(jax.random.key(3), images, 0.4)
    perm, lam = np.asarray(perm), float(lam)
    assert sorted(perm.tolist()) == list(range(8)) and 0.0 <= lam <= 1.0
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[perm], rtol=1e-6)
    again = mixup(jax.random.key(3), images, 0.4)  # a function of the key
    np.testing.assert_array_equal(again[0], mixed)
    lams = [float(mixup(jax.random.key(k), images, 0.4)[2]) for k in range(200)]
    assert 0.45 < np.mean(lams) < 0.55 and np.std(lams) > 0.3  # Beta(0.4, 0.4): mostly near 0, 1
    # the engine's loss, lam * CE(y) + (1 - lam) * CE(y[perm]), is the CE against mixed labels
    logits = jnp.asarray(rng.normal(size=(8, 3)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 3, 8), jnp.int32)
    loss = lam * cross_entropy(logits, labels) + (1 - lam) * cross_entropy(logits, labels[perm])
    soft = lam * np.eye(3)[labels] + (1 - lam) * np.eye(3)[np.asarray(labels)[perm]]
    expected = -np.mean(np.sum(soft * np.asarray(jax.nn.log_softmax(logits)), -1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
