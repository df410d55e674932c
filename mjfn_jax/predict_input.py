"""The predict command's inputs -> the model's flow image (uint8 [S, S, 3]).

An (onset, apex) pair of frame files, a saved flow image, or a raw clip (a video or a frame
folder). Real footage has no onset/apex annotation: the onset is the clip's first frame unless
``--onset_frame N`` says otherwise, and the apex is spotted (mjfn_jax.preprocess.spot_apex: the
peak of the face's motion relative to the onset, inside the same face box as the flow image)
unless ``--apex_frame N`` is given. Frame numbers N are 0-based positions in the clip: the
video's decoding order, or the folder's natural name order (img2 before img10).
"""

from __future__ import annotations

import os

import numpy as np

# A flow with no vector longer than this (pixels at the model's input size) shows no motion:
# far below the motion between two consecutive frames of a clip.
STILL_FLOW_PX = 0.01


def largest_motion(flow: np.ndarray) -> float:
    """The longest vector of a flow [S, S, 2], in pixels."""
    return float(np.hypot(flow[..., 0], flow[..., 1]).max())


def no_motion_warning(image: np.ndarray, max_flow_px: float | None) -> str | None:
    """A warning when the model's input shows no motion (onset equal to apex, a uniform flow
    image): the model still gives probabilities, which then say nothing about the clip."""
    if max_flow_px is not None:
        still = max_flow_px < STILL_FLOW_PX
        what = f"the flow between onset and apex is (near) zero (at most {max_flow_px:.3f} px)"
    else:  # a saved flow image: min-max encoded, so a flow without motion is uniform
        still = bool(np.all(image.min((0, 1)) == image.max((0, 1))))
        what = "the flow image is uniform (no motion)"
    return f"{what}: the clip shows no motion to classify" if still else None


def flow_image_from_pair(
    onset_path: str, apex_path: str, settings: dict
) -> tuple[np.ndarray, float]:
    """Onset and apex frame files -> (uint8 [S, S, 3] flow image, as the builders make it; its
    longest flow vector in pixels)."""
    from mjfn_jax.preprocess import NoFaceFound, process_pair, read_frame

    onset, apex = read_frame(onset_path), read_frame(apex_path)  # name the file on failure
    if onset.shape != apex.shape:
        raise ValueError(
            f"onset {onset_path} is {onset.shape[1]}x{onset.shape[0]} but apex {apex_path} is "
            f"{apex.shape[1]}x{apex.shape[0]}: frames of one clip must have the same size"
        )
    try:
        result = process_pair(onset, apex, **settings)
    except NoFaceFound:
        raise ValueError(
            f"no face found on the onset frame {onset_path} with --crop haar; for frames that "
            "are already face-cropped use --crop none"
        ) from None
    return result.flow_image, largest_motion(result.flow)


def flow_image_from_file(path: str, size: int) -> np.ndarray:
    """A saved flow image (PNG written by a builder or by --save_flow_image) -> uint8 [S, S, 3].

    Exactly 3 uint8 channels (u, v, strain): a grayscale or RGBA file is refused rather than
    silently turned into 3 channels (u = v = strain is not a flow image)."""
    import cv2

    from mjfn_jax.preprocess.face import decode_image_file

    image = decode_image_file(path, cv2.IMREAD_UNCHANGED, what="flow image")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"flow image {path} has {channels} channel(s) of {image.dtype}; a flow image has 3 "
            "uint8 channels (u, v, strain), as the builders and --save_flow_image write them"
        )
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # RGB, like the datasets' PNGs decode
    if image.shape[:2] != (size, size):
        raise ValueError(
            f"flow image {path} is {image.shape[1]}x{image.shape[0]}; this model takes "
            f"{size}x{size} (model.input_size). Pass --onset/--apex to compute one at that size."
        )
    return image


def save_flow_image(path: str, image: np.ndarray) -> None:
    """Write the model's input flow image (uint8 [S, S, 3] RGB) as a lossless PNG."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))  # RGB -> BGR
    if not ok:
        raise ValueError(f"cannot encode the flow image for {path}")
    encoded.tofile(path)


def check_output_path(path: str, flag: str = "--save_flow_image") -> None:
    """An output image: a .png in an existing folder, not a folder itself (checked before any
    work is done)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path} is a folder; name a .png file in it")
    if not path.lower().endswith(".png"):
        raise ValueError(f"{flag} {path}: the image is saved as PNG; name a .png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {path}: folder {folder} does not exist")


