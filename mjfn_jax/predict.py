"""mjfn-predict: class probabilities for a new clip from one fold's trained model in a workdir.

    mjfn-predict --workdir DIR --fold SUBJECT --onset A.jpg --apex B.jpg
    mjfn-predict --workdir DIR --fold SUBJECT --flow_image F.png
    mjfn-predict --workdir DIR --fold all --video clip.mp4 [--plot curve.png]
    mjfn-predict --workdir DIR --fold all --frames DIR [--apex_frame N]

The clip goes through the preprocessing of the dataset builders (``process_pair``: face crop,
optical flow, strain, min-max encoding) with the settings the training run recorded from its
dataset (``DIR/dataset.json``, mjfn_jax.workdir): flow method, side, encoding, crop (the
dataset's; ``--crop none`` for frames that are already face-cropped), and the class names. The
model is the finished fold's final model (for a fold still in progress, its latest
checkpoint), restored into the engine's own train-state structure and evaluated by the
engine's own predict function (so the best-on-validation weights are used when the run used
early stopping).

Which fold: a clip of a subject of the dataset must go to THAT subject's fold (the only model
that never saw the subject; under leave-one-dataset-out, its source's fold "lodo__<source>",
which a subject id resolves to). For a new person every fold's model is a valid choice, and
``--fold all`` averages the probabilities of all of them.

Raw clips (``--video`` / ``--frames``): onset = first frame, apex spotted
(mjfn_jax.predict_input).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

import numpy as np

from mjfn_jax import storage
from mjfn_jax.predict_input import (
    check_output_path,
    flow_image_from_clip,
    flow_image_from_file,
    flow_image_from_pair,
    no_motion_warning,
    save_flow_image,
)

# The inputs (a pair of frames, a saved flow image, a raw clip) -> the model's flow image.
from mjfn_jax.preprocess.face import CROP_MODES
from mjfn_jax.workdir import CONFIG_FILE, DATASET_FILE, has_final_model, read_json


def load_run_config(workdir: str):
    """The ConfigDict saved in ``workdir/config.json`` by the training run."""

    if reason := storage.unreachable(workdir):
        raise ValueError(f"cannot read workdir {workdir}: {reason}")
    if not storage.is_dir(workdir):
        raise FileNotFoundError(f"workdir not found: {workdir}")
    path = os.path.join(workdir, CONFIG_FILE)
    if not storage.as_path(path).is_file():
        raise FileNotFoundError(
            f"{path} not found: {workdir} is not a training workdir (mjfn-train "
            "writes config.json there first)"
        )
    from mjfn_jax.config_io import config_from_saved

    return config_from_saved(read_json(path, "restore it from the run's report"))


def load_dataset_record(workdir: str) -> dict:
    """The workdir's record of its dataset (``dataset.json``, mjfn_jax.workdir): class names
    and how the flow images were made."""
    path = os.path.join(workdir, DATASET_FILE)
    record = read_json(path) if storage.as_path(path).is_file() else {}
    if not record.get("preprocessing") or not record.get("class_names"):
        raise ValueError(
            f"{path} does not record how the dataset's flow images were made (a run older than "
            "this version, or arrays that came from no build): rerun its training command "
            "(finished folds are not trained again) to record it"
        )
    return record


def available_folds(workdir: str) -> list[str]:
    """Fold names under ``workdir/folds`` that hold a final model or a checkpoint."""
    root = storage.as_path(workdir, "folds")
    if not root.is_dir():
        return []
    names = []
    for name in sorted(p.name for p in root.iterdir()):
        ckpt_dir = root / name / "checkpoints"
        if has_final_model(os.path.join(root, name)) or (
            ckpt_dir.is_dir() and any(e.name.isdigit() for e in ckpt_dir.iterdir())
        ):
            names.append(name)
    return names


def resolve_fold(workdir: str, fold: str) -> str:
    """Accepts a fold name ("casme2__sub01", "fold03", "lodo__casme2"), a subject id
    ("casme2/sub01"; in a leave-one-dataset-out run, its source's fold), an unambiguous subject
    id without its source prefix ("sub01") or a source name ("casme2", LODO)."""
    from mjfn_jax.folds import sanitize_fold_name

    folds = available_folds(workdir)
    for candidate in (fold, sanitize_fold_name(fold)):
        if candidate in folds:
            return candidate
    if "/" in fold:  # leave one dataset out: the subject's source was held out as a whole
        held_out = sanitize_fold_name("lodo/" + fold.split("/", 1)[0])
        if held_out in folds:
            return held_out
    # A subject id without its source prefix ("sub01" for "casme2__sub01"), if unambiguous.
    matches = [f for f in folds if f.endswith("__" + sanitize_fold_name(fold))]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(folds[:40]) + (f", ... ({len(folds)} in all)" if len(folds) > 40 else "")
    raise ValueError(
        f"unknown fold {fold!r} in {workdir}; folds with a checkpoint: {shown or 'none'}"
    )


def preprocessing_settings(record: dict, crop: str | None = None) -> dict:
    """process_pair arguments that reproduce the run's dataset (``load_dataset_record``):
    flow_method, size, encoding and crop (``crop`` overrides the dataset's; a dataset built
    with several crops, e.g. per source, uses its most frequent one)."""
    pre = record["preprocessing"]
    crops = dict(pre.get("crop") or {})
    crop = crop or (max(crops, key=crops.get) if crops else "haar")
    return {
        "flow_method": pre["flow_method"],
        "size": int(pre["size"]),
        "encoding": pre.get("encoding", "uvs"),
        "crop": crop,
    }


RESTORE_TRIES = 5  # reads of a fold whose checkpoints a training run keeps changing


def restore_fold(workdir: str, fold: str, config, program=None):
    """(program, model, meta): the fold's model {"params", "batch_stats"}.

    A finished fold's final model (``folds/<fold>/final``); for a fold still in progress, the
    model of its latest checkpoint. Structures come from ``jax.eval_shape`` of the engine's
    own init and export (``FoldProgram.state_structure``, ``model_structure``: traced once per
    program), so they always match what ``mjfn_jax.train`` saved with this config.

    A run still training the fold may delete the listed checkpoint before it is read (it
    finished the fold, or moved on): the fold is read again as it is now. A checkpoint that
    fails while nothing changed is damaged: a ValueError naming it.
    """

    from mjfn_jax.checkpoint import CheckpointDamaged
    from mjfn_jax.engine import FoldProgram

    if program is None:  # one program serves every fold of a run (--fold all)
        program = FoldProgram(config, steps_per_epoch=1)  # the schedule length is irrelevant
    like = program.state_structure
    fold_dir = os.path.join(workdir, "folds", fold)
    for _ in range(RESTORE_TRIES):
        before = _saved_steps(fold_dir)
        try:
            return (program, *_restore(workdir, fold, program, like, config))
        except (CheckpointDamaged, OSError) as e:
            if _saved_steps(fold_dir) != before:
                continue  # a training run moved on: read the fold as it is now
            if isinstance(e, CheckpointDamaged):  # nothing moved: the files themselves fail
                raise ValueError(str(e)) from None
            raise
    raise ValueError(
        f"fold {fold!r} in {workdir}: its checkpoints changed {RESTORE_TRIES} times while being "
        "read (a run is training it); try again"
    )


def _saved_steps(fold_dir: str) -> tuple[bool, list[str]]:
    """(whether the fold has its final model, its checkpoint steps): what a training run
    changes in a fold folder."""
    try:
        entries = storage.as_path(fold_dir, "checkpoints").iterdir()
        steps = sorted(e.name for e in entries if e.name.isdigit())
    except FileNotFoundError:
        steps = []
    return has_final_model(fold_dir), steps


def _restore(workdir: str, fold: str, program, like, config):
    """(model, meta) of the fold as its folder is now (see restore_fold)."""

    from mjfn_jax.checkpoint import FoldCheckpointer
    from mjfn_jax.writer import closed_loop_reports_dropped

    ckpt = FoldCheckpointer(workdir, fold)
    try:
        if ckpt.has_final():
            model = ckpt.restore_final(program.model_structure)
            epoch = _epochs_trained(ckpt, config)
            return model, {"epoch": epoch, "finished": ckpt.is_done()}
        epochs = ckpt.epochs()
        if not epochs:
            raise FileNotFoundError(f"fold {fold!r} has no checkpoint in {ckpt.fold_dir}")
        with closed_loop_reports_dropped():
            state, meta = ckpt.restore(epochs[-1], like)
        meta = dict(meta, epoch=epochs[-1], finished=ckpt.is_done())
    finally:
        ckpt.close()
    return program.export(state), meta


def _epochs_trained(ckpt, config) -> int:
    """From the finished fold's summary (early stopping may end before the budget)."""
    if ckpt.is_done():
        return int(ckpt.read_result()[2].get("epochs_trained", config.train.num_epochs))
    return int(config.train.num_epochs)


def class_probabilities(program, state, flow_image: np.ndarray, predict_fn=None) -> np.ndarray:
    """uint8 [S, S, 3] flow image -> float64 [C] class probabilities (fused head, eval mode).

    predict_fn: a jitted program.predict to reuse (one compile for all the folds of a run)."""
    import jax
    import jax.numpy as jnp

    predict_fn = predict_fn or jax.jit(program.predict)
    data = {"images": jnp.asarray(flow_image[None]), "labels": jnp.zeros((1,), jnp.int32)}
    log_probs = predict_fn(state, data, jnp.zeros((1,), jnp.int32))  # [1, C]
    return np.exp(np.asarray(log_probs, np.float64)[0])


def floor_probabilities(
    workdir: str, folds: list[str], image: np.ndarray, config=None
) -> np.ndarray:
    """Mean float64 [C] probabilities of `folds`' linear floors (the probes the training run
    kept in ``workdir/linear_floor.npz``) for one flow image. config: the run's (says why the
    file is missing)."""
    from mjfn_jax.linear_probe import floor_log_probs
    from mjfn_jax.workdir import LINEAR_FLOOR_FILE

    path = os.path.join(workdir, LINEAR_FLOOR_FILE)
    try:
        with storage.load_npz(path) as z:
            kept = {k: z[k] for k in ("weight", "bias", "folds")}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {_no_floor(workdir, config)}") from None
    except KeyError:
        raise ValueError(
            f"{path} has the floor's predictions but not its probes (an older run): rerun the "
            "training command on this workdir to fit them (seconds)"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path} is damaged ({type(e).__name__}: {e}): rerun the training command on this "
            "workdir to fit the floor again (seconds)"
        ) from None
    names = kept["folds"].tolist()
    probs = []
    for fold in folds:
        if fold not in names:
            raise ValueError(f"{path} has no linear floor for fold {fold!r}")
        i = names.index(fold)
        probs.append(np.exp(floor_log_probs(kept["weight"][i], kept["bias"][i], image[None])[0]))
    return np.mean(probs, axis=0)


