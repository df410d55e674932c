"""The one place where every configuration field and its default is documented.

Experiment configs in ``mjfn_jax/configs/`` start from :func:`base_config` and override what
differs. Field groups: ``model`` (the network), ``loss``, ``data`` (which built dataset),
``folds`` (evaluation protocol), ``train`` (optimizer, schedule, budget), ``augment`` (on-device
augmentation), ``parallel`` (strategy and mesh), ``checkpoint``.
"""

from __future__ import annotations

import ml_collections


def base_model_config() -> ml_collections.ConfigDict:
    """The reference MJFN reconstruction (docs/design.md#chosen-by-us) at 112x112."""
    m = ml_collections.ConfigDict()
    m.num_classes = 3  # 3 for SMIC / MEGC2019 / synthetic, 5 for CASME II and SAMM.
    m.input_size = 112  # Square flow image side, pixels.
    # Input channels: 3 per flow view read (data.views), stacked as channels: 3 for one view
    # (u, v, strain), 12 for the four views of flow_images/imported_<S>_4views.
    m.input_channels = 3
    m.stem_stride = 2  # 3x3 conv stem stride: 2 at 112x112, 1 for small inputs such as 48x48.
    m.widths = (64, 128, 256, 512)  # Channels of backbone stages 1..4.
    m.blocks_per_stage = (2, 2, 2, 2)  # BasicBlocks per stage (ResNet-18 layout).
    m.dropout = 0.5  # Dropout before every linear head.
    # Fusion of the four heads' predictions: 'mean_prob' (mean of softmaxes), 'mean_logit',
    # or 'learned' (softmax-normalised learned weights over the heads).
    m.fusion = "mean_prob"
    # The backbone head's input: 'mean' (global average pooling of the last stage, the
    # reconstruction's) or 'flatten' (the whole last feature map, which keeps where on the face
    # the motion is, as STSTNet's head does; for small aligned inputs: 4x4 at 28 px).
    m.backbone_pool = "mean"
    # Standardise every input pixel and channel by the mean and standard deviation of the fold's
    # training clips (symmetrised under the flow-aware flip when augment.hflip is on), as the
    # linear floor standardises its pixels; the statistics are part of the fold's saved model.
    # Off: the network sees the image / 255 as it is.
    m.input_standardize = False
    # STSTNet (Liong et al. 2019, the published shallow network for 28 px flow images: 16 3x3
    # filters, pooling, one linear layer on the 5x5 map) trained beside MJFN as a fifth head on
    # the same batches (its own cross-entropy, weight 1); the prediction averages the two
    # networks' probabilities. JAX only (no PyTorch twin). Off: the paper's network alone.
    m.ststnet_branch = False
    # How many STSTNets that branch is, each with its own parameters and cross-entropy (their
    # mean is the branch's loss term), its prediction their mean probability: a within-run
    # ensemble of the small network, computed as one wider one. 1: the published network once.
    m.ststnet_copies = 1
    # Cross-entropy weights of the heads, in the order (backbone, jfm1, jfm2, jfm3).
    m.head_loss_weights = (1.0, 1.0, 1.0, 1.0)
    m.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16' (params stay float32).
    return m


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = base_model_config()

    c.loss = ml_collections.ConfigDict()
    c.loss.label_smoothing = 0.0
    # 'none', or 'balanced' (inverse class frequency of each fold's training set).
    c.loss.class_weights = "none"

    c.data = ml_collections.ConfigDict()
    c.data.name = "megc2019"  # TFDS builder name (data_builders/<name>).
    # Flow method of the built dataset ('tvl1', 'farneback', 'dis'); the dataset read is
    # '<name>/<flow_method>_<model.input_size>' (mjfn_jax.data.builder_config_name).
    c.data.flow_method = "tvl1"
    c.data.data_dir = "data/tfds"  # Where `mjfn-build build` wrote it.
    c.data.split = "train"
    # Views per clip of the built dataset (mjfn_jax.views.DATASET_VIEWS): 1, the dataset
    # '<flow_method>_<input_size>'; 4, '<flow_method>_<input_size>_4views' (flow_images' four-view
    # folders: onset->apex flow, apex->offset flow, their direction maps).
    c.data.dataset_views = 1
    # The views the model reads, stacked as channels in this order (model.input_channels = 3
    # per view): () all the dataset's views; (0,) the first (onset->apex flow) only.
    c.data.views = ()
    # data.name='generated': synthetic flow images made in memory (no build), for benchmarks.
    c.data.generated_subjects = 68  # Composite scale: 68 subjects ...
    c.data.generated_samples = 442  # ... and 442 clips.

    c.folds = ml_collections.ConfigDict()
    # 'loso' (leave one subject out), 'kfold' (k folds by subject) or 'lodo' (leave one source
    # dataset out: train on the other sources, test on it; one fold per source).
    c.folds.protocol = "loso"
    c.folds.num_folds = 5  # Only for 'kfold'.
    # Optional early stopping: a validation split drawn from the TRAINING subjects only.
    c.folds.val_subject_fraction = 0.0  # 0 disables the validation split.

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 40  # Fixed epoch budget (the default, leakage-free protocol).
    c.train.batch_size = 32
    c.train.optimizer = "adamw"  # 'adam' or 'adamw'.
    c.train.learning_rate = 1e-3  # Peak learning rate.
    c.train.warmup_epochs = 2  # Linear warmup, then cosine decay to 0.
    c.train.weight_decay = 1e-4  # Decoupled weight decay (adamw only).
    c.train.grad_clip_norm = 0.0  # Global-norm clipping; 0 disables.
    c.train.early_stopping_patience = 0  # Epochs without val improvement; 0 disables.
    # Early stopping watches the validation loss (fused head NLL) and restores the best-on-
    # VALIDATION parameters; needs folds.val_subject_fraction > 0.
    # Exponential moving average of the parameters (Polyak averaging), debiased as Adam's
    # moments are: the fold's model (prediction, validation, early stopping, export) is the
    # average, with the running BN statistics. The decay per step, e.g. 0.99 (~100 steps);
    # 0 disables (the model is the last step's parameters).
    c.train.ema_decay = 0.0
    c.train.eval_batch_size = 64  # Batch size of validation/test prediction (memory only).
    # Training seeds, trained in ONE run as members of the parallel fold axis, e.g. (0, 1, 2):
    # a report per seed (seeds/<s>/) and the mean +- sd over seeds. Empty: (seed,). Seed s's
    # folds, validation subjects and random streams are those of a run with seeds=(s,).
    c.train.seeds = ()

    c.augment = ml_collections.ConfigDict()
    c.augment.hflip = True  # Horizontal flip that negates the u channel.
    c.augment.max_translate = 4  # Random translation in pixels (zero-padded); 0 disables.
    # Mixup of each training batch with a random pairing of itself, weight ~ Beta(a, a) per
    # batch, the loss mixed alike (mjfn_jax.augment.mixup); 0 disables.
    c.augment.mixup_alpha = 0.0
    # At prediction (test, validation, predict CLI): average the fused class probabilities of
    # the image and of its flow-aware mirror image (hflip above). Off by default.
    c.augment.test_hflip = False

    c.parallel = ml_collections.ConfigDict()
    # 'auto' (a timed trial on this machine, see auto_trial), 'vmap' (folds on a sharded fold
    # axis) or 'sequential' (one fold at a time, batch sharded over the data axis).
    c.parallel.strategy = "auto"
    # With 'auto': time the candidate strategies and loops on this machine (epochs of the first
    # fold group, cached per device kind and program shape in ~/.cache/mjfn_jax);
    # False: the measured rule (several devices: vmap, one fold per device; one: sequential).
    c.parallel.auto_trial = True
    # The trial only when its estimated extra cost is at most this fraction of the run's
    # estimated training time (timed on the rule's choice, which the run compiles anyway);
    # a skipped trial is not cached. 0: always the trial.
    c.parallel.auto_trial_budget = 0.1
    # JAX's persistent compilation cache in ~/.cache/mjfn_jax/xla (MJFN_JAX_CACHE_DIR moves it):
    # reruns of the same program skip their XLA compiles. False: compile every run.
    c.parallel.compilation_cache = True
    # Folds trained together under 'vmap'; 0 = one per device (vmapping several folds on one
    # device was slower than one at a time on XLA:CPU and on an H200).
    c.parallel.fold_group_size = 0
    c.parallel.epochs_per_call = 1  # Epochs fused into one jitted call (lax.scan).
    # 'scan' (each call runs its epochs as lax.scan: no Python per step), 'steps' (one jitted
    # call per step: XLA:CPU runs convolutions inside loops far slower), or 'auto' (steps on
    # CPU, scan elsewhere).
    c.parallel.loop = "auto"
    c.parallel.num_devices = 0  # Devices of the 'fold' / 'data' mesh axis; 0 = all.

    c.select = ml_collections.ConfigDict()
    # Nested model selection (mjfn_jax.select): candidate settings as override strings, e.g.
    # ("train.learning_rate=1e-3", "train.learning_rate=3e-3,train.weight_decay=1e-3"); each
    # fold keeps the candidate with the best select.metric on its validation subjects
    # (needs folds.val_subject_fraction > 0). Empty: no selection.
    c.select.candidates = ()
    c.select.metric = "val_loss"  # 'val_loss' (lowest) or 'val_accuracy' (highest)

    c.report = ml_collections.ConfigDict()
    # The pooled UF1/UAR of a logistic regression on the same images and folds, beside the
    # network's (mjfn_jax.linear_probe; ~30 s for the 442-clip composite at 28 px on 2 cores).
    c.report.linear_floor = True
    # confusion.png and curves.png beside report.md (matplotlib; about a second a report).
    c.report.figures = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 5  # Periodic Orbax save per fold; the latest is always kept.
    c.checkpoint.max_to_keep = 2
    # The dtype of a finished fold's saved model (params + BN statistics, an Orbax checkpoint):
    # 'float32', or 'bfloat16' (half the disk; docs/performance.md#checkpoint-sizes). No int8:
    # Orbax has no per-output-channel quantized type, and a model plain Orbax restores cannot
    # need a codec of ours (docs/design.md#checkpoints). Restored as float32 for prediction and
    # export; the rounding changes some predictions of a saved model
    # (experiments/results/cpu-2core/final_dtype_predictions.md), never the run's own results,
    # which are predicted before the save.
    c.checkpoint.final_dtype = "float32"
    return c


