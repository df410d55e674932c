"""Reading a clip (mjfn_jax.preprocess.clip): frame order, checks, the video memory guard."""

import cv2
import numpy as np
import pytest

from mjfn_jax.preprocess.clip import list_frame_files, natural_key, read_frame_folder, read_video


def test_natural_name_order_and_image_files_only(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
    for name in ("img10.png", "img2.PNG", "img1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    names = [p.rsplit("/", 1)[1] for p in list_frame_files(tmp_path)]
    assert names == ["img1.jpg", "img2.PNG", "img10.png"]
    assert sorted(["b2", "a10", "a9", "a"], key=natural_key) == ["a", "a9", "a10", "b2"]
    for name in names:
        assert cv2.imwrite(str(tmp_path / name), image)
    frames, paths = read_frame_folder(tmp_path)
    assert len(frames) == 3 and frames[0].shape == (16, 16) and frames[0].dtype == np.uint8
    # Gray exactly as read_frame + to_gray (the builders' path), not the codec's own conversion.
    np.testing.assert_array_equal(frames[2], cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))  # BGR on disk


def test_video_memory_guard(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    for k in range(6):
        writer.write(np.full((32, 32, 3), 40 * k, np.uint8))
    writer.release()
    assert len(read_video(path)) == 6
    with pytest.raises(ValueError, match="more than 3 frames of 32x32"):
        read_video(path, max_bytes=3 * 32 * 32)