def _no_floor(workdir: str, config) -> str:
    """Why a run has no linear_floor.npz. It is fitted after the last fold, with the report."""
    if config is None or not config.report.get("linear_floor", False):
        return "the run fitted no linear floor (report.linear_floor=False)"
    if not storage.exists(workdir, "results.json"):
        return (
            "the run has not fitted its linear floor yet: it does once every fold has finished "
            "training (rerun the training command if it is not running)"
        )
    return "rerun the training command on this workdir to fit the linear floor again (seconds)"


class Predictor:
    """A run's fold model(s), restored once, to predict many clips::

        predictor = Predictor("workdirs/casme2", "all")
        results = [predictor.predict(video=path) for path in videos]

    ``predict(workdir, fold, ...)`` is one Predictor's one prediction. A Predictor restores the
    fold's model (every fold's for "all") and compiles the prediction at its first clip and
    keeps them: each further clip costs its preprocessing and a forward pass. The models are
    those on disk at the first clip (for a fold still training, its checkpoint of then).

    fold: a fold name or subject id, or "all" (mean probabilities of every fold's model)."""

    def __init__(self, workdir: str, fold: str):
        config = load_run_config(workdir)
        channels = config.model.get("input_channels", 3)
        if channels != 3:  # predict makes one flow view (onset->apex) of a clip
            raise ValueError(
                f"{workdir} trained a model of {channels} input channels "
                f"({channels // 3} flow views per clip, data.views); predict makes one flow view "
                "(onset->apex) of a clip: it predicts with one-view models only"
            )
        seeds = tuple(config.train.get("seeds", ()))
        if len(seeds) > 1:
            raise ValueError(
                f"{workdir} trained {len(seeds)} seeds in one run; give one seed's workdir, "
                f"--workdir {os.path.join(workdir, 'seeds', str(seeds[0]))} (seeds: "
                f"{', '.join(map(str, seeds))})"
            )
        self.workdir, self.config = workdir, config
        self.record = load_dataset_record(workdir)
        self.fold = fold
        self.folds = available_folds(workdir) if fold == "all" else [resolve_fold(workdir, fold)]
        if not self.folds:
            raise ValueError(f"--fold all: no fold with a checkpoint in {workdir}")
        self._restored = None  # (program, jitted predict, [(model, meta)] per fold): 1st clip

    def _models(self) -> tuple:
        """(program, its jitted predict, [(model, meta)] of the folds), restored once."""
        if self._restored is None:
            import jax

            program, models = None, []
            for fold in self.folds:  # one program serves every fold of a run
                program, model, meta = restore_fold(self.workdir, fold, self.config, program)
                models.append((model, meta))
            self._restored = program, jax.jit(program.predict), models
        return self._restored

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """(mean float64 [C] probabilities over the folds' models, their metas) of one uint8
        [S, S, 3] flow image: the ensemble of "all", and the one fold's probabilities
        otherwise."""
        program, predict_fn, models = self._models()
        probs = [class_probabilities(program, model, image, predict_fn) for model, _ in models]
        return np.mean(probs, axis=0), [meta for _, meta in models]

    def predict(
        self,
        *,
        onset: str | None = None,
        apex: str | None = None,
        flow_image: str | None = None,
        crop: str | None = None,
        video: str | None = None,
        frames: str | None = None,
        onset_frame: int | None = None,
        apex_frame: int | None = None,
        want_curve: bool = False,
        spot: str | None = None,
        with_floor: bool = False,
    ) -> dict:
        """Probabilities of one clip. Returns fold, epoch, class_names, probs [C], pred,
        settings, onset, apex, the flow image (uint8 [S, S, 3]) that went into the model,
        warnings (a flow without motion: predict_input.no_motion_warning), max_flow_px (frames
        or a clip: the longest flow vector) and, for a raw clip (video / frames), what
        predict_input.flow_image_from_clip chose.

        with_floor: the report's "network + floor" model: the mean of the network's
        probabilities and those of the same fold's linear floor (``network_probs`` and
        ``floor_probs`` too)."""
        pair = _check_clip(onset, apex, flow_image, video, frames)
        pre = self.record["preprocessing"]
        if pre["flow_method"] == "imported" and flow_image is None:
            raise ValueError(
                f"{self.workdir} was trained on imported flow images ({pre.get('dataset')}), "
                "made by their publishers' own preprocessing: give a flow image made the same "
                "way (--flow_image), not frames or a video"
            )
        settings = preprocessing_settings(self.record, crop)
        clip_info = {"onset": onset, "apex": apex}
        if flow_image is not None:
            image = flow_image_from_file(flow_image, settings["size"])
        elif pair:
            image, clip_info["max_flow_px"] = flow_image_from_pair(onset, apex, settings)
        else:
            image, clip_info = flow_image_from_clip(
                settings, video=video, frames=frames, onset_frame=onset_frame,
                apex_frame=apex_frame, want_curve=want_curve, spot=spot,
            )  # fmt: skip
        probs, metas = self.probabilities(image)
        extra = {}
        if with_floor:
            floor = floor_probabilities(self.workdir, self.folds, image, self.config)
            extra = {"network_probs": probs, "floor_probs": floor}
            probs = (probs + floor) / 2
        names = tuple(self.record["class_names"])
        still = no_motion_warning(image, clip_info.get("max_flow_px"))
        return {
            **extra,
            **clip_info,
            "warnings": [still] if still else [],
            "fold": "all" if self.fold == "all" else self.folds[0],
            "folds": self.folds,
            "epoch": min(m["epoch"] for m in metas),
            "finished": all(m["finished"] for m in metas),
            "num_epochs": int(self.config.train.num_epochs),
            "class_names": names,
            "probs": probs,
            "pred": names[int(np.argmax(probs))],
            "settings": settings,
            "flow_image": image,
        }


