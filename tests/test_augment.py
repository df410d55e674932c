"""On-device augmentation: flow-aware flip and zero-padded translation."""

import jax
import jax.numpy as jnp
import numpy as np

from mjfn_jax.augment import augment_batch, hflip_batch, translate


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
