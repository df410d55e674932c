"""tools/ststnet.py: the published STSTNet, computed as im2col + reshape pools, is the
network its authors define (convolutions and pools as lax ops), and its LOSO runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import make_tiny_dataset
from tools import ststnet


def _reference_logits(params, stats, images):
    """STSTNet in eval mode written with lax.conv and reduce_window, as PyTorch's layers are."""
    x = jnp.asarray(images, jnp.float32)
    w = params["conv"].reshape(3, 3, 3, ststnet.FILTERS)  # taps in (row, column, channel) order
    h = jax.lax.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    h = jax.nn.relu(h + params["conv_bias"])
    h = (h - stats[0]) / jnp.sqrt(stats[1] + 1e-5) * params["bn_scale"] + params["bn_bias"]
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 3, 3, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))  # fmt: skip
    h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
    return h.reshape(len(images), -1) @ params["fc"] + params["fc_bias"]


@pytest.mark.parametrize("size", [28, 32])
def test_forward_is_the_published_network(size):
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    pooled, half = ststnet.map_sizes(size)
    assert (pooled, half) == ((10, 5) if size == 28 else (12, 6))  # PyTorch's output sizes
    params = ststnet.init_params(jax.random.PRNGKey(0), size, 3)
    params["bn_scale"] = rng.normal(size=ststnet.FILTERS).astype(np.float32)  # signs matter
    stats = (jnp.asarray(rng.normal(50, 10, ststnet.FILTERS), jnp.float32),
             jnp.asarray(rng.uniform(100, 900, ststnet.FILTERS), jnp.float32))  # fmt: skip
    ours, _ = ststnet.forward(params, stats, jnp.asarray(ststnet.patches(images)), train=False)
    np.testing.assert_allclose(ours, _reference_logits(params, stats, images), rtol=2e-4, atol=2e-3)


def test_batch_statistics_ignore_padding_rows():
    rng = np.random.default_rng(1)
    x = jnp.asarray(ststnet.patches(rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)))
    params = ststnet.init_params(jax.random.PRNGKey(1), 28, 3)
    stats0 = (jnp.zeros(ststnet.FILTERS), jnp.ones(ststnet.FILTERS))
    key = jax.random.PRNGKey(2)
    _, padded = ststnet.forward(params, stats0, x.at[3].set(1e3), train=True, key=key,
                                weights=jnp.asarray([1.0, 1.0, 1.0, 0.0]))  # fmt: skip
    _, real = ststnet.forward(params, stats0, x[:3], train=True, key=key, weights=jnp.ones(3))
    np.testing.assert_allclose(padded[0], real[0], rtol=1e-5)
    np.testing.assert_allclose(padded[1], real[1], rtol=1e-5)


def test_loso_run_predicts_every_clip_once_and_reproduces():
    dataset = make_tiny_dataset(num_subjects=4, clips=6)
    kwargs = dict(learning_rate=3e-3, batch_size=8)
    run = ststnet.train_and_predict(dataset, seed=0, epochs=30, **kwargs)
    probs = run["probs"]
    assert probs.shape == (len(dataset), 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)  # every clip predicted
    assert run["train_accuracy"] > 0.9  # it learns its training clips (1 epoch: 0.60)
    # the same seed gives the same bits, another seed other ones (short runs: same programs)
    short = ststnet.train_and_predict(dataset, seed=0, epochs=2, **kwargs)["probs"]
    again = ststnet.train_and_predict(dataset, seed=0, epochs=2, **kwargs)
    np.testing.assert_array_equal(again["probs"], short)
    other = ststnet.train_and_predict(dataset, seed=1, epochs=2, **kwargs)
    assert not np.array_equal(other["probs"], short)