def _check_clip(onset, apex, flow_image, video, frames) -> bool:
    """Exactly one input: a pair of frames (returns True), a flow image, a video or frames."""
    pair = onset is not None or apex is not None
    if (onset is None) != (apex is None) or pair + (flow_image is not None) + (
        video is not None
    ) + (frames is not None) != 1:
        raise ValueError(
            "give either both onset and apex frames, or one flow image, or a video, or a frame "
            "folder"
        )
    return pair


def predict(workdir: str, fold: str, **clip) -> dict:
    """Probabilities of one clip from ``workdir``'s fold (a name, a subject id or "all"):
    ``Predictor(workdir, fold).predict(**clip)`` (see Predictor.predict for the clip's
    arguments and the result). For many clips, keep a Predictor: it restores once."""
    _check_clip(*(clip.get(k) for k in ("onset", "apex", "flow_image", "video", "frames")))
    return Predictor(workdir, fold).predict(**clip)


def format_prediction(result: dict) -> str:
    status = "" if result["finished"] else " (fold NOT finished training)"
    which = f"fold {result['fold']}"
    if result["fold"] == "all":
        which = f"mean of {len(result['folds'])} folds' models ({', '.join(result['folds'])})"
        status = status.replace("fold", "a fold")
    lines = [
        f"{which}: checkpoint after epoch {result['epoch']} of {result['num_epochs']}{status}",
        "preprocessing: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()),
        f"{'class':<14}probability",
    ]
    pairs = zip(result["class_names"], result["probs"], strict=True)
    if "onset_name" in result:  # a raw clip: which frames were chosen, and how
        how = "spotted" if result["apex_spotted"] else "given"
        lines.insert(
            2,
            f"onset frame {result['onset']} ({result['onset_name']}), apex frame "
            f"{result['apex']} ({result['apex_name']}, {how}) of {result['num_frames']} frames",
        )
    if "floor_probs" in result:  # network + floor: the three columns
        lines[-1] = f"{'class':<14}{'network':>9}{'floor':>9}{'mean':>9}"
        rows = zip(result["class_names"], result["network_probs"], result["floor_probs"],
                   result["probs"], strict=True)  # fmt: skip
        lines += [f"{name:<14}{n:>9.4f}{f:>9.4f}{m:>9.4f}" for name, n, f, m in rows]
    else:
        lines += [f"{name:<14}{prob:.4f}" for name, prob in pairs]
    warnings = [f"warning: {w}" for w in result.get("warnings", ())]
    return "\n".join([*lines, f"prediction: {result['pred']}", *warnings])


