"""MJFNTorch: the PyTorch twin of ``mjfn_jax.models.MJFN`` (same network, same names).

Module names mirror the JAX model so that ``mjfn_jax.torch_interop`` maps state dicts by path:
JAX ``stages.0.1.conv1.conv.kernel`` [3, 3, I, O] <-> torch ``stages.0.1.conv1.conv.weight``
[O, I, 3, 3]; BN scale/bias/mean/var <-> weight/bias/running_mean/running_var.

Input layout: ``forward`` takes NHWC float32 [B, H, W, 3] in [0, 1] like the JAX model (3
channels per flow view: ``model.input_channels``, 12 for four views), and
permutes to NCHW inside (PyTorch convolutions are NCHW). Outputs: the same dict of [B, C]
logits per head and ``fused`` log-probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("backbone", "jfm1", "jfm2", "jfm3")
STAGE_STRIDES = (1, 2, 2, 2)


class ConvBN(nn.Module):
    """Bias-free conv (kernel k, stride s, padding k // 2), BatchNorm2d, optional ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.relu = relu
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if self.relu else y


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(in_ch, out_ch, 3, stride)
        self.conv2 = ConvBN(out_ch, out_ch, 3, 1, relu=False)
        needs_projection = stride != 1 or in_ch != out_ch
        self.shortcut = ConvBN(in_ch, out_ch, 1, stride, relu=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class JFM(nn.Module):
    """finer -> 3x3 s2 conv-BN-ReLU, coarser -> 1x1 conv-BN-ReLU, concat, 1x1, 3x3, GAP, head."""

    def __init__(self, fine_ch: int, coarse_ch: int, num_classes: int, dropout: float):
        super().__init__()
        self.down = ConvBN(fine_ch, coarse_ch, 3, 2)
        self.lateral = ConvBN(coarse_ch, coarse_ch, 1, 1)
        self.fuse = ConvBN(2 * coarse_ch, coarse_ch, 1, 1)
        self.mix = ConvBN(coarse_ch, coarse_ch, 3, 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(coarse_ch, num_classes)

    def forward(self, finer: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.down(finer), self.lateral(coarser)], dim=1)
        pooled = self.mix(self.fuse(joined)).mean(dim=(2, 3))  # [B, c]
        return self.head(self.dropout(pooled))


class MJFNTorch(nn.Module):
    """The same network as MJFN, built from the same ``config.model`` fields (float32 only)."""

    def __init__(self, model_config):
        super().__init__()
        widths, num_classes = tuple(model_config.widths), int(model_config.num_classes)
        self.input_size = int(model_config.input_size)
        self.input_channels = int(model_config.get("input_channels", 3))
        self.fusion = model_config.fusion
        if self.fusion not in ("mean_prob", "mean_logit", "learned"):
            raise ValueError(f"unknown fusion {self.fusion!r}")
        if model_config.get("input_standardize", False):
            raise ValueError("model.input_standardize=True has no PyTorch twin (JAX only)")
        if model_config.get("ststnet_branch", False):
            raise ValueError("model.ststnet_branch=True has no PyTorch twin (JAX only)")
        if (copies := model_config.get("ststnet_copies", 1)) != 1:
            raise ValueError(f"model.ststnet_copies={copies} has no PyTorch twin (JAX only)")
        self.stem = ConvBN(self.input_channels, widths[0], 3, int(model_config.stem_stride))
        stages, in_ch = [], widths[0]
        for width, blocks, stride in zip(
            widths, model_config.blocks_per_stage, STAGE_STRIDES, strict=True
        ):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(in_ch, width, stride if b == 0 else 1))
                in_ch = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.jfms = nn.ModuleList(
            [JFM(widths[k], widths[k + 1], num_classes, model_config.dropout) for k in range(3)]
        )
        self.dropout = nn.Dropout(model_config.dropout)
        self.flatten = model_config.backbone_pool == "flatten"
        features = widths[3]
        if self.flatten:  # the last map's side: 3x3 convolutions with padding 1 give ceil(n / s)
            side = math.ceil(self.input_size / int(model_config.stem_stride))
            for stride in STAGE_STRIDES:
                side = math.ceil(side / stride)
            features *= side * side
        self.backbone_head = nn.Linear(features, num_classes)
        if self.fusion == "learned":
            self.fusion_logits = nn.Parameter(torch.zeros(len(HEADS)))

    def forward(self, x_nhwc: torch.Tensor) -> dict[str, torch.Tensor]:
        if x_nhwc.ndim != 4 or x_nhwc.shape[-1] != self.input_channels:
            raise ValueError(
                f"MJFNTorch expects NHWC [B, H, W, {self.input_channels}] (model.input_channels); "
                f"got {tuple(x_nhwc.shape)}"
            )
        if tuple(x_nhwc.shape[1:3]) != (self.input_size, self.input_size):
            raise ValueError(
                f"MJFNTorch was built for {self.input_size}x{self.input_size} inputs; "
                f"got {x_nhwc.shape[1]}x{x_nhwc.shape[2]}"
            )
        h = self.stem(x_nhwc.permute(0, 3, 1, 2).contiguous())  # NCHW from here on
        stage_outputs = []
        for stage in self.stages:
            h = stage(h)
            stage_outputs.append(h)
        # flatten in NHWC order, as the JAX model does, so that the head's weights map 1:1
        pooled = h.permute(0, 2, 3, 1).flatten(1) if self.flatten else h.mean(dim=(2, 3))
        out = {"backbone": self.backbone_head(self.dropout(pooled))}
        for k, jfm in enumerate(self.jfms):
            out[f"jfm{k + 1}"] = jfm(stage_outputs[k], stage_outputs[k + 1])
        out["fused"] = self._fuse(out)
        return out

    def _fuse(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([logits[name] for name in HEADS])  # [4, B, C]
        if self.fusion == "mean_logit":
            return F.log_softmax(stacked.mean(dim=0), dim=-1)
        log_probs = F.log_softmax(stacked, dim=-1)
        if self.fusion == "mean_prob":
            log_weights = stacked.new_full((len(HEADS),), -math.log(len(HEADS)))
        else:
            log_weights = F.log_softmax(self.fusion_logits, dim=0)
        return torch.logsumexp(log_probs + log_weights[:, None, None], dim=0)


def mjfn_loss_torch(
    outputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    head_loss_weights: Sequence[float],
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Twin of ``mjfn_jax.models.mjfn_loss``: weighted sum of per-head F.cross_entropy."""
    aux, total = {}, outputs[HEADS[0]].new_zeros(())
    for name, weight in zip(HEADS, head_loss_weights, strict=True):
        head_loss = F.cross_entropy(
            outputs[name], labels.long(), weight=class_weights, label_smoothing=label_smoothing
        )
        aux[f"loss/{name}"] = head_loss
        total = total + weight * head_loss
    return total, aux
