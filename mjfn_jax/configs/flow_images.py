"""Published 28x28 composite flow images (data_builders/flow_images), e.g. STSTNet/HTNet's.

Usage: --config mjfn_jax/configs/flow_images.py        (the 28 px recipe)
       --config mjfn_jax/configs/flow_images.py:smoke  (tiny, for tests: imported_32)
       --config mjfn_jax/configs/flow_images.py:4views (the same recipe on the four views of
                                                        imported_28_4views: 12 channels)
       --config mjfn_jax/configs/flow_images.py:4views_select (each fold's choice of the four
                                                        views or the first, on validation subjects)

Build the dataset first (docs/datasets.md#published-flow-image-folders):
    mjfn-build build flow_images/imported_28 --manual_dir DIR --data_dir data/tfds
    mjfn-build build flow_images/imported_28_4views --manual_dir DIR --data_dir data/tfds  (4views)

The recipe is the demo's (mjfn_jax.config.small_input_recipe) at 28 px with the published
STSTNet trained beside MJFN (model.ststnet_branch; the prediction averages the two networks), as
measured in experiments/results/cpu-2core/flow_images_28.md. The branch was chosen by nested
selection (55 of 68 folds preferred it on validation subjects drawn from their training
subjects; flow_images_28_branch.md), by a rule fixed before it ran; nothing was tuned on the
test subjects. The branch holds five STSTNets (model.ststnet_copies=5), by the same kind of
rule: 42 of 68 folds preferred five to one on their validation subjects
(flow_images_28_copies.md; 3 seeds: UF1 0.7097 +- 0.0047 against one copy's 0.7119 +- 0.0123).
``--config.model.ststnet_copies=1`` is one STSTNet, ``--config.model.ststnet_branch=False``
MJFN-JAX alone. ``4views`` reads CausalNet's four views per clip (onset->apex and
apex->offset flow, their direction maps; docs/datasets.md#multi-view-folders) stacked as 12
channels; ``--config.data.views=(0,) --config.model.input_channels=3`` its first view alone.
``4views_select`` lets each fold choose between the two by nested selection (mjfn_jax.select):
10% of its training subjects held out for validation, each input trained on the rest, the lower
validation loss kept; nothing about the test subject enters the choice."""

from mjfn_jax.config import base_config, small_input_recipe, smoke

# 4views_select's candidates: the recipe on the four views (12 channels), or on the first alone.
FOUR_OR_FIRST_VIEW = ("data.views=()", "data.views=(0,),model.input_channels=3")


def get_config(arg=None):
    config = base_config()
    config.data.name = "flow_images"
    config.data.flow_method = "imported"  # the dataset flow_images/imported_28
    small_input_recipe(config, input_size=28)  # 28 -> 28, 14, 7, 4 over the four stages
    config.model.ststnet_branch = True
    config.model.ststnet_copies = 5
    if arg == "smoke":
        smoke(config, num_epochs=1)
    elif arg in ("4views", "4views_select"):  # flow_images/imported_28_4views, all four views
        config.data.dataset_views, config.data.views = 4, ()
        config.model.input_channels = 12
        if arg == "4views_select":  # each fold chooses: the four views, or the first alone
            config.folds.val_subject_fraction = 0.1
            config.select.candidates = FOUR_OR_FIRST_VIEW
    elif arg not in (None, ""):
        raise ValueError(
            f"flow_images config: unknown argument {arg!r} (expected none, 'smoke', '4views' or "
            "'4views_select')"
        )
    return config