def _parser() -> argparse.ArgumentParser:
    from mjfn_jax import cli

    p = cli.ArgumentParser("mjfn-predict", __doc__)
    p.add_argument("--workdir", required=True, help="training workdir (config.json, folds/)")
    p.add_argument(
        "--fold",
        required=True,
        help="fold name or subject id, e.g. casme2/sub01; 'all': mean of every fold's model "
        "(for a person in no fold)",
    )
    p.add_argument("--onset", help="onset frame image file")
    p.add_argument("--apex", help="apex frame image file")
    p.add_argument("--flow_image", help="an already computed flow image (PNG) instead")
    p.add_argument("--video", help="a clip as a video file (onset first; apex spotted)")
    p.add_argument("--frames", help="a clip as a folder of frame images, in natural name order")
    p.add_argument("--onset_frame", type=int, help="--video/--frames: onset position (default 0)")
    p.add_argument("--apex_frame", type=int, help="--video/--frames: apex position (default: spot)")
    p.add_argument("--plot", help="--video/--frames: save the motion curve, apex marked (PNG)")
    p.add_argument(
        "--spot",
        help="--video/--frames: spotting settings NAME=VALUE,... (mjfn_jax.preprocess.SpotSettings"
        "), e.g. flow_method=dis,work_size=32 or detrend=false for a clip that ends at its apex",
    )
    p.add_argument("--crop", choices=CROP_MODES, help="override the face crop")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--save_flow_image", help="also write the model's input flow image here")
    p.add_argument(
        "--with_floor",
        action="store_true",
        help="the report's network + floor model: average the network's probabilities with "
        "those of the fold's linear floor (kept by the training run)",
    )
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    pair = args.onset is not None or args.apex is not None
    given = pair + sum(x is not None for x in (args.flow_image, args.video, args.frames))
    if given != 1 or (pair and (args.onset is None or args.apex is None)):
        parser.error("give --onset and --apex, or --flow_image, or --video, or --frames")
    raw = args.video is not None or args.frames is not None
    for flag in ("onset_frame", "apex_frame", "plot", "spot"):
        if getattr(args, flag) is not None and not raw:
            parser.error(f"--{flag} needs --video or --frames")


