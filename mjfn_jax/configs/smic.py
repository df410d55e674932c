"""SMIC-HS alone (3 classes: negative, positive, surprise), under LOSO:
the reference configuration at 112x112.

Build the dataset first (the licensed videos stay where you keep them):
    mjfn-build build smic/tvl1_112 --manual_dir /path/to/smic --data_dir data/tfds

Usage: --config smic        (reference)
       --config smic:smoke  (tiny, for tests)
"""

from mjfn_jax.config import base_config, smoke


def get_config(arg=None):
    config = base_config()
    config.data.name = "smic"
    config.data.flow_method = "tvl1"  # the dataset smic/tvl1_112
    config.model.num_classes = 3
    # One dataset's classes are unbalanced (docs/datasets.md): each fold's training set weighs
    # its classes by inverse frequency.
    config.loss.class_weights = "balanced"
    if arg == "smoke":
        smoke(config, num_epochs=1)
    elif arg not in (None, ""):
        raise ValueError(f"smic config: unknown argument {arg!r} (expected none or 'smoke')")
    return config