def load_clip(video: str | None = None, frames: str | None = None) -> tuple[list, list[str], str]:
    """(gray frames uint8 [H, W], a name per frame, the clip's name for messages)."""
    from mjfn_jax.preprocess.clip import read_frame_folder, read_video

    if (video is None) == (frames is None):
        raise ValueError("give exactly one of a video file or a frame folder")
    if video is not None:
        clip = read_video(video)
        return clip, [f"{video}#{i}" for i in range(len(clip))], video
    clip, paths = read_frame_folder(frames)
    return clip, [os.path.basename(p) for p in paths], frames


def check_frame_numbers(count: int, onset: int | None, apex: int | None) -> tuple[int, int | None]:
    """Validates --onset_frame / --apex_frame against a clip of `count` frames (0..count-1)."""
    onset = 0 if onset is None else int(onset)
    if not 0 <= onset <= count - 2:
        raise ValueError(
            f"--onset_frame {onset}: out of range; the clip has frames 0..{count - 1} and the "
            "onset needs at least one frame after it"
        )
    if apex is not None and not onset < int(apex) <= count - 1:
        raise ValueError(
            f"--apex_frame {apex}: out of range; it must lie after the onset frame {onset} and "
            f"at most at the last frame {count - 1}"
        )
    return onset, None if apex is None else int(apex)


def flow_image_from_clip(
    settings: dict,
    *,
    video: str | None = None,
    frames: str | None = None,
    onset_frame: int | None = None,
    apex_frame: int | None = None,
    want_curve: bool = False,
    spot: str | None = None,
) -> tuple[np.ndarray, dict]:
    """The model's input flow image (uint8 [S, S, 3]) and what was chosen: onset, apex (frame
    numbers), apex_spotted, frame names, and the motion curve when spotting ran (it runs when
    no apex is given, or when `want_curve`, e.g. for --plot). spot: SpotSettings.parse text."""
    from mjfn_jax.preprocess import NoFaceFound, SpotSettings, process_pair, spot_apex

    try:
        spot_settings = SpotSettings.parse(spot or "")
    except ValueError as err:
        raise ValueError(f"--spot: {err}") from None

    clip, names, source = load_clip(video, frames)
    onset, apex = check_frame_numbers(len(clip), onset_frame, apex_frame)
    info = {"onset": onset, "apex": apex, "apex_spotted": apex is None, "num_frames": len(clip)}
    try:
        if apex is None or want_curve:
            spot = spot_apex(clip[onset:], crop=settings["crop"], settings=spot_settings)
            info["spotted_apex"] = onset + spot.index
            info["motion_curve"] = [float(v) for v in spot.curve]
            info["motion_curve_smoothed"] = [float(v) for v in spot.smoothed]
            info["spot_seconds"] = round(spot.seconds, 4)
            if apex is None:
                apex = info["apex"] = onset + spot.index
        result = process_pair(clip[onset], clip[apex], **settings)
    except NoFaceFound:
        raise ValueError(
            f"no face found on the onset frame {onset} ({names[onset]}) of {source} with "
            "--crop haar; for frames that are already face-cropped use --crop none"
        ) from None
    info["onset_name"], info["apex_name"] = names[onset], names[apex]
    info["max_flow_px"] = largest_motion(result.flow)
    return result.flow_image, info


def plot_motion_curve(info: dict, path: str) -> str:
    """Writes the onset->frame motion curve with the chosen apex marked (PNG); returns path."""
    from mjfn_jax.plots import pyplot

    plt = pyplot()
    onset = info["onset"]
    frames = onset + np.arange(len(info["motion_curve"]))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(frames, info["motion_curve"], ".-", color="0.6", label="motion vs onset")
    ax.plot(frames, info["motion_curve_smoothed"], "-", color="C0", label="smoothed")
    how = "spotted" if info["apex_spotted"] else "--apex_frame"
    ax.axvline(info["apex"], color="C3", label=f"apex {info['apex']} ({how})")
    if not info["apex_spotted"] and info["spotted_apex"] != info["apex"]:
        ax.axvline(
            info["spotted_apex"], color="C1", ls="--", label=f"spotted {info['spotted_apex']}"
        )
    ax.axvline(onset, color="0.3", ls=":", label=f"onset {onset}")
    ax.set_xlabel("frame")
    ax.set_ylabel("strain score (detrended)")
    ax.set_title(f"motion from the onset frame; apex {info['apex']} ({how})")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
