"""Host-side data pipeline of the PyTorch baseline: a map-style Dataset that augments each
sample with the engine's semantics (``mjfn_jax.augment``), as peers' data loaders do."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from mjfn_jax.views import ONE_VIEW, hflip_views_float


class FlowImages(TorchDataset):
    """uint8 flow images [N, H, W, 3] -> (float32 [H, W, 3] in [0, 1], int64 label); several
    flow views stacked as channels [N, H, W, 3 V] alike (``layout``: mjfn_jax.views.layout).

    Training mode applies the engine's augmentation semantics per sample: a horizontal flip
    (p = 0.5) that mirrors along W and replaces u by 1 - u (a direction map: recomputed from its
    mirrored flow view), and a translation by (dy, dx) uniform in [-t, t]^2 with zero padding
    (positive dx moves content right).
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, *, hflip=False, max_translate=0,
        layout=ONE_VIEW,
    ):  # fmt: skip
        self.images, self.labels = images, labels.astype(np.int64)
        self.hflip, self.max_translate = bool(hflip), int(max_translate)
        self.layout = tuple(layout)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i].astype(np.float32) / 255.0  # [H, W, 3]
        # torch's global RNG: seeded by torch.manual_seed and per DataLoader worker.
        flip = self.hflip and bool(torch.rand(()) < 0.5)
        t = self.max_translate
        dy, dx = torch.randint(-t, t + 1, (2,)).tolist() if t > 0 else (0, 0)
        img = augment_image(img, flip=flip, shift=(dy, dx), pad=t, layout=self.layout)
        return torch.from_numpy(img), self.labels[i]


def augment_image(
    img: np.ndarray, *, flip: bool, shift: tuple[int, int], pad: int, layout=ONE_VIEW
) -> np.ndarray:
    """``mjfn_jax.augment`` on one float image [H, W, 3]: optional flow-aware flip (mirror W,
    u -> 1 - u), then a zero-padded shift by (dy, dx), |dy|, |dx| <= pad. Several views
    [H, W, 3 V]: flipped per view (``layout``, mjfn_jax.views.hflip_views_float)."""
    if flip and tuple(layout) == ONE_VIEW:
        img = img[:, ::-1].copy()
        img[..., 0] = 1.0 - img[..., 0]
    elif flip:
        img = hflip_views_float(img, tuple(layout))
    if pad > 0:
        dy, dx = shift
        h, w = img.shape[:2]
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        img = padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]
    return np.ascontiguousarray(img)
