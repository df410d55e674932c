"""Folds by subject (LOSO / k-fold) or by source (LODO), validation from training subjects,
in-fold top-up."""

import jax
import numpy as np
import pytest

from mjfn_jax.folds import epoch_batches, make_folds, pad_folds, sanitize_fold_name, steps_per_epoch

# 5 subjects of uneven sizes (2..6 clips), three sources.
SUBJECTS = np.array(
    ["casme2/sub01"] * 2
    + ["casme2/sub02"] * 6
    + ["smic/s01"] * 3
    + ["smic/s02"] * 5
    + ["samm/006"] * 4
)
SOURCES = np.array([s.split("/")[0] for s in SUBJECTS])


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


def test_lodo_one_fold_per_source():
    folds = make_folds(SUBJECTS, protocol="lodo", sources=SOURCES)
    assert [f.name for f in folds] == ["lodo__casme2", "lodo__samm", "lodo__smic"]
    _check_disjoint(folds, SUBJECTS)
    # every source is the test set of exactly one fold, and every sample is tested once
    tests = np.sort(np.concatenate([f.test_idx for f in folds]))
    np.testing.assert_array_equal(tests, np.arange(len(SUBJECTS)))
    for f, source in zip(folds, ["casme2", "samm", "smic"], strict=True):
        np.testing.assert_array_equal(f.test_idx, np.flatnonzero(SOURCES == source))
        np.testing.assert_array_equal(f.train_idx, np.flatnonzero(SOURCES != source))
        assert f.test_subjects == tuple(sorted(set(SUBJECTS[SOURCES == source])))


def test_lodo_validation_from_training_sources_only():
    folds = make_folds(SUBJECTS, protocol="lodo", sources=SOURCES, val_subject_fraction=0.34)
    _check_disjoint(folds, SUBJECTS)
    for f in folds:
        test_source = set(SOURCES[f.test_idx])
        assert len(f.val_idx) and not set(SOURCES[f.val_idx]) & test_source, f.name
        assert not set(SOURCES[f.train_idx]) & test_source, f.name
        # the validation subject is taken out of the training sources' subjects
        train_and_val = np.sort(np.concatenate([f.train_idx, f.val_idx]))
        np.testing.assert_array_equal(
            train_and_val, np.flatnonzero(~np.isin(SOURCES, [*test_source]))
        )


def test_sources_leave_loso_and_kfold_unchanged():
    for kwargs in (
        dict(protocol="loso", val_subject_fraction=0.25),
        dict(protocol="kfold", num_folds=2),
    ):
        a = make_folds(SUBJECTS, seed=2, **kwargs)
        b = make_folds(SUBJECTS, seed=2, sources=SOURCES, **kwargs)
        assert [f.name for f in a] == [f.name for f in b]
        for fa, fb in zip(a, b, strict=True):
            for part in ("train_idx", "val_idx", "test_idx"):
                np.testing.assert_array_equal(getattr(fa, part), getattr(fb, part))


@pytest.mark.parametrize(
    "sources,error",
    [
        (None, r"folds.protocol='lodo' needs each sample's source"),
        (np.full(len(SUBJECTS), "casme2"), r"at least 2 source datasets, got \['casme2'\]"),
        (SOURCES[:-1], r"sources has shape \(19,\), subjects \(20,\)"),
        (np.where(SUBJECTS == "samm/006", "", SOURCES), "empty source name"),
        (np.where(np.arange(len(SUBJECTS)) == 0, "smic", SOURCES), "'casme2/sub01' is in sources"),
    ],
)
def test_lodo_errors(sources, error):
    with pytest.raises(ValueError, match=error):
        make_folds(SUBJECTS, protocol="lodo", sources=sources)


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
