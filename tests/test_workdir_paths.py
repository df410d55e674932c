"""A workdir's records on object storage (``gs://``) as on a local folder (mjfn_jax.storage).

The object store is fsspec's in-memory file system registered under the ``gs`` protocol, so
``etils.epath.Path("gs://bucket/run")`` takes its real object-storage path (the fsspec backend;
TensorFlow is not installed) without a network or gcsfs. It has no rename and no flock, as
GCS has none that the code may rely on."""

import importlib
import importlib.util
import json
import logging
import os
import re

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from mjfn_jax import storage
from mjfn_jax import workdir as workdir_lib
from mjfn_jax.workdir import Lock, WorkdirError

BUCKET = "gs://bucket/run"


class FakeGCS(MemoryFileSystem):
    """gs:// objects in memory (a store of its own, not MemoryFileSystem's shared one)."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def mv(self, *args, **kwargs):
        raise NotImplementedError("no rename on object storage")

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return super()._strip_protocol(path)


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """The fake gs:// store, empty; the working directory an empty local folder, so that a
    write that wrongly went to the local disk (a ``gs:`` folder) shows."""
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec.registry: a view
    get_filesystem = type(epath_backend.fsspec_backend)._get_filesystem
    for protocol in FakeGCS.protocol:
        monkeypatch.setitem(registry, protocol, FakeGCS)
    get_filesystem.cache_clear()
    FakeGCS.clear_instance_cache()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    monkeypatch.chdir(tmp_path)
    yield FakeGCS.store
    get_filesystem.cache_clear()
    FakeGCS.clear_instance_cache()
    assert os.listdir(tmp_path) == [], "a gs:// write went to the local disk"


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("gcs")
    return BUCKET


def _objects(store) -> list[str]:
    return sorted(k.removeprefix("/bucket/run/") for k in store)


def test_is_local():
    assert storage.is_local("/tmp/run") and storage.is_local("workdirs/run")
    assert not storage.is_local("gs://bucket/run") and not storage.is_local("s3://b/run")


def test_json_and_npz_round_trip(workdir):
    path = os.path.join(workdir, "folds", "sub01", "done.json")
    storage.makedirs(os.path.dirname(path))
    workdir_lib.write_json(path, {"epochs": 3})
    workdir_lib.write_json(storage.as_path(path), {"epochs": 4})  # str or epath.Path
    assert workdir_lib.read_json(path) == {"epochs": 4}
    floor = os.path.join(workdir, workdir_lib.LINEAR_FLOOR_FILE)
    workdir_lib.write_npz(floor, probs=np.eye(3, dtype=np.float32), folds=np.array(["a", "b"]))
    with storage.load_npz(floor) as z:
        np.testing.assert_array_equal(z["probs"], np.eye(3))
        assert z["folds"].tolist() == ["a", "b"]
    files = [f for _, _, names in storage.as_path(workdir).walk() for f in names]
    assert sorted(files) == ["done.json", "linear_floor.npz"]  # no temporary file left
    if workdir == BUCKET:
        assert _objects(FakeGCS.store) == ["folds/sub01/done.json", "linear_floor.npz"]


def test_a_damaged_record_is_named(workdir):
    path = os.path.join(workdir, "dataset.json")
    storage.makedirs(workdir)
    storage.as_path(path).write_text('{"sha256": "ab')
    with pytest.raises(WorkdirError, match=r"dataset.json is damaged \(JSONDecodeError"):
        workdir_lib.read_json(path)


def test_an_interrupted_write_keeps_the_old_file(workdir, monkeypatch):
    """Locally a temporary file renamed over the old one; on object storage the file made in
    memory and uploaded once: either way a write interrupted while the JSON is made (a Ctrl-C)
    leaves the old file and no temporary one."""
    storage.makedirs(workdir)
    path = f"{workdir}/config.json"
    workdir_lib.write_json(path, {"old": 1})

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C mid-write

    monkeypatch.setattr(workdir_lib.json, "dump", fail)
    with pytest.raises(KeyboardInterrupt):
        workdir_lib.write_json(path, {"new": 2})
    monkeypatch.undo()
    assert workdir_lib.read_json(path) == {"old": 1}
    assert storage.listdir(workdir) == ["config.json"]


def test_the_records_of_a_run(workdir, smoke_config, tiny_dataset):
    """config.json, dataset.json and execution.json are written, checked and refused on a gs://
    workdir as on a local one, with the same one-line errors naming the file."""
    from mjfn_jax.config_io import save_or_check_config

    config, dataset = smoke_config(), tiny_dataset(2, 3)
    save_or_check_config(config, workdir)
    save_or_check_config(config, workdir)  # the same config: accepted
    other = smoke_config("train.num_epochs=3")
    with pytest.raises(WorkdirError, match=re.escape(f"different config ({workdir}/config.json)")):
        save_or_check_config(other, workdir)
    workdir_lib.check_dataset(workdir, dataset)
    workdir_lib.check_dataset(workdir, dataset)
    with pytest.raises(WorkdirError, match="different data .* recorded in .*dataset.json"):
        workdir_lib.check_dataset(workdir, tiny_dataset(3, 3))
    execution = {"strategy": "sequential", "loop": "steps", "platform": "cpu", "data_shards": 1}
    workdir_lib.check_execution(workdir, execution, in_progress=[])
    assert workdir_lib.recorded_execution(workdir) == execution
    with pytest.raises(WorkdirError, match="checkpointed under another execution"):
        workdir_lib.check_execution(workdir, execution | {"loop": "epoch"}, ["sub01"])
    names = sorted(p.name for p in storage.as_path(workdir).iterdir())
    assert names == ["config.json", "dataset.json", "execution.json"]
    if workdir == BUCKET:
        assert _objects(FakeGCS.store) == names


def test_the_report_and_what_reads_it(workdir):
    """write_report's files, read back by load_results, mjfn-compare and predict's helpers."""
    from test_report import _run  # the tests folder is on sys.path (rootdir conftest)

    from mjfn_jax.compare import seed_results
    from mjfn_jax.report import load_results, write_report

    results = write_report(workdir, **_run(), config={"data": {"name": "megc2019"}})
    written = {p.name: p.read_bytes() for p in storage.as_path(workdir).iterdir()}
    expected = ["confusion.png", "curves.png", "history.json", "predictions.csv", "report.md"]
    assert sorted(written) == sorted([*expected, "results.json"])
    assert written["confusion.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert written["predictions.csv"].startswith(b"clip,subject,source,fold,label,pred")
    assert json.loads(written["results.json"]) == load_results(workdir)
    assert load_results(workdir)["pooled"]["uf1"] == results["pooled"]["uf1"]
    assert seed_results(workdir) == [results]
    write_report(workdir, **(_run() | {"history": None}))  # no curves: the old figure goes
    assert not storage.as_path(workdir, "curves.png").exists()


def test_predict_reads_a_gs_workdir(gcs, smoke_config, tiny_dataset):
    """What mjfn-predict reads before the model: the run's config, its dataset record, its
    folds (one with a checkpoint), the linear floor's probes."""
    from mjfn_jax.config_io import save_or_check_config
    from mjfn_jax.predict import (
        available_folds,
        floor_probabilities,
        load_dataset_record,
        load_run_config,
    )

    config, dataset = smoke_config(), tiny_dataset(2, 3)
    with pytest.raises(FileNotFoundError, match=f"workdir not found: {BUCKET}"):
        load_run_config(BUCKET)
    save_or_check_config(config, BUCKET)
    workdir_lib.check_dataset(BUCKET, dataset)
    assert load_run_config(BUCKET).train.num_epochs == config.train.num_epochs
    assert load_dataset_record(BUCKET)["class_names"] == list(dataset.class_names)
    storage.as_path(BUCKET, "folds/sub01/checkpoints/2/meta").write_text("{}")
    # A save that never completed: Orbax's temporary folder, no step.
    storage.as_path(BUCKET, "folds/sub02/checkpoints/1.orbax-checkpoint-tmp-7/meta").write_text("")
    assert available_folds(BUCKET) == ["sub01"]
    d, c = int(np.prod(dataset.images.shape[1:])), len(dataset.class_names)
    floor = {"weight": np.zeros((1, d, c), np.float32), "bias": np.zeros((1, c), np.float32)}
    workdir_lib.write_npz(f"{BUCKET}/linear_floor.npz", folds=np.array(["sub01"]), **floor)
    probs = floor_probabilities(BUCKET, ["sub01"], dataset.images[0])
    np.testing.assert_allclose(probs, np.full(c, 1 / c), rtol=1e-6)


