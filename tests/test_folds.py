"""Folds by subject: LOSO / k-fold, validation from training subjects, in-fold top-up."""

import jax
import numpy as np
import pytest

from mjfn_jax.folds import epoch_batches, make_folds, pad_folds, sanitize_fold_name, steps_per_epoch

# 5 subjects of uneven sizes (2..6 clips), two sources.
SUBJECTS = np.array(
    ["casme2/sub01"] * 2
    + ["casme2/sub02"] * 6
    + ["smic/s01"] * 3
    + ["smic/s02"] * 5
    + ["samm/006"] * 4
)


def _check_disjoint(folds, subjects):
    for f in folds:
        train, val, test = (set(subjects[i]) for i in (f.train_idx, f.val_idx, f.test_idx))
        assert not (test & train) and not (test & val) and not (train & val), f.name
        assert test == set(f.test_subjects)
        # every sample is in exactly one of the three parts
        parts = np.concatenate([f.train_idx, f.val_idx, f.test_idx])
        assert sorted(parts.tolist()) == list(range(len(subjects)))


def test_sanitize_fold_name():
    assert sanitize_fold_name("casme2/sub01") == "casme2__sub01"
    assert sanitize_fold_name("a b/c:d") == "a_b__c_d"


def test_loso_one_fold_per_subject_and_disjoint():
    folds = make_folds(SUBJECTS, protocol="loso")
    assert [f.name for f in folds] == [
        "casme2__sub01", "casme2__sub02", "samm__006", "smic__s01", "smic__s02"
    ]  # fmt: skip
    _check_disjoint(folds, SUBJECTS)
    # pooled test sets cover every sample exactly once
    tests = np.sort(np.concatenate([f.test_idx for f in folds]))
    np.testing.assert_array_equal(tests, np.arange(len(SUBJECTS)))


def test_kfold_groups_subjects():
    folds = make_folds(SUBJECTS, protocol="kfold", num_folds=2, seed=3)
    assert len(folds) == 2 and [f.name for f in folds] == ["fold00", "fold01"]
    _check_disjoint(folds, SUBJECTS)
    all_test = sorted(s for f in folds for s in f.test_subjects)
    assert all_test == sorted(set(SUBJECTS))
    with pytest.raises(ValueError, match="num_folds"):
        make_folds(SUBJECTS, protocol="kfold", num_folds=9)
    with pytest.raises(ValueError, match="protocol"):
        make_folds(SUBJECTS, protocol="random")


def test_validation_drawn_from_training_subjects_only():
    folds = make_folds(SUBJECTS, protocol="loso", val_subject_fraction=0.25, seed=1)
    _check_disjoint(folds, SUBJECTS)
    for f in folds:
        val_subjects = set(SUBJECTS[f.val_idx])
        assert len(val_subjects) == 1  # round(0.25 * 4 training subjects)
        assert not val_subjects & set(f.test_subjects)
    # reproducible for a seed
    again = make_folds(SUBJECTS, protocol="loso", val_subject_fraction=0.25, seed=1)
    assert all(np.array_equal(a.val_idx, b.val_idx) for a, b in zip(folds, again, strict=True))


def test_pad_folds_shapes_and_masks():
    folds = make_folds(SUBJECTS, protocol="loso")
    arrays = pad_folds(folds)
    assert arrays.train_idx.shape == (5, 18) and arrays.test_idx.shape == (5, 6)
    np.testing.assert_array_equal(arrays.train_count, [18, 14, 16, 17, 15])
    for k, f in enumerate(folds):
        np.testing.assert_array_equal(arrays.test_idx[k][arrays.test_mask[k]], f.test_idx)
        np.testing.assert_array_equal(arrays.train_idx[k, : arrays.train_count[k]], f.train_idx)
    assert not arrays.val_mask.any()  # no validation split requested


def test_epoch_batches_top_up_within_fold():
    folds = make_folds(SUBJECTS, protocol="loso")
    arrays = pad_folds(folds)
    batch = 4
    steps = steps_per_epoch(arrays.train_idx.shape[1], batch)
    assert steps == 5  # ceil(18 / 4)
    order_fn = jax.jit(epoch_batches, static_argnums=(3, 4))
    for k, f in enumerate(folds):
        for seed in range(3):
            order = np.asarray(
                order_fn(
                    jax.random.key(seed), arrays.train_idx[k], arrays.train_count[k], steps, batch
                )
            ).ravel()
            assert order.shape == (steps * batch,)
            # only this fold's own training samples, never padding, test or another fold's
            assert set(order.tolist()) <= set(f.train_idx.tolist())
            # the first n_f draws are a permutation: every training sample seen each epoch
            n = len(f.train_idx)
            assert sorted(order[:n].tolist()) == sorted(f.train_idx.tolist())
    # a different key gives a different order
    a = order_fn(jax.random.key(0), arrays.train_idx[0], arrays.train_count[0], steps, batch)
    b = order_fn(jax.random.key(1), arrays.train_idx[0], arrays.train_count[0], steps, batch)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
