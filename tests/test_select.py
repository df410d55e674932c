"""Nested model selection (mjfn_jax.select): each fold keeps the candidate with the best score
on its own validation subjects, and the pooled predictions are those candidates' predictions."""

import json
import os

import numpy as np
import pytest
from conftest import train_and_evaluate

from mjfn_jax.config import validate_config

# Over a four-view dataset: the run's 12 channels at one learning rate, or the first view alone
# at another (a choice of input views is a candidate like any other).
CANDIDATES = (
    "train.learning_rate=1e-4",
    "data.views=(0,),model.input_channels=3,train.learning_rate=3e-3,augment.max_translate=0",
)
FOUR_VIEWS = ("data.name=flow_images", "data.flow_method=imported", "data.dataset_views=4",
              "model.input_channels=12", "folds.val_subject_fraction=0.34")  # fmt: skip


def _four_view_dataset(tiny_dataset):
    """tiny_dataset() with three more views per clip (12 channels), each view different."""
    import dataclasses

    data = tiny_dataset()
    images = np.concatenate([np.roll(data.images, 3 * k, axis=2) for k in range(4)], axis=-1)
    views = ["flow_image", "apex_offset_flow", "onset_apex_direction", "apex_offset_direction"]
    preprocessing = data.preprocessing | {"views": views}
    return dataclasses.replace(data, images=images, preprocessing=preprocessing)


def test_each_fold_keeps_its_best_candidate_on_validation(tmp_path, smoke_config, tiny_dataset):
    from mjfn_jax.data import select_views
    from mjfn_jax.select import split_overrides

    config = smoke_config(*FOUR_VIEWS, f"select.candidates={CANDIDATES}")
    dataset = _four_view_dataset(tiny_dataset)
    results = train_and_evaluate(config, str(tmp_path), dataset=dataset)
    runs = []  # each candidate is a finished run of its own: rerunning it trains nothing
    for i, text in enumerate(CANDIDATES):
        candidate = smoke_config(*FOUR_VIEWS, *split_overrides(text))
        data = select_views(dataset, candidate.data)  # candidate 1: the first view's 3 channels
        assert data.images.shape[-1] == (12, 3)[i]
        run = train_and_evaluate(candidate, str(tmp_path / "candidates" / str(i)), dataset=data)
        assert run["timing"]["folds_trained_this_run"] == 0
        runs.append(run)
    selection = results["selection"]
    for fold, chosen in selection["per_fold"].items():
        last_val_loss = [run["history"][fold][-1]["val_loss"] for run in runs]
        assert chosen["scores"] == last_val_loss
        assert chosen["candidate"] == int(np.argmin(last_val_loss))
        rows = results["folds"] == fold
        np.testing.assert_array_equal(
            results["probs"][rows], runs[chosen["candidate"]]["probs"][rows]
        )
    counts = [c["chosen_by_folds"] for c in selection["candidates"]]
    assert sum(counts) == 4 and selection["metric"] == "val_loss"
    text = (tmp_path / "report.md").read_text()
    assert "## Nested model selection" in text and f"`{CANDIDATES[1]}`" in text
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["selection"]["per_fold"] == selection["per_fold"]
    assert os.path.exists(tmp_path / "candidates" / "1" / "report.md")
    # the CLI's closing lines sum the candidates' runs (they raised KeyError before)
    from mjfn_jax.main import timing_lines

    line = timing_lines(results["timing"], "W")
    train_s = sum(t["train_s"] for t in results["timing"]["candidates"])
    assert "(2 candidates)" in line and f"train {train_s:.1f} s" in line


@pytest.mark.parametrize(
    "overrides,match",
    [
        ((f"select.candidates={CANDIDATES}",), "needs 2 or more candidates and folds.val_subject"),
        (("folds.val_subject_fraction=0.34", "select.candidates=('train.bogus=1', 'seed=1')"),
         "select.candidates entry 'train.bogus=1'"),
        (("folds.val_subject_fraction=0.34", "select.candidates=('train.num_epochs=0', 'seed=1')"),
         "entry 'train.num_epochs=0': train.num_epochs=0"),
        (("select.metric=test_uf1",), "select.metric"),
        ((*FOUR_VIEWS, "data.views=(0,)", "model.input_channels=3",
          "select.candidates=('data.views=(1,),model.input_channels=3', 'seed=1')"),
         r"entry 'data.views=\(1,\),model.input_channels=3': data.views=\(1,\): a choice of views "
         r"needs the run to read every view \(data.views=\(\)\)"),
        (("folds.val_subject_fraction=0.34", "select.candidates=('model.input_size=16', 'seed=1')"),
         "entry 'model.input_size=16': model.input_size: every candidate reads the run's dataset"),
    ],
)  # fmt: skip
def test_bad_selection_settings_are_named(smoke_config, overrides, match):
    with pytest.raises((ValueError, KeyError), match=match):
        validate_config(smoke_config(*overrides))


def test_each_candidate_is_scored_by_the_model_it_kept():
    """A candidate with early stopping kept its best-on-validation model, one without it its
    last: each run is scored by its own rule (a candidate may switch early stopping on)."""
    from mjfn_jax.select import choose

    history = [{"val_loss": 0.9, "val_accuracy": 0.5}, {"val_loss": 0.5, "val_accuracy": 0.7},
               {"val_loss": 0.8, "val_accuracy": 0.6}]  # fmt: skip
    runs = [{"history": {"f": history}}, {"history": {"f": history}}]
    chosen = choose(runs, early_stopping=[False, True], metric="val_loss")
    assert chosen["f"] == {"candidate": 1, "scores": [0.8, 0.5]}
    chosen = choose(runs, early_stopping=[False, True], metric="val_accuracy")
    assert chosen["f"] == {"candidate": 1, "scores": [0.6, 0.7]}


def test_candidate_values_may_hold_commas_inside_brackets():
    from mjfn_jax.config import base_config
    from mjfn_jax.select import candidate_config, split_overrides

    text = "model.widths=(4,8,16,32), train.learning_rate=1e-3,model.blocks_per_stage=(1, 1, 1, 1)"
    assert split_overrides(text) == [
        "model.widths=(4,8,16,32)",
        "train.learning_rate=1e-3",
        "model.blocks_per_stage=(1, 1, 1, 1)",
    ]
    config = candidate_config(base_config(), text)
    assert config.model.widths == (4, 8, 16, 32) and config.model.blocks_per_stage == (1, 1, 1, 1)
    assert config.train.learning_rate == 1e-3
