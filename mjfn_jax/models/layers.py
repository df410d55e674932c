"""Building blocks of MJFN: a PyTorch-matching BatchNorm, conv-BN(-ReLU), BasicBlock, JFM.

All tensors are NHWC. Padding is always explicit and symmetric (PyTorch's convention) so that
the PyTorch twin (experiments/pytorch_baseline/model.py) computes the same function: 'SAME'
padding of a stride-2 3x3 conv pads (0, 1) on even sizes and would shift every feature map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# torchvision's ResNet init: He normal, fan_out (the PyTorch twin uses the same).
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# Convolutions whose output is at most this many pixels on a side run as im2col + one matmul.
# XLA:CPU's convolution is pathologically slow on tiny maps: a 3x3 64->64 conv on 2x2 maps
# (batch 32), forward + backward, ran ~4x faster as im2col + dot, and the benchmark's cpu model
# trains ~23% faster (docs/performance.md#small-convolutions-as-matmuls). Same math, same
# parameters; on larger maps the convolution wins.
MATMUL_CONV_MAX_SIDE = 2


def conv_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """A convolution as im2col + matmul. x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] (HWIO),
    symmetric zero padding ``pad`` -> [B, Ho, Wo, Cout] in x's dtype."""
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    out_h, out_w = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    taps = [  # [B, Ho, Wo, Cin] each, in HWIO tap order
        jax.lax.slice(
            padded,
            (0, i, j, 0),
            (b, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, cin),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return patches @ kernel.reshape(kh * kw * cin, cout).astype(x.dtype)


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with PyTorch's semantics (``nn.BatchNorm2d``).

    Train mode (``use_running_average=False``) normalises with the biased batch variance and
    updates the running variance with the UNBIASED one (n / (n - 1)), as PyTorch does;
    ``nnx.BatchNorm`` stores the biased variance, which would make running statistics drift
    apart from the twin's. ``momentum`` is PyTorch's (weight of the new batch, 0.1), i.e.
    flax's momentum 0.9. Statistics are computed in float32 whatever the compute dtype.
    Parameter names follow flax (scale, bias; batch stats mean, var).
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        dtype: jnp.dtype = jnp.float32,
        use_running_average: bool = False,
    ):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.use_running_average = use_running_average

    def set_view(self, use_running_average: bool | None = None):
        """Used by ``nnx.view``; ``model.train()/eval()`` set the attribute directly."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [..., C] in the compute dtype.
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            # One pass over x (the mean and the mean of squares together, flax's
            # use_fast_variance): the step of the cpu benchmark model took 0.90-0.91x the time
            # of the two-pass form (mean, then squared deviations; docs/performance.md).
            mean = jnp.mean(x32, axis=axes)
            mean_sq = jnp.mean(jnp.square(x32), axis=axes)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)  # biased, used to normalise
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
            self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased)
        mul = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)  # [C] float32
        shift = self.bias[...] - mean * mul
        return (x * mul.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)


class ConvBN(nnx.Module):
    """Bias-free conv (kernel k, stride s, symmetric padding k // 2), BatchNorm, optional ReLU."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        *,
        relu: bool = True,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        pad = kernel // 2
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=CONV_INIT,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_ch, dtype=dtype)
        self.relu = relu
        self.stride, self.pad, self.kernel_size = stride, pad, kernel

    def __call__(self, x: jax.Array) -> jax.Array:
        out_side = (max(x.shape[1:3]) + 2 * self.pad - self.kernel_size) // self.stride + 1
        if out_side <= MATMUL_CONV_MAX_SIDE:
            y = conv_as_matmul(x, self.conv.kernel[...], self.stride, self.pad)
        else:
            y = self.conv(x)
        y = self.bn(y)
        return jax.nn.relu(y) if self.relu else y


class BasicBlock(nnx.Module):
    """ResNet BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU.

    The shortcut is a 1x1 conv-BN projection where stride or width changes, else identity.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv1 = ConvBN(in_ch, out_ch, 3, stride, dtype=dtype, rngs=rngs)
        self.conv2 = ConvBN(out_ch, out_ch, 3, 1, relu=False, dtype=dtype, rngs=rngs)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBN(in_ch, out_ch, 1, stride, relu=False, dtype=dtype, rngs=rngs)
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x if self.shortcut is None else self.shortcut(x)
        return jax.nn.relu(self.conv2(self.conv1(x)) + identity)


class JFM(nnx.Module):
    """Joint feature module: joins a finer map (stage k) and the coarser one (stage k + 1).

    finer [B, 2h, 2w, c_f] --3x3 s2 conv-BN-ReLU--> [B, h, w, c] ┐
    coarser [B, h, w, c]   --1x1 conv-BN-ReLU-----> [B, h, w, c] ┴ concat [B, h, w, 2c]
    --1x1 conv-BN-ReLU--> [B, h, w, c] --3x3 conv-BN-ReLU--> GAP [B, c] -> dropout -> linear.
    """

    def __init__(
        self,
        fine_ch: int,
        coarse_ch: int,
        num_classes: int,
        dropout: float,
        *,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.down = ConvBN(fine_ch, coarse_ch, 3, 2, dtype=dtype, rngs=rngs)
        self.lateral = ConvBN(coarse_ch, coarse_ch, 1, 1, dtype=dtype, rngs=rngs)
        self.fuse = ConvBN(2 * coarse_ch, coarse_ch, 1, 1, dtype=dtype, rngs=rngs)
        self.mix = ConvBN(coarse_ch, coarse_ch, 3, 1, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(
            coarse_ch, num_classes, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
        )

    def __call__(self, finer: jax.Array, coarser: jax.Array) -> jax.Array:
        joined = jnp.concatenate([self.down(finer), self.lateral(coarser)], axis=-1)
        features = self.mix(self.fuse(joined))  # [B, h, w, c]
        pooled = jnp.mean(features, axis=(1, 2))  # [B, c]
        return self.head(self.dropout(pooled))  # [B, num_classes] compute dtype


# STSTNet (Liong et al., 2019): the published shallow network for the 28x28 composite flow
# images, as MJFN's optional fifth head (``model.ststnet_branch``) and in tools/ststnet.py.
STSTNET_FILTERS = 3 + 5 + 8  # its three branches' filters (one 16-filter conv: BN is per channel)


def ststnet_map_sizes(size: int) -> tuple[int, int]:
    """(max-pooled side, average-pooled side) of STSTNet on a size x size input: the padded
    (2) 3x3 convolution gives size + 2, the 3/3 max pool (padding 1) floor((size + 1) / 3) + 1,
    the 2/2 average pool half that (28 -> 30 -> 10 -> 5)."""
    pooled = (size + 1) // 3 + 1
    return pooled, pooled // 2


def ststnet_pools(h: jax.Array, *, dropout=None) -> jax.Array:
    """STSTNet's pooling of its convolution's map h [B, S+2, S+2, F]: a 3x3 max pool of stride 3
    with padding 1 (PyTorch's MaxPool2d(3, 3, 1)), then ``dropout`` (a callable or None), then a
    2x2 average pool -> [B, A, A, F] (A: ststnet_map_sizes(S)[1]). The max pool is a reshape and
    a max: reduce_window's gradient ran 4x slower on XLA:CPU (docs/performance.md)."""
    pooled, half = ststnet_map_sizes(h.shape[1] - 2)
    # windows start at -1; rows past the last window are unseen
    end = max(3 * pooled - 1 - h.shape[1], 0)
    h = jnp.pad(h, ((0, 0), (1, end), (1, end), (0, 0)), constant_values=-jnp.inf)
    h = h[:, : 3 * pooled, : 3 * pooled]
    h = h.reshape(h.shape[0], pooled, 3, pooled, 3, h.shape[-1]).max(axis=(2, 4))
    if dropout is not None:
        h = dropout(h)
    h = h[:, : 2 * half, : 2 * half]
    return h.reshape(h.shape[0], half, 2, half, 2, h.shape[-1]).mean(axis=(2, 4))


class STSTNetBranch(nnx.Module):
    """STSTNet as a head of MJFN: a 3x3 convolution of the input with 16 filters (padding 2,
    with bias), ReLU, BatchNorm, STSTNet's pools with dropout 0.5 between them, one linear layer
    on the flattened A x A x 16 map (5x5 at 28 px: it keeps where on the face the motion is).
    x [B, S, S, 3] (or ``input_channels``: 3 per flow view) -> logits [B, copies, num_classes].
    flax's default initialisation.

    ``copies`` > 1: that many STSTNets, each with its own parameters (drawn one after another
    from ``rngs``), computed as one: their convolutions are one of 16 x copies filters (BatchNorm
    and the pools are per channel, so each copy's channels see only themselves), and their
    linear layers one block-diagonal product. One copy keeps the parameter shapes of a single
    STSTNet (``head``: nnx.Linear); more hold ``head_kernel`` [copies, F, C] and ``head_bias``."""

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        *,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
        copies: int = 1,
        input_channels: int = 3,
    ):
        self.copies = int(copies)
        self.conv = nnx.Conv(
            int(input_channels),
            STSTNET_FILTERS * self.copies,
            (3, 3),
            padding=((2, 2), (2, 2)),
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.bn = BatchNorm(STSTNET_FILTERS * self.copies, dtype=dtype)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        features = ststnet_map_sizes(input_size)[1] ** 2 * STSTNET_FILTERS
        if self.copies == 1:
            self.head = nnx.Linear(
                features, num_classes, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
            )
        else:  # nnx.Linear's initialisation, per copy
            init = nnx.initializers.lecun_normal()
            self.head_kernel = nnx.Param(
                jnp.stack(
                    [init(rngs.params(), (features, num_classes)) for _ in range(self.copies)]
                )
            )
            self.head_bias = nnx.Param(jnp.zeros((self.copies, num_classes), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # im2col: the weight gradient of a 3-channel convolution is slow on XLA:CPU (the branch
        # costs the 28 px step ~12% this way against 30-37% as nnx.Conv)
        h = conv_as_matmul(x, self.conv.kernel[...], 1, 2) + self.conv.bias[...].astype(x.dtype)
        h = ststnet_pools(self.bn(jax.nn.relu(h)), dropout=self.dropout)  # [B, A, A, 16 copies]
        if self.copies == 1:
            return self.head(h.reshape(h.shape[0], -1))[:, None]  # [B, 1, C] compute dtype
        b, a = h.shape[0], h.shape[1]
        h = h.reshape(b, a, a, self.copies, STSTNET_FILTERS).transpose(0, 3, 1, 2, 4)
        h = h.reshape(b, self.copies, -1)  # each copy's map flattened as one STSTNet's
        kernel = self.head_kernel[...].astype(self.dtype)
        return jnp.einsum("bkf,kfc->bkc", h, kernel) + self.head_bias[...].astype(self.dtype)
