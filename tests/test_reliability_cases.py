"""Issue 34's cases: a silent wrong input, a full disk, and errors that ended in tracebacks.

Each case is one clear line naming the file, row, field or flag, or a correct recovery. The
disk-full run is replayed by injecting the write error (OSError ENOSPC) into the saves.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli, train_and_evaluate

from data_builders.build import build_dataset
from data_builders.flow_images.dummy_data.make_dummy_data import CSV_NAME, IMAGES, make
from mjfn_jax import cli
from mjfn_jax import predict as predict_mod
from mjfn_jax.workdir import Lock, SaveFailed, WorkdirError

REPO = Path(__file__).resolve().parents[1]
IMAGE = "sub01_EP02_01f .png"  # one of the dummy flow-image folder's images


def _build(manual, data_dir, config="imported_28"):
    return build_dataset(f"flow_images/{config}", data_dir=data_dir, manual_dir=manual)


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# Case 1: "X .png" and "X.png" both present --------------------------------------------------


def test_two_images_for_one_row_are_an_error(tmp_path):
    manual = make(tmp_path / "manual")
    other = np.full((28, 28, 3), 7, np.uint8)  # different pixels from the row's image
    assert cv2.imwrite(str(manual / IMAGES / IMAGE.replace(" ", "")), other)
    with pytest.raises(ValueError) as info:
        _build(manual, tmp_path / "tfds")
    assert "two images for sub01_EP02_01f" in _one_line(info.value)
    assert repr(IMAGE) in str(info.value) and repr(IMAGE.replace(" ", "")) in str(info.value)


# Case 2 and 14: a rebuild checks its manual folder; a fresh build leaves nothing in /tmp ------


def test_a_fresh_build_leaves_no_temporary_folder(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where tfds's mkdtemp would go
    _build(make(tmp_path / "manual"), tmp_path / "tfds")
    assert list(temp.iterdir()) == []


def test_a_reused_build_must_come_from_the_same_manual_folder(tmp_path, capsys):
    from data_builders.__main__ import main as build_cli

    manual, data_dir = make(tmp_path / "manual"), tmp_path / "tfds"
    assert _build(manual, data_dir)["status"] == "built"
    moved = shutil.copytree(manual, tmp_path / "moved")  # the same files elsewhere: reused
    assert _build(moved, data_dir)["status"] == "already built (reused)"
    assert _build(None, data_dir)["status"] == "already built (reused)"  # no source named
    with pytest.raises(FileNotFoundError, match="manual folder .*nowhere does not exist"):
        _build(tmp_path / "nowhere", data_dir)
    csv = manual / CSV_NAME
    csv.write_text(csv.read_text().replace("EP19_05f,0", "EP19_05f,2"))  # one label edited
    with pytest.raises(ValueError, match="built from other files than .*manual holds now"):
        _build(manual, data_dir)
    argv = ["build", "flow_images/imported_28", "--data_dir", str(data_dir)]
    with pytest.raises(SystemExit) as info:
        build_cli([*argv, "--manual_dir", str(manual)])
    assert str(info.value.code).startswith("error: ") and "\n" not in str(info.value.code)


# Case 4: two builds of different configs generate one synthetic cache ----------------------


def test_concurrent_builds_generate_the_shared_frames_once(tmp_path, monkeypatch):
    """Two configs of synthetic built at once share downloads/synthetic_raw: the second waits
    for the first's frames instead of deleting its half-written folder."""
    import mjfn_jax.synthetic
    from data_builders.synthetic.synthetic_dataset_builder import generate

    calls, running = [], []

    def slow_generate_raw(out, **params):
        running.append(out)
        calls.append(len(running))  # how many generate at once
        (Path(out) / "frames").mkdir(parents=True)
        time.sleep(0.3)
        (Path(out) / "annotations.csv").write_text("subject,clip\n")
        running.pop()

    monkeypatch.setattr(mjfn_jax.synthetic, "generate_raw", slow_generate_raw)
    results, errors = [], []

    def build():
        try:
            results.append(generate(tmp_path / "synthetic_raw", num_subjects=2, seed=0))
        except Exception as e:  # the old code: one deleted the other's folder
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and calls == [1]
    assert results[0] == results[1] and (results[0] / "annotations.csv").is_file()


# Case 6: a workdir that cannot be a folder, or cannot be written -----------------------------


