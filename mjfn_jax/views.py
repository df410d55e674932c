"""Flow views: several flow images of one clip, stacked as channels.

See docs/datasets.md#multi-view-folders.

A built dataset holds one view per clip (``flow_image``: the onset->apex flow, (u, v, strain))
or, for the four-view folders of ``flow_images/imported_<S>_4views`` (CausalNet's
``STSNet_whole_norm_u_v_os/``), four, in this fixed order::

    view 0  flow_image    <clip> .png     onset->apex flow       (u, v, strain) min-max
    view 1  flow_image_1  <clip>_1 .png   apex->offset flow      (u, v, strain) min-max
    view 2  flow_image_2  <clip>_2 .png   onset->apex direction  hue of view 0's (u, v)
    view 3  flow_image_3  <clip>_3 .png   apex->offset direction hue of view 1's (u, v)

``data.views`` picks the views the model reads (``()``: all of them; ``(0,)``: the first only),
stacked as channels in that order: [..., H, W, 3 * len(views)], so ``model.input_channels`` is
3 per view. A direction map is the HSV colour of the angle of its flow view's *encoded* (u, v):
hue = floor(atan2(v, u) in degrees / 2) in OpenCV's units, saturation and value 255, as RGB
(the published maps are this function of their flow views' pixels on 99.9% of pixels; issue 33).
So a horizontal flip mirrors each flow view and replaces its u by 1 - u (255 - u), and recomputes
each direction map from its mirrored flow view (:func:`hflip_views`; the jitted twin is
``mjfn_jax.augment.hflip_batch``): both a pure function of the pixels, no randomness.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

FLOW, DIRECTION = "flow", "direction"
CHANNELS_PER_VIEW = 3


@dataclasses.dataclass(frozen=True)
class View:
    feature: str  # the built dataset's feature
    suffix: str  # the file name's suffix in a published folder: '<clip><suffix> .png'
    name: str
    kind: str  # FLOW: (u, v, strain); DIRECTION: the hue of a flow view's (u, v)
    source: int | None = None  # a direction map's flow view (its index in the dataset's views)


# The view layouts a built dataset can have, by number of views (data.dataset_views).
DATASET_VIEWS = {
    1: (View("flow_image", "", "onset->apex flow", FLOW),),
    4: (
        View("flow_image", "", "onset->apex flow", FLOW),
        View("flow_image_1", "_1", "apex->offset flow", FLOW),
        View("flow_image_2", "_2", "onset->apex flow direction", DIRECTION, 0),
        View("flow_image_3", "_3", "apex->offset flow direction", DIRECTION, 1),
    ),
}

# A selection's layout, static for jit: per selected view None (a flow view) or the position in
# the selection of the flow view a direction map is computed from.
Layout = tuple[int | None, ...]
ONE_VIEW: Layout = (None,)


def builder_suffix(dataset_views: int) -> str:
    """The built dataset config's suffix: '' for one view, '_4views' for four."""
    return "" if int(dataset_views) == 1 else f"_{int(dataset_views)}views"


def selected(dataset_views: int, views) -> tuple[int, ...]:
    """The dataset's view indices the model reads: ``views``, or all of them for ()."""
    views = tuple(int(v) for v in views)
    return views or tuple(range(int(dataset_views)))


def check(dataset_views, views, hflip: bool) -> str | None:
    """Why (data.dataset_views, data.views) cannot be read, or None."""
    if dataset_views not in DATASET_VIEWS or isinstance(dataset_views, bool):
        return f"data.dataset_views={dataset_views!r}: must be one of {tuple(DATASET_VIEWS)}"
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in views)
    if not ok or len(set(views)) != len(views) or not all(0 <= v < dataset_views for v in views):
        return (
            f"data.views={tuple(views)!r}: needs distinct view indices in [0, {dataset_views}) "
            "(the dataset's views, data.dataset_views), or () for all of them"
        )
    if hflip:
        names = DATASET_VIEWS[dataset_views]
        chosen = selected(dataset_views, views)
        for v in chosen:
            source = names[v].source
            if source is not None and source not in chosen:
                return (
                    f"data.views={tuple(views)!r}: view {v} ({names[v].name}) is recomputed from "
                    f"view {source} ({names[source].name}) when flipped (augment.hflip, "
                    f"augment.test_hflip); read view {source} too, or turn the flips off"
                )
    return None


