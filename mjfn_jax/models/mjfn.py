"""The Multi-scale Joint Feature Network (reference reconstruction, docs/design.md#model).

A ResNet-18-style backbone (3x3 conv stem, 4 stages of BasicBlocks), three joint feature
modules JFM_k joining stage k with stage k + 1, a head on each (backbone + 3 JFMs) and a
fusion of the four heads' predictions. Optionally (``model.ststnet_branch``) the published
shallow STSTNet beside it as a fifth head, the two networks' predictions averaged.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mjfn_jax.models.layers import JFM, BasicBlock, ConvBN, STSTNetBranch

HEADS = ("backbone", "jfm1", "jfm2", "jfm3")
BRANCH = "ststnet"  # the optional fifth head's output (model.ststnet_branch)
COPIES = "ststnet_copies"  # its copies' logits (model.ststnet_copies), what the loss sees
FUSIONS = ("mean_prob", "mean_logit", "learned")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
STAGE_STRIDES = (1, 2, 2, 2)
BACKBONE_POOLS = ("mean", "flatten")


def final_map_size(input_size: int, stem_stride: int) -> int:
    """Side of the last stage's feature map (3x3 convolutions with padding 1: ceil(n / s))."""
    size = -(-input_size // stem_stride)
    for stride in STAGE_STRIDES:
        size = -(-size // stride)
    return size


def backbone_features(model_config) -> int:
    """Inputs of the backbone head: the last width, times the final map's area if flattened."""
    width = tuple(model_config.widths)[3]
    if model_config.backbone_pool == "mean":
        return width
    return width * final_map_size(model_config.input_size, model_config.stem_stride) ** 2


def _validate_config(cfg) -> None:
    if len(cfg.widths) != 4 or len(cfg.blocks_per_stage) != 4:
        raise ValueError(
            f"model.widths and model.blocks_per_stage need 4 entries (one per stage); got "
            f"{tuple(cfg.widths)} and {tuple(cfg.blocks_per_stage)}"
        )
    if min(cfg.blocks_per_stage) < 1 or min(cfg.widths) < 1:
        raise ValueError(
            f"model.widths/blocks_per_stage must be >= 1: {cfg.widths}, {cfg.blocks_per_stage}"
        )
    if cfg.fusion not in FUSIONS:
        raise ValueError(f"model.fusion must be one of {FUSIONS}, got {cfg.fusion!r}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {cfg.dtype!r}")
    if cfg.stem_stride not in (1, 2):
        raise ValueError(f"model.stem_stride must be 1 or 2, got {cfg.stem_stride}")
    if cfg.input_size < cfg.stem_stride * 8:
        raise ValueError(
            f"model.input_size={cfg.input_size} is smaller than the network's total stride "
            f"{cfg.stem_stride * 8} (stem_stride * 8)"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.backbone_pool not in BACKBONE_POOLS:
        raise ValueError(
            f"model.backbone_pool must be one of {BACKBONE_POOLS}, got {cfg.backbone_pool!r}"
        )
    channels = cfg.get("input_channels", 3)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 3 or channels % 3:
        raise ValueError(
            f"model.input_channels must be 3 per flow view (3, 6, 9, 12, ...), got {channels!r}"
        )
    copies = cfg.ststnet_copies
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise ValueError(f"model.ststnet_copies must be an integer >= 1, got {copies!r}")
    if copies > 1 and not cfg.ststnet_branch:
        raise ValueError(
            f"model.ststnet_copies={copies} needs model.ststnet_branch=True (copies of what?)"
        )


class MJFN(nnx.Module):
    """MJFN. ``model(x)`` with x float32 [B, S, S, 3] (S = model_config.input_size; 3 channels
    per flow view, ``model_config.input_channels``, mjfn_jax.views) returns
    ``{"backbone", "jfm1", "jfm2", "jfm3": logits [B, C] float32, "fused": log-probs [B, C]}``.

    ``model.train()`` / ``model.eval()`` switch BatchNorm (batch vs running statistics) and
    dropout. Parameters are float32; ``model_config.dtype='bfloat16'`` computes in bf16.
    Fusion 'learned' holds ``fusion_logits`` (an nnx.Param [4], zeros = equal weights) whose
    softmax weights the heads' probabilities.

    With ``model_config.ststnet_branch`` the output also holds ``"ststnet"``: the log-probs of
    STSTNet (layers.STSTNetBranch) on the same input, and ``"mjfn"``: the four heads' fusion
    above (log-probs); ``fused`` is then log(1/2 p_MJFN + 1/2 p_STSTNet): two networks, equal
    weights, the rule tools/fuse_runs.py applies to separately trained runs. With
    ``model_config.ststnet_copies`` = K > 1 that STSTNet is K of them, each its own
    parameters, p_STSTNet their mean probability; ``"ststnet_copies"`` holds their logits
    [B, K, C] (each has its own cross-entropy, losses.mjfn_loss).
    """

    def __init__(self, model_config, *, rngs: nnx.Rngs):
        _validate_config(model_config)
        self.num_classes = int(model_config.num_classes)
        self.input_size = int(model_config.input_size)
        self.input_channels = int(model_config.get("input_channels", 3))
        self.fusion = model_config.fusion
        self.dtype = DTYPES[model_config.dtype]
        dt, widths = self.dtype, tuple(model_config.widths)
        self.stem = ConvBN(
            self.input_channels, widths[0], 3, model_config.stem_stride, dtype=dt, rngs=rngs
        )
        stages, in_ch = [], widths[0]
        for width, blocks, stride in zip(
            widths, model_config.blocks_per_stage, STAGE_STRIDES, strict=True
        ):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(in_ch, width, stride if b == 0 else 1, dtype=dt, rngs=rngs))
                in_ch = width
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        self.jfms = nnx.List(
            [
                JFM(
                    widths[k],
                    widths[k + 1],
                    self.num_classes,
                    model_config.dropout,
                    dtype=dt,
                    rngs=rngs,
                )
                for k in range(3)
            ]
        )
        self.dropout = nnx.Dropout(model_config.dropout, rngs=rngs)
        self.flatten = model_config.backbone_pool == "flatten"
        self.backbone_head = nnx.Linear(
            backbone_features(model_config),
            self.num_classes,
            dtype=dt,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        if self.fusion == "learned":
            self.fusion_logits = nnx.Param(jnp.zeros((len(HEADS),), jnp.float32))
        self.branch = (  # model.ststnet_branch: STSTNet beside MJFN
            STSTNetBranch(
                self.input_size,
                self.num_classes,
                dtype=dt,
                rngs=rngs,
                copies=model_config.ststnet_copies,
                input_channels=self.input_channels,
            )
            if model_config.ststnet_branch
            else None
        )
        self.standardize = bool(model_config.input_standardize)
        if self.standardize:  # per-pixel statistics, set per fold by training (not learned)
            shape = (self.input_size, self.input_size, self.input_channels)
            self.input_mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
            self.input_std = nnx.BatchStat(jnp.ones(shape, jnp.float32))

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"MJFN expects NHWC input [B, H, W, 3]; got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_channels:
            what = "(u, v, strain)" if self.input_channels == 3 else "(3 per flow view)"
            raise ValueError(
                f"MJFN expects {self.input_channels} channels {what} last (NHWC, "
                f"model.input_channels); got shape {tuple(x.shape)}"
            )
        if x.shape[1:3] != (self.input_size, self.input_size):
            raise ValueError(
                f"MJFN was built for {self.input_size}x{self.input_size} inputs "
                f"(model.input_size); got {x.shape[1]}x{x.shape[2]}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"MJFN expects floating inputs in [0, 1]; got {x.dtype} (divide uint8 by 255)"
            )

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        self._check_input(x)
        if self.standardize:
            x = (x - self.input_mean.value) / self.input_std.value
        h = self.stem(x.astype(self.dtype))  # [B, S/stem, S/stem, w0]
        stage_outputs = []
        for stage in self.stages:  # resolutions S/stem * (1, 1/2, 1/4, 1/8)
            for block in stage:
                h = block(h)
            stage_outputs.append(h)
        pooled = h.reshape(h.shape[0], -1) if self.flatten else jnp.mean(h, axis=(1, 2))
        logits = {"backbone": self.backbone_head(self.dropout(pooled))}  # flatten: NHWC order
        for k, jfm in enumerate(self.jfms):
            logits[f"jfm{k + 1}"] = jfm(stage_outputs[k], stage_outputs[k + 1])
        out = {name: logits[name].astype(jnp.float32) for name in HEADS}  # [B, C] float32
        out["fused"] = self._fuse(out)
        if self.branch is not None:
            out["mjfn"] = out["fused"]
            copies = self.branch(x.astype(self.dtype)).astype(jnp.float32)  # [B, K, C]
            out[COPIES] = copies
            log_probs = jax.nn.log_softmax(copies, axis=-1)
            out[BRANCH] = jax.nn.logsumexp(log_probs, axis=1) - jnp.log(copies.shape[1])
            both = jnp.stack([out["mjfn"], out[BRANCH]])
            out["fused"] = jax.nn.logsumexp(both, axis=0) - jnp.log(2.0)  # [B, C]
        return out

    def _fuse(self, logits: Mapping[str, jax.Array]) -> jax.Array:
        stacked = jnp.stack([logits[name] for name in HEADS])  # [4, B, C] float32
        if self.fusion == "mean_logit":
            return jax.nn.log_softmax(jnp.mean(stacked, axis=0), axis=-1)
        log_probs = jax.nn.log_softmax(stacked, axis=-1)
        if self.fusion == "mean_prob":
            log_weights = jnp.full((len(HEADS),), -jnp.log(len(HEADS)), jnp.float32)
        else:  # learned
            log_weights = jax.nn.log_softmax(self.fusion_logits[...])
        # log(sum_h w_h p_h), computed stably in log space.  [B, C]
        return jax.nn.logsumexp(log_probs + log_weights[:, None, None], axis=0)
