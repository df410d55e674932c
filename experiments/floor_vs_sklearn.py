"""The linear floor (mjfn_jax.linear_probe) against scikit-learn's fit of the same model.

    python -m experiments.floor_vs_sklearn --data_dir DATA [--name flow_images --config imported_28]

Same LOSO folds, same objective (LogisticRegression(), C = 1, on standardised pixels): prints
each one's pooled UF1/UAR and seconds (ours includes its compile), and how many clips they
predict differently. scikit-learn is a development dependency (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mjfn_jax.data import load_dataset
from mjfn_jax.folds import make_folds, pad_folds
from mjfn_jax.linear_probe import linear_floor
from mjfn_jax.metrics import pooled_metrics


def built_dataset_and_loso_folds(argv, description: str):
    """(dataset, padded LOSO folds) of a built dataset named by --data_dir/--name/--config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--name", default="flow_images")
    parser.add_argument("--config", default="imported_28")
    args = parser.parse_args(argv)
    data = load_dataset(args.name, args.config, args.data_dir)
    return data, pad_folds(make_folds(data.subjects, protocol="loso"))


def main(argv=None) -> None:
    data, arrays = built_dataset_and_loso_folds(argv, __doc__.splitlines()[0])
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    ours = linear_floor(data.images, data.labels, arrays, data.num_classes).argmax(-1)
    ours_s = time.perf_counter() - start
    x = data.images.reshape(len(data), -1).astype(np.float32) / 255.0
    theirs = np.zeros(len(data), int)
    start = time.perf_counter()
    for f in range(arrays.num_folds):
        test = arrays.test_idx[f][arrays.test_mask[f]]
        train = np.setdiff1d(np.arange(len(data)), test)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        theirs[test] = model.fit(x[train], data.labels[train]).predict(x[test])
    theirs_s = time.perf_counter() - start
    for label, pred, seconds in (("mjfn_jax.linear_probe", ours, ours_s),
                                 ("scikit-learn", theirs, theirs_s)):  # fmt: skip
        m = pooled_metrics(data.labels, pred, data.class_names)
        print(f"{label}: UF1 {m['uf1']:.4f}, UAR {m['uar']:.4f}, {seconds:.1f} s")
    print(f"{int(np.sum(ours != theirs))} of {len(data)} clips predicted differently; "
          f"{arrays.num_folds} folds")  # fmt: skip


if __name__ == "__main__":
    main()
