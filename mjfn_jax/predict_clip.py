"""Raw-clip input of the predict command: a video or a frame folder -> (onset, apex) -> flow image.

Real footage has no onset/apex annotation. The onset is the clip's first frame unless
``--onset-frame N`` says otherwise, and the apex is spotted (mjfn_jax.preprocess.spot_apex: the
peak of the face's motion relative to the onset, inside the same face box as the flow image)
unless ``--apex-frame N`` is given. Frame numbers N are 0-based positions in the clip: the
video's decoding order, or the folder's natural name order (img2 before img10).
"""

from __future__ import annotations

import os

import numpy as np


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
    """Validates --onset-frame / --apex-frame against a clip of `count` frames (0..count-1)."""
    onset = 0 if onset is None else int(onset)
    if not 0 <= onset <= count - 2:
        raise ValueError(
            f"--onset-frame {onset}: out of range; the clip has frames 0..{count - 1} and the "
            "onset needs at least one frame after it"
        )
    if apex is not None and not onset < int(apex) <= count - 1:
        raise ValueError(
            f"--apex-frame {apex}: out of range; it must lie after the onset frame {onset} and "
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
) -> tuple[np.ndarray, dict]:
    """The model's input flow image (uint8 [S, S, 3]) and what was chosen: onset, apex (frame
    numbers), apex_spotted, frame names, and the motion curve when spotting ran (it runs when
    no apex is given, or when `want_curve`, e.g. for --plot)."""
    from mjfn_jax.preprocess import NoFaceFound, process_pair, spot_apex

    clip, names, source = load_clip(video, frames)
    onset, apex = check_frame_numbers(len(clip), onset_frame, apex_frame)
    info = {"onset": onset, "apex": apex, "apex_spotted": apex is None, "num_frames": len(clip)}
    try:
        if apex is None or want_curve:
            spot = spot_apex(clip[onset:], crop=settings["crop"])
            info["spotted_apex"] = onset + spot.index
            info["motion_curve"] = [float(v) for v in spot.curve]
            info["motion_curve_smoothed"] = [float(v) for v in spot.smoothed]
            info["spot_seconds"] = round(spot.seconds, 4)
            if apex is None:
                apex = info["apex"] = onset + spot.index
        image = process_pair(clip[onset], clip[apex], **settings).flow_image
    except NoFaceFound:
        raise ValueError(
            f"no face found on the onset frame {onset} ({names[onset]}) of {source} with "
            "--crop haar; for frames that are already face-cropped use --crop none"
        ) from None
    info["onset_name"], info["apex_name"] = names[onset], names[apex]
    return image, info


def plot_motion_curve(info: dict, path: str) -> str:
    """Writes the onset->frame motion curve with the chosen apex marked (PNG); returns path."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    onset = info["onset"]
    frames = onset + np.arange(len(info["motion_curve"]))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(frames, info["motion_curve"], ".-", color="0.6", label="motion vs onset")
    ax.plot(frames, info["motion_curve_smoothed"], "-", color="C0", label="smoothed")
    how = "spotted" if info["apex_spotted"] else "--apex-frame"
    ax.axvline(info["apex"], color="C3", label=f"apex {info['apex']} ({how})")
    if not info["apex_spotted"] and info["spotted_apex"] != info["apex"]:
        ax.axvline(
            info["spotted_apex"], color="C1", ls="--", label=f"spotted {info['spotted_apex']}"
        )
    ax.axvline(onset, color="0.3", ls=":", label=f"onset {onset}")
    ax.set_xlabel("frame")
    ax.set_ylabel("strain score (detrended)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
