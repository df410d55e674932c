"""Tests of mjfn_jax.preprocess: flow accuracy and conventions, strain, resizing, flips, encoding,
process_pair modes and validation, frame reading."""

import cv2
import numpy as np
import pytest

from mjfn_jax import preprocess as pp
from mjfn_jax.synthetic import clip_spec, render_clip, render_neutral, subject_geometry, true_flow
from mjfn_jax.synthetic.generate import APPEARANCE


def _texture(size=96, seed=0):
    """A smooth random uint8 [size, size] texture (trackable by every flow method)."""
    noise = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return np.clip(128 + 60 * smooth / smooth.std(), 0, 255).astype(np.uint8)


def _shift(image, dx, dy):
    """image moved by (dx, dy): out(x + d) = image(x), i.e. the true flow is (dx, dy)."""
    h, w = image.shape[:2]
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def synthetic_pairs():
    """Six (onset, apex, true flow, face mask) from the generator, at 128 x 128 frames."""
    pairs = []
    for subject, label in [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]:
        geometry = subject_geometry(7, subject)
        neutral = render_neutral(geometry, np.random.default_rng([7, APPEARANCE, subject]))
        spec = clip_spec(7, subject, 0, label)
        frames = render_clip(neutral, geometry, spec)
        pairs.append(
            (frames[0], frames[spec.apex_index], true_flow(geometry, spec), geometry.mask(0.9))
        )
    return pairs


def _epe(flow, truth, mask):
    return float(np.linalg.norm(flow - truth, axis=-1)[mask].mean())


@pytest.mark.parametrize("method,bound", [("tvl1", 0.08), ("farneback", 0.12), ("dis", 0.14)])
def test_flow_epe_on_synthetic_pairs(synthetic_pairs, method, bound):
    # Bounds: measured mean EPE (tools/flow_accuracy.py) x ~1.7; the zero-flow EPE is ~0.27.
    epes, zero = [], []
    for onset, apex, truth, mask in synthetic_pairs:
        flow = pp.process_pair(onset, apex, crop="center", flow_method=method, size=128).flow
        epes.append(_epe(flow, truth, mask))
        zero.append(_epe(np.zeros_like(truth), truth, mask))
    assert np.mean(epes) < bound
    assert np.mean(epes) < 0.6 * np.mean(zero)


@pytest.mark.parametrize("method", pp.FLOW_METHODS)
def test_flow_sign_convention_translation(method):
    onset = _texture()
    apex = _shift(onset, 0.8, -0.5)  # apex(x + (0.8, -0.5)) = onset(x)
    flow = pp.compute_flow(onset, apex, method)
    inner = flow[16:-16, 16:-16].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(inner, [0.8, -0.5], atol=0.1)


def test_strain_translation_rotation_zero_scaling_not():
    yy, xx = np.mgrid[0:32, 0:40].astype(np.float32)
    translation = np.stack([np.full_like(xx, 1.3), np.full_like(xx, -0.7)], -1)
    assert np.abs(pp.optical_strain(translation)).max() < 1e-6
    rotation = 0.01 * np.stack([-(yy - 16), xx - 20], -1)  # infinitesimal rotation: no strain
    assert np.abs(pp.optical_strain(rotation)).max() < 1e-5
    scaling = 0.01 * np.stack([xx, yy], -1)  # u_x = v_y = 0.01 -> strain 0.01 * sqrt(2)
    np.testing.assert_allclose(pp.optical_strain(scaling), 0.01 * np.sqrt(2), rtol=1e-4)


def test_resize_flow_scales_vectors():
    flow = np.stack([np.full((32, 64), 1.0), np.full((32, 64), 2.0)], -1).astype(np.float32)
    half = pp.resize_flow(flow, (16, 32))
    assert half.shape == (16, 32, 2) and half.dtype == np.float32
    np.testing.assert_allclose(half[..., 0], 0.5, rtol=1e-5)
    np.testing.assert_allclose(half[..., 1], 1.0, rtol=1e-5)
    odd = pp.resize_flow(flow, (64, 16))  # height x2, width /4
    np.testing.assert_allclose(odd[..., 0], 0.25, rtol=1e-5)
    np.testing.assert_allclose(odd[..., 1], 4.0, rtol=1e-5)
    same = pp.resize_flow(flow, (32, 64))
    np.testing.assert_array_equal(same, flow)


