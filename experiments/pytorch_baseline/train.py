"""The conventional PyTorch LOSO trainer (what peers do), the baseline of the benchmark.

Folds run one after another; each fold builds a fresh ``MJFNTorch`` and feeds it from a
``torch.utils.data.DataLoader`` whose Dataset augments on the host, sample by sample. It uses the
SAME config fields as the JAX engine (optimizer, warmup + cosine per step, weight decay, grad
clip, label smoothing, class weights, batch size, epochs), the same fold construction
(``mjfn_jax.folds``), the same number of steps per epoch for every fold (a smaller fold tops up
its epoch with extra draws from its own training set), the same flow-aware augmentation and the
same report code (``mjfn_jax.report.write_report(..., framework="pytorch")``).

Usage:
  python experiments/pytorch_baseline/train.py --config mjfn_jax/configs/synthetic.py \
      --workdir workdirs/torch_synth [--synthetic_arrays] [--compile] [--amp] [--device cuda]
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

from experiments.pytorch_baseline.data import FlowImages, augment_image  # noqa: E402, F401
from experiments.pytorch_baseline.model import MJFNTorch, mjfn_loss_torch  # noqa: E402
from mjfn_jax import cli
from mjfn_jax import folds as folds_lib  # noqa: E402
from mjfn_jax.views import config_layout  # noqa: E402

log = logging.getLogger("pytorch_baseline")


def lr_lambda(warmup_steps: int, total_steps: int):
    """Multiplier of the peak LR at update ``step`` (0-based), like optax's
    ``warmup_cosine_decay_schedule(0, peak, warmup_steps, total_steps, end_value=0)``."""

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return step / warmup_steps
        decay = max(1, total_steps - warmup_steps)
        frac = min(1.0, (step - warmup_steps) / decay)
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    return fn


def make_optimizer(model: torch.nn.Module, train_cfg, steps_per_epoch: int, fused=False):
    """(optimizer, per-step LambdaLR) as ``mjfn_jax.engine.make_optimizer``: Adam/AdamW, linear
    warmup then cosine decay to 0 over num_epochs * steps_per_epoch updates; AdamW's weight
    decay applies to kernels only (conv/linear weights, ndim > 1), not to BN or biases."""
    total = max(1, int(train_cfg.num_epochs) * steps_per_epoch)
    warmup = max(0, min(int(train_cfg.warmup_epochs * steps_per_epoch), total - 1))
    kwargs = {"lr": train_cfg.learning_rate, **({"fused": True} if fused else {})}
    if train_cfg.optimizer == "adamw":
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": train_cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, **kwargs)
    elif train_cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), **kwargs)
    else:
        raise ValueError(f"train.optimizer must be 'adam' or 'adamw', got {train_cfg.optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total))
    return opt, sched


def make_train_step(model, forward, opt, sched, config, *, amp=False, device="cpu"):
    """A closure ``step(x [B,H,W,3] float32, y [B] int64, class_weights|None)`` returning
    (loss scalar tensor, number of correct fused predictions tensor), both still on the device.

    ``forward`` is ``model`` or its ``torch.compile``d version (sharing the parameters).
    """
    clip = float(config.train.grad_clip_norm)
    weights = tuple(config.model.head_loss_weights)
    smoothing = float(config.loss.label_smoothing)
    device_type = torch.device(device).type

    def step(x, y, class_weights=None):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            outputs = forward(x)
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, _ = mjfn_loss_torch(
            outputs,
            y,
            head_loss_weights=weights,
            label_smoothing=smoothing,
            class_weights=class_weights,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        correct = (outputs["fused"].argmax(-1) == y).sum()
        return loss.detach(), correct

    return step


@torch.no_grad()
def predict(model, images: np.ndarray, batch_size: int, device, amp=False) -> np.ndarray:
    """Fused-head class probabilities float32 [N, C] of uint8 images [N, H, W, 3] (eval mode)."""
    model.eval()
    probs = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size].astype(np.float32) / 255.0)
        x = x.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            probs.append(model(x)["fused"].float().exp().cpu().numpy())
    return np.concatenate(probs)


def train_fold(config, dataset, fold, steps_per_epoch: int, *, seed: int, opts: dict) -> dict:
    """Trains one fold from scratch; returns test predictions and timings."""
    device = torch.device(opts["device"])
    torch.manual_seed(seed)
    model = MJFNTorch(config.model).to(device)
    if opts["channels_last"]:  # weights NHWC; convs then run channels_last (the model takes
        model = model.to(memory_format=torch.channels_last)  # NHWC input and permutes it)
    forward = torch.compile(model) if opts["compile"] else model
    num_epochs = int(config.train.num_epochs)
    opt, sched = make_optimizer(model, config.train, steps_per_epoch, fused=device.type == "cuda")
    step = make_train_step(model, forward, opt, sched, config, amp=opts["amp"], device=device)

    train_labels = np.asarray(dataset.labels)[fold.train_idx]
    class_weights = None
    if config.loss.class_weights == "balanced":
        w = folds_lib.balanced_class_weights(train_labels, int(config.model.num_classes))
        class_weights = torch.from_numpy(w).to(device)
    elif config.loss.class_weights != "none":
        raise ValueError(
            f"loss.class_weights must be 'none' or 'balanced', got {config.loss.class_weights!r}"
        )
    aug = config.augment
    train_set = FlowImages(
        np.asarray(dataset.images)[fold.train_idx],
        train_labels,
        hflip=aug.hflip,
        max_translate=aug.max_translate,
        layout=config_layout(config.data),
    )
    batch = int(config.train.batch_size)
    sampler = RandomSampler(train_set, num_samples=steps_per_epoch * batch)
    loader = DataLoader(
        train_set,
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=opts["num_workers"],
        pin_memory=device.type == "cuda",
    )
    t0 = time.perf_counter()
    first_step_s, history = None, []
    for epoch in range(1, num_epochs + 1):
        model.train()
        loss_sum, correct, seen = torch.zeros((), device=device), 0, 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            ts = time.perf_counter()
            loss, n_correct = step(x, y, class_weights)
            if first_step_s is None:  # includes torch.compile's tracing and codegen
                float(loss)  # waits for the device
                first_step_s = time.perf_counter() - ts
            loss_sum, correct, seen = loss_sum + loss, correct + n_correct, seen + len(y)
        mean_loss = float(loss_sum) / steps_per_epoch  # one host sync per epoch
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"fold {fold.name} epoch {epoch}: non-finite loss {mean_loss}")
        history.append({"epoch": epoch, "loss": mean_loss, "accuracy": float(correct) / seen})
    if opts.get("save_dir"):  # one checkpoint per fold, as peers (and the JAX engine) do
        os.makedirs(opts["save_dir"], exist_ok=True)
        torch.save(model.state_dict(), os.path.join(opts["save_dir"], f"{fold.name}.pt"))
    train_s = time.perf_counter() - t0
    test_images = np.asarray(dataset.images)[fold.test_idx]
    probs = predict(model, test_images, batch, device, opts["amp"])  # [n_test, C]
    return {
        "probs": probs,
        "history": history,
        "train_s": train_s,
        "first_step_s": first_step_s or 0.0,
    }


def _fold_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def train_loso_torch(
    config,
    dataset,
    workdir: str,
    *,
    compile: bool = False,  # noqa: A002 (mirrors the --compile flag)
    amp: bool = False,
    channels_last: bool = False,
    device: str | None = None,
    num_workers: int = 0,
    write: bool = True,
) -> dict:
    """Trains every fold one after another and writes the same report as the JAX engine.

    dataset: a ``mjfn_jax.data.Dataset`` (or any object with images uint8 [N, H, W, 3],
    labels int32 [N], subjects/sources/clips str [N], class_names). Returns the results dict
    of ``write_report`` (``pooled`` holds uf1/uar/accuracy) with a ``timing`` block; with
    ``write=False`` nothing is written and the dict holds ``pooled`` and ``timing`` only.
    """
    from mjfn_jax.metrics import pooled_metrics

    if int(config.train.early_stopping_patience) > 0:
        raise NotImplementedError("the PyTorch baseline trains a fixed epoch budget only")
    if float(config.train.get("ema_decay", 0.0)) > 0:
        raise ValueError("train.ema_decay > 0 has no PyTorch twin (JAX only)")
    if float(config.augment.get("mixup_alpha", 0.0)) > 0:
        raise ValueError("augment.mixup_alpha > 0 has no PyTorch twin (JAX only)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = amp or config.model.dtype == "bfloat16"
    opts = dict(
        device=device,
        compile=compile,
        amp=amp,
        channels_last=channels_last,
        num_workers=num_workers,
        save_dir=os.path.join(workdir, "folds") if write else None,
    )
    f = config.folds
    folds = folds_lib.make_folds(
        dataset.subjects,
        protocol=f.protocol,
        num_folds=f.num_folds,
        val_subject_fraction=f.val_subject_fraction,
        seed=config.seed,
        sources=dataset.sources,
    )
    steps = folds_lib.steps_per_epoch(
        max(len(fold.train_idx) for fold in folds), config.train.batch_size
    )
    t0 = time.perf_counter()
    order, probs, fold_names, history, fold_times = [], [], [], {}, []
    for k, fold in enumerate(folds):
        out = train_fold(config, dataset, fold, steps, seed=_fold_seed(config.seed, k), opts=opts)
        order.append(fold.test_idx)
        probs.append(out["probs"])
        fold_names += [fold.name] * len(fold.test_idx)
        history[fold.name] = out["history"]
        fold_times.append(out["train_s"])
        log.info("fold %d/%d %s: %.2fs, loss %.4f", k + 1, len(folds), fold.name,
                 out["train_s"], out["history"][-1]["loss"])  # fmt: skip
    wall_s = time.perf_counter() - t0
    idx = np.concatenate(order)
    p = np.concatenate(probs)
    y_true = np.asarray(dataset.labels)[idx]
    y_pred = p.argmax(-1)
    timing = {
        "wall_s": wall_s,
        "fold_train_s": fold_times,
        "steps_per_epoch": steps,
        "num_folds": len(folds),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **{k: v for k, v in opts.items() if k not in ("device", "save_dir")},
    }
    if not write:
        return {"pooled": pooled_metrics(y_true, y_pred, dataset.class_names), "timing": timing}
    from mjfn_jax.report import write_report

    return write_report(
        workdir,
        class_names=dataset.class_names,
        y_true=y_true,
        y_pred=y_pred,
        probs=p,
        subjects=np.asarray(dataset.subjects)[idx],
        sources=np.asarray(dataset.sources)[idx],
        clips=np.asarray(dataset.clips)[idx],
        folds=np.asarray(fold_names),
        history=history,
        config=config,
        timing=timing,
        framework="pytorch",
        title="MJFN (PyTorch baseline)",
        figures=bool(config.report.get("figures", True)),
    )


def dataset_from_arrays(arrays: dict):
    """A ``mjfn_jax.data.Dataset`` from ``mjfn_jax.synthetic.make_flow_arrays``'s dict."""
    from mjfn_jax.data import Dataset

    return Dataset.from_synthetic_arrays(arrays)


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("python experiments/pytorch_baseline/train.py", __doc__)
    parser.add_argument(
        "--config",
        required=True,
        help="mjfn_jax/configs/FILE.py[:ARG]; override fields with --config.<group>.<f>=value",
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--synthetic_arrays",
        action="store_true",
        help="train on make_flow_arrays (no built dataset, no tfds)",
    )
    parser.add_argument("--subjects", type=int, default=12, help="with --synthetic_arrays")
    parser.add_argument("--clips_per_subject", type=int, default=6, help="with --synthetic_arrays")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers")
    from mjfn_jax.config_io import load_config_or_exit, parse_args_with_overrides

    args, overrides = parse_args_with_overrides(parser, argv)
    from mjfn_jax.cli import setup_logging

    setup_logging()
    config = load_config_or_exit(args.config, overrides)
    if args.synthetic_arrays:
        from mjfn_jax.synthetic import make_flow_arrays

        arrays = make_flow_arrays(
            args.subjects, args.clips_per_subject, config.model.input_size, config.seed
        )
        dataset = dataset_from_arrays(arrays)
    else:
        from mjfn_jax.data import dataset_from_config

        dataset = dataset_from_config(config.data, config.model.input_size, config.seed)
    results = train_loso_torch(
        config,
        dataset,
        args.workdir,
        compile=args.compile,
        amp=args.amp,
        channels_last=args.channels_last,
        device=args.device,
        num_workers=args.num_workers,
    )
    from mjfn_jax.report import format_results_table

    print(format_results_table(results))
    print(f"wall time {results['timing']['wall_s']:.1f}s; report in {args.workdir}")
    return results


if __name__ == "__main__":
    from mjfn_jax.cli import expected_errors

    with expected_errors():  # an unsupported config field: one line, no traceback
        main()
