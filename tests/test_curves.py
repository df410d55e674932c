"""Training curves as TensorBoard event files (mjfn_jax.curves), read back without TensorBoard."""

import glob
import os
import struct

from mjfn_jax.curves import DIRNAME, Curves


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every event file in ``logdir``, files in the order they were
    started, events in write order. Event files are TFRecord frames: length u64, its CRC u32,
    an Event proto, its CRC u32."""
    from tensorboardX.proto import event_pb2

    files = []
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        events, pos = [], 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
        files.append(events)
    scalars = {}
    for events in sorted(files, key=lambda events: events[0].wall_time):
        for event in events:
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def records(first: int, last: int, loss0: float) -> list[dict]:
    return [{"epoch": e, "loss": loss0 - e, "accuracy": 0.1 * e} for e in range(first, last + 1)]


def test_one_series_per_unit_and_a_resume_replaces_the_epochs_it_trains_again(tmp_path):
    curves = Curves(str(tmp_path), ["sub01", "seed1/sub02"], first_epoch=0)
    curves.add("sub01", records(1, 3, 10.0))
    curves.add("seed1/sub02", records(1, 3, 20.0))
    curves.close()
    # a killed run resumed from its checkpoint of epoch 1: epochs 2.. are trained again
    curves = Curves(str(tmp_path), ["sub01"], first_epoch=1)
    curves.add("sub01", records(2, 4, 100.0))
    curves.close()
    sub01 = read_scalars(tmp_path / DIRNAME / "sub01")
    assert sorted(sub01) == ["accuracy", "loss"]
    steps = [step for step, _ in sub01["loss"]]
    assert sorted(set(steps)) == [1, 2, 3, 4]
    latest = dict(sub01["loss"])  # the values TensorBoard shows: the newest file's per step
    assert latest == {1: 9.0, 2: 98.0, 3: 97.0, 4: 96.0}
    sub02 = read_scalars(tmp_path / DIRNAME / "seed1" / "sub02")
    assert [v for _, v in sub02["loss"]] == [19.0, 18.0, 17.0]


def test_a_process_other_than_the_first_writes_nothing(tmp_path):
    curves = Curves(str(tmp_path), ["sub01"], first_epoch=0, enabled=False)
    curves.add("sub01", records(1, 2, 1.0))
    curves.close()
    assert not os.path.exists(tmp_path / DIRNAME)