def test_hflip_flow_negates_u_and_mirrors(synthetic_pairs):
    truth = synthetic_pairs[0][2]
    flipped = pp.hflip_flow(truth)
    np.testing.assert_array_equal(flipped[:, ::-1, 0], -truth[..., 0])
    np.testing.assert_array_equal(flipped[:, ::-1, 1], truth[..., 1])
    np.testing.assert_array_equal(pp.hflip_flow(flipped), truth)


def test_hflip_image_equals_image_of_flipped_flow(synthetic_pairs):
    for _, _, truth, _ in synthetic_pairs:
        direct = pp.encode_flow(pp.hflip_flow(truth), "uvs").astype(int)
        via_image = pp.hflip_flow_image(pp.encode_flow(truth, "uvs"), "uvs").astype(int)
        assert np.abs(direct - via_image).max() <= 1  # rounding of x.5 may differ by one level
        assert (direct == via_image).mean() > 0.99
    batch = np.stack([pp.encode_flow(p[2]) for p in synthetic_pairs])  # [N, H, W, 3] works too
    np.testing.assert_array_equal(pp.hflip_flow_image(batch)[1], pp.hflip_flow_image(batch[1]))


def test_hflip_hsv_image_is_close(synthetic_pairs):
    truth = synthetic_pairs[1][2]
    direct = pp.encode_flow(pp.hflip_flow(truth), "hsv").astype(int)
    via_image = pp.hflip_flow_image(pp.encode_flow(truth, "hsv"), "hsv").astype(int)
    assert np.abs(direct - via_image).mean() < 3.0


def test_minmax_encoding_ranges_and_constant_channel():
    flow = np.zeros((20, 20, 2), np.float32)
    flow[..., 0] = np.linspace(-1, 3, 20)[None, :]  # v stays constant
    image = pp.encode_flow(flow, "uvs")
    assert image.dtype == np.uint8 and image.shape == (20, 20, 3)
    assert image[..., 0].min() == 0 and image[..., 0].max() == 255
    assert image[..., 1].max() == 0  # constant channel -> 0, no division by zero
    assert image[..., 2].max() == 0  # a linear u has constant strain
    hsv = pp.encode_flow(flow, "hsv")
    assert hsv.dtype == np.uint8 and hsv.shape == (20, 20, 3)
    with pytest.raises(ValueError, match="encoding"):
        pp.encode_flow(flow, "rgb")


@pytest.mark.parametrize("crop", ["center", "none"])
@pytest.mark.parametrize("method", pp.FLOW_METHODS)
@pytest.mark.parametrize("encoding", pp.ENCODINGS)
def test_process_pair_shapes(synthetic_pairs, crop, method, encoding):
    onset, apex = synthetic_pairs[0][:2]
    onset, apex = onset[:, :112], apex[:, :112]  # non-square: 128 x 112
    for a, b in [(onset, apex), (pp.to_gray(onset), pp.to_gray(apex))]:
        result = pp.process_pair(a, b, crop=crop, flow_method=method, size=48, encoding=encoding)
        assert result.flow_image.shape == (48, 48, 3) and result.flow_image.dtype == np.uint8
        assert result.flow.shape == (48, 48, 2) and result.flow.dtype == np.float32
        for face in (result.onset_face, result.apex_face):
            assert face.shape == (48, 48, 3) and face.dtype == np.uint8
        assert result.box == ((0, 8, 112, 112) if crop == "center" else (0, 0, 112, 128))