def test_an_unusable_workdir_is_one_line(tmp_path, monkeypatch, smoke_config, tiny_dataset):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(WorkdirError, match="a_file' as a workdir: it is a file"):
        train_and_evaluate(smoke_config(), str(a_file), dataset=tiny_dataset(2, 3))
    with pytest.raises(WorkdirError, match=f"{a_file} is a file, not a folder"):
        Lock(str(a_file / "run")).__enter__()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(WorkdirError) as info:
        Lock(str(tmp_path / "ro")).__enter__()
    assert "Read-only file system" in _one_line(info.value)


# Case 7: config file and override errors ----------------------------------------------------


@pytest.mark.parametrize(
    "config, override, expected",
    [
        ("missing.py", "--config.train.num_epochs=3",
         r"^error: --config=missing.py: config file not found: 'missing.py'"),
        ("bad.py", None, r"^error: --config=.*bad.py: invalid syntax \(bad.py, line 1\)"),
        ("bad.py", "--config.seed=1", r"^error: --config=.*bad.py: invalid syntax"),
        ("synthetic.py:smoke", "--config.train.num_epochz=3",
         r"^error: '--config.train.num_epochz=3': no config field 'train.num_epochz' "
         r'\(did you mean "num_epochs"\?\)$'),
        ("synthetic.py:smoke", "--config.trian.num_epochs=3",
         r"^error: '--config.trian.num_epochs=3': no config group 'trian' "
         r'\(did you mean "train"\?\)$'),
    ],
)  # fmt: skip
def test_config_flag_errors_are_one_line(tmp_path, monkeypatch, config, override, expected):
    import re

    from mjfn_jax import main as train_cli

    (tmp_path / "bad.py").write_text("def get_config(:\n")
    shutil.copy(REPO / "mjfn_jax/configs/synthetic.py", tmp_path / "synthetic.py")
    monkeypatch.chdir(tmp_path)
    argv = ["--config", config, "--workdir", str(tmp_path / "w"), *([override] or [])]
    argv = [a for a in argv if a is not None]
    with pytest.raises(SystemExit) as info:
        train_cli.main(argv)
    assert re.search(expected, str(info.value.code)), info.value.code
    assert "\n" not in str(info.value.code)
    assert not (tmp_path / "w").exists()


def test_config_flag_error_from_the_command_line(tmp_path, capsys):
    argv = ["--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "w"),
            "--config.train.num_epochs=3"]  # fmt: skip
    from mjfn_jax import main as train_cli

    status, _, stderr = run_cli(train_cli.main, argv, capsys)
    assert status != 0
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"error: --config={tmp_path / 'missing.py'}: config file not found")


def test_load_config_overrides_suggest_the_near_field():
    from mjfn_jax.config_io import load_config

    with pytest.raises(KeyError) as info:
        load_config("synthetic:smoke", ["train.num_epochz=3"])
    assert info.value.args[0].endswith(
        "no config field 'train.num_epochz' (did you mean \"num_epochs\"?)"
    )


# Case 8: a CSV that is not UTF-8 -------------------------------------------------------------


def test_a_latin1_csv_names_the_file_and_row(tmp_path):
    manual = make(tmp_path / "manual")
    csv = manual / CSV_NAME
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace("EP01_11f", "EP01_11f_é")  # a clip id with an accent
    csv.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError) as info:
        _build(manual, tmp_path / "tfds")
    assert f"{csv}, row 4: byte 0xe9 is not UTF-8" in _one_line(info.value)


# Case 9: an image size no config takes -------------------------------------------------------


@pytest.mark.parametrize("shape, expected", [((40, 40), "40x40"), ((28, 30), "30x28")])
def test_an_image_size_without_a_config_is_named_as_such(tmp_path, shape, expected):
    manual = make(tmp_path / "manual")
    assert cv2.imwrite(str(manual / IMAGES / IMAGE), np.zeros((*shape, 3), np.uint8))
    with pytest.raises(ValueError) as info:
        _build(manual, tmp_path / "tfds")
    message = _one_line(info.value)
    assert f"no config takes {expected} images (configs: imported_28, " in message
    assert "imported_40" not in message and "imported_30" not in message


# Case 10: a negative seed names the field ----------------------------------------------------


def test_a_negative_seed_names_the_field(smoke_config, tiny_dataset):
    with pytest.raises(ValueError, match=r"^seed=-5: needs an int in \[0, 2\*\*31\)"):
        train_and_evaluate(smoke_config("seed=-5"), "unused", dataset=tiny_dataset(2, 3))


# Case 11: a batch larger than every fold's training set --------------------------------------


