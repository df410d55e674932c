"""The benchmark's shared config: composite-scale generated data (442 clips, 68 subjects, so 68
LOSO folds), no dataset build. Both trainers run it from their own command line:

    mjfn-train --config benchmark:cpu --workdir W
    python experiments/pytorch_baseline/train.py --config mjfn_jax/configs/benchmark.py:cpu \
        --workdir W

Arguments: 'cpu' (a small model sized for the 2-core CPU), 'gpu' (the 112x112 reference model),
'quick' (tiny, for the end-to-end test of experiments/benchmark.py).
"""

from mjfn_jax.config import base_config


def get_config(arg=None):
    config = base_config()
    config.data.name = "generated"
    config.data.generated_subjects = 68
    config.data.generated_samples = 442
    config.model.num_classes = 3
    config.train.warmup_epochs = 0
    config.train.batch_size = 32
    config.checkpoint.every_epochs = 0  # one save per fold, at its end, like the baseline
    # The PyTorch baseline fits no linear floor: neither trainer does it here (it is a fixed
    # cost of a report, 10-20 s at the cpu preset on 2 cores, not of training).
    config.report.linear_floor = False
    arg = arg or "cpu"
    if arg not in ("cpu", "gpu", "quick"):
        raise ValueError(f"benchmark config: unknown argument {arg!r} (cpu, gpu or quick)")
    if arg == "gpu":  # the reference model (112x112, ResNet-18 widths)
        config.train.num_epochs = 5
        return config
    small = dict(stem_stride=1, blocks_per_stage=(1, 1, 1, 1))
    if arg == "cpu":
        config.model.update(small | dict(input_size=16, widths=(8, 16, 32, 64)))
        config.train.num_epochs = 2
        config.augment.max_translate = 1
    else:  # quick
        config.model.update(small | dict(input_size=32, widths=(4, 8, 8, 16)))
        config.data.generated_subjects, config.data.generated_samples = 2, 8
        config.train.num_epochs, config.train.batch_size = 1, 8
    return config