def test_haar_no_face_raises_or_falls_back():
    blank = np.full((120, 160, 3), 90, np.uint8)
    with pytest.raises(pp.NoFaceFound):
        pp.process_pair(blank, blank, crop="haar", size=32)
    result = pp.process_pair(blank, blank, crop="haar", size=32, on_no_face="center")
    assert result.box == (20, 0, 120, 120)
    with pytest.raises(ValueError, match="on_no_face"):
        pp.process_pair(blank, blank, crop="haar", size=32, on_no_face="skip")


def test_haar_finds_a_synthetic_face_in_a_larger_frame():
    found = []
    for subject in range(8):  # the cascade finds some procedural faces, not all
        geometry = subject_geometry(0, subject)
        pad = (render_neutral(geometry, np.random.default_rng(subject)).shape[0] - 128) // 2
        face = render_neutral(geometry, np.random.default_rng(subject))[pad:-pad, pad:-pad]
        frame = np.full((300, 400, 3), 60, np.uint8)
        frame[100:228, 220:348] = face.astype(np.uint8)
        try:
            box = pp.detect_face_box(pp.to_gray(frame), margin=0.1)
        except pp.NoFaceFound:
            continue
        found.append(box)
        cx, cy = box.x + box.w / 2, box.y + box.h / 2
        assert (
            abs(cx - (220 + geometry.center[0])) < 20 and abs(cy - (100 + geometry.center[1])) < 25
        )
        assert 60 < box.w < 200 and box.w == box.h
    assert found, "the Haar cascade found none of 8 synthetic faces"


def test_process_pair_validation():
    good = np.zeros((64, 64), np.uint8)
    with pytest.raises(TypeError, match="onset.*uint8"):
        pp.process_pair(good.astype(np.float32), good, crop="none")
    with pytest.raises(ValueError, match="differ in shape"):
        pp.process_pair(good, np.zeros((64, 60), np.uint8), crop="none")
    with pytest.raises(ValueError, match="apex.*shape"):
        pp.process_pair(good, np.zeros((64, 64, 4), np.uint8), crop="none")
    with pytest.raises(ValueError, match="crop"):
        pp.process_pair(good, good, crop="eyes")
    with pytest.raises(ValueError, match="flow_method"):
        pp.process_pair(good, good, crop="none", flow_method="lk")


def test_read_frame(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = tmp_path / "img46.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(pp.read_frame(path), rgb)  # RGB order, not BGR
    gray_path = tmp_path / "gray.png"
    cv2.imwrite(str(gray_path), rgb[..., 0])
    assert pp.read_frame(gray_path).shape == (10, 12, 3)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        pp.read_frame(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        pp.read_frame(broken)


def test_context_region_replicates_outside_frame():
    frame = np.arange(100, dtype=np.uint8).reshape(10, 10)
    region, pad_x, pad_y = pp.pair.context_region(frame, pp.Box(0, 0, 10, 10), 0.2)
    assert (pad_x, pad_y) == (2, 2) and region.shape == (14, 14)
    np.testing.assert_array_equal(region[2:-2, 2:-2], frame)
    np.testing.assert_array_equal(region[0, 2:-2], frame[0])
    inner, _, _ = pp.pair.context_region(frame, pp.Box(3, 3, 4, 4), 0.25)
    np.testing.assert_array_equal(inner, frame[2:8, 2:8])  # real context where the frame has it


@pytest.mark.parametrize("crop", ["none", "center"])
def test_process_pair_flow_units_are_output_pixels(crop):
    # A (2.0, 1.0) frame-pixel shift of a 96 x 192 frame. crop="none" resizes the whole frame to
    # 48 x 48 (u scaled by 48/192, v by 48/96); "center" takes the central 96 x 96 (both 48/96).
    onset = _texture(192)[:96]
    apex = _shift(onset, 2.0, 1.0)
    flow = pp.process_pair(onset, apex, crop=crop, flow_method="tvl1", size=48).flow
    expected = [0.5, 0.5] if crop == "none" else [1.0, 0.5]
    np.testing.assert_allclose(flow[8:-8, 8:-8].reshape(-1, 2).mean(0), expected, atol=0.08)