def test_object_storage_has_no_lock_only_a_warning(gcs, caplog):
    """A gs:// workdir cannot be locked: the run warns once and goes on; a second run is not
    refused (the user must not start one)."""
    with caplog.at_level(logging.WARNING, logger="mjfn_jax.workdir"):
        with Lock(BUCKET):
            warnings = [r.getMessage() for r in caplog.records]
            with Lock(BUCKET):  # a second run: not refused
                pass
    assert len(warnings) == 1 and "no file lock" in warnings[0] and BUCKET in warnings[0]
    assert "do not start two runs on this workdir" in warnings[0] and _objects(gcs) == []


def test_a_missing_gcsfs_is_one_line(tmp_path, monkeypatch):
    """Without the fake (and without gcsfs), a gs:// workdir is refused by name, not with
    fsspec's ImportError traceback."""
    if importlib.util.find_spec("gcsfs"):
        pytest.skip("gcsfs is installed: gs:// would reach a real bucket")
    type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()
    with pytest.raises(WorkdirError, match=r"^cannot use 'gs://bucket/run' as a workdir: .*gcsfs"):
        Lock(BUCKET).__enter__()


def test_a_local_workdir_is_still_locked(tmp_path):
    with Lock(str(tmp_path)):
        with pytest.raises(WorkdirError, match="is in use by another run"):
            Lock(str(tmp_path)).__enter__()