def test_missing_dataset_is_one_line(tmp_path, capsys):
    assert ststnet.main(["--data_dir", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset flow_images/imported_28 is not built in")


def test_head_to_head_reports_each_seed_their_spread_and_the_floor():
    import argparse

    dataset = make_tiny_dataset(num_subjects=4, clips=6)
    result = ststnet.head_to_head(dataset, [0, 1], epochs=2, learning_rate=3e-3, batch_size=8)
    uf1 = [result["per_seed"][s]["uf1"] for s in (0, 1)]
    assert result["mean_sd"]["uf1"] == pytest.approx((np.mean(uf1), np.std(uf1, ddof=1)))
    for m in [*result["per_seed"].values(), result["floor"], result["ensemble"]]:
        assert 0.0 <= m["uf1"] <= 1.0 and 0.0 <= m["uar"] <= 1.0
    args = argparse.Namespace(data_dir="D", seeds=[0, 1], epochs=2, learning_rate=3e-3,
                              batch_size=8)  # fmt: skip
    text = ststnet.markdown(result, args, "tiny")
    assert f"| 1 | {uf1[1]:.4f} |" in text and "| mean ± sd |" in text
    assert f"linear floor, same folds: UF1 {result['floor']['uf1']:.4f}" in text
    assert len(result["clips"]) == len(dataset) and result["probs"][0].shape == (len(dataset), 3)


def test_negative_seed_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ststnet.main(["--data_dir", str(tmp_path), "--seeds", "-1"])
    assert "--seeds need ints >= 0" in capsys.readouterr().err


def test_epochs_selected_on_test_choose_per_fold_and_per_run():
    """Two folds, three epochs: fold a is right only at epoch 2, fold b at epochs 1 and 3 (the
    tie goes to the later epoch); the best single epoch can only be right on one fold."""
    from mjfn_jax.folds import make_folds

    labels = np.array([0, 1, 2, 0, 1, 2])
    subjects = np.array(["a", "a", "a", "b", "b", "b"])
    wrong = (labels + 1) % 3
    preds = np.stack([  # [E, N]
        np.concatenate([wrong[:3], labels[3:]]),
        np.concatenate([labels[:3], wrong[3:]]),
        np.concatenate([wrong[:3], labels[3:]]),
    ])  # fmt: skip
    epoch_probs = np.eye(3, dtype=np.float32)[preds]  # [E, N, C]
    folds = make_folds(subjects, protocol="loso")
    out = ststnet.epochs_selected_on_test(labels, epoch_probs, folds, ["x", "y", "z"])
    assert out["best_epoch_per_fold"]["uf1"] == pytest.approx(1.0)
    assert out["best_epoch_per_fold"]["epochs"] == {folds[0].name: 2, folds[1].name: 3}
    assert out["last_epoch"]["uf1"] == pytest.approx(out["uf1_per_epoch"][-1])
    assert out["last_epoch"]["uf1"] == pytest.approx(0.5)  # half the clips, every class F1 0.5
    assert out["best_single_epoch"]["epoch"] == 1  # UF1 0.5 at every epoch: the first
    assert out["best_single_epoch"]["uf1"] == pytest.approx(max(out["uf1_per_epoch"]))


def test_leaky_selection_keeps_the_headline_and_is_marked(tmp_path):
    import argparse

    dataset = make_tiny_dataset(num_subjects=4, clips=6)
    kwargs = dict(epochs=3, learning_rate=3e-3, batch_size=8)
    plain = ststnet.head_to_head(dataset, [0], **kwargs)
    leaky = ststnet.head_to_head(dataset, [0], leaky_epoch_selection=True, **kwargs)
    assert "selected_on_test" not in plain
    # predicting after every epoch changes nothing in training: same headline, same probs
    np.testing.assert_array_equal(leaky["probs"][0], plain["probs"][0])
    sel = leaky["selected_on_test"]["per_seed"][0]
    assert sel["last_epoch"]["uf1"] == pytest.approx(plain["per_seed"][0]["uf1"])
    assert len(sel["uf1_per_epoch"]) == 3
    args = argparse.Namespace(data_dir="D", seeds=[0], epochs=3, learning_rate=3e-3,
                              batch_size=8)  # fmt: skip
    text = ststnet.markdown(leaky, args, "tiny")
    assert "LEAKAGE" in text and "HTNet's script" in text
    assert "LEAKAGE" not in ststnet.markdown(plain, args, "tiny")
    ststnet.plot_epochs(leaky["selected_on_test"], str(tmp_path / "e.png"))
    assert (tmp_path / "e.png").stat().st_size > 1000
