"""Several flow views per clip (mjfn_jax.views): CausalNet's four-view folders imported by
data_builders/flow_images (generated here), stacked as 12 channels in a fixed order, flipped per
view, read by the model, its PyTorch twin and the linear floor; one view stays what it was."""

import json
import os
import re

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from data_builders.build import build_dataset
from data_builders.flow_images.dummy_data.make_dummy_data import IMAGES, ROWS, make
from mjfn_jax import views
from mjfn_jax.augment import hflip_batch
from mjfn_jax.config_io import load_config
from mjfn_jax.data import dataset_from_config, load_dataset

FOUR = "imported_28_4views"
LAYOUT = views.layout(4, ())  # (None, None, 0, 1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A four-view folder and a one-view folder of the same rows (the same view-0 bytes), built
    as imported_28_4views and imported_28 in one data_dir."""
    root = tmp_path_factory.mktemp("flow_views")
    four = make(root / "four", views=4)
    one = make(root / "one")
    build_dataset(f"flow_images/{FOUR}", data_dir=root / "tfds", manual_dir=four)
    build_dataset("flow_images/imported_28", data_dir=root / "tfds", manual_dir=one)
    return four, root / "tfds"


def _config(data_dir, *overrides):
    return load_config("flow_images:4views", [f"data.data_dir={data_dir}", *overrides])


def test_four_views_build_and_stack_in_the_documented_order(built):
    manual, data_dir = built
    data = load_dataset("flow_images", FOUR, data_dir)
    assert data.images.shape == (len(ROWS), 28, 28, 12)
    assert data.preprocessing["views"] == [v.feature for v in views.DATASET_VIEWS[4]]
    assert data.preprocessing["flow_method"] == "imported"
    row = list(data.clips).index("006_1_3")
    for k, suffix in enumerate(("", "_1", "_2", "_3")):  # channels 3k..3k+2: view k, as RGB
        image = cv2.imread(str(manual / IMAGES / f"006_006_1_3{suffix} .png"))[..., ::-1]
        np.testing.assert_array_equal(data.images[row, ..., 3 * k : 3 * k + 3], image)
    # the generated direction maps are what mjfn_jax.views says they are
    np.testing.assert_array_equal(data.images[..., 6:9], views.direction_map(data.images[..., 0:3]))


def test_the_first_view_alone_is_the_one_view_input(built):
    """data.views=(0,) on the four-view dataset gives the one-view dataset's images."""
    _, data_dir = built
    config = _config(data_dir, "data.views=(0,)", "model.input_channels=3")
    first = dataset_from_config(config.data, 28, 0)
    one = load_dataset("flow_images", "imported_28", data_dir)
    np.testing.assert_array_equal(first.images, one.images)
    np.testing.assert_array_equal(first.clips, one.clips)
    picked = dataset_from_config(_config(data_dir, "data.views=(1,3)",
                                         "model.input_channels=6").data, 28, 0)  # fmt: skip
    full = dataset_from_config(_config(data_dir).data, 28, 0)
    np.testing.assert_array_equal(picked.images, full.images[..., [3, 4, 5, 9, 10, 11]])


def test_a_missing_view_is_one_error_naming_the_clip_the_view_and_the_file(tmp_path):
    manual = make(tmp_path / "manual", views=4)
    os.remove(manual / IMAGES / "sub02_EP03_02f_2 .png")
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(f"flow_images/{FOUR}", data_dir=tmp_path / "tfds", manual_dir=manual)
    message = str(info.value)
    assert "\n" not in message
    expected = (r"no image in .* for .*row 5 \(clip casme2/sub02/EP03_02f, view 2 "
                r"\(onset->apex flow direction\): sub02_EP03_02f_2 .png\)")  # fmt: skip
    assert re.search(expected, message)
    # the same folder as one view: its other views are named, and what to build instead
    with pytest.raises(ValueError, match="without a CSV row: .*build the config imported_<size>"):
        build_dataset("flow_images/imported_28", data_dir=tmp_path / "t1", manual_dir=manual)


def test_the_flip_of_each_view(built):
    """Flow views mirror with u -> 255 - u; direction maps are recomputed from their mirrored
    flow views; the jitted flip (augment.hflip_batch), the reference (views.hflip_views) and the
    twin's (views.hflip_views_float) agree to the bit; flipping twice is the identity."""
    _, data_dir = built
    images = load_dataset("flow_images", FOUR, data_dir).images[:4]  # [4, 28, 28, 12] uint8
    flipped = views.hflip_views(images, LAYOUT)
    for k in (0, 1):  # the flow views: (255 - u, v, strain), mirrored
        mirrored = images[:, :, ::-1, 3 * k : 3 * k + 3]
        np.testing.assert_array_equal(flipped[..., 3 * k], 255 - mirrored[..., 0])
        np.testing.assert_array_equal(flipped[..., 3 * k + 1 : 3 * k + 3], mirrored[..., 1:])
    for k, source in ((2, 0), (3, 1)):  # the direction maps: of the flipped flow views
        want = views.direction_map(flipped[..., 3 * source : 3 * source + 3])
        np.testing.assert_array_equal(flipped[..., 3 * k : 3 * k + 3], want)
        assert not np.array_equal(want, images[:, :, ::-1, 3 * k : 3 * k + 3])  # not a mirror
    np.testing.assert_array_equal(views.hflip_views(flipped, LAYOUT), images)
    x = images.astype(np.float32) / 255.0
    jitted = np.asarray(hflip_batch(jnp.asarray(x), LAYOUT))
    np.testing.assert_array_equal(np.rint(jitted * 255), flipped)
    np.testing.assert_array_equal(views.hflip_views_float(x, LAYOUT), jitted)
    pytest.importorskip("torch")
    from experiments.pytorch_baseline.data import augment_image  # the twin's, per sample

    twin = augment_image(x[1], flip=True, shift=(0, 0), pad=0, layout=LAYOUT)
    np.testing.assert_array_equal(twin, jitted[1])
    # one view: the flip it always was
    one = np.asarray(hflip_batch(jnp.asarray(x[..., :3])))
    np.testing.assert_array_equal(np.rint(one * 255), views.hflip_views(images[..., :3]))