def test_a_folds_files_outside_orbax(workdir):
    """A fold's result files, its in-progress steps as listed and tidied, and what a killed
    save left (mjfn_jax.checkpoint): the same on a local folder and on gs://. (Orbax writes the
    checkpoints and the model itself, through tensorstore; on GCS it marks a complete folder
    with a commit file instead of renaming it, which is what "has a model" asks there.)"""
    from mjfn_jax.checkpoint import FoldCheckpointer

    def put(*parts: str) -> None:
        path = os.path.join(*parts)
        storage.makedirs(os.path.dirname(path))
        storage.write_text(path, "{}")

    ckpt = FoldCheckpointer(workdir, "s01")
    try:
        fold = ckpt.fold_dir
        assert not ckpt.has_progress() and not ckpt.is_done() and not ckpt.has_final()
        for name in ("checkpoints/1/meta", "checkpoints/2.orbax-checkpoint-tmp-9/x"):
            put(fold, name)
        put(fold, "done.json.tmp")
        assert ckpt.has_progress()
        ckpt.remove_partial()  # a killed save's leftovers go, the complete step stays
        assert storage.listdir(ckpt.checkpoints_dir) == ["1"]
        assert "done.json.tmp" not in storage.listdir(fold)
        model = os.path.join(fold, "model")
        put(model, "_METADATA")
        if workdir.startswith("gs://"):  # written in place: complete once Orbax commits it
            assert not ckpt.has_final()
            put(model, "commit_success.txt")
        assert ckpt.has_final()
        ckpt.write_result(np.arange(3), np.zeros((3, 2), np.float32), {"history": []}).result()
        assert ckpt.is_done() and not ckpt.has_progress()  # done: the steps are spent
        test_idx, log_probs, summary = ckpt.read_result()
        assert test_idx.tolist() == [0, 1, 2] and log_probs.shape == (3, 2) and summary
    finally:
        ckpt.close()
    assert workdir_lib.has_final_model(fold)
