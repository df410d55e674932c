"""A finished run's test subjects predicted again from its saved fold models, with test-time
flips (``augment.test_hflip``) off and on: what the flip gives on that run, without training.
With ``--networks`` (a run with ``model.ststnet_branch``): each of its two networks alone (MJFN's
four heads fused; the STSTNet branch) beside their average, what the run predicted. With
``--final_dtypes`` (a run saved in float32): each fold's model as a model saved in each
``checkpoint.final_dtype`` (float32, bfloat16) would give it back, and how many test predictions
that changes.

    python -m tools.repredict --workdir W [--workdir W2 ...] [--data_dir DIR] [--out FILE.md]
        [--networks | --final_dtypes]

Training does not depend on ``augment.test_hflip`` unless early stopping reads the validation
loss it changes, so a run without early stopping (and without nested selection, whose choice
reads it too) is refused otherwise. Each fold's final model predicts the test clips it held out;
the pooled UF1/UAR of both settings are printed and written to ``--out`` as markdown.
"""

from __future__ import annotations

import datetime
import os
import sys

import numpy as np

from mjfn_jax import cli

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(workdir: str, data_dir: str | None, dataset):
    """(config, dataset) of a finished run; dataset: the run's (default: the one its config
    names, read from ``data_dir`` if given)."""
    from mjfn_jax.data import dataset_from_config
    from mjfn_jax.predict import load_run_config

    config = load_run_config(workdir)
    if data_dir:
        config.data.data_dir = data_dir
    if dataset is None:
        dataset = dataset_from_config(config.data, config.model.input_size, config.seed)
    return config, dataset


def _pooled(workdir: str, config, dataset, program, predict) -> dict:
    """Each fold's saved model predicts the test clips it held out: ``predict(model, idx)`` ->
    {name: log-probs or logits [M, C]}; returns {name: pooled metrics over the folds}."""
    from mjfn_jax.checkpoint import FoldCheckpointer
    from mjfn_jax.metrics import pooled_metrics
    from mjfn_jax.predict import restore_fold

    y_true, y_pred = [], {}
    for fold in sorted(os.listdir(os.path.join(workdir, "folds"))):
        ckpt = FoldCheckpointer(workdir, fold)
        test_idx, _, _ = ckpt.read_result()
        ckpt.close()
        _, model, _ = restore_fold(workdir, fold, config, program)
        for name, value in predict(model, np.asarray(test_idx, np.int32)).items():
            y_pred.setdefault(name, []).append(np.asarray(value).argmax(-1))
        y_true.append(np.asarray(dataset.labels)[test_idx])
    y_true = np.concatenate(y_true)
    return {
        name: pooled_metrics(y_true, np.concatenate(pred), dataset.class_names)
        for name, pred in y_pred.items()
    }


def repredict(workdir: str, data_dir: str | None = None, dataset=None) -> dict:
    """{False: pooled metrics as the run reported them, True: with test-time flips}."""
    import jax
    import jax.numpy as jnp

    from mjfn_jax.engine import FoldProgram

    config, dataset = _run(workdir, data_dir, dataset)
    if config.train.early_stopping_patience > 0 or config.select.candidates:
        raise SystemExit(
            f"{workdir}: early stopping or nested selection reads the validation loss, which "
            "test-time flips change: retrain with the setting instead"
        )
    data = {"images": jnp.asarray(dataset.images), "labels": jnp.asarray(dataset.labels)}
    out = {}
    for flip in (False, True):
        config.augment.test_hflip = flip
        program = FoldProgram(config, steps_per_epoch=1)
        predict = jax.jit(program.predict)  # used within this iteration only
        one = lambda model, idx, predict=predict: {"": predict(model, data, idx)}
        out[flip] = _pooled(workdir, config, dataset, program, one)[""]
    return out


def networks(workdir: str, data_dir: str | None = None, dataset=None) -> dict:
    """{"both": pooled metrics as the run predicted, "mjfn": MJFN's four heads alone (their
    fusion), "ststnet": the STSTNet branch alone} of a finished run with model.ststnet_branch."""
    import jax
    import jax.numpy as jnp

    from mjfn_jax.engine import FoldProgram
    from mjfn_jax.models.mjfn import BRANCH

    config, dataset = _run(workdir, data_dir, dataset)
    if not config.model.ststnet_branch:
        raise SystemExit(f"{workdir}: the run has no STSTNet branch (model.ststnet_branch)")
    if config.augment.test_hflip:
        raise SystemExit(f"{workdir}: test-time flips are not split by network here")
    images = jnp.asarray(dataset.images)
    program = FoldProgram(config, steps_per_epoch=1)

    @jax.jit
    def outputs(model, images, idx):
        net = program.bind(model["params"], model["batch_stats"], jax.random.key(0), train=False)
        out = net(images[idx].astype(jnp.float32) / 255.0)
        return {"both": out["fused"], "mjfn": out["mjfn"], "ststnet": out[BRANCH]}

    return _pooled(workdir, config, dataset, program, lambda m, idx: outputs(m, images, idx))


