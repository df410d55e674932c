"""The embedded synthetic micro-expression set: small and CPU-friendly (the `make demo` job).

Usage: --config experiments/configs/synthetic.py        (demo)
       --config experiments/configs/synthetic.py:smoke  (tiny, for tests)
"""

from mjfn_jax.config import base_config, smoke


def get_config(arg=None):
    config = base_config()
    config.data.name = "synthetic"
    config.data.flow_method = "tvl1"  # the dataset synthetic/tvl1_48
    config.model.num_classes = 3
    config.model.input_size = 48
    config.model.stem_stride = 1
    # Sized for `make demo` on a 2-core CPU (~3 min of training for 12 LOSO folds); see README.
    config.model.widths = (8, 16, 32, 64)
    config.model.dropout = 0.2
    config.train.num_epochs = 20
    config.train.batch_size = 32
    config.train.learning_rate = 2e-3
    config.train.warmup_epochs = 1
    config.augment.max_translate = 2
    config.checkpoint.every_epochs = 5
    if arg == "smoke":
        smoke(config, num_epochs=2)
    elif arg not in (None, ""):
        raise ValueError(f"synthetic config: unknown argument {arg!r} (expected none or 'smoke')")
    return config
