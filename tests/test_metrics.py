"""MEGC2019 metrics: hand-computed cases, scikit-learn agreement, absent classes, validation."""

import json

import numpy as np
import pytest

from mjfn_jax.metrics import per_fold_table, per_group_metrics, pooled_metrics

NAMES = ("negative", "positive", "surprise")


def test_hand_computed_small_case():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = pooled_metrics(y_true, y_pred, NAMES)
    # negative: TP2 FP0 FN1 -> F1 4/5, recall 2/3; positive: TP1 FP1 FN1 -> F1 1/2, recall 1/2;
    # surprise: TP1 FP1 FN0 -> F1 2/3, recall 1.
    assert m["uf1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    neg = m["per_class"]["negative"]
    assert (neg["support"], neg["tp"], neg["fp"], neg["fn"]) == (3, 2, 0, 1)
    assert neg["precision"] == pytest.approx(1.0)
    assert m["per_class"]["surprise"]["precision"] == pytest.approx(0.5)
    assert m["absent_classes"] == [] and m["present_classes"] == list(NAMES)
    json.dumps(m)  # JSON-ready as returned


def test_class_never_predicted_has_zero_f1_and_no_precision():
    m = pooled_metrics([0, 1, 2, 2], [0, 1, 1, 1], NAMES)
    s = m["per_class"]["surprise"]
    assert s["f1"] == 0.0 and s["recall"] == 0.0 and s["precision"] is None
    assert m["uf1"] == pytest.approx((1 + 2 / 4 + 0) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_macro_on_random_pooled_predictions(seed):
    # (sklearn imported here, not at the top: a second of every test worker's collection)
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(seed)
    n, c = 300, 5
    y_true = rng.integers(0, c, n)
    # Predictions correlated with the truth so scores are neither 0 nor chance.
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, c, n))
    names = [f"c{i}" for i in range(c)]
    m = pooled_metrics(y_true, y_pred, names)
    assert m["uf1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["uar"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(m["confusion"], sk_confusion(y_true, y_pred, labels=range(c)))


def test_absent_class_reported_and_averaged_over_present_classes():
    """Documented choice: UF1/UAR over classes present in y_true; the absent one is listed."""
    from sklearn.metrics import f1_score, recall_score

    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, 80)  # class 2 ('surprise') never occurs ...
    y_pred = rng.integers(0, 3, 80)  # ... but is predicted sometimes
    assert (y_pred == 2).any()
    m = pooled_metrics(y_true, y_pred, NAMES)
    assert m["absent_classes"] == ["surprise"]
    assert m["present_classes"] == ["negative", "positive"]
    sur = m["per_class"]["surprise"]
    assert sur["support"] == 0 and sur["recall"] is None
    assert sur["f1"] == 0.0 and sur["fp"] == int((y_pred == 2).sum())
    present = [0, 1]
    assert m["uf1"] == pytest.approx(f1_score(y_true, y_pred, labels=present, average="macro"))
    assert m["uar"] == pytest.approx(recall_score(y_true, y_pred, labels=present, average="macro"))
    # Not the 3-class macro average, which would count the absent class as F1 = 0.
    assert m["uf1"] != pytest.approx(
        f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
    )


def test_absent_and_never_predicted_class_has_undefined_f1():
    m = pooled_metrics([0, 1, 1], [0, 1, 0], NAMES)
    assert m["per_class"]["surprise"]["f1"] is None
    assert m["uf1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_per_group_metrics_splits_by_source():
    y_true = np.array([0, 1, 2, 0, 0, 1])
    y_pred = np.array([0, 1, 1, 0, 1, 1])
    sources = np.array(["smic", "smic", "smic", "samm", "samm", "samm"])
    groups = per_group_metrics(y_true, y_pred, sources, NAMES)
    assert list(groups) == ["samm", "smic"]
    for g, part in groups.items():
        mask = sources == g
        assert part == pooled_metrics(y_true[mask], y_pred[mask], NAMES)
    assert groups["samm"]["absent_classes"] == ["surprise"]
    assert groups["smic"]["accuracy"] == pytest.approx(2 / 3)


def test_per_fold_table_rows():
    y_true = [0, 0, 1, 2, 2]
    y_pred = [0, 1, 1, 2, 0]
    folds = ["s01", "s01", "s02", "s03", "s03"]
    rows = per_fold_table(y_true, y_pred, folds, NAMES)
    assert [r["fold"] for r in rows] == ["s01", "s02", "s03"]
    assert [(r["n"], r["correct"]) for r in rows] == [(2, 1), (1, 1), (2, 1)]
    assert rows[1]["accuracy"] == 1.0 and rows[1]["absent_classes"] == ["negative", "surprise"]
    assert sum(r["n"] for r in rows) == 5


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "match"),
    [
        ([0, 1], [0], NAMES, "2 entries but y_pred has 1"),
        ([0, 3], [0, 1], NAMES, r"y_true\[1\] = 3 is outside \[0, 3\)"),
        ([0, 1], [0, -1], NAMES, r"y_pred\[1\] = -1"),
        ([0.5, 1], [0, 1], NAMES, "integer class indices"),
        ([[0, 1]], [[0, 1]], NAMES, "1-D"),
        ([], [], NAMES, "empty"),
        ([0], [0], (), "class_names is empty"),
        ([0], [0], ("a", "a"), "duplicates"),
    ],
)
def test_input_validation(y_true, y_pred, names, match):
    with pytest.raises(ValueError, match=match):
        pooled_metrics(y_true, y_pred, names)


def test_group_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one entry per prediction"):
        per_group_metrics([0, 1], [0, 1], ["a"], NAMES)


def test_integral_floats_are_accepted():
    m = pooled_metrics(np.array([0.0, 1.0, 2.0]), np.array([0, 1, 2]), NAMES)
    assert m["accuracy"] == 1.0 and m["uf1"] == 1.0