def layout(dataset_views: int, views) -> Layout:
    """The selection's static layout (see ``Layout``)."""
    chosen = selected(dataset_views, views)
    names = DATASET_VIEWS[int(dataset_views)]
    return tuple(None if names[v].source is None else chosen.index(names[v].source) for v in chosen)


def config_layout(data_config) -> Layout:
    """The layout of a config's ``data`` (saved configs without the fields: one view)."""
    return layout(data_config.get("dataset_views", 1), tuple(data_config.get("views", ())))


def input_channels(dataset_views: int, views) -> int:
    return CHANNELS_PER_VIEW * len(selected(dataset_views, views))


def select_channels(images: np.ndarray, dataset_views: int, views) -> np.ndarray:
    """images [..., H, W, 3 * dataset_views] -> the selected views' channels, in order. All
    views in their order: the array itself (no copy)."""
    chosen = selected(dataset_views, views)
    if chosen == tuple(range(int(dataset_views))):
        return images
    channels = [CHANNELS_PER_VIEW * v + c for v in chosen for c in range(CHANNELS_PER_VIEW)]
    return np.ascontiguousarray(images[..., channels])


@functools.cache
def hue_colors() -> np.ndarray:
    """uint8 [180, 3]: OpenCV's RGB of hue h (0..179, degrees / 2) at saturation = value = 255,
    converted one pixel at a time: OpenCV's vectorised path for long rows rounds some hues one
    grey level differently (a 256-pixel row: 93 of 540 values), its per-pixel path is the one
    the published maps match."""
    import cv2

    hsv = np.full((1, 1, 3), 255, np.uint8)
    colors = np.zeros((180, 3), np.uint8)
    for hue in range(180):
        hsv[..., 0] = hue
        colors[hue] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return colors


@functools.cache
def direction_table() -> np.ndarray:
    """uint8 [256, 256, 3]: the direction map's RGB colour of an encoded (u, v) pixel, indexed
    [u, v]: hue = floor(degrees(atan2(v, u)) / 2) mod 180, saturation = value = 255
    (:func:`hue_colors`). A table, so numpy and the jitted flip agree to the bit."""
    u, v = np.meshgrid(np.arange(256.0), np.arange(256.0), indexing="ij")
    hue = np.floor(np.degrees(np.arctan2(v, u)) / 2.0).astype(np.int64) % 180
    return hue_colors()[hue]  # [256, 256, 3] uint8


def direction_map(flow_image: np.ndarray) -> np.ndarray:
    """A flow view uint8 [..., H, W, 3] (u, v, strain) -> its direction map uint8 [..., H, W, 3]."""
    return direction_table()[flow_image[..., 0], flow_image[..., 1]]


def hflip_views(images: np.ndarray, layout: Layout = ONE_VIEW) -> np.ndarray:
    """The reference flip of uint8 stacked views [..., H, W, 3 V]: every view mirrored along W,
    a flow view's u -> 255 - u (``preprocess.hflip_flow_image``), a direction map recomputed
    from its mirrored flow view."""
    if images.shape[-1] != CHANNELS_PER_VIEW * len(layout):
        raise ValueError(f"{len(layout)} view(s) need {3 * len(layout)} channels: {images.shape}")
    return _hflip(images, layout, 255, direction_map)


def hflip_views_float(image: np.ndarray, layout: Layout = ONE_VIEW) -> np.ndarray:
    """:func:`hflip_views` on float views in [0, 1] (image / 255) [..., H, W, 3 V], as the
    jitted flip computes it: u -> 1 - u; a direction map from its flow view's 8-bit (u, v)."""

    def directions(flow: np.ndarray) -> np.ndarray:
        uv = np.rint(flow[..., :2] * 255.0).astype(np.int64)
        return direction_table()[uv[..., 0], uv[..., 1]].astype(np.float32) / np.float32(255)

    return _hflip(image, layout, 1.0, directions)


def _hflip(images: np.ndarray, layout: Layout, top, directions) -> np.ndarray:
    """Mirror along W; a flow view's u -> top - u; a direction map -> ``directions`` of its
    mirrored flow view's three channels."""
    flipped = np.array(images[..., ::-1, :], copy=True)
    for k, source in enumerate(layout):
        if source is None:
            flipped[..., 3 * k] = top - flipped[..., 3 * k]
    for k, source in enumerate(layout):
        if source is not None:
            flipped[..., 3 * k : 3 * k + 3] = directions(flipped[..., 3 * source : 3 * source + 3])
    return flipped