def test_a_batch_larger_than_the_training_set_warns(smoke_config, tiny_dataset, caplog):
    from mjfn_jax.units import make_units

    with caplog.at_level(logging.WARNING, logger="mjfn_jax"):
        make_units(smoke_config("train.batch_size=5000"), tiny_dataset(3, 3), "unused")
    assert "train.batch_size=5000 exceeds the largest fold's 6 training clips" in caplog.text


# Case 13: an output path that is a folder ----------------------------------------------------


def test_an_output_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "out.png"
    folder.mkdir()
    args = ["--workdir", str(tmp_path / "nowhere"), "--fold", "s01", "--flow_image", "f.png"]
    assert predict_mod.main([*args, "--save_flow_image", str(folder)]) == 2
    assert f"--save_flow_image {folder} is a folder" in capsys.readouterr().err
    assert predict_mod.main(["--video", "v.mp4", *args[:4], "--plot", str(folder)]) == 2
    assert f"--plot {folder} is a folder" in capsys.readouterr().err


# Cases 3, 5, 12, 15: runs that train ---------------------------------------------------------

FOLD = "synthetic__s01"
OVERRIDES = ("train.num_epochs=3", "checkpoint.every_epochs=1", "report.linear_floor=True")


class Killed(Exception):
    pass


def _kill_after(epochs: int, seen: list | None = None):
    def callback(done):
        if seen is not None:
            seen.append(done)
        if done.trained_this_run >= epochs:
            raise Killed

    return callback


@pytest.fixture(scope="module")
def in_progress(tmp_path_factory, smoke_config, tiny_dataset):
    """(config, dataset, a workdir killed after 2 of fold s01's 3 epochs: checkpoints 1, 2)."""
    config, dataset = smoke_config(*OVERRIDES), tiny_dataset(2, 3)
    workdir = str(tmp_path_factory.mktemp("in_progress"))
    with pytest.raises(Killed):
        train_and_evaluate(config, workdir, dataset=dataset, after_epochs=_kill_after(2))
    assert sorted(os.listdir(os.path.join(workdir, "folds", FOLD, "checkpoints"))) == ["1", "2"]
    return config, dataset, workdir


def _flow_png(tmp_path, dataset) -> str:
    path = str(tmp_path / "flow.png")
    assert cv2.imwrite(path, np.ascontiguousarray(dataset.images[0][..., ::-1]))
    return path


@pytest.mark.slow
def test_a_checkpoint_deleted_while_predicting_is_read_again(in_progress, tmp_path, monkeypatch):
    """Case 5: the listed step vanishes before it is read (the run moved on): predict reads
    the fold again as it is now; a damaged step with nothing moving is one line."""
    from mjfn_jax.checkpoint import FoldCheckpointer

    _, dataset, workdir = in_progress
    workdir = shutil.copytree(workdir, tmp_path / "copy")
    image = _flow_png(tmp_path, dataset)
    restore, deleted = FoldCheckpointer.restore, []

    def racing(self, epochs_done, like):
        if not deleted:  # the training run deletes the step between listing and restore
            deleted.append(epochs_done)
            shutil.rmtree(self.step_dir(epochs_done))
        return restore(self, epochs_done, like)

    monkeypatch.setattr(FoldCheckpointer, "restore", racing)
    args = ["--workdir", str(workdir), "--fold", "all", "--flow_image", image, "--json"]
    assert predict_mod.main(args) == 0
    out = predict_mod.predict(str(workdir), "all", flow_image=image)
    assert deleted == [2] and out["epoch"] == 1 and not out["finished"]
    shutil.rmtree(os.path.join(workdir, "folds", FOLD, "checkpoints", "1", "state"))
    with pytest.raises(ValueError, match=r"checkpoints/1 is unreadable"):
        predict_mod.predict(str(workdir), "all", flow_image=image)


@pytest.mark.slow
def test_with_floor_on_a_run_still_training_says_not_yet(in_progress, tmp_path):
    """Case 12: the floor is fitted after the last fold; before that it is 'not yet', not
    'report.linear_floor=False'."""
    _, dataset, workdir = in_progress
    with pytest.raises(FileNotFoundError) as info:
        predict_mod.predict(
            workdir, "s01", flow_image=_flow_png(tmp_path, dataset), with_floor=True
        )
    message = _one_line(info.value)
    assert "has not fitted its linear floor yet" in message and "=False" not in message


