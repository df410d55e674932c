"""MEGC2019 composite (3DB): the reference configuration at 112x112.

Usage: --config experiments/configs/megc2019.py        (reference)
       --config experiments/configs/megc2019.py:smoke  (tiny, for tests)
"""

from mjfn_jax.config import base_config


def get_config(arg=None):
    config = base_config()
    config.data.name = "megc2019"
    config.data.builder_config = "tvl1_112"
    config.model.num_classes = 3
    config.loss.class_weights = "none"
    if arg == "smoke":
        config.model.input_size = 32
        config.data.builder_config = config.data.builder_config.split("_")[0] + "_32"
        config.model.stem_stride = 1
        config.model.widths = (4, 8, 8, 16)
        config.model.blocks_per_stage = (1, 1, 1, 1)
        config.train.num_epochs = 1
        config.train.batch_size = 8
    elif arg not in (None, ""):
        raise ValueError(f"megc2019 config: unknown argument {arg!r} (expected none or 'smoke')")
    return config