def small_input_recipe(config: ml_collections.ConfigDict, input_size: int):
    """The network and schedule for small flow images on a CPU (the demo's; the published
    28 px images'): a stride-1 stem, widths 8..64, dropout 0.2, 20 epochs of batch 32 at
    2e-3 after a 1-epoch warmup, translations of up to 2 px: a few minutes of training for
    the demo's 12 LOSO folds on 2 cores."""
    config.model.num_classes = 3
    config.model.input_size, config.model.stem_stride = input_size, 1
    config.model.widths, config.model.dropout = (8, 16, 32, 64), 0.2
    config.train.num_epochs, config.train.batch_size = 20, 32
    config.train.learning_rate, config.train.warmup_epochs = 2e-3, 1
    config.augment.max_translate = 2
    config.checkpoint.every_epochs = 5
    return config


def smoke(config: ml_collections.ConfigDict, num_epochs: int) -> ml_collections.ConfigDict:
    """The tiny variant of an experiment config (``FILE.py:smoke``), for tests: 32x32 inputs,
    widths 4..16, one block per stage, batch 8, ``num_epochs`` epochs; no linear floor and no
    figures in its report."""
    config.model.input_size, config.model.stem_stride = 32, 1
    config.model.widths, config.model.blocks_per_stage = (4, 8, 8, 16), (1, 1, 1, 1)
    config.train.num_epochs, config.train.batch_size = num_epochs, 8
    config.report.linear_floor = False  # its own test covers it; a compile per test otherwise
    config.report.figures = False  # the report tests draw them; a second per run otherwise
    return config


