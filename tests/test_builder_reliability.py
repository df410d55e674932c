"""Builder-side cases of issue 10: bad input gives one line naming the file, row and field (or a
counted, logged skip where the data is known to be broken); a killed build leaves no workers
behind; two builds of the same data give the same bytes.

Fixtures come from the builders' own dummy-data scripts; builds are tiny (farneback_32).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest

from data_builders.__main__ import main as cli
from data_builders.build import build_dataset
from data_builders.casme2 import casme2_dataset_builder as casme2
from data_builders.casme2.dummy_data import make_dummy_data as casme2_dummy
from data_builders.flow_worker import process_clip
from data_builders.skips import SkipLog
from data_builders.smic import smic_dataset_builder as smic
from data_builders.smic.dummy_data import make_dummy_data as smic_dummy

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "farneback_32"
TINY = {"num_subjects": 2, "clips_per_subject": 2, "frame_size": 64}
WORKBOOK = "CASME2-coding-20140508.xlsx"
# Columns of the CASME II dummy workbook (1-based, as openpyxl counts).
FILENAME, ONSET, APEX, OFFSET = 2, 4, 5, 6


def edit_workbook(folder: Path, edits: dict[tuple[int, int], object], append=None) -> Path:
    """Sets cells {(row, column): value} of the dummy CASME II workbook; appends a row."""
    path = folder / WORKBOOK
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.active
    for (row, column), value in edits.items():
        sheet.cell(row=row, column=column, value=value)
    if append is not None:
        sheet.insert_rows(len(casme2_dummy.ROWS) + 2)
        for column, value in enumerate(append, start=1):
            sheet.cell(row=len(casme2_dummy.ROWS) + 2, column=column, value=value)
    workbook.save(path)
    return path


def run_cli(argv: list[str], capsys) -> tuple[str, str]:
    """Runs the build CLI expecting an expected error: (its one error line, stderr before it)."""
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in message
    return message, capsys.readouterr().err


# Case 5: frame numbers that contradict each other are counted skips with their reason.


def test_inconsistent_frame_numbers_are_counted_skips(tmp_path):
    rows = casme2_dummy.make(tmp_path, layout="cropped")
    # Rows 2..: EP01_01f 10/12/14, EP01_02f 20/22/24, EP01_03f 5/7/9 (onset/apex/offset).
    edit_workbook(tmp_path, {(2, OFFSET): 11, (3, OFFSET): 19, (4, APEX): 4})
    skips = SkipLog()
    clips = casme2.list_casme2(tmp_path, casme2.FIVE_CLASS, skips)
    assert skips.counts["apex after offset"] == 1  # EP01_01f: apex 12 > offset 11
    assert skips.counts["offset before onset"] == 1  # EP01_02f: offset 19 < onset 20
    assert skips.counts["apex before onset"] == 1  # EP01_03f: apex 4 < onset 5
    built = {c.clip for c in clips}
    assert not built & {"EP01_01f", "EP01_02f", "EP01_03f"}
    assert len(clips) + sum(skips.counts.values()) == len(rows)


def test_two_files_for_one_frame_number_are_an_error(tmp_path):
    from data_builders.samm import samm_dataset_builder as samm
    from data_builders.samm.dummy_data import make_dummy_data as samm_dummy

    samm_dummy.make(tmp_path)
    clip = tmp_path / "SAMM" / "006" / "006_1_3"  # 4-digit padding: 006_0180.jpg ...
    (clip / "006_00180.jpg").write_bytes((clip / "006_0180.jpg").read_bytes())
    with pytest.raises(ValueError, match="two files for frame 180: 006_00180.jpg and 006_0180"):
        samm.list_samm(tmp_path, samm.FIVE_CLASS, SkipLog())


def test_a_required_column_twice_is_an_error(tmp_path):
    casme2_dummy.make(tmp_path, layout="cropped")
    edit_workbook(tmp_path, {(1, 3): "Onset Frame"})  # the empty column C, a second onset
    with pytest.raises(ValueError, match=r"header row 1 has column\(s\) \['onsetframe'\] twice"):
        casme2.list_casme2(tmp_path, casme2.FIVE_CLASS, SkipLog())


# Case 6: a clip name that is a path never leaves the manual folder.


@pytest.mark.parametrize("cell", ["../../../outside_clip", "/tmp/outside_clip", "..", "a\\b"])
def test_filename_cell_cannot_leave_the_manual_folder(tmp_path, cell):
    manual = tmp_path / "manual"
    casme2_dummy.make(manual, layout="raw")
    # <manual>/CASME2-RAW/sub01/../../../outside_clip is <tmp_path>/outside_clip: it exists.
    casme2_dummy.write_clip(
        tmp_path / "outside_clip", range(10, 15), lambda k: f"img{k}.jpg", np.random.default_rng()
    )
    sheet = edit_workbook(manual, {(2, FILENAME): cell})
    with pytest.raises(ValueError, match="Filename") as err:
        casme2.list_casme2(manual, casme2.FIVE_CLASS, SkipLog())
    assert f"{sheet} row 2" in str(err.value) and repr(cell) in str(err.value)


def test_path_outside_the_manual_folder_is_refused(tmp_path):
    from data_builders.parsing import inside

    assert inside(tmp_path, tmp_path / "a" / ".." / "b", "x") == tmp_path / "a" / ".." / "b"
    with pytest.raises(ValueError, match="outside the manual folder"):
        inside(tmp_path / "m", tmp_path / "m" / ".." / "other", "clip x")


def test_filename_path_cli_is_one_line(tmp_path, capsys):
    casme2_dummy.make(tmp_path / "m", layout="raw")
    edit_workbook(tmp_path / "m", {(3, FILENAME): "../../../etc"})
    argv = ["build", f"casme2/{CONFIG}", "--data_dir", str(tmp_path / "d")]
    message, _ = run_cli([*argv, "--manual_dir", str(tmp_path / "m"), "--workers", "1"], capsys)
    assert "row 3" in message and "Filename '../../../etc'" in message


# Case 12: duplicated rows and clips; every clip skipped.


def test_duplicated_row_names_the_file_and_both_rows(tmp_path, capsys):
    casme2_dummy.make(tmp_path / "m", layout="cropped")
    duplicate = ("01", "EP01_02f", None, 20, 22, 24, None, "1+2", "surprise")
    edit_workbook(tmp_path / "m", {}, append=duplicate)
    argv = ["build", f"casme2/{CONFIG}", "--data_dir", str(tmp_path / "d"), "--workers", "1"]
    message, _ = run_cli([*argv, "--manual_dir", str(tmp_path / "m")], capsys)
    last = len(casme2_dummy.ROWS) + 2
    assert f"rows 3 and {last} both annotate clip casme2/sub01/EP01_02f" in message
    assert WORKBOOK in message and "tensorflow" not in message


def test_two_folders_with_one_clip_id_are_an_error(tmp_path):
    from data_builders.common import check_unique_keys

    smic_dummy.make(tmp_path, layout="raw")
    os.rename(tmp_path / "HS" / "s12", tmp_path / "HS" / "s03")  # s3 and s03 -> smic/s03
    clips = smic.list_smic(tmp_path, {c: c for c in smic.CLASS_NAMES}, SkipLog())
    with pytest.raises(ValueError, match="two clips have the id smic/s03/s03_ne_01") as err:
        check_unique_keys(clips)
    assert "s3" in str(err.value) and "s03" in str(err.value)


def test_all_clips_skipped_prints_the_summary_and_one_line(tmp_path, capsys):
    casme2_dummy.make(tmp_path / "m", layout="raw")  # noise: Haar finds no face
    usable = len(casme2.list_casme2(tmp_path / "m", casme2.FIVE_CLASS, SkipLog()))
    argv = ["build", f"casme2/{CONFIG}", "--data_dir", str(tmp_path / "d"), "--workers", "1"]
    message, err = run_cli([*argv, "--manual_dir", str(tmp_path / "m")], capsys)
    assert message.startswith(f"error: casme2/{CONFIG}: all {usable} clips were skipped")
    assert f"{usable}  no face found" in err and "skipped:" in err
    leftovers = list((tmp_path / "d" / "casme2" / CONFIG).glob("*"))
    assert all(p.name == ".build.lock" for p in leftovers), leftovers


# Case 13: bad frames name the clip and the frame files.


def clip_spec(folder: Path, onset: np.ndarray, apex: np.ndarray):
    from data_builders.flow_worker import ClipSpec

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "img1.png", folder / "img2.png"]
    for path, image in zip(paths, (onset, apex), strict=True):
        assert cv2.imwrite(str(path), image)
    return ClipSpec(
        "casme2", "casme2/sub01", "EP01", "happiness", "happiness", 1, 2, 3,
        str(paths[0]), str(paths[1]), crop="center",
    )  # fmt: skip


@pytest.mark.parametrize(
    "onset_shape, apex_shape, cause",
    [((64, 64, 3), (48, 64, 3), "differ in shape"), ((4, 4, 3), (4, 4, 3), "too small")],
)
def test_bad_frames_name_the_clip_and_files(tmp_path, onset_shape, apex_shape, cause):
    rng = np.random.default_rng(0)
    spec = clip_spec(
        tmp_path,
        rng.integers(0, 255, onset_shape, dtype=np.uint8),
        rng.integers(0, 255, apex_shape, dtype=np.uint8),
    )
    with pytest.raises(ValueError, match=cause) as err:
        process_clip((spec, "farneback", 32))
    assert "casme2/sub01/EP01" in str(err.value)
    assert spec.onset_path in str(err.value) and spec.apex_path in str(err.value)


def test_bad_frame_in_a_build_names_the_clip(tmp_path, capsys):
    casme2_dummy.make(tmp_path / "m", layout="cropped")
    apex = tmp_path / "m" / "Cropped" / "sub02" / "EP02_01f" / "reg_img13.jpg"
    assert cv2.imwrite(str(apex), np.zeros((40, 64, 3), np.uint8))
    argv = ["build", f"casme2/{CONFIG}", "--data_dir", str(tmp_path / "d"), "--workers", "1"]
    message, _ = run_cli([*argv, "--manual_dir", str(tmp_path / "m")], capsys)
    assert "clip casme2/sub02/EP02_01f" in message and str(apex) in message


# CLI flags: ignored or reinterpreted values are errors, and a reused build must match.


@pytest.mark.parametrize(
    "extra, cause",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--workers", "-2"], "--workers must be >= 1"),
        (["--apex_fraction", "0.3"], "--apex_fraction applies to smic and megc2019 only"),
        (["--manual_dir", "/tmp"], "--manual_dir does not apply to synthetic"),
    ],
)
def test_cli_flags_that_would_be_ignored_are_errors(tmp_path, capsys, extra, cause):
    name = "casme2" if "--apex_fraction" in extra else "synthetic"
    message, _ = run_cli(["build", f"{name}/{CONFIG}", "--data_dir", str(tmp_path), *extra], capsys)
    assert cause in message


def test_missing_manual_folder_ends_with_the_cause(tmp_path, capsys):
    argv = ["build", f"casme2/{CONFIG}", "--data_dir", str(tmp_path / "d")]
    message, err = run_cli([*argv, "--manual_dir", str(tmp_path / "none")], capsys)
    assert "casme2 manual folder" in message and "CASME2-RAW" in err  # layout printed before


@pytest.fixture(scope="module")
def smic_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("smic")
    smic_dummy.make(root / "m", layout="raw")
    build_dataset(
        f"smic/{CONFIG}", data_dir=root / "d", manual_dir=root / "m", workers=1, crop="center"
    )
    return root


@pytest.mark.parametrize(
    "extra, cause",
    [(["--crop", "none"], "crop={'center'}, not {'none'}"), (["--apex_fraction", "0.3"], "0.5")],
)
def test_reused_build_must_match_the_options(smic_build, capsys, extra, cause):
    argv = ["build", f"smic/{CONFIG}", "--data_dir", str(smic_build / "d"), *extra]
    message, _ = run_cli(argv, capsys)
    assert "was built with" in message and cause in message


# Case 14: a damaged shard names itself and how to rebuild.


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_shard_names_the_file_and_the_rebuild(tmp_path, damage):
    from mjfn_jax.data import load_dataset

    build_dataset(
        f"synthetic/{CONFIG}", data_dir=tmp_path, workers=1, builder_kwargs={"synthetic": TINY}
    )
    (shard,) = (tmp_path / "synthetic" / CONFIG / "1.0.0").glob("*.array_record-*")
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:
        data[64:4096] = bytes(4096 - 64)  # Zeros over the first chunk's header and records.
        shard.write_bytes(data)
    with pytest.raises(ValueError, match="mjfn-build build") as err:
        load_dataset("synthetic", CONFIG, tmp_path)
    assert str(shard.parent) in str(err.value) and shard.name in str(err.value)
    assert "\n" not in str(err.value)


def test_demo_on_a_damaged_dataset_ends_with_one_error_line(tmp_path):
    data_dir = tmp_path / "d"
    build_dataset(
        "synthetic/tvl1_32", data_dir=data_dir, workers=1, builder_kwargs={"synthetic": TINY}
    )
    (shard,) = (data_dir / "synthetic" / "tvl1_32" / "1.0.0").glob("*.array_record-*")
    shard.write_bytes(shard.read_bytes()[:1000])
    config = f"{ROOT}/mjfn_jax/configs/synthetic.py:smoke"
    argv = ["--data_dir", str(data_dir), "--workdir", str(tmp_path / "w"), "--config", config]
    result = subprocess.run([sys.executable, "-m", "experiments.demo", *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("error: dataset synthetic/tvl1_32"), last
    assert shard.name in last and "Traceback" not in result.stderr


# Case 15: kill -9 of a build leaves no worker behind and no stale folder.


def test_build_lock_refuses_a_second_build_and_removes_stale_folders(tmp_path):
    from data_builders.build import build_lock

    version = tmp_path / "synthetic" / CONFIG / "1.0.0"
    stale = version.parent / "incomplete.ABC123_1.0.0"
    stale.mkdir(parents=True)
    with build_lock(version):
        assert not stale.exists()
        with pytest.raises(ValueError, match="another build"), build_lock(version):
            pass


BUILD = """
import sys
from data_builders.build import build_dataset
if __name__ == "__main__":
    build_dataset("synthetic/{config}", data_dir=sys.argv[1], workers=2,
                  builder_kwargs={{"synthetic": {synthetic}}})