@pytest.mark.slow
def test_a_clip_without_motion_is_flagged(in_progress, tmp_path):
    """Case 15: onset equal to apex (or a uniform flow image) gives probabilities and a
    warning that the flow is (near) zero."""
    _, dataset, workdir = in_progress
    frame = str(tmp_path / "frame.png")
    rng = np.random.default_rng(0)
    assert cv2.imwrite(frame, rng.integers(0, 255, (48, 48, 3), np.uint8))
    out = predict_mod.predict(workdir, "s01", onset=frame, apex=frame, crop="center")
    assert out["max_flow_px"] == 0.0 and "(near) zero" in out["warnings"][0]
    assert "warning: the flow between onset and apex is (near) zero" in (
        predict_mod.format_prediction(out)
    )
    flat = str(tmp_path / "flat.png")
    assert cv2.imwrite(flat, np.zeros((32, 32, 3), np.uint8))
    assert "uniform" in predict_mod.predict(workdir, "s01", flow_image=flat)["warnings"][0]
    moving = predict_mod.predict(workdir, "s01", flow_image=_flow_png(tmp_path, dataset))
    assert moving["warnings"] == []


def _partial_files(workdir: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, dirs, files in os.walk(workdir)
        for name in files + dirs
        if ".tmp" in name or "orbax-checkpoint-tmp" in name
    ]


def _no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _cli_line(error: BaseException) -> str:
    """The line the command-line entry points print for ``error``."""
    with pytest.raises(SystemExit) as info:
        with cli.expected_errors():
            raise error
    return str(info.value.code)


@pytest.mark.slow
def test_a_full_disk_stops_at_the_first_failed_save_and_resumes(
    smoke_config, tiny_dataset, tmp_path, monkeypatch
):
    """Case 3: the save of the first fold's second epoch fails (no space): the run stops there
    with one line naming the path and the free space, no other fold trains, nothing half
    written stays; the same for its final model; with space back the rerun gives the
    uninterrupted run's results."""
    import orbax.checkpoint as ocp

    config, dataset = smoke_config(*OVERRIDES), tiny_dataset(2, 3)
    reference = train_and_evaluate(config, str(tmp_path / "reference"), dataset=dataset)
    workdir = str(tmp_path / "full")
    save = ocp.CheckpointManager.save

    def save_without_space(self, step, *args, **kwargs):
        if step == 2:  # Orbax's temporary folder is left half written, then the write fails
            tmp = Path(self.directory) / f"2.orbax-checkpoint-tmp-{time.time_ns()}"
            (tmp / "state").mkdir(parents=True)
            (tmp / "state" / "d").write_bytes(b"\0" * 100)
            raise _no_space(tmp / "state" / "d")
        return save(self, step, *args, **kwargs)

    seen = []
    with monkeypatch.context() as patch:
        patch.setattr(ocp.CheckpointManager, "save", save_without_space)
        with pytest.raises(SaveFailed) as info:
            train_and_evaluate(config, workdir, dataset=dataset, after_epochs=_kill_after(9, seen))
    message = _one_line(_cli_line(info.value))
    step = os.path.join(workdir, "folds", FOLD, "checkpoints", "2")
    assert f"cannot save {step}: No space left on device (" in message and " free there)" in message
    assert {d.folds for d in seen} == {(FOLD,)} and max(d.epoch for d in seen) <= 3
    assert _partial_files(workdir) == []

    save_model = ocp.Checkpointer.save

    def model_without_space(self, directory, *args, **kwargs):
        if not str(directory).endswith("model"):
            return save_model(self, directory, *args, **kwargs)
        tmp = Path(f"{directory}.orbax-checkpoint-tmp-{time.time_ns()}")  # left half written
        (tmp / "d").mkdir(parents=True)
        (tmp / "d" / "x").write_bytes(b"\0" * 100)
        raise _no_space(tmp / "d" / "x")

    with monkeypatch.context() as patch:
        patch.setattr(ocp.Checkpointer, "save", model_without_space)
        with pytest.raises(SaveFailed, match=r"cannot save .*synthetic__s01/model: No space"):
            train_and_evaluate(config, workdir, dataset=dataset)
    assert _partial_files(workdir) == []
    assert not os.path.exists(os.path.join(workdir, "folds", FOLD, "done.json"))

    results = train_and_evaluate(config, workdir, dataset=dataset)  # space is back
    np.testing.assert_array_equal(results["y_pred"], reference["y_pred"])
    np.testing.assert_allclose(results["probs"], reference["probs"], rtol=0, atol=1e-6)
    assert _partial_files(workdir) == []
