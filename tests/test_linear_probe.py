"""mjfn_jax.linear_probe: the linear floor every report shows beside the network."""

import numpy as np
import pytest
from conftest import train_and_evaluate

from mjfn_jax.folds import make_folds, pad_folds
from mjfn_jax.linear_probe import fit_floor, floor_log_probs, linear_floor
from mjfn_jax.report import format_results_table, with_linear_floor


def _problem(seed=0, subjects=5, clips=8, size=4):
    rng = np.random.default_rng(seed)
    n = subjects * clips
    labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 1, (3, size * size * 3))
    x = centres[labels] + rng.normal(0, 1.5, (n, size * size * 3))  # overlapping classes
    images = np.clip(128 + 30 * x, 0, 255).astype(np.uint8).reshape(n, size, size, 3)
    subjects_ = np.repeat([f"s/{i}" for i in range(subjects)], clips)
    arrays = pad_folds(make_folds(subjects_, protocol="loso", num_folds=5,
                                  val_subject_fraction=0.0, seed=0))  # fmt: skip
    return images, labels, arrays


def test_matches_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels, arrays = _problem()
    probs = linear_floor(images, labels, arrays, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    x = images.reshape(len(labels), -1) / 255.0
    want = np.zeros_like(probs)
    for f in range(arrays.num_folds):
        test = arrays.test_idx[f][arrays.test_mask[f]]
        train = np.setdiff1d(np.arange(len(labels)), test)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        want[test] = clf.fit(x[train], labels[train]).predict_proba(x[test])
    # The same objective, the same optimum (up to both optimisers' tolerances).
    np.testing.assert_allclose(probs, want, atol=5e-3)
    np.testing.assert_array_equal(probs.argmax(-1), want.argmax(-1))


def test_the_kept_probes_reproduce_the_floor():
    """fit_floor's per-fold weights on raw pixels (standardisation folded in) give each fold's
    test predictions; a wrong image size is one error."""
    images, labels, arrays = _problem()
    probs, _, weight, bias = fit_floor(images, labels, arrays, 3, with_weights=True)
    assert weight.shape == (arrays.num_folds, 4 * 4 * 3, 3) and bias.shape == (arrays.num_folds, 3)
    for f in range(arrays.num_folds):
        test = arrays.test_idx[f][arrays.test_mask[f]]
        got = np.exp(floor_log_probs(weight[f], bias[f], images[test]))
        np.testing.assert_allclose(got, probs[test], atol=1e-4)
    with pytest.raises(ValueError, match="fitted on 48 values per image, this image has 75"):
        floor_log_probs(weight[0], bias[0], np.zeros((1, 5, 5, 3), np.uint8))


def test_every_report_shows_the_floor(tmp_path, smoke_config, tiny_dataset, caplog):
    import logging

    config = smoke_config("train.num_epochs=1", "report.linear_floor=True")
    dataset = tiny_dataset(3, 3)
    results = train_and_evaluate(config, str(tmp_path), dataset=dataset)
    floor = results["linear_floor"]
    assert floor["n"] == len(dataset) and 0.0 <= floor["uf1"] <= 1.0
    assert "logistic regression" in floor["method"]
    text = (tmp_path / "report.md").read_text()
    assert f"**Linear floor** ({floor['method']}): UF1 {floor['uf1']:.4f}" in text
    # and the fixed fusion of the two, from the saved floor probabilities and the network's
    fused = results["with_linear_floor"]
    with np.load(tmp_path / "linear_floor.npz") as z:
        want = with_linear_floor(results["y_true"], results["probs"], z["probs"], ["a", "b", "c"])
    assert fused == want and f"UF1 {fused['uf1']:.4f}" in text
    assert "network + floor (mean probability)" in format_results_table(results)
    caplog.set_level(logging.INFO, logger="mjfn_jax")
    caplog.clear()  # only the rerun's lines (an earlier test may have set INFO already)
    again = train_and_evaluate(config, str(tmp_path), dataset=dataset)  # kept, not refitted
    assert again["linear_floor"] == floor and "linear floor:" not in caplog.text
    assert again["with_linear_floor"] == fused
    with np.load(tmp_path / "linear_floor.npz") as z:  # the probes are kept, for predict
        assert z["folds"].tolist() == ["synthetic__s01", "synthetic__s02", "synthetic__s03"]
        assert z["weight"].shape[0] == 3 and z["bias"].shape == (3, 3)
        old = {k: z[k] for k in ("y_pred", "probs")}
    np.savez(tmp_path / "linear_floor.npz", **old)  # a file from before the probes were kept
    caplog.clear()
    refit = train_and_evaluate(config, str(tmp_path), dataset=dataset)
    assert "linear floor:" in caplog.text and refit["linear_floor"] == floor
    with np.load(tmp_path / "linear_floor.npz") as z:
        assert "weight" in z.files


def test_the_fusion_is_the_mean_probability():
    y = np.array([0, 1, 2, 0])
    net = np.array([[0.6, 0.4, 0.0], [0.0, 0.9, 0.1], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]])
    floor = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.2, 0.8], [0.9, 0.1, 0.0]])
    # means: [.3 .7 0] -> 1, [0 .45 .55] -> 2, [.25 .1 .65] -> 2, [.55 .45 0] -> 0
    fused = with_linear_floor(y, net, floor, ["a", "b", "c"])
    assert fused["accuracy"] == 0.5 and fused["n"] == 4
    with pytest.raises(ValueError, match="floor probabilities"):
        with_linear_floor(y, net, floor[:3], ["a", "b", "c"])


@pytest.mark.parametrize("field", ["report.linear_floor", "report.figures"])
@pytest.mark.parametrize("value", ["yes", "1", "none"])
def test_a_switch_takes_true_or_false_only(smoke_config, field, value):
    with pytest.raises(ValueError, match="is not True or False"):
        smoke_config(f"{field}={value}")
    assert smoke_config(f"{field}=true").report[field.split(".")[1]] is True
