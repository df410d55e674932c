"""The predict command on a tiny workdir trained once by the engine (2 subjects, 1 epoch)."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import train_and_evaluate

from mjfn_jax import predict as predict_mod
from mjfn_jax.config_io import load_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished LOSO run over 2 synthetic subjects (folds synthetic__s01, synthetic__s02)."""
    from mjfn_jax.data import Dataset
    from mjfn_jax.synthetic import make_flow_arrays

    arrays = make_flow_arrays(2, 3, 32, 0)
    dataset = Dataset.from_synthetic_arrays(arrays)
    config = load_config(
        "mjfn_jax/configs/synthetic.py:smoke",
        ["parallel.strategy=sequential", "train.num_epochs=1", "report.linear_floor=True"],
    )
    workdir = str(tmp_path_factory.mktemp("run"))
    results = train_and_evaluate(config, workdir, dataset=dataset)
    return workdir, dataset, results


@pytest.fixture(scope="module")
def s02(trained):
    """One Predictor of fold synthetic__s02 for the tests that predict its clips (restored and
    compiled once, as a user predicting many clips keeps one)."""
    return predict_mod.Predictor(trained[0], "synthetic/s02")


def _write_rgb(path, image):
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    return str(path)


def test_flow_image_prediction_matches_the_engine(trained, s02, tmp_path):
    """The clips' own fold reproduces the engine's test prediction for each of them."""
    _, dataset, results = trained
    for i in np.flatnonzero(dataset.subjects == "synthetic/s02"):
        path = _write_rgb(tmp_path / f"flow{i}.png", dataset.images[i])
        out = s02.predict(flow_image=path)
        assert out["fold"] == "synthetic__s02" and out["epoch"] == 1 and out["finished"]
        assert out["class_names"] == tuple(dataset.class_names)
        np.testing.assert_allclose(out["probs"], results["probs"][i], atol=1e-5)
        assert out["pred"] == dataset.class_names[int(results["y_pred"][i])]


# Run by a bare interpreter: plain Orbax, and not this package (checked at its end).
BARE_RESTORE = """
import sys

import numpy as np
import orbax.checkpoint as ocp

model = ocp.StandardCheckpointer().restore(sys.argv[1])
arrays = {f"{part}/{name}": x for part, tree in model.items() for name, x in tree.items()}
np.savez(sys.argv[2], **arrays)
assert "mjfn_jax" not in sys.modules, sorted(m for m in sys.modules if m.startswith("mjfn"))
"""


def test_a_folds_model_restores_with_plain_orbax_and_predicts_as_the_run(trained, s02, tmp_path):
    """A finished fold's model/ is read by ocp.StandardCheckpointer().restore(path) in a process
    that never imports mjfn_jax; built from those arrays, the model predicts the fold's test
    clips as the run did, and a clip as mjfn-predict does."""
    import jax
    import jax.numpy as jnp

    from mjfn_jax.engine import FoldProgram

    workdir, dataset, results = trained
    out = tmp_path / "arrays.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", BARE_RESTORE,
         os.path.join(workdir, "folds", "synthetic__s02", "model"), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    model = {"params": {}, "batch_stats": {}}
    with np.load(out) as z:
        for key in z.files:
            part, name = key.split("/", 1)
            model[part][name] = z[key]
    program = FoldProgram(predict_mod.load_run_config(workdir), steps_per_epoch=1)
    test = np.flatnonzero(dataset.subjects == "synthetic/s02")
    data = {"images": jnp.asarray(dataset.images), "labels": jnp.asarray(dataset.labels)}
    probs = np.exp(np.asarray(jax.jit(program.predict)(model, data, jnp.asarray(test, jnp.int32))))
    np.testing.assert_allclose(probs, results["probs"][test], atol=1e-5)
    path = _write_rgb(tmp_path / "flow.png", dataset.images[test[1]])
    np.testing.assert_allclose(probs[1], s02.predict(flow_image=path)["probs"], atol=1e-5)