JSON_KEYS = {  # --json: the output's keys (one per fact), the internal result's names
    "prediction": "pred",
    "probabilities": "probs",
    "network_probabilities": "network_probs",
    "floor_probabilities": "floor_probs",
}


def json_result(result: dict) -> dict:
    """``--json``'s object: the result without the image, each fact under one key.

    prediction: the class name; probabilities: {class: p} of the model used (with --with_floor
    the mean of network_probabilities and floor_probabilities, also given); fold, folds,
    epoch, num_epochs, finished: which models and how far they trained; class_names;
    settings: the preprocessing; warnings: [str]; onset, apex: frame numbers of a raw clip
    (with onset_name, apex_name, apex_spotted, spotted_apex, num_frames, motion_curve,
    motion_curve_smoothed), the files of --onset/--apex, absent for --flow_image; max_flow_px:
    the largest flow displacement when the flow was computed here."""
    out = {k: v for k, v in result.items() if k != "flow_image" and k not in JSON_KEYS.values()}
    for key, internal in JSON_KEYS.items():
        if internal == "pred":
            out[key] = result[internal]
        elif internal in result:
            values = map(float, result[internal])
            out[key] = dict(zip(result["class_names"], values, strict=True))
    return out


def main(argv: list[str] | None = None) -> int:
    from mjfn_jax.preprocess import NoFaceFound

    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    # Our error line names a bad video; FFmpeg's own log lines ("moov atom not found") would make
    # it several lines. Read by OpenCV when it first opens FFmpeg; a user's setting wins.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        if args.save_flow_image:
            check_output_path(args.save_flow_image)
        if args.plot:
            check_output_path(args.plot, "--plot")
        result = predict(
            args.workdir, args.fold, onset=args.onset, apex=args.apex,
            flow_image=args.flow_image, crop=args.crop, video=args.video, frames=args.frames,
            onset_frame=args.onset_frame, apex_frame=args.apex_frame,
            want_curve=args.plot is not None, spot=args.spot, with_floor=args.with_floor,
        )  # fmt: skip
        if args.save_flow_image:
            save_flow_image(args.save_flow_image, result["flow_image"])
        if args.plot:
            from mjfn_jax.predict_input import plot_motion_curve

            plot_motion_curve(result, args.plot)
            print(f"motion curve: {args.plot}", file=sys.stderr)
        if args.save_flow_image:
            print(f"flow image: {args.save_flow_image}", file=sys.stderr)
    except (FileNotFoundError, ValueError, TypeError, OSError, NoFaceFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(json_result(result), indent=1) if args.json else format_prediction(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
