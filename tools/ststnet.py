"""STSTNet (Liong et al., 2019), the published shallow network for the 28x28 composite flow
images, trained as its authors' ``main.py`` trains it, on our LOSO folds with our metrics: a
head-to-head with MJFN-JAX and the linear floor on the same folds, nothing selected on test
subjects (the last epoch predicts, as theirs does).

    python -m tools.ststnet --data_dir DIR [--seeds 0 1 2] [--epochs 800]
        [--learning_rate 5e-5] [--batch_size 256] [--machine cpu-2core] [--stem ststnet]
        [--leaky_epoch_selection]

writes experiments/results/<machine>/<stem>.{json,md}.

``--leaky_epoch_selection`` also predicts every test subject after every epoch and reports, in a
separate section marked as leakage, what choosing epochs on the test subjects would have scored:
each fold's best epoch by its test accuracy (the protocol of HTNet's published script, and of
several composite papers), and the one epoch with the best pooled test UF1; plus a plot of the
pooled test UF1 per epoch (``<stem>_epochs.png``). It measures how much such selection adds to a
published number; the headline stays the last epoch's.

The network: three 3x3 convolutions of the (u, v, strain) image with 3, 5 and 8 filters (padding
2), each followed by ReLU, BatchNorm, a 3x3 max pool of stride 3 (padding 1) and dropout 0.5,
concatenated, a 2x2 average pool, and one linear layer on the flattened 5x5x16 map. Three
branches that see the same input are one 16-filter convolution (BatchNorm is per channel), so
that is what is computed. Training: Adam, cross-entropy, batches of 256, no augmentation, the
pixels as read (0..255); PyTorch's initialisation and BatchNorm momentum. Each epoch visits the
fold's training clips in a new random order (theirs: one fixed order).

On XLA:CPU the convolution is an im2col matmul and the max pool a reshape: the weight gradient
of a 3-channel convolution ran 5x slower as a convolution, and reduce_window's gradient 4x
slower, than these (on the 2-core dev machine). The authors' 800 epochs take ~2.5 hours
per seed on 2 cores; ``--epochs 80 --learning_rate 5e-4`` keeps their batch and the product of
learning rate and steps (~14 min per seed).
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mjfn_jax import cli
from mjfn_jax.models.layers import STSTNET_FILTERS as FILTERS  # noqa: E402
from mjfn_jax.models.layers import ststnet_map_sizes as map_sizes  # noqa: E402
from mjfn_jax.models.layers import ststnet_pools  # noqa: E402

PAPER = {"uf1": 0.7353, "uar": 0.7605}  # as published (theirs: composite, LOSO)


def patches(images: np.ndarray) -> np.ndarray:
    """im2col of the padded 3x3 convolution: uint8 [N, S, S, 3] -> float32 [N, S+2, S+2, 27]
    (pixels as read, 0..255), so that the convolution is ``patches @ w.reshape(27, F)``."""
    x = np.pad(images.astype(np.float32), ((0, 0), (2, 2), (2, 2), (0, 0)))
    side = images.shape[1] + 2
    taps = [x[:, i : i + side, j : j + side, :] for i in range(3) for j in range(3)]
    return np.stack(taps, axis=3).reshape(len(images), side, side, 27)


def init_params(key, size: int, num_classes: int) -> dict:
    """PyTorch's default initialisation: uniform in +-1/sqrt(fan_in), weights and biases."""
    import jax

    k = jax.random.split(key, 4)
    features = map_sizes(size)[1] ** 2 * FILTERS
    uniform = lambda key, shape, fan_in: jax.random.uniform(
        key, shape, minval=-(fan_in**-0.5), maxval=fan_in**-0.5
    )
    return {
        "conv": uniform(k[0], (27, FILTERS), 27),
        "conv_bias": uniform(k[1], (FILTERS,), 27),
        "bn_scale": np.ones(FILTERS, np.float32),
        "bn_bias": np.zeros(FILTERS, np.float32),
        "fc": uniform(k[2], (features, num_classes), features),
        "fc_bias": uniform(k[3], (num_classes,), features),
    }


