"""data_builders/flow_images: a published folder of composite flow images (generated here by
its dummy_data script), imported with our features and ids, and every bad input named."""

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_builders.build import build_dataset
from data_builders.flow_images.dummy_data.make_dummy_data import CSV_NAME, IMAGES, ROWS, make
from mjfn_jax.data import load_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_images")
    manual = make(root / "manual")
    summary = build_dataset("flow_images/imported_28", data_dir=root / "tfds", manual_dir=manual)
    return manual, root / "tfds", summary


def test_imports_every_row_with_canonical_ids(built):
    manual, data_dir, summary = built
    assert summary["class_counts"]["train"] == {"negative": 6, "positive": 3, "surprise": 3}
    data = load_dataset("flow_images", "imported_28", data_dir)
    assert len(data) == len(ROWS) and data.images.shape[1:] == (28, 28, 3)
    assert set(data.subjects) == {"casme2/sub01", "casme2/sub02", "samm/006", "samm/007",
                                  "smic/s01", "smic/s02"}  # fmt: skip
    row = list(data.clips).index("006_1_3")
    assert data.subjects[row] == "samm/006" and data.sources[row] == "samm"
    assert data.class_names[data.labels[row]] == "positive"
    image = cv2.imread(str(manual / IMAGES / "006_006_1_3 .png"))[..., ::-1]
    np.testing.assert_array_equal(data.images[row], image)  # the pixels, unchanged
    assert data.preprocessing["flow_method"] == "imported"
    assert data.preprocessing["crop"] == {"imported": len(ROWS)}


def _build_error(tmp_path, change, config="imported_28"):
    manual = make(tmp_path / "manual")
    change(manual)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        build_dataset(f"flow_images/{config}", data_dir=tmp_path / "tfds", manual_dir=manual)
    return str(info.value)


def _edit_csv(manual, old, new):
    path = manual / CSV_NAME
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    "name,change,expected",
    [
        ("row without image", lambda m: os.remove(m / IMAGES / "sub02_EP03_02f .png"),
         "no image in .* for .*row 5 \\(sub02_EP03_02f .png\\)"),
        ("image without row", lambda m: shutil.copy(m / IMAGES / "s01_s01_ne_01 .png",
                                                    m / IMAGES / "s09_s09_ne_01 .png"),
         "image\\(s\\) without a CSV row: s09_s09_ne_01 .png"),
        ("wrong size", lambda m: cv2.imwrite(str(m / IMAGES / "006_006_1_2 .png"),
                                             np.zeros((32, 32, 3), np.uint8)),
         "006_006_1_2 .png: 32x32 pixels; this config \\(imported_28\\) needs 28x28"),
        ("one channel", lambda m: cv2.imwrite(str(m / IMAGES / "006_006_1_2 .png"),
                                              np.zeros((28, 28), np.uint8)),
         "006_006_1_2 .png: 1 channel\\(s\\) of uint8"),
        ("bad label", lambda m: _edit_csv(m, "EP19_05f,0", "EP19_05f,7"),
         "row 3, field label: '7'"),
        ("bad source", lambda m: _edit_csv(m, "smic,s02", "mmew,s02"),
         "field dataset: 'mmew' is not one of casme2, samm, smic"),
        ("path in a clip", lambda m: _edit_csv(m, "007_6_5", "../007_6_5"),
         "filename_o '../007_6_5' is not a clip id"),
        ("duplicate row", lambda m: _edit_csv(m, "sub02,EP01_11f", "sub01,EP02_01f"),
         "row 4: clip casme2/sub01/EP02_01f again \\(first in row 2\\)"),
    ],
)  # fmt: skip
def test_bad_input_is_named(tmp_path, name, change, expected):
    import re

    assert re.search(expected, _build_error(tmp_path, change)), name


def test_cli_error_is_one_line(tmp_path):
    manual = make(tmp_path / "manual")
    os.remove(manual / IMAGES / "sub01_EP02_01f .png")
    cmd = [sys.executable, "-m", "data_builders", "build", "flow_images/imported_28",
           "--data_dir", str(tmp_path / "tfds"), "--manual_dir", str(manual)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no image in")


@pytest.mark.slow  # ~40 s; the import, the STSTNet branch and standardisation have fast tests
def test_the_28px_recipe_trains_on_imported_images(built, tmp_path):
    """mjfn_jax/configs/flow_images.py (MJFN with the branch of five STSTNets) runs LOSO on the
    imported images end to end: every clip predicted once, the branch in each fold's model.
    (Narrow widths and one epoch: what is checked is the wiring, not the accuracy.)"""
    import json

    _, data_dir, _ = built
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "mjfn_jax.main", "--config", "mjfn_jax/configs/flow_images.py",
           "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
           "--config.model.widths=(4,8,8,16)", "--config.model.blocks_per_stage=(1,1,1,1)",
           "--config.train.num_epochs=1", "--config.train.batch_size=4",
           "--config.report.linear_floor=False",
           "--config.parallel.strategy=sequential"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["ststnet_branch"] is True and config["model"]["input_size"] == 28
    assert config["model"]["ststnet_copies"] == 5
    results = json.loads((workdir / "results.json").read_text())
    assert results["pooled"]["n"] == len(ROWS)
    predictions = (workdir / "predictions.csv").read_text().splitlines()
    assert len(predictions) == len(ROWS) + 1  # header + one row per clip
    finals = sorted((workdir / "folds").glob("*/model"))
    assert len(finals) == 6  # one per subject
    model = ocp.StandardCheckpointer().restore(finals[0])  # {"params": {..}, "batch_stats": {..}}
    names = [*model["params"], *model["batch_stats"]]
    assert sum("['branch']" in key for key in names) == 8  # conv, BN, head; BN stats
    # each network of the run alone, re-predicted from the saved fold models
    from tools.repredict import networks

    parts = networks(str(workdir), str(data_dir))
    for key in ("uf1", "uar"):  # the two networks averaged: what the run predicted
        np.testing.assert_allclose(parts["both"][key], results["pooled"][key], rtol=1e-6)
    assert {"mjfn", "ststnet"} <= set(parts)
