"""CASME II alone (5 classes: happiness, surprise, disgust, repression, others), under LOSO:
the reference configuration at 112x112.

Build the dataset first (the licensed videos stay where you keep them):
    mjfn-build build casme2/tvl1_112 --manual_dir /path/to/casme2 --data_dir data/tfds

Usage: --config casme2        (reference)
       --config casme2:smoke  (tiny, for tests)
"""

from mjfn_jax.config import base_config, smoke


def get_config(arg=None):
    config = base_config()
    config.data.name = "casme2"
    config.data.flow_method = "tvl1"  # the dataset casme2/tvl1_112
    config.model.num_classes = 5
    # One dataset's classes are unbalanced (docs/datasets.md): each fold's training set weighs
    # its classes by inverse frequency.
    config.loss.class_weights = "balanced"
    if arg == "smoke":
        smoke(config, num_epochs=1)
    elif arg not in (None, ""):
        raise ValueError(f"casme2 config: unknown argument {arg!r} (expected none or 'smoke')")
    return config