def forward(params, stats, x, *, train: bool, key=None, weights=None):
    """(logits [B, C], new BatchNorm running stats). x: patches [B, S+2, S+2, 27]; stats:
    (mean, var) [F] each; weights [B]: 1 for a real clip, 0 for batch padding (training)."""
    import jax
    import jax.numpy as jnp

    h = jax.nn.relu(x @ params["conv"] + params["conv_bias"])  # [B, S+2, S+2, F]
    if train:  # statistics of the real clips; running var unbiased, momentum 0.1 (PyTorch's)
        w = weights[:, None, None, None]
        n = jnp.sum(weights) * h.shape[1] * h.shape[2]
        mean = jnp.sum(h * w, axis=(0, 1, 2)) / n
        var = jnp.sum(jnp.square(h - mean) * w, axis=(0, 1, 2)) / n
        stats = (0.9 * stats[0] + 0.1 * mean, 0.9 * stats[1] + 0.1 * var * n / (n - 1))
    else:
        mean, var = stats
    h = (h - mean) * jax.lax.rsqrt(var + 1e-5) * params["bn_scale"] + params["bn_bias"]
    dropout = None
    if train:
        dropout = lambda h: jnp.where(jax.random.bernoulli(key, 0.5, h.shape), h * 2.0, 0.0)
    h = ststnet_pools(h, dropout=dropout)
    return h.reshape(h.shape[0], -1) @ params["fc"] + params["fc_bias"], stats


