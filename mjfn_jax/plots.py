"""Report figures: confusion matrices and training curves (matplotlib, Agg backend, numpy only)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mjfn_jax.storage import save_figure

# Curve panels: (history key, y label); the val_* twin of a key is drawn dashed when present.
# The loss is the training objective: the weighted sum of every head's cross-entropy (the
# backbone's, the three JFMs' and, with model.ststnet_branch, the STSTNets').
_PANELS = (("loss", "loss (sum over the heads)"), ("accuracy", "accuracy (fused prediction)"))


def pyplot():
    """matplotlib.pyplot with the headless Agg backend (reports are written on servers and in
    tests). Imported on first use, not with this module: pyplot's import is about a second of
    every command's start-up, and most commands draw nothing until their report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Writes counts (left) and row-normalised recall (right) side by side; returns ``path``."""
    cm = np.asarray(confusion, dtype=np.int64)  # [C, C], rows = true class
    support = cm.sum(axis=1, keepdims=True)
    # A class without support has an undefined row: shown blank (NaN), never as zeros.
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(support > 0, cm / np.maximum(support, 1), np.nan)
    c = len(class_names)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(4.2 * 2 + 1, 3.6 + 0.15 * c))
    panels = ((axes[0], cm, "counts", "{:d}"), (axes[1], norm, "row-normalised (recall)", "{:.2f}"))
    for ax, values, subtitle, fmt in panels:
        shown = values.astype(float)
        vmax = 1.0 if fmt != "{:d}" else max(float(np.nanmax(shown)), 1.0)
        ax.imshow(np.nan_to_num(shown, nan=0.0), cmap="Blues", vmin=0.0, vmax=vmax)
        for i in range(c):
            for j in range(c):
                v = values[i, j]
                text = "–" if np.isnan(float(v)) else fmt.format(v)
                dark = not np.isnan(float(v)) and float(v) > 0.6 * vmax
                ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(c), class_names, rotation=30, ha="right")
        ax.set_yticks(range(c), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(subtitle)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _curve_matrix(history: Mapping[str, Sequence[Mapping]], key: str):
    """Returns (epochs [E], values [F, E] float with NaN where a fold lacks that epoch) or None."""
    rows = {
        fold: {int(r["epoch"]): float(r[key]) for r in recs if r.get(key) is not None}
        for fold, recs in history.items()
    }
    epochs = sorted({e for r in rows.values() for e in r})
    if not epochs:
        return None
    # Folds stopped early have fewer epochs: NaN padding keeps the mean over the folds present.
    values = np.array([[r.get(e, np.nan) for e in epochs] for r in rows.values()], dtype=float)
    return np.array(epochs), values


def _draw(ax, epochs, values, color: str, label: str, dashed: bool) -> None:
    style = "--" if dashed else "-"
    for fold_values in values:
        ax.plot(epochs, fold_values, style, color=color, alpha=0.25, linewidth=0.7)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(values, axis=0)
    name = label if dashed else f"train {label}"
    marker = "o" if len(epochs) <= 5 else None  # a 1-epoch run is a single point
    ax.plot(epochs, mean, style, color=color, linewidth=2.2, marker=marker,
            label=f"{name} (mean of folds)")  # fmt: skip


def plot_curves(history: Mapping[str, Sequence[Mapping]], path: str, title: str = "") -> str | None:
    """Loss and accuracy per epoch: one thin line per fold, the mean across folds in bold.

    ``history`` is ``{fold: [{"epoch", "loss", "accuracy", optional "val_loss",
    "val_accuracy", "val_uf1", ...}, ...]}``. Validation curves (drawn dashed) come from a split
    of the TRAINING subjects, never the test subject. Returns ``path``, or None when the history
    holds no curve at all (nothing is written then).
    """
    extra = sorted(
        {k for recs in history.values() for r in recs for k in r}
        - {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    )
    # Further numeric val_* keys (e.g. val_uf1) go on the accuracy panel.
    val_keys = [k for k in extra if k.startswith("val_")]
    panels = [(k, label, [k, f"val_{k}"]) for k, label in _PANELS]
    panels[1][2].extend(val_keys)
    drawn = [[(k, _curve_matrix(history, k)) for k in keys] for _, _, keys in panels]
    if not any(m is not None for panel in drawn for _, m in panel):
        return None
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (_, label, _), series in zip(axes, panels, drawn, strict=True):
        for i, (key, matrix) in enumerate(series):
            if matrix is not None:
                _draw(ax, *matrix, colors[i % len(colors)], key, key.startswith("val_"))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"training curves ({len(history)} folds)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def figure_paths(workdir: str) -> dict[str, str]:
    return {
        "confusion": os.path.join(workdir, "confusion.png"),
        "curves": os.path.join(workdir, "curves.png"),
    }