def final_dtypes(workdir: str, data_dir: str | None = None, dataset=None) -> dict:
    """{final_dtype: pooled metrics, and "changed": the number of test clips whose predicted
    class differs from float32's} of a finished run saved in float32, each fold's model
    rounded through each ``checkpoint.final_dtype`` (``model_file.round_trip_final``)."""
    import jax
    import jax.numpy as jnp

    from mjfn_jax.engine import FoldProgram
    from mjfn_jax.model_file import FINAL_DTYPES, round_trip_final

    config, dataset = _run(workdir, data_dir, dataset)
    if config.checkpoint.final_dtype != "float32":
        raise SystemExit(f"{workdir}: its models were saved in {config.checkpoint.final_dtype}")
    data = {"images": jnp.asarray(dataset.images), "labels": jnp.asarray(dataset.labels)}
    program = FoldProgram(config, steps_per_epoch=1)
    predict = jax.jit(program.predict)
    changed = dict.fromkeys(FINAL_DTYPES, 0)

    def each_dtype(model, idx):
        out = {d: np.asarray(predict(round_trip_final(model, d), data, idx)) for d in FINAL_DTYPES}
        for d in FINAL_DTYPES:
            changed[d] += int(np.sum(out[d].argmax(-1) != out["float32"].argmax(-1)))
        return out

    pooled = _pooled(workdir, config, dataset, program, each_dtype)
    return {d: {**pooled[d], "changed": changed[d]} for d in FINAL_DTYPES}


def main(argv=None) -> None:
    parser = cli.ArgumentParser("python -m tools.repredict", __doc__)
    parser.add_argument("--workdir", action="append", required=True)
    parser.add_argument("--data_dir", default=None, help="where the run's dataset is now")
    parser.add_argument("--out", default=None, help="markdown file for the table")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--networks", action="store_true", help="a run with model.ststnet_branch: each network"
    )
    mode.add_argument(
        "--final_dtypes", action="store_true", help="each checkpoint.final_dtype's saved model"
    )
    args = parser.parse_args(argv)
    if args.final_dtypes:
        from mjfn_jax.model_file import FINAL_DTYPES

        lines = [
            "| workdir | "
            + " | ".join(f"{d}: UF1 / UAR (predictions changed)" for d in FINAL_DTYPES)
            + " |",
            "|---|" + "---:|" * len(FINAL_DTYPES),
        ]
    elif args.networks:
        lines = [
            "| workdir | both (as run) UF1 / UAR | MJFN's heads alone | STSTNet branch alone |",
            "|---|---:|---:|---:|",
        ]
    else:
        lines = [
            "| workdir | UF1 | UAR | UF1, test-time flips | UAR, test-time flips |",
            "|---|---:|---:|---:|---:|",
        ]
    for workdir in args.workdir:
        try:
            run = final_dtypes if args.final_dtypes else networks if args.networks else repredict
            r = run(workdir, args.data_dir)
        except (OSError, ValueError) as e:  # no workdir, no config.json, a damaged result
            raise SystemExit(f"{workdir}: {e}") from None
        if args.final_dtypes:
            cells = [
                f"{m['uf1']:.4f} / {m['uar']:.4f} ({m['changed']} of {m['n']})" for m in r.values()
            ]
            lines.append(f"| `{workdir}` | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            continue
        if args.networks:
            cells = [f"{r[k]['uf1']:.4f} / {r[k]['uar']:.4f}" for k in ("both", "mjfn", "ststnet")]
            lines.append(f"| `{workdir}` | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            continue
        lines.append(
            f"| `{workdir}` | {r[False]['uf1']:.4f} | {r[False]['uar']:.4f} | "
            f"{r[True]['uf1']:.4f} | {r[True]['uar']:.4f} |"
        )
        print(lines[-1], flush=True)
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    command = " ".join(["python -m tools.repredict", *(argv or sys.argv[1:])])
    text = "\n".join([f"`{command}`, {stamp}", "", *lines])
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