def train_and_predict(
    dataset, *, seed: int, epochs: int, learning_rate: float, batch_size: int, progress=None,
    every_epoch: bool = False,
) -> dict:  # fmt: skip
    """LOSO over the dataset's subjects: each fold's STSTNet trained on the other subjects'
    clips and its last epoch predicting its subject once. Returns {"probs": [N, C] pooled,
    "train_accuracy": mean over folds of the final model's accuracy on its training clips};
    with ``every_epoch`` also "epoch_probs" [epochs, N, C]: each fold's model after every epoch
    predicting its test subject (for the leaky comparison only; training is unchanged)."""
    import jax
    import jax.numpy as jnp
    import optax

    from mjfn_jax.folds import make_folds

    x_all = jnp.asarray(patches(dataset.images))
    y_all = jnp.asarray(dataset.labels, jnp.int32)
    num_classes, size = dataset.num_classes, dataset.images.shape[1]
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def epoch(params, stats, opt_state, order, weights, key):  # order, weights [steps, batch]
        for s in range(order.shape[0]):  # unrolled: no while loop on XLA:CPU
            x, y, w = x_all[order[s]], y_all[order[s]], weights[s]

            def loss_fn(params, stats=stats, x=x, y=y, w=w, s=s):
                logits, new = forward(
                    params, stats, x, train=True, key=jax.random.fold_in(key, s), weights=w
                )
                nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
                return jnp.sum(nll * w) / jnp.sum(w), new

            (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, stats, opt_state

    @jax.jit
    def predict(params, stats, idx):
        return jax.nn.softmax(forward(params, stats, x_all[idx], train=False)[0])

    probs = np.zeros((len(dataset), num_classes), np.float32)
    epoch_probs = np.zeros((epochs, *probs.shape), np.float32) if every_epoch else None
    folds = make_folds(dataset.subjects, protocol="loso")
    rng, key, accuracy = np.random.default_rng(seed), jax.random.PRNGKey(seed), []
    for fold in folds:
        key, init_key, drop_key = jax.random.split(key, 3)
        params = init_params(init_key, size, num_classes)
        stats = (jnp.zeros(FILTERS), jnp.ones(FILTERS))
        opt_state = optimizer.init(params)
        train = fold.train_idx
        steps = -(-len(train) // batch_size)  # the last batch is the short one (padded, w=0)
        for e in range(epochs):
            order = np.zeros(steps * batch_size, np.int32)
            order[: len(train)] = train[rng.permutation(len(train))]
            weights = (np.arange(steps * batch_size) < len(train)).astype(np.float32)
            params, stats, opt_state = epoch(
                params, stats, opt_state, order.reshape(steps, -1),
                weights.reshape(steps, -1), jax.random.fold_in(drop_key, e),
            )  # fmt: skip
            if every_epoch:
                epoch_probs[e, fold.test_idx] = np.asarray(predict(params, stats, fold.test_idx))
        # the last epoch's test predictions: already made with every_epoch
        last = (
            epoch_probs[-1, fold.test_idx] if every_epoch else predict(params, stats, fold.test_idx)
        )
        probs[fold.test_idx] = np.asarray(last)
        train_pred = np.asarray(predict(params, stats, train)).argmax(-1)
        accuracy.append(float(np.mean(train_pred == dataset.labels[train])))
        if progress is not None:
            progress.update(1)
    result = {"probs": probs, "train_accuracy": float(np.mean(accuracy))}
    return result | ({"epoch_probs": epoch_probs} if every_epoch else {})


def epochs_selected_on_test(labels, epoch_probs, folds, class_names) -> dict:
    """What choosing epochs ON THE TEST SUBJECTS would score (leakage; for comparison with
    published numbers only). ``epoch_probs`` [E, N, C]: every clip's prediction by its fold's
    model after each epoch. Returns the pooled UF1 and UAR per epoch, the last epoch's (honest),
    those of each fold's best epoch by its test accuracy (ties to the later epoch, as HTNet's
    ``best <= acc``) with the chosen epochs, and those of the one epoch with the best pooled
    test UF1."""
    from mjfn_jax.metrics import pooled_metrics

    preds = epoch_probs.argmax(-1)  # [E, N]
    per_epoch = [pooled_metrics(labels, p, class_names) for p in preds]
    uf1 = np.array([m["uf1"] for m in per_epoch])
    best = np.empty(len(labels), preds.dtype)
    chosen = {}
    for fold in folds:
        correct = (preds[:, fold.test_idx] == labels[fold.test_idx]).mean(-1)  # [E]
        e = len(correct) - 1 - int(np.argmax(correct[::-1]))  # the last of the best
        best[fold.test_idx] = preds[e, fold.test_idx]
        chosen[fold.name] = e + 1
    per_fold = pooled_metrics(labels, best, class_names)
    top = int(np.argmax(uf1))
    return {
        "uf1_per_epoch": uf1.tolist(),
        "uar_per_epoch": [m["uar"] for m in per_epoch],
        "last_epoch": {k: per_epoch[-1][k] for k in ("uf1", "uar")},
        "best_epoch_per_fold": {k: per_fold[k] for k in ("uf1", "uar")} | {"epochs": chosen},
        "best_single_epoch": {"epoch": top + 1} | {k: per_epoch[top][k] for k in ("uf1", "uar")},
    }


def head_to_head(
    dataset, seeds, *, epochs, learning_rate, batch_size, leaky_epoch_selection=False
) -> dict:
    """Every seed's pooled UF1/UAR, their mean and sd, the seeds' ensemble (mean probability),
    the linear floor on the same folds, and each seed fused with the floor (mean probability,
    as MJFN-JAX's reports fuse the network with it); "probs" keeps each seed's pooled class
    probabilities [N, C] (clips in "clips" order) for fusing with other runs. With
    ``leaky_epoch_selection``, "selected_on_test" holds each seed's
    ``epochs_selected_on_test`` and their mean and sd (leakage; kept apart)."""
    from tqdm import tqdm

    from mjfn_jax.folds import make_folds, pad_folds
    from mjfn_jax.linear_probe import linear_floor
    from mjfn_jax.metrics import pooled_metrics
    from mjfn_jax.report import mean_sd, seed_ensemble, with_linear_floor

    labels, names = dataset.labels, dataset.class_names
    folds = make_folds(dataset.subjects, protocol="loso")
    floor = linear_floor(dataset.images, labels, pad_folds(folds), dataset.num_classes)
    runs, t0 = {}, time.perf_counter()
    with tqdm(total=len(seeds) * len(folds), desc="STSTNet folds", unit="fold") as bar:
        for seed in seeds:
            start = time.perf_counter()
            runs[seed] = train_and_predict(
                dataset, seed=seed, epochs=epochs, learning_rate=learning_rate,
                batch_size=batch_size, progress=bar, every_epoch=leaky_epoch_selection,
            )  # fmt: skip
            runs[seed]["seconds"] = time.perf_counter() - start
    per_seed = {}
    for s, r in runs.items():
        alone = pooled_metrics(labels, r["probs"].argmax(-1), names)
        fused = with_linear_floor(labels, r["probs"], floor, names)
        per_seed[s] = {
            "uf1": alone["uf1"], "uar": alone["uar"],
            "with_floor_uf1": fused["uf1"], "with_floor_uar": fused["uar"],
            "train_accuracy": r["train_accuracy"], "seconds": r["seconds"],
        }  # fmt: skip

    def spread(values) -> tuple[float, float]:
        stats = mean_sd(values)
        return stats["mean"], stats["sd"]

    ensemble = seed_ensemble({s: r | {"y_true": labels} for s, r in runs.items()}, names)
    floor_metrics = pooled_metrics(labels, floor.argmax(-1), names)
    leaky = {}
    if leaky_epoch_selection:
        per_seed_leaky = {s: epochs_selected_on_test(labels, r["epoch_probs"], folds, names)
                          for s, r in runs.items()}  # fmt: skip
        rows = ("last_epoch", "best_epoch_per_fold", "best_single_epoch")
        leaky = {"per_seed": per_seed_leaky, "mean_sd": {
            f"{row}/{k}": spread([x[row][k] for x in per_seed_leaky.values()])
            for row in rows for k in ("uf1", "uar")
        }}  # fmt: skip
    return {
        # per clip, in the dataset's (subject, clip) order: for fusing with other models' runs
        "clips": [f"{s}/{c}" for s, c in zip(dataset.subjects, dataset.clips, strict=True)],
        "probs": {s: np.round(r["probs"], 5) for s, r in runs.items()},
        "per_seed": per_seed,
        "mean_sd": {
            k: spread([m[k] for m in per_seed.values()])
            for k in ("uf1", "uar", "with_floor_uf1", "with_floor_uar")
        },
        "ensemble": {k: ensemble[k] for k in ("uf1", "uar")},
        "floor": {k: floor_metrics[k] for k in ("uf1", "uar")},
        "seconds": time.perf_counter() - t0,
    } | ({"selected_on_test": leaky} if leaky else {})


def markdown(result: dict, args, dataset_name: str) -> str:
    import jax

    ms = result["mean_sd"]
    lines = [
        f"# STSTNet on our LOSO folds ({dataset_name})",
        "",
        f"`python -m tools.ststnet --data_dir {args.data_dir} --seeds "
        f"{' '.join(map(str, args.seeds))} --epochs {args.epochs} --learning_rate "
        f"{args.learning_rate} --batch_size {args.batch_size}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
        f"{jax.devices()[0].device_kind}; {result['seconds'] / 60:.1f} min in all. The last "
        "epoch predicts; nothing is selected on test subjects.",
        "",
        "| seed | UF1 | UAR | + linear floor UF1 | + floor UAR | training accuracy | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, m in result["per_seed"].items():
        lines.append(
            f"| {s} | {m['uf1']:.4f} | {m['uar']:.4f} | {m['with_floor_uf1']:.4f} | "
            f"{m['with_floor_uar']:.4f} | {m['train_accuracy']:.3f} | {m['seconds'] / 60:.1f} |"
        )
    pm = lambda key: f"{ms[key][0]:.4f} ± {ms[key][1]:.4f}"
    lines += [
        f"| mean ± sd | {pm('uf1')} | {pm('uar')} | {pm('with_floor_uf1')} | "
        f"{pm('with_floor_uar')} | | |",
        "",
        f"- the seeds' ensemble (mean probability): UF1 {result['ensemble']['uf1']:.4f}, "
        f"UAR {result['ensemble']['uar']:.4f}",
        f"- linear floor, same folds: UF1 {result['floor']['uf1']:.4f}, "
        f"UAR {result['floor']['uar']:.4f}",
        f"- STSTNet as published (theirs): UF1 {PAPER['uf1']}, UAR {PAPER['uar']}",
        "",
    ]
    if "selected_on_test" in result:
        lines += leaky_markdown(result["selected_on_test"])
    return "\n".join(lines)


def leaky_markdown(leaky: dict) -> list[str]:
    """The section of ``--leaky_epoch_selection``: per seed and mean ± sd, marked as leakage."""
    ms = leaky["mean_sd"]
    rows = {
        "last_epoch": "last epoch (the headline above; nothing selected)",
        "best_epoch_per_fold": "each fold's best epoch by its test accuracy (HTNet's script)",
        "best_single_epoch": "the one epoch with the best pooled test UF1",
    }
    seeds = list(leaky["per_seed"])
    lines = [
        "## Epochs selected on the test subjects (LEAKAGE: for comparison only)",
        "",
        "Each fold's model predicted its test subject after every epoch; the rows below choose "
        "epochs by those test predictions, which a leakage-free protocol cannot do. They measure "
        "how much such selection adds to a published number; they are not results.",
        "",
        "| epochs chosen by | "
        + " | ".join(f"seed {s} UF1 / UAR" for s in seeds)
        + " | mean ± sd UF1 | mean ± sd UAR |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for row, label in rows.items():
        cells = [f"{leaky['per_seed'][s][row]['uf1']:.4f} / {leaky['per_seed'][s][row]['uar']:.4f}"
                 for s in seeds]  # fmt: skip
        uf1, uar = ms[f"{row}/uf1"], ms[f"{row}/uar"]
        lines.append(f"| {label} | {' | '.join(cells)} | {uf1[0]:.4f} ± {uf1[1]:.4f} | "
                     f"{uar[0]:.4f} ± {uar[1]:.4f} |")  # fmt: skip
    best = ", ".join(
        f"seed {s}: {leaky['per_seed'][s]['best_single_epoch']['epoch']}" for s in seeds
    )
    lines += ["", f"- the best single epoch: {best}", ""]
    return lines


def plot_epochs(leaky: dict, path: str) -> None:
    """Pooled test UF1 after every epoch, one line per seed, with the per-fold best epochs'
    UF1 (leaky) and the published figure marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (seed, r) in enumerate(leaky["per_seed"].items()):
        color = f"C{i}"
        epochs = np.arange(1, len(r["uf1_per_epoch"]) + 1)
        ax.plot(
            epochs, r["uf1_per_epoch"], color=color, lw=1, label=f"seed {seed}: pooled, per epoch"
        )
        ax.axhline(r["best_epoch_per_fold"]["uf1"], color=color, ls="--", lw=1,
                   label=f"seed {seed}: each fold's best epoch (leaky)")  # fmt: skip
    ax.axhline(PAPER["uf1"], color="grey", ls=":", lw=1.5, label="STSTNet as published (theirs)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pooled test UF1")
    ax.set_title("STSTNet, LOSO: the last epoch vs epochs chosen on the test subjects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = cli.ArgumentParser("python -m tools.ststnet", __doc__)
    p.add_argument("--data_dir", required=True, help="where the flow_images dataset was built")
    p.add_argument("--dataset", default="flow_images/imported_28", help="NAME/CONFIG, built")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=800, help="theirs: 800")
    p.add_argument("--learning_rate", type=float, default=5e-5, help="theirs: 5e-5")
    p.add_argument("--batch_size", type=int, default=256, help="theirs: 256")
    p.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--stem", default="ststnet", help="file name of the results, no extension")
    p.add_argument(
        "--leaky_epoch_selection",
        action="store_true",
        help="also report epochs chosen on the test subjects, marked as leakage",
    )
    args = p.parse_args(argv)
    if min(args.seeds) < 0:
        p.error("--seeds need ints >= 0")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} needs an int >= 1")
    if not args.learning_rate > 0:
        p.error("--learning_rate needs a number > 0")
    from experiments.results_io import write_result
    from mjfn_jax.data import load_dataset

    name, _, config = args.dataset.partition("/")
    try:
        dataset = load_dataset(name, config, args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = head_to_head(
        dataset, args.seeds, epochs=args.epochs, learning_rate=args.learning_rate,
        batch_size=args.batch_size, leaky_epoch_selection=args.leaky_epoch_selection,
    )  # fmt: skip
    out_dir = os.path.join(args.out, args.machine)
    write_result(out_dir, args.stem, result, markdown(result, args, args.dataset))
    if "selected_on_test" in result:
        plot_epochs(result["selected_on_test"], os.path.join(out_dir, f"{args.stem}_epochs.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