def test_with_floor_is_the_reports_network_plus_floor(trained, s02, tmp_path, capsys):
    """--with_floor: the fold's linear floor (its probe, kept by the run) reproduces the run's
    floor prediction of the clip, and the result is the mean with the network's."""
    workdir, dataset, results = trained
    i = int(np.flatnonzero(dataset.subjects == "synthetic/s02")[1])
    path = _write_rgb(tmp_path / "flow.png", dataset.images[i])
    out = s02.predict(flow_image=path, with_floor=True)
    with np.load(os.path.join(workdir, "linear_floor.npz")) as z:
        np.testing.assert_allclose(out["floor_probs"], z["probs"][i], atol=1e-4)
    np.testing.assert_allclose(out["network_probs"], results["probs"][i], atol=1e-5)
    np.testing.assert_allclose(out["probs"], (out["network_probs"] + out["floor_probs"]) / 2)
    args = ["--workdir", workdir, "--fold", "synthetic__s02", "--flow_image", path]
    assert predict_mod.main([*args, "--with_floor"]) == 0
    assert "network    floor     mean" in capsys.readouterr().out
    assert predict_mod.main([*args, "--with_floor", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # one key per fact
    assert set(printed["floor_probabilities"]) == set(dataset.class_names)
    assert not {"probs", "pred", "floor_probs", "network_probs"} & set(printed)
    # a run without the floor's probes: one line naming the file
    bare = tmp_path / "bare"
    shutil.copytree(workdir, bare)
    os.remove(bare / "linear_floor.npz")
    assert predict_mod.main(["--workdir", str(bare), *args[2:], "--with_floor"]) == 2
    err = capsys.readouterr().err
    assert "linear_floor.npz not found" in err and len(err.strip().splitlines()) == 1
    # a damaged file: one line naming it, not a traceback
    (bare / "linear_floor.npz").write_bytes(b"PK\x03\x04 cut short")
    assert predict_mod.main(["--workdir", str(bare), *args[2:], "--with_floor"]) == 2
    err = capsys.readouterr().err
    assert "linear_floor.npz is damaged" in err and len(err.strip().splitlines()) == 1


def test_onset_apex_prediction_uses_the_builder_preprocessing(trained, tmp_path):
    from mjfn_jax.preprocess import process_pair, read_frame
    from mjfn_jax.synthetic import generate_raw

    workdir, _, _ = trained
    generate_raw(tmp_path / "raw", num_subjects=1, clips_per_subject=1, seed=3, workers=1)
    with open(tmp_path / "raw" / "annotations.csv") as f:
        row = f.read().splitlines()[1].split(",")  # subject, clip, onset, apex, offset, emotion
    clip_dir = tmp_path / "raw" / "frames" / row[0] / row[1]
    onset, apex = str(clip_dir / f"img{row[2]}.png"), str(clip_dir / f"img{row[3]}.png")
    out = predict_mod.predict(workdir, "s01", onset=onset, apex=apex)
    assert out["settings"] == {
        "flow_method": "tvl1",
        "size": 32,
        "encoding": "uvs",
        "crop": "center",
    }
    expected = process_pair(
        read_frame(onset), read_frame(apex), flow_method="tvl1", size=32, crop="center"
    )
    np.testing.assert_array_equal(out["flow_image"], expected.flow_image)
    assert out["probs"].shape == (3,) and out["probs"].sum() == pytest.approx(1.0, abs=1e-5)
    assert out["pred"] == out["class_names"][int(np.argmax(out["probs"]))]


def test_cli_prints_probabilities_and_json(trained, tmp_path, capsys):
    workdir, dataset, _ = trained
    path = _write_rgb(tmp_path / "flow.png", dataset.images[0])
    saved = str(tmp_path / "input.png")
    args = ["--workdir", workdir, "--fold", "synthetic__s01", "--flow_image", path]
    assert predict_mod.main([*args, "--save_flow_image", saved]) == 0
    text = capsys.readouterr().out
    for name in dataset.class_names:
        assert name in text
    assert "prediction:" in text and "checkpoint after epoch 1 of 1" in text
    np.testing.assert_array_equal(cv2.imread(saved)[..., ::-1], dataset.images[0])
    assert predict_mod.main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_errors_name_the_problem(trained, tmp_path, capsys):
    workdir, dataset, _ = trained
    good = _write_rgb(tmp_path / "flow.png", dataset.images[0])
    with pytest.raises(ValueError, match=r"unknown fold 's09'.*synthetic__s01, synthetic__s02"):
        predict_mod.predict(workdir, "s09", flow_image=good)
    with pytest.raises(FileNotFoundError, match="workdir not found"):
        predict_mod.predict(str(tmp_path / "nowhere"), "s01", flow_image=good)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        predict_mod.predict(str(tmp_path), "s01", flow_image=good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        predict_mod.predict(workdir, "s01", flow_image=str(bad))
    with pytest.raises(FileNotFoundError, match="missing_onset.png"):
        predict_mod.predict(workdir, "s01", onset=str(tmp_path / "missing_onset.png"), apex=good)
    big = _write_rgb(tmp_path / "big.png", np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="is 48x48; this model takes 32x32"):
        predict_mod.predict(workdir, "s01", flow_image=big)
    with pytest.raises(ValueError, match="either both onset and apex"):
        predict_mod.predict(workdir, "s01", onset=good)
    assert predict_mod.main(["--workdir", workdir, "--fold", "s09", "--flow_image", good]) == 2
    assert "unknown fold" in capsys.readouterr().err


def test_flow_image_must_have_three_channels(trained, tmp_path, capsys):
    """A grayscale or RGBA file is not a flow image (it used to become u = v = strain)."""
    workdir, dataset, _ = trained
    gray = tmp_path / "gray.png"
    assert cv2.imwrite(str(gray), dataset.images[0][..., 0])
    rgba = tmp_path / "rgba.png"
    assert cv2.imwrite(str(rgba), np.dstack([dataset.images[0], np.full((32, 32), 255, np.uint8)]))
    for path, channels in ((gray, 1), (rgba, 4)):
        with pytest.raises(ValueError, match=rf"{path.name} has {channels} channel"):
            predict_mod.predict(workdir, "s01", flow_image=str(path))


def test_save_flow_image_target_is_checked_first(trained, tmp_path, capsys):
    """A missing folder or a non-PNG name: one error line, exit 2, nothing predicted."""
    workdir, dataset, _ = trained
    good = _write_rgb(tmp_path / "flow.png", dataset.images[0])
    args = ["--workdir", workdir, "--fold", "s01", "--flow_image", good, "--save_flow_image"]
    assert predict_mod.main([*args, str(tmp_path / "missing" / "x.png")]) == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and "prediction:" not in captured.out
    assert predict_mod.main([*args, str(tmp_path / "out.txt")]) == 2
    assert "name a .png" in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()


def test_preprocessing_settings_come_from_the_workdirs_dataset_record(trained, tmp_path):
    workdir, dataset, _ = trained
    record = predict_mod.load_dataset_record(workdir)
    assert record["class_names"] == list(dataset.class_names)
    assert predict_mod.preprocessing_settings(record) == {
        "flow_method": "tvl1",
        "size": 32,
        "encoding": "uvs",
        "crop": "center",  # the generator's square frames
    }
    composite = {"preprocessing": {"flow_method": "dis", "size": 112,
                                   "crop": {"haar": 300, "center": 142}}}  # fmt: skip
    assert predict_mod.preprocessing_settings(composite)["crop"] == "haar"  # the most frequent
    assert predict_mod.preprocessing_settings(composite, crop="none")["crop"] == "none"
    os.makedirs(tmp_path / "old")  # a workdir without the record: one error with the remedy
    with open(tmp_path / "old" / "dataset.json", "w") as f:
        f.write('{"sha256": "x", "class_names": ["a", "b"]}')
    with pytest.raises(ValueError, match="rerun its training command"):
        predict_mod.load_dataset_record(str(tmp_path / "old"))
    imported = tmp_path / "imported"  # a run on published images: only --flow_image
    shutil.copytree(workdir, imported)
    record["preprocessing"]["flow_method"] = "imported"
    with open(imported / "dataset.json", "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match="trained on imported flow images"):
        predict_mod.predict(str(imported), "s01", onset="a.png", apex="b.png")


def test_unfinished_fold_is_flagged(trained, tmp_path):
    workdir, dataset, _ = trained
    good = _write_rgb(tmp_path / "flow.png", dataset.images[0])
    done = os.path.join(workdir, "folds", "synthetic__s01", "done.json")
    os.rename(done, done + ".bak")  # as if the run had been killed after the last checkpoint
    try:
        out = predict_mod.predict(workdir, "s01", flow_image=good)
    finally:
        os.rename(done + ".bak", done)
    assert out["finished"] is False
    assert "NOT finished" in predict_mod.format_prediction(out)


# --- raw clips: --video / --frames, spotted apex, --fold all ------------------------------------


@pytest.fixture(scope="module")
def raw_clip(tmp_path_factory):
    """A generator clip as a frame folder, an mp4 (mp4v) and an avi (MJPG): (paths, true apex
    position in the clip, frame count). Those two codecs are what the opencv wheel writes here
    (avc1/H.264 is not available)."""
    from mjfn_jax.synthetic import generate_raw

    root = tmp_path_factory.mktemp("raw")
    # Seed 7: an expression of 0.9 px over 0.9 grey levels of noise. The error statistics over
    # every amplitude (down to 0.1 px, under the noise floor) are tools/apex_spotting.py's.
    generate_raw(root, num_subjects=1, clips_per_subject=1, seed=7, workers=1)
    with open(root / "annotations.csv") as f:
        row = f.read().splitlines()[1].split(",")  # subject, clip, onset, apex, offset, emotion
    clip_dir = root / "frames" / row[0] / row[1]
    onset, apex, offset = int(row[2]), int(row[3]), int(row[4])
    frames = [cv2.imread(str(clip_dir / f"img{k}.png")) for k in range(onset, offset + 1)]
    paths = {"frames": str(clip_dir)}
    for ext, codec in (("mp4", "mp4v"), ("avi", "MJPG")):
        path = str(root / f"clip.{ext}")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), 25, frames[0].shape[1::-1])
        assert writer.isOpened(), codec
        for frame in frames:
            writer.write(frame)
        writer.release()
        paths[ext] = path
    return paths, apex - onset, len(frames)


def test_frame_folder_spots_the_apex_and_all_folds_average(trained, raw_clip):
    workdir, _, _ = trained
    paths, true_apex, count = raw_clip
    out = predict_mod.predict(workdir, "all", frames=paths["frames"])
    assert out["onset"] == 0 and out["apex_spotted"] and out["num_frames"] == count
    assert abs(out["apex"] - true_apex) <= 2, (out["apex"], true_apex)
    assert out["fold"] == "all" and out["folds"] == ["synthetic__s01", "synthetic__s02"]
    # The ensemble is the mean of each fold's own prediction on the same frames.
    each = [
        predict_mod.predict(workdir, f, frames=paths["frames"], apex_frame=out["apex"])["probs"]
        for f in out["folds"]
    ]
    np.testing.assert_allclose(out["probs"], np.mean(each, axis=0), atol=1e-6)
    assert "mean of 2 folds' models" in predict_mod.format_prediction(out)
    raw = predict_mod.predict(workdir, "s01", frames=paths["frames"], spot="detrend=false")
    assert raw["motion_curve"] != out["motion_curve"]  # --spot reaches spot_apex
    # The chosen pair goes through the builders' preprocessing (frames decoded like read_frame).
    from mjfn_jax.preprocess import process_pair, read_frame

    pair = [read_frame(os.path.join(paths["frames"], out[k])) for k in ("onset_name", "apex_name")]
    expected = process_pair(*pair, flow_method="tvl1", size=32, crop="center").flow_image
    np.testing.assert_array_equal(out["flow_image"], expected)
    assert f"apex frame {out['apex']} (img" in predict_mod.format_prediction(out)


def test_a_predictor_restores_every_fold_once_and_traces_once(trained, monkeypatch):
    """--fold all: every fold's model restores into the structures of one program, whose init
    is traced once (jax.eval_shape), not once per fold; a Predictor keeps them, so its further
    clips restore and trace nothing."""
    from mjfn_jax.engine import FoldProgram

    workdir, dataset, _ = trained
    traced, init = [], FoldProgram.init
    monkeypatch.setattr(FoldProgram, "init", lambda self, key: traced.append(1) or init(self, key))
    restored, restore = [], predict_mod.restore_fold
    spy = lambda *args: restored.append(args[1]) or restore(*args)  # noqa: E731
    monkeypatch.setattr(predict_mod, "restore_fold", spy)
    predictor = predict_mod.Predictor(workdir, "all")
    for image in dataset.images[[0, 4]]:
        probs, metas = predictor.probabilities(image)
        assert probs.shape == (3,) and abs(probs.sum() - 1) < 1e-6 and len(metas) == 2
    assert restored == ["synthetic__s01", "synthetic__s02"] and len(traced) == 1


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_video_cli_json_and_plot(trained, raw_clip, tmp_path, capsys, ext):
    workdir, dataset, _ = trained
    paths, true_apex, count = raw_clip
    plot = tmp_path / "curve.png"
    args = ["--workdir", workdir, "--fold", "s01", "--video", paths[ext], "--json"]
    assert predict_mod.main([*args, "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["onset"] == 0 and abs(out["apex"] - true_apex) <= 2, (out["apex"], true_apex)
    assert set(out["probabilities"]) == set(dataset.class_names)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["prediction"] in dataset.class_names and len(out["motion_curve"]) == count
    assert cv2.imread(str(plot)).shape[2] == 3
    # Given frames: no spotting needed, the curve is still drawn for --plot.
    assert predict_mod.main([*args, "--onset_frame", "1", "--apex_frame", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["onset"], out["apex"], out["apex_spotted"]) == (1, 3, False)


def _write_frames(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        assert cv2.imwrite(str(folder / f"f{i}.png"), image)
    return str(folder)


def test_bad_raw_input_is_one_error_line(trained, raw_clip, tmp_path, capsys):
    workdir, _, _ = trained
    paths, _, count = raw_clip
    empty, garbage = tmp_path / "empty.mp4", tmp_path / "garbage.avi"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a video at all" * 100)
    texture = cv2.resize(np.random.default_rng(0).integers(0, 255, (8, 8), np.uint8), (64, 64))
    cases = {
        ("--video", str(empty)): "empty.mp4",
        ("--video", str(garbage)): "garbage.avi",
        ("--video", str(tmp_path / "missing.mp4")): "missing.mp4: file not found",
        ("--frames", _write_frames(tmp_path / "one", [texture])): "1 frame image(s) found",
        ("--frames", _write_frames(tmp_path / "mixed", [texture, texture[:48]])): "f1.png is 64x48",
        ("--frames", paths["frames"], "--apex_frame", str(count)): f"--apex_frame {count}",
        ("--frames", paths["frames"], "--apex_frame", "0"): "--apex_frame 0",
        ("--frames", paths["frames"], "--onset_frame", "-1"): "--onset_frame -1",
        ("--frames", paths["frames"], "--spot", "work_size=x"): "setting 'work_size=x': 'x' is not",
        ("--frames", _write_frames(tmp_path / "blank", [texture] * 3), "--crop", "haar"): (
            "no face found on the onset frame 0 (f0.png)"
        ),
    }
    for extra, expected in cases.items():
        assert predict_mod.main(["--workdir", workdir, "--fold", "s01", *extra]) == 2, extra
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and expected in captured.err, captured.err
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert captured.out == ""
    blank = _write_rgb(tmp_path / "blank.png", np.full((64, 64, 3), 90, np.uint8))
    args = ["--workdir", workdir, "--fold", "s01", "--onset", blank, "--apex", blank]
    assert predict_mod.main([*args, "--crop", "haar"]) == 2
    assert "no face found on the onset frame " + blank in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --apex_frame belongs to raw clips
        predict_mod.main(["--workdir", workdir, "--fold", "s01", "--flow_image", "x.png",
                          "--apex_frame", "2"])  # fmt: skip
    assert "--apex_frame needs --video or --frames" in capsys.readouterr().err


def test_cli_process_bad_video_is_one_line(trained, tmp_path):
    """As a process: the stderr (FFmpeg's own log included) is exactly one error line."""

    workdir, _, _ = trained
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    run = subprocess.run(
        [sys.executable, "-m", "mjfn_jax.predict", "--workdir", workdir, "--fold", "all",
         "--video", str(empty)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"error: --video {empty}: cannot open it as a video (unknown or broken file)"
    ]


def test_resolve_fold_of_a_leave_one_dataset_out_run(tmp_path):
    for name in ("lodo__casme2", "lodo__samm"):  # finished folds (their model files)
        os.makedirs(tmp_path / "folds" / name)
        os.makedirs(tmp_path / "folds" / name / "model")
    workdir = str(tmp_path)
    assert predict_mod.resolve_fold(workdir, "casme2/sub01") == "lodo__casme2"
    assert predict_mod.resolve_fold(workdir, "samm") == "lodo__samm"
    assert predict_mod.resolve_fold(workdir, "lodo__samm") == "lodo__samm"
    with pytest.raises(ValueError, match="unknown fold 'smic/s01'"):
        predict_mod.resolve_fold(workdir, "smic/s01")


def test_repredict_reproduces_the_run_and_adds_test_time_flips(trained):
    """tools/repredict.py: the saved fold models re-predict the run's pooled metrics
    exactly without flips; with flips they are the engine's augment.test_hflip predictions."""
    from tools.repredict import repredict

    workdir, dataset, results = trained
    out = repredict(workdir, dataset=dataset)
    assert out[False]["uf1"] == results["pooled"]["uf1"]
    assert out[False]["confusion"] == results["pooled"]["confusion"]
    assert out[True]["n"] == results["pooled"]["n"]


def test_repredict_final_dtypes_counts_what_each_saved_dtype_changes(trained):
    """tools/repredict.py --final_dtypes: float32 reproduces the run exactly (nothing
    changed); each other dtype's count of changed predictions is what its metrics imply."""
    from tools.repredict import final_dtypes

    workdir, dataset, results = trained
    out = final_dtypes(workdir, dataset=dataset)
    assert set(out) == {"float32", "bfloat16"}
    assert out["float32"]["confusion"] == results["pooled"]["confusion"]
    assert out["float32"]["changed"] == 0
    for name in ("bfloat16",):
        m = out[name]
        assert m["n"] == results["pooled"]["n"] and 0 <= m["changed"] <= m["n"]
        if m["changed"] == 0:  # the same predicted class for every clip: the same confusion
            assert m["confusion"] == results["pooled"]["confusion"]