"""


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if entry.name.isdigit() and int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_killed_build_leaves_no_workers_and_reruns(tmp_path):
    script = tmp_path / "build.py"
    synthetic = {"num_subjects": 2, "clips_per_subject": 6, "frame_size": 64}
    script.write_text(BUILD.format(config=CONFIG, synthetic=synthetic))
    data_dir = tmp_path / "d"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    build = subprocess.Popen([sys.executable, str(script), str(data_dir)], cwd=ROOT, env=env)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # Workers are spawned children (the resource tracker is one more).
        workers = children(build.pid)
    assert build.poll() is None, "the build ended before its workers were seen"
    os.kill(build.pid, signal.SIGKILL)
    build.wait()
    deadline = time.monotonic() + 15
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "workers outlived the killed build"
    summary = build_dataset(
        f"synthetic/{CONFIG}", data_dir=data_dir, workers=1, builder_kwargs={"synthetic": synthetic}
    )
    assert summary["num_examples"]["train"] == 12
    assert not list((data_dir / "synthetic" / CONFIG).glob("incomplete.*"))


# Case 17: the same build gives the same bytes, whatever the worker count and hash seed.

DUMP = """
import sys
from data_builders.build import build_dataset
if __name__ == "__main__":
    build_dataset("synthetic/tvl1_32", data_dir=sys.argv[1], workers=int(sys.argv[2]),
                  builder_kwargs={{"synthetic": {synthetic}}})
"""


def test_two_builds_give_identical_bytes(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(DUMP.format(synthetic=TINY))
    files = []
    for run, (workers, seed) in enumerate([(1, "1"), (2, "2")]):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        data_dir = tmp_path / f"d{run}"
        subprocess.run(
            [sys.executable, str(script), str(data_dir), str(workers)],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        version = data_dir / "synthetic" / "tvl1_32" / "1.0.0"
        files.append({p.name: p.read_bytes() for p in sorted(version.iterdir())})
    first, second = files
    assert sorted(first) == sorted(second)
    shards = [name for name in first if ".array_record-" in name]
    assert shards and all(first[name] == second[name] for name in shards)
    # metadata.json differs only by the build's timing.
    meta = [json.loads(f.pop("metadata.json")) for f in (first, second)]
    assert [{k: v for k, v in m.items() if k != "flow_seconds"} for m in meta][0] == {
        k: v for k, v in meta[1].items() if k != "flow_seconds"
    }
    assert first == second
