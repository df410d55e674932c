"""MEGC2019 composite (3DB): the reference configuration at 112x112.

Usage: --config mjfn_jax/configs/megc2019.py        (reference)
       --config mjfn_jax/configs/megc2019.py:smoke  (tiny, for tests)
"""

from mjfn_jax.config import base_config, smoke


def get_config(arg=None):
    config = base_config()
    config.data.name = "megc2019"
    config.data.flow_method = "tvl1"  # the dataset megc2019/tvl1_112
    config.model.num_classes = 3
    config.loss.class_weights = "none"
    if arg == "smoke":
        smoke(config, num_epochs=1)
    elif arg not in (None, ""):
        raise ValueError(f"megc2019 config: unknown argument {arg!r} (expected none or 'smoke')")
    return config
