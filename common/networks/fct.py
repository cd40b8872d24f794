"""FCT: the Fully Convolutional Transformer for 2D medical image segmentation (Tragakis et al., WACV 2023).

The paper's experiments were run with the authors' TensorFlow code (Thanos-DB/FullyConvolutionalTransformer,
``TensorFlow/utils.py``); this module reproduces that code's semantics, not the official PyTorch port, which
differs in many places and has two bugs (research notes ``fct_refnet.md`` sections 1.1, 1.2 and 1.5):

- **FCT layer**: depthwise 3x3 convolutions (no bias) + LayerNorm project Q at stride 1 and K, V at stride 2;
  Keras ``MultiHeadAttention(num_heads=h, key_dim=C)`` attends globally, every head ``C`` wide (inner width
  ``h * C``, output projected back to ``C``); then Conv3x3 + ReLU and a residual; LayerNorm, Wide-Focus (parallel
  dilated 3x3 convolutions, each GELU + Dropout 0.1, summed, fused by Conv3x3 + GELU + Dropout 0.1) and a
  second residual. No positional embedding: position enters through the convolutions.
- **Macro layout**: 4 encoder blocks, a bottleneck block and 4 decoder blocks, one FCT layer each; blocks 2-4
  also see an average-pooled copy of the image (the input pyramid); three deep-supervision heads.
- **Fixed here**: the port's ``nn.LayerNorm(1)`` on the 1-channel input (always outputs 0, so the first block
  never sees the image) and its functional dropout that stays on in ``eval()``.

Every LayerNorm but the first is Keras' ``LayerNormalization()`` on an NHWC tensor, i.e. a normalisation over the
channels at each pixel (:class:`ChannelLayerNorm`). MONAI's blocks are not used for the layers themselves because
none expresses them: ``CrossAttentionBlock`` derives K and V from one context (FCT projects them separately),
``Convolution``'s "same" padding cannot do the TF 2x2 up-convolution, and TF's stride-2 "same" padding is
asymmetric (:class:`DepthwiseProjection`).

Run ``python -m common.networks.fct`` for the parameter counts and FLOPs of the presets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FCT",
    "FCT_PRESETS",
    "ChannelLayerNorm",
    "ConvAttention",
    "DepthwiseProjection",
    "FCTLayer",
    "WideFocus",
    "fct_preset",
    "model_complexity",
]

#: Number of FCT blocks: 4 encoder blocks, the bottleneck, 4 decoder blocks.
NUM_BLOCKS = 9

#: Named configurations (research notes ``fct_refnet.md`` sections 1.3 and 1.4). Keys are :class:`FCT` arguments.
FCT_PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    # The paper's stated filters and heads, quoted by the author in Thanos-DB/FullyConvolutionalTransformer#7
    # (upstream #7 below); Wide-Focus as in TensorFlow/utils.py.
    "paper": {
        "filters": (16, 32, 64, 128, 384, 128, 64, 32, 16),
        "heads": (2, 4, 8, 12, 16, 12, 8, 4, 2),
        "wide_focus_dilations": (1, 2),
    },
    # What TensorFlow/utils.py + main.py actually build: the paper's filters with 2 heads in every block.
    "tf_main": {
        "filters": (16, 32, 64, 128, 384, 128, 64, 32, 16),
        "heads": (2, 2, 2, 2, 2, 2, 2, 2, 2),
        "wide_focus_dilations": (1, 2),
    },
    # The ACDC 92.84 notebook and the Synapse runs (upstream #7): filters 32-512, 2 heads, Wide-Focus dilations 1-2-3
    # (the notebook's mlp(); the Synapse settings in upstream #7 give only filters and heads).
    "wide_32_512": {
        "filters": (32, 64, 128, 256, 512, 256, 128, 64, 32),
        "heads": (2, 2, 2, 2, 2, 2, 2, 2, 2),
        "wide_focus_dilations": (1, 2, 3),
    },
}

# Keras' he_normal draws from a normal truncated at 2 standard deviations, rescaled by this factor to keep the
# variance at 2 / fan_in (keras.initializers.VarianceScaling, distribution="truncated_normal").
_TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978


def _keras_he_normal_(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise like Keras ``kernel_initializer="he_normal"``, zero bias; the TF code asks for it on the
    block, up-sampling and deep-supervision convolutions (the rest keep Keras' glorot_uniform default)."""
    fan_in = conv.weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_NORMAL_STD_CORRECTION
    nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _keras_glorot_uniform_(conv: nn.Conv2d) -> nn.Conv2d:
    """Keras' default conv initialisation, glorot_uniform with zero bias (PyTorch's default is narrower).

    For a depthwise kernel Keras' fans (9C, 9) and PyTorch's (9, 9C) have the same sum, so the bound agrees too.
    """
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _conv(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, he_init: bool = False) -> nn.Conv2d:
    """Conv2d with TF ``padding="same"`` at stride 1, for an odd kernel."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)
    return _keras_he_normal_(conv) if he_init else _keras_glorot_uniform_(conv)


def _conv_relu(in_channels: int, out_channels: int, he_init: bool = True) -> list[nn.Module]:
    return [_conv(in_channels, out_channels, 3, he_init=he_init), nn.ReLU()]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at every pixel: Keras ``LayerNormalization()`` on an NHWC tensor.

    Shape: ``(B, C, H, W) -> (B, C, H, W)``. ``nn.LayerNorm`` normalises trailing dimensions only, and
    ``nn.GroupNorm(1, C)`` would normalise over space as well, so neither matches an NCHW channel norm.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), [self.num_channels], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DepthwiseProjection(nn.Module):
    """Q/K/V projection of the FCT layer: depthwise 3x3 convolution without bias, then a channel LayerNorm.

    Shape: ``(B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))``.

    The padding is TF's ``"same"``: at stride 2 on an even size the single padding row/column goes at the
    bottom/right, so the kernels sit on the same pixels as in the TF model (symmetric padding would shift them
    by one). ``eps=1e-3`` is Keras' ``LayerNormalization`` default, which the TF projection uses.
    """

    def __init__(self, channels: int, stride: int = 1, kernel_size: int = 3, eps: float = 1e-3) -> None:
        super().__init__()
        self.stride = stride
        self.kernel_size = kernel_size
        self.conv = _keras_glorot_uniform_(
            nn.Conv2d(channels, channels, kernel_size, stride=stride, groups=channels, bias=False)
        )
        self.norm = ChannelLayerNorm(channels, eps)

    def _same_padding(self, size: int) -> list[int]:
        total = max((-(-size // self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return [total // 2, total - total // 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = self._same_padding(x.shape[2])
        pad_w = self._same_padding(x.shape[3])
        return self.norm(self.conv(F.pad(x, [pad_w[0], pad_w[1], pad_h[0], pad_h[1]])))


class ConvAttention(nn.Module):
    """Convolutional multi-head attention of the FCT layer (TF ``Attention``), global over all pixels.

    Shape: ``(B, C, H, W) -> (B, C, H, W)``; the queries are the ``H * W`` pixels, the keys and values the
    ``ceil(H / kv_stride) * ceil(W / kv_stride)`` pixels of the strided projections.

    The head width follows Keras ``MultiHeadAttention(num_heads=heads, key_dim=C)``: each of the ``heads`` heads is
    ``C`` wide (scale ``1 / sqrt(C)``), the dense projections map ``C -> heads * C`` and back, with biases. This is not
    ``nn.MultiheadAttention`` (which splits ``C`` across the heads), nor MONAI's ``CrossAttentionBlock`` (which
    derives K and V from one context; here they come from separate projections). The weights use Keras'
    glorot_uniform bounds for the einsum kernels ``(C, heads, C)`` and ``(heads, C, C)``.
    """

    def __init__(self, channels: int, heads: int, kv_stride: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.heads = heads
        self.query_projection = DepthwiseProjection(channels, stride=1)
        self.key_projection = DepthwiseProjection(channels, stride=kv_stride)
        self.value_projection = DepthwiseProjection(channels, stride=kv_stride)
        inner = heads * channels
        self.query = nn.Linear(channels, inner)
        self.key = nn.Linear(channels, inner)
        self.value = nn.Linear(channels, inner)
        self.out = nn.Linear(inner, channels)
        qkv_bound = math.sqrt(6.0 / (inner + channels * channels))
        for linear, bound in ((self.query, qkv_bound), (self.key, qkv_bound), (self.value, qkv_bound)):
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(linear.bias)
        out_bound = math.sqrt(6.0 / (2 * inner))
        nn.init.uniform_(self.out.weight, -out_bound, out_bound)
        nn.init.zeros_(self.out.bias)

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """Split densely projected tokens into heads: ``(B, L, heads * C) -> (B, heads, L, C)``."""
        batch, length = tokens.shape[0], tokens.shape[1]
        return tokens.reshape(batch, length, self.heads, self.channels).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q = self.query(self.query_projection(x).flatten(2).transpose(1, 2))
        k = self.key(self.key_projection(x).flatten(2).transpose(1, 2))
        v = self.value(self.value_projection(x).flatten(2).transpose(1, 2))
        # SDPA never materialises the (H*W) x (H*W/4) matrix on backends that support it (16384 x 4096 per head
        # in the first layer at 256^2); its default scale 1/sqrt(C) is Keras' 1/sqrt(key_dim).
        attended = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        attended = attended.transpose(1, 2).reshape(batch, height * width, self.heads * self.channels)
        return self.out(attended).transpose(1, 2).reshape(batch, channels, height, width)


class WideFocus(nn.Module):
    """Wide-Focus, FCT's replacement of the transformer MLP.

    Shape: ``(B, C, H, W) -> (B, C, H, W)``. One 3x3 convolution per dilation, each GELU + Dropout, summed;
    then a 3x3 convolution + GELU + Dropout aggregates them. GELU is exact (``tf.nn.gelu`` default).
    """

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 2), dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Sequential(_conv(channels, channels, 3, dilation=d), nn.GELU(), nn.Dropout(dropout)) for d in dilations]
        )
        self.fuse = nn.Sequential(_conv(channels, channels, 3), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x)
        for branch in self.branches:
            total = total + branch(x)
        return self.fuse(total)


class FCTLayer(nn.Module):
    """The FCT layer (TF ``att()``): convolutional attention and Wide-Focus, each with a residual.

    Shape: ``(B, C, H, W) -> (B, C, H, W)``::

        y = x + ReLU(Conv3x3(ConvAttention(x)))
        out = y + WideFocus(ChannelLayerNorm(y))

    The TF code's stochastic depth and attention-output dropout are configured at 0 there, so they are left out.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        wide_focus_dilations: Sequence[int] = (1, 2),
        wide_focus_dropout: float = 0.1,
        kv_stride: int = 2,
    ) -> None:
        super().__init__()
        self.attention = ConvAttention(channels, heads, kv_stride)
        self.attention_conv = nn.Sequential(_conv(channels, channels, 3), nn.ReLU())
        self.norm = ChannelLayerNorm(channels)
        self.wide_focus = WideFocus(channels, wide_focus_dilations, wide_focus_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention_conv(self.attention(x))
        return x + self.wide_focus(self.norm(x))


class _EncoderBlock(nn.Module):
    """Encoder or bottleneck block: norm, [pyramid concat], 2x(Conv3x3 + ReLU), Dropout, MaxPool2, FCT layer.

    Shape: ``(B, C_in, H, W), image (B, in_channels, H, W) -> (B, C_out, H/2, W/2)``. With a pyramid, the image
    at this block's resolution passes Conv3x3 + ReLU to ``C_in`` channels and is concatenated *before* the
    normalised features (TF order); the block convolutions then see ``2 * C_in`` channels.
    """

    def __init__(
        self, norm: nn.Module, in_channels: int, out_channels: int, image_channels: int, layer: FCTLayer, dropout: float
    ) -> None:
        super().__init__()
        self.norm = norm
        self.use_pyramid = image_channels > 0
        # The TF pyramid convolution has no explicit initializer, so it keeps Keras' glorot_uniform.
        self.pyramid = (
            nn.Sequential(*_conv_relu(image_channels, in_channels, he_init=False))
            if self.use_pyramid
            else nn.Identity()
        )
        conv_in = 2 * in_channels if self.use_pyramid else in_channels
        self.convs = nn.Sequential(
            *_conv_relu(conv_in, out_channels), *_conv_relu(out_channels, out_channels), nn.Dropout(dropout)
        )
        self.pool = nn.MaxPool2d(2)
        self.layer = layer

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.use_pyramid:
            x = torch.cat([self.pyramid(image), x], dim=1)
        return self.layer(self.pool(self.convs(x)))


class _DecoderBlock(nn.Module):
    """Decoder block: norm, nearest x2 upsampling, Conv2x2 + ReLU, concat [skip, x], 2x(Conv3x3 + ReLU), Dropout,
    FCT layer.

    Shape: ``(B, C_in, H, W), skip (B, C_skip, 2H, 2W) -> (B, C_out, 2H, 2W)``. The 2x2 kernel is the TF code's.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, layer: FCTLayer, dropout: float):
        super().__init__()
        self.norm = ChannelLayerNorm(in_channels)
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        # TF "same" padding of an even kernel pads only the bottom/right; done explicitly because PyTorch's
        # padding="same" copies the input for it and warns.
        self.up_conv = nn.Sequential(
            nn.ZeroPad2d((0, 1, 0, 1)), _keras_he_normal_(nn.Conv2d(in_channels, out_channels, 2)), nn.ReLU()
        )
        self.convs = nn.Sequential(
            *_conv_relu(skip_channels + out_channels, out_channels),
            *_conv_relu(out_channels, out_channels),
            nn.Dropout(dropout),
        )
        self.layer = layer

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up_conv(self.upsample(self.norm(x)))
        return self.layer(self.convs(torch.cat([skip, x], dim=1)))


class _OutputHead(nn.Module):
    """Output head: nearest x2 upsampling, LayerNorm, 2x(Conv3x3 + ReLU), Conv1x1 to logits.

    Shape: ``(B, C, H, W) -> (B, out_channels, 2H, 2W)``. The TF head ends in a sigmoid; this one returns logits.
    """

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.norm = ChannelLayerNorm(channels)
        self.convs = nn.Sequential(*_conv_relu(channels, channels), *_conv_relu(channels, channels))
        self.logits = _conv(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.convs(self.norm(self.upsample(x))))


def _as_block_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if len(values) != NUM_BLOCKS or any(v < 1 for v in values):
        raise ValueError(
            f"FCT: {name} needs {NUM_BLOCKS} positive ints (4 encoder, bottleneck, 4 decoder), got {values}."
        )
    return values


class FCT(nn.Module):
    """Fully Convolutional Transformer (Tragakis et al., WACV 2023) with the semantics of the authors' TF code.

    Defaults are the ``"paper"`` preset: filters ``(16, 32, 64, 128, 384, 128, 64, 32, 16)``, heads
    ``(2, 4, 8, 12, 16, 12, 8, 4, 2)``, Wide-Focus dilations ``(1, 2)``, dropout 0.3 in the blocks and 0.1 in
    Wide-Focus. See :data:`FCT_PRESETS` and :func:`fct_preset` for the others. Shapes for an input
    ``(B, in_channels, S, S)``, with ``f = filters``:

    - input pyramid: the image average-pooled to ``S/2``, ``S/4``, ``S/8``;
    - encoder blocks 1-4 (norm, [Conv3x3 + ReLU of the pooled image, concatenated], 2x(Conv3x3 + ReLU),
      Dropout, MaxPool2, FCT layer) give the skips ``(B, f[i], S / 2^(i+1))``, ``i = 0..3``;
    - bottleneck block 5 (the same without the pyramid) gives ``(B, f[4], S/32)``;
    - decoder blocks 6-9 (norm, nearest x2, Conv2x2 + ReLU, concat with the skip, 2x(Conv3x3 + ReLU), Dropout,
      FCT layer) give ``(B, f[5..8], S/16 .. S/2)``;
    - output heads on blocks 7, 8, 9 (nearest x2, LayerNorm, 2x(Conv3x3 + ReLU), Conv1x1) give logits at
      ``S/4``, ``S/2`` and ``S``.

    **Outputs.** In ``train()`` mode with ``deep_supervision`` the forward returns
    ``[logits (B, out, S, S), (B, out, S/2, S/2), (B, out, S/4, S/4)]``, highest resolution first, each at its own
    resolution, as the TF model does (it compares them with the labels subsampled as ``y[::4, ::4]``,
    ``y[::2, ::2]`` and ``y``, loss weights 0.14 / 0.29 / 0.57 from low to high resolution). Use
    ``monai.losses.DeepSupervisionLoss(loss, weights=[0.57, 0.29, 0.14])``: it resizes the label to each output
    with "nearest-exact" interpolation, which samples each label cell at its centre (``y[2::4, 2::4]``,
    ``y[1::2, 1::2]``) where TF takes its top-left pixel, a sub-cell shift of no consequence for training.
    In ``eval()`` mode, or with ``deep_supervision=False``, the forward returns only the full-resolution
    ``(B, out, S, S)`` logits tensor (MONAI inferers need a tensor) and the two low-resolution heads are not run
    (not built when False). The outputs are logits: the TF model's per-class sigmoid is left to the loss and
    post-processing.

    **Input size.** ``H`` and ``W`` must be divisible by :attr:`size_divisor` = 32: five 2x max-poolings (blocks
    1-5, the TF bottleneck block pools too) must leave whole pixels for the decoder's upsampling to meet the skips.
    The TF model fixes the input size (224 or 256 in its runs); this one accepts any multiple of 32.

    **Input normalisation: the main change to the TF semantics.** The TF code normalises the input with Keras
    ``LayerNormalization`` on the ``(B, H, W)`` last channel, i.e. each image *row* over its ``W`` pixels, with
    ``W`` learned scales and offsets, so the model only runs at the width it was built for (and uses only the last
    input channel there; its pyramid uses all). The official PyTorch port replaced it with ``nn.LayerNorm(1)``
    over the single channel, which outputs 0 for every input. Here the first norm is ``GroupNorm(1, in_channels)``:
    each image is standardised over all its channels and pixels, with one learned scale and offset per channel.
    It works for any input size, keeps the relative intensities of the channels (RGB colour), and every input
    channel feeds block 1. It has ``2 * in_channels`` parameters where the TF norm had ``2 * W``.

    Other differences: logits instead of sigmoids (above); every input channel is used (the TF model took one);
    the TF code's stochastic depth and attention-output dropout, both configured at 0, are left out.

    **Initialisation** follows Keras: he_normal (truncated normal, fan-in) where the TF code asks for it (block,
    up-sampling and output-head convolutions), glorot_uniform elsewhere, zero biases.

    Args:
        in_channels: image channels (3 for RGB Visible Korean slices; the TF model took 1).
        out_channels: logits, one per class including background (3: background, bone, muscle).
        filters: channels of the 9 blocks (4 encoder, bottleneck, 4 decoder).
        heads: attention heads of the 9 FCT layers; every head is ``filters[i]`` wide (Keras ``key_dim=C``).
        wide_focus_dilations: one dilated 3x3 branch per entry in Wide-Focus; ``(1, 2)`` in ``utils.py``,
            ``(1, 2, 3)`` in the ACDC 92.84 notebook.
        dropout: dropout after the convolutions of every block (0.3).
        wide_focus_dropout: dropout after every Wide-Focus convolution (0.1).
        kv_stride: stride of the key/value projections (2).
        deep_supervision: build the S/2 and S/4 output heads and return them in training mode (True).

    Raises:
        ValueError: for malformed ``filters``/``heads``/dilations, or (in forward) an input that is not
            ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by 32.

    TorchScript: compiles with ``torch.jit.script`` (``tests/unit/networks/test_fct.py`` compares scripted and eager
    outputs).

    Size (``python -m common.networks.fct``; 1 input channel and 3 classes, the configuration of the research notes'
    section 1.3, whose rounded counts these reproduce): ``"paper"`` 21,338,907 parameters, ``"tf_main"``
    11,531,163, ``"wide_32_512"`` 31,729,387; with 3 input channels add 2,308 / 2,308 / 4,612. Eval-mode forward
    of a 1 x 1 x 256^2 input: 32.6 / 28.1 / 71.9 GFLOPs (attention 22.8 / 19.6 / 39.3 of them). The research
    notes' 29.3 GFLOPs for ``"tf_main"`` include the two deep-supervision heads, which eval mode does not run.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        filters: Sequence[int] = FCT_PRESETS["paper"]["filters"],
        heads: Sequence[int] = FCT_PRESETS["paper"]["heads"],
        wide_focus_dilations: Sequence[int] = FCT_PRESETS["paper"]["wide_focus_dilations"],
        dropout: float = 0.3,
        wide_focus_dropout: float = 0.1,
        kv_stride: int = 2,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        filters = _as_block_tuple("filters", filters)
        heads = _as_block_tuple("heads", heads)
        wide_focus_dilations = tuple(int(d) for d in wide_focus_dilations)
        if not wide_focus_dilations or any(d < 1 for d in wide_focus_dilations):
            raise ValueError(f"FCT: wide_focus_dilations needs at least one positive int, got {wide_focus_dilations}.")
        if in_channels < 1 or out_channels < 1 or kv_stride < 1:
            raise ValueError(
                f"FCT: in_channels, out_channels and kv_stride must be positive, got {in_channels}, {out_channels}, "
                f"{kv_stride}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        #: every input spatial size must be a multiple of this (five stride-2 max-poolings)
        self.size_divisor = 2**5
        self.filters = filters
        self.heads = heads
        self.kv_stride = kv_stride
        self.deep_supervision = deep_supervision

        def layer(i: int) -> FCTLayer:
            return FCTLayer(filters[i], heads[i], wide_focus_dilations, wide_focus_dropout, kv_stride)

        self.pyramid_pool = nn.AvgPool2d(2)
        encoder = [_EncoderBlock(nn.GroupNorm(1, in_channels), in_channels, filters[0], 0, layer(0), dropout)]
        for i in range(1, 4):
            encoder.append(
                _EncoderBlock(
                    ChannelLayerNorm(filters[i - 1]), filters[i - 1], filters[i], in_channels, layer(i), dropout
                )
            )
        self.encoder = nn.ModuleList(encoder)
        self.bottleneck = _EncoderBlock(ChannelLayerNorm(filters[3]), filters[3], filters[4], 0, layer(4), dropout)
        self.decoder = nn.ModuleList(
            [_DecoderBlock(filters[i - 1], filters[8 - i], filters[i], layer(i), dropout) for i in range(5, 9)]
        )
        self.head = _OutputHead(filters[8], out_channels)
        # Heads of decoder blocks 8 (S/2) and 7 (S/4), in the order the forward returns them.
        self.deep_supervision_heads = nn.ModuleList(
            [_OutputHead(filters[7], out_channels), _OutputHead(filters[6], out_channels)] if deep_supervision else []
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                "FCT: expected a (B, " + str(self.in_channels) + ", H, W) input, got shape " + str(list(x.shape)) + "."
            )
        if x.shape[2] % self.size_divisor != 0 or x.shape[3] % self.size_divisor != 0:
            raise ValueError(
                "FCT: input spatial size " + str(list(x.shape[2:])) + " is not divisible by the total stride "
                + str(self.size_divisor) + "; pad or crop it (e.g. DivisiblePadd(k=" + str(self.size_divisor) + "))."
            )  # fmt: skip

    @torch.jit.export
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of decoder blocks 9, 8 and 7: ``[(B, f[8], S/2), (B, f[7], S/4), (B, f[6], S/8)]``.

        Args:
            x: ``(B, in_channels, H, W)``, ``H`` and ``W`` divisible by :attr:`size_divisor`.
        """
        self._check_input(x)
        image = x
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x, image)
            skips.append(x)
            image = self.pyramid_pool(image)
        x = self.bottleneck(x, image)
        features: list[torch.Tensor] = []
        for i, block in enumerate(self.decoder):
            x = block(x, skips[3 - i])
            features.append(x)
        features.reverse()
        return features[:3]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, H, W)``, ``H`` and ``W`` divisible by :attr:`size_divisor` (32).

        Returns:
            ``(B, out_channels, H, W)`` logits; in training mode with deep supervision the list
            ``[(B, out, H, W), (B, out, H/2, W/2), (B, out, H/4, W/4)]``.
        """
        features = self.forward_features(x)
        logits = self.head(features[0])
        if self.training and self.deep_supervision:
            outputs = [logits]
            for k, head in enumerate(self.deep_supervision_heads):
                outputs.append(head(features[k + 1]))
            return outputs
        return logits


def fct_preset(name: str, in_channels: int = 3, out_channels: int = 3, **overrides) -> FCT:
    """Build the :class:`FCT` preset ``name`` (a key of :data:`FCT_PRESETS`), with any argument overridden.

    - ``"paper"``: the paper's filters 16-384 and heads 2-16 (upstream #7), Wide-Focus dilations (1, 2).
    - ``"tf_main"``: what ``TensorFlow/utils.py`` + ``main.py`` build: the same filters, 2 heads everywhere.
    - ``"wide_32_512"``: the ACDC 92.84 notebook and Synapse runs: filters 32-512, 2 heads, dilations (1, 2, 3).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in FCT_PRESETS:
        raise ValueError(f"FCT: unknown preset {name!r}; expected one of {sorted(FCT_PRESETS)}.")
    return FCT(in_channels=in_channels, out_channels=out_channels, **{**FCT_PRESETS[name], **overrides})


def model_complexity(
    name: str = "paper", spatial_size: int = 256, in_channels: int = 1, out_channels: int = 3, batch_size: int = 1
) -> dict[str, float]:
    """Parameters and inference FLOPs of ``fct_preset(name, in_channels, out_channels)``.

    Built on the ``meta`` device, so nothing is allocated. ``flops`` counts convolutions and matrix products with
    ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add) for one eval-mode forward of a
    ``(batch_size, in_channels, spatial_size, spatial_size)`` input; ``attention_flops`` adds the attention products
    (``Q K^T`` and ``A V``: ``4 * heads * N_q * N_kv * C`` per layer) analytically, because the counter does not see
    inside every SDPA kernel. Norms, activations, pooling and softmax are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = fct_preset(name, in_channels, out_channels).eval()
        x = torch.empty(batch_size, in_channels, spatial_size, spatial_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    # On the meta device SDPA decomposes into bmm (counted), on CPU it runs a fused kernel (not counted): count
    # everything else and add the attention analytically, so the figure does not depend on the SDPA backend.
    counted = sum(
        flops
        for op, flops in counter.get_flop_counts()["Global"].items()
        if "bmm" not in str(op) and "scaled_dot_product" not in str(op)
    )
    attention = 0
    for i, (channels, heads) in enumerate(zip(net.filters, net.heads, strict=True)):
        # FCT layer i runs at S / 2^(i+1) in the encoder and bottleneck, and S / 2^(9-i) in the decoder.
        side = spatial_size // 2 ** (i + 1 if i < 5 else 9 - i)
        kv_side = -(-side // net.kv_stride)
        attention += 4 * batch_size * heads * side * side * kv_side * kv_side * channels
    return {
        "parameters": float(sum(p.numel() for p in net.parameters())),
        "flops": float(counted + attention),
        "attention_flops": float(attention),
    }


if __name__ == "__main__":
    for preset in FCT_PRESETS:
        for size in (224, 256):
            stats = model_complexity(preset, spatial_size=size)
            print(
                f"FCT {preset!r} (1 -> 3 classes), input 1x1x{size}^2: {int(stats['parameters']):,} parameters, "
                f"{stats['flops'] / 1e9:.1f} GFLOPs per forward (attention {stats['attention_flops'] / 1e9:.1f})"
            )