# What names the dataset a run reads (data.views only picks among its views): the same for every
# candidate of a nested selection.
DATASET_KEYS = ("data.name", "data.flow_method", "data.data_dir", "data.split",
                "data.dataset_views", "data.generated_subjects", "data.generated_samples",
                "model.input_size")  # fmt: skip


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first invalid field (``section.field=value: why``).

    Run before anything is written to a workdir, so a corrected rerun is not refused. Fields a
    typo would silently turn into another behaviour (``loss.class_weights='balance'`` meant
    'balanced') are checked against their allowed values, and numbers against their ranges."""
    from mjfn_jax.data import GENERATED
    from mjfn_jax.model_file import FINAL_DTYPES
    from mjfn_jax.models.mjfn import _validate_config as validate_model
    from mjfn_jax.parallel import LOOPS, STRATEGIES
    from mjfn_jax.preprocess.flow import FLOW_METHODS

    def check(field: str, ok: bool, why: str) -> None:
        if not ok:
            value = config
            for name in field.split("."):
                value = value[name]
            raise ValueError(f"{field}={value!r}: {why}")

    def is_int(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def is_seed(x) -> bool:
        return is_int(x) and 0 <= x < 2**31  # int32 in the fold keys (mjfn_jax.units)

    def number(x) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and x == x

    t, p = config.train, config.parallel
    check("seed", is_seed(config.seed), "needs an int in [0, 2**31)")
    check("train.num_epochs", is_int(t.num_epochs) and t.num_epochs >= 1, "needs an int >= 1")
    for name in ("batch_size", "eval_batch_size"):
        value = t[name]
        check(f"train.{name}", is_int(value) and value >= 1, "needs an int >= 1")
    check("train.optimizer", t.optimizer in ("adam", "adamw"), "must be 'adam' or 'adamw'")
    lr_ok = number(t.learning_rate) and 0 < t.learning_rate < float("inf")
    check("train.learning_rate", lr_ok, "needs a finite number > 0")
    for name in ("warmup_epochs", "early_stopping_patience"):
        check(f"train.{name}", is_int(t[name]) and t[name] >= 0, "needs an int >= 0")
    for name in ("weight_decay", "grad_clip_norm"):
        ok = number(t[name]) and 0 <= t[name] < float("inf")
        check(f"train.{name}", ok, "needs a finite number >= 0")
    check("train.ema_decay", number(t.ema_decay) and 0 <= t.ema_decay < 1, "needs 0 <= x < 1")
    alpha = config.augment.mixup_alpha
    check("augment.mixup_alpha", number(alpha) and 0 <= alpha < float("inf"), "needs a number >= 0")
    check(
        "loss.class_weights",
        config.loss.class_weights in ("none", "balanced"),
        "must be 'none' or 'balanced'",
    )
    ls = config.loss.label_smoothing
    check("loss.label_smoothing", number(ls) and 0 <= ls < 1, "must be in [0, 1)")
    protocols = ("loso", "kfold", "lodo")
    check("folds.protocol", config.folds.protocol in protocols, f"must be one of {protocols}")
    vf = config.folds.val_subject_fraction
    check("folds.val_subject_fraction", number(vf) and 0 <= vf < 1, "must be in [0, 1)")
    if t.early_stopping_patience > 0:
        check("train.early_stopping_patience", vf > 0,
              "needs folds.val_subject_fraction > 0 (validation subjects)")  # fmt: skip
    seeds = tuple(t.seeds)
    check("train.seeds", all(is_seed(x) for x in seeds) and len(set(seeds)) == len(seeds),
          "needs distinct ints in [0, 2**31), e.g. (0, 1, 2)")  # fmt: skip
    mt = config.augment.max_translate
    check("augment.max_translate", is_int(mt) and mt >= 0, "needs an int >= 0")
    check("augment.hflip", isinstance(config.augment.hflip, bool), "needs True or False")
    check("augment.test_hflip", isinstance(config.augment.test_hflip, bool), "needs True or False")
    sel = config.select
    check("select.metric", sel.metric in ("val_loss", "val_accuracy"),
          "must be 'val_loss' or 'val_accuracy'")  # fmt: skip
    if sel.candidates:
        check("select.candidates", vf > 0 and len(sel.candidates) >= 2,
              "needs 2 or more candidates and folds.val_subject_fraction > 0")  # fmt: skip
        from mjfn_jax.select import candidate_config

        for text in sel.candidates:
            try:
                candidate = candidate_config(config, text)
                validate_config(candidate)
                for key in DATASET_KEYS:  # the run reads the dataset once, for every candidate
                    section, name = key.split(".")
                    if candidate[section].get(name) != config[section].get(name):
                        raise ValueError(f"{key}: every candidate reads the run's dataset")
                views = tuple(candidate.data.views)
                if views != tuple(config.data.views) and tuple(config.data.views):
                    raise ValueError(
                        f"data.views={views!r}: a choice of views needs the run to read every "
                        "view (data.views=())"
                    )
            except (ValueError, KeyError) as e:
                cause = e.args[0] if isinstance(e, KeyError) else e
                raise ValueError(f"select.candidates entry {text!r}: {cause}") from None
    ok = isinstance(config.report.linear_floor, bool)
    check("report.linear_floor", ok, "needs True or False")
    check("report.figures", isinstance(config.report.figures, bool), "needs True or False")
    check("parallel.strategy", p.strategy in STRATEGIES, f"must be one of {STRATEGIES}")
    check("parallel.loop", p.loop in LOOPS, f"must be one of {LOOPS}")
    ok = isinstance(p.auto_trial_budget, int | float) and p.auto_trial_budget >= 0
    check("parallel.auto_trial_budget", ok, "needs a number >= 0 (0: always the trial)")
    ok = is_int(p.epochs_per_call) and p.epochs_per_call >= 1
    check("parallel.epochs_per_call", ok, "needs an int >= 1")
    for name in ("num_devices", "fold_group_size"):
        check(f"parallel.{name}", is_int(p[name]) and p[name] >= 0, "needs an int >= 0")
    c = config.checkpoint
    check("checkpoint.every_epochs", is_int(c.every_epochs) and c.every_epochs >= 0,
          "needs an int >= 0")  # fmt: skip
    check("checkpoint.max_to_keep", is_int(c.max_to_keep) and c.max_to_keep >= 1,
          "needs an int >= 1")  # fmt: skip
    check("checkpoint.final_dtype", c.final_dtype in FINAL_DTYPES,
          f"must be one of {FINAL_DTYPES}")  # fmt: skip
    if config.data.name != GENERATED:
        # flow_images: published images imported as they are (data_builders/flow_images).
        methods = ("imported",) if config.data.name == "flow_images" else FLOW_METHODS
        check("data.flow_method", config.data.flow_method in methods, f"must be one of {methods}")
    check_views(config)
    if config.data.name == GENERATED:
        for name in ("generated_subjects", "generated_samples"):
            value = config.data[name]
            check(f"data.{name}", is_int(value) and value >= 2, "needs an int >= 2")
    validate_model(config.model)


def check_views(config: ml_collections.ConfigDict) -> None:
    """data.dataset_views, data.views and model.input_channels agree (mjfn_jax.views)."""
    from mjfn_jax import views

    data = config.data
    flips = config.augment.hflip or config.augment.test_hflip
    why = views.check(data.dataset_views, tuple(data.views), flips)
    if why:
        raise ValueError(why)
    if data.dataset_views > 1 and data.name != "flow_images":
        raise ValueError(
            f"data.dataset_views={data.dataset_views}: only flow_images (its multi-view folders) "
            f"builds datasets of several views; data.name={data.name!r} has 1"
        )
    channels = views.input_channels(data.dataset_views, tuple(data.views))
    if config.model.input_channels != channels:
        raise ValueError(
            f"model.input_channels={config.model.input_channels!r}: data.views="
            f"{tuple(data.views)!r} of a dataset of {data.dataset_views} view(s) are {channels} "
            f"channels (3 per view); set --config.model.input_channels={channels}"
        )