def test_a_direction_map_needs_its_flow_view_to_flip():
    from mjfn_jax.config import validate_config

    alone = ["data.views=(2,)", "model.input_channels=3"]
    with pytest.raises(ValueError, match=r"view 2 \(onset->apex flow direction\) is recomputed "
                                         r"from view 0"):  # fmt: skip
        validate_config(load_config("flow_images:4views", alone))
    validate_config(load_config("flow_images:4views", [*alone, "augment.hflip=False"]))


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model.input_channels=3"], r"model.input_channels=3: data.views=\(\) of a dataset of 4 "
                                     r"view\(s\) are 12 channels .*input_channels=12"),
        (["data.views=(0, 4)"], r"data.views=\(0, 4\): needs distinct view indices in \[0, 4\)"),
        (["data.dataset_views=2"], r"data.dataset_views=2: must be one of \(1, 4\)"),
    ],
)  # fmt: skip
def test_inconsistent_view_settings_are_named(overrides, expected):
    from mjfn_jax.config import validate_config

    with pytest.raises(ValueError, match=expected):
        validate_config(load_config("flow_images:4views", overrides))


def test_the_config_arg_convention():
    from mjfn_jax.config import validate_config
    from mjfn_jax.select import candidate_configs

    config = load_config("flow_images:4views")
    assert (config.data.dataset_views, config.data.views) == (4, ())
    assert config.model.input_channels == 12 and config.model.ststnet_copies == 5
    default = load_config("flow_images")
    assert (default.data.dataset_views, default.model.input_channels) == (1, 3)
    select = load_config("flow_images:4views_select")  # each fold: four views, or the first
    validate_config(select)
    assert select.data.views == () and select.folds.val_subject_fraction > 0
    assert [(c.data.views, c.model.input_channels) for c in candidate_configs(select)] == [
        ((), 12), ((0,), 3),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown argument '3views' .*'4views' or '4views_sel"):
        load_config("flow_images:3views")


def test_model_and_twin_agree_at_12_channels():
    """The parity helpers of test_parity at 12 input channels; the STSTNet branch's convolution
    reads the 12 channels too."""
    from flax import nnx

    from mjfn_jax.models import MJFN
    from tests.test_parity import assert_eval_twins_match, import_torch, tiny_config

    import_torch()
    cfg = tiny_config(16)
    cfg.input_channels = 12
    jax_model = assert_eval_twins_match(cfg)
    assert jax_model.stem.conv.kernel.shape == (3, 3, 12, 4)
    cfg.ststnet_branch, cfg.ststnet_copies = True, 5
    abstract = nnx.eval_shape(lambda: MJFN(cfg, rngs=nnx.Rngs(0)))
    assert abstract.branch.conv.kernel.shape == (3, 3, 12, 16 * 5)


def test_the_linear_floor_reads_every_channel(built):
    from mjfn_jax.folds import make_folds, pad_folds
    from mjfn_jax.linear_probe import fit_floor, floor_log_probs

    _, data_dir = built
    data = load_dataset("flow_images", FOUR, data_dir)
    arrays = pad_folds(make_folds(data.subjects, protocol="loso", num_folds=5,
                                  val_subject_fraction=0.0, seed=0))  # fmt: skip
    images = data.images[:, 10:18, 10:18]  # [12, 8, 8, 12]: a few pixels, every channel
    probs, _, weight, bias = fit_floor(images, data.labels, arrays, 3, 20, with_weights=True)
    assert weight.shape == (arrays.num_folds, 8 * 8 * 12, 3)
    test = arrays.test_idx[0][arrays.test_mask[0]]
    got = np.exp(floor_log_probs(weight[0], bias[0], images[test]))
    np.testing.assert_allclose(got, probs[test], atol=1e-4)


def test_predict_refuses_a_multi_view_model(tmp_path, capsys):
    from mjfn_jax import predict as predict_mod
    from mjfn_jax.config_io import config_to_dict

    config = load_config("flow_images:4views")
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(config)))
    flow = tmp_path / "flow.png"
    cv2.imwrite(str(flow), np.zeros((28, 28, 3), np.uint8))
    code = predict_mod.main(["--workdir", str(tmp_path), "--fold", "all",
                             "--flow_image", str(flow)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "12 input channels" in err and "one-view models only" in err
