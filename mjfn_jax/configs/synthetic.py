"""The embedded synthetic micro-expression set: small and CPU-friendly (the `make demo` job).

Usage: --config mjfn_jax/configs/synthetic.py        (demo)
       --config mjfn_jax/configs/synthetic.py:smoke  (tiny, for tests)
"""

from mjfn_jax.config import base_config, small_input_recipe, smoke


def get_config(arg=None):
    config = base_config()
    config.data.name = "synthetic"
    config.data.flow_method = "tvl1"  # the dataset synthetic/tvl1_48
    small_input_recipe(config, input_size=48)  # sized for `make demo` on a 2-core CPU
    if arg == "smoke":
        smoke(config, num_epochs=2)
    elif arg not in (None, ""):
        raise ValueError(f"synthetic config: unknown argument {arg!r} (expected none or 'smoke')")
    return config
