"""Building blocks of :class:`common.networks.cohra_unet.COHRAUNet` that MONAI does not provide.

MONAI supplies the SE layer (``ChannelSELayer``), the additive attention gate (``AttentionBlock``),
upsampling (``UpSample``) and the pre-norm ``TransformerBlock``; the network uses those directly. What is
here is what MONAI lacks:

- :class:`CBAMChannelGate` -- MONAI's SE layer squeezes with average pooling only; CBAM adds a max-pooled
  descriptor through the same MLP, which is what the lab's MTCM-KD backbone uses.
- :class:`CBAMSpatialGate` -- MONAI has no channel-pooled spatial gate.
- :class:`PreActResidualBlock` and :class:`ResidualStem` -- MONAI's ``ResidualUnit``/``UnetResBlock`` are
  post-activation (conv, norm, act) with a 1x1 projection; the lab's blocks are pre-activation with a
  3x3 projection followed by a norm, and a MONAI block cannot express that ordering.
- :class:`TokenTransformer` -- MONAI's ``PatchEmbeddingBlock`` has a fixed-size positional embedding, so it
  cannot run on a token grid other than the one it was built for; here the embedding is interpolated.

Activation and normalization are given MONAI-style, as a name or ``(name, kwargs)``; :func:`make_norm` and
:func:`make_act` resolve them (with the two extensions documented there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.layers.factories import Conv, split_args
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "CBAMChannelGate",
    "CBAMSpatialGate",
    "PreActResidualBlock",
    "ResidualStem",
    "TokenTransformer",
    "check_norm",
    "lab_num_groups",
    "make_act",
    "make_norm",
    "resolve_act",
]

#: Activation names the COHRA study axis covers (any other MONAI ``Act`` name is accepted too).
ACTIVATIONS = ("relu", "leakyrelu", "prelu", "gelu", "mish", "silu")
#: Normalization names the COHRA study axis covers.
NORMS = ("batch", "instance", "group", "layer")


def lab_num_groups(channels: int) -> int:
    """GroupNorm group count of the lab's blocks: 6 when ``channels`` is divisible by 6, else 4."""
    return 6 if channels % 6 == 0 else 4


def resolve_act(act: str | tuple) -> tuple:
    """Return ``act`` as ``(name_or_class, kwargs)`` accepted by MONAI's ``Act`` factory.

    ``"silu"`` maps to :class:`torch.nn.SiLU` because MONAI's factory has no such name (its ``"swish"`` is the
    same function, implemented in Python and slower).

    Raises:
        ValueError: when the name is not a MONAI activation.
    """
    name, kwargs = split_args(act)
    if not isinstance(name, str):
        return name, dict(kwargs)
    if name.lower() == "silu":
        return nn.SiLU, dict(kwargs)
    try:
        get_act_layer((name, dict(kwargs)))
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"unknown activation {act!r}; the studied options are {ACTIVATIONS}.") from err
    return name, dict(kwargs)


def make_act(act: str | tuple) -> nn.Module:
    """Instantiate an activation given MONAI-style (see :func:`resolve_act`)."""
    return get_act_layer(resolve_act(act))


def check_norm(norm: str | tuple) -> tuple[str, dict]:
    """Return ``norm`` as ``(name, kwargs)`` with a lower-case name from :data:`NORMS`.

    Raises:
        ValueError: when the name is not one of :data:`NORMS`.
    """
    name, kwargs = split_args(norm)
    key = name.lower() if isinstance(name, str) else name
    if key not in NORMS:
        raise ValueError(f"unknown normalization {norm!r}; expected one of {NORMS}.")
    return key, dict(kwargs)


def make_norm(norm: str | tuple, spatial_dims: int, channels: int) -> nn.Module:
    """Instantiate a normalization layer for ``channels`` feature maps, given MONAI-style.

    Two extensions over ``monai.networks.layers.get_norm_layer``:

    - ``"group"`` without ``num_groups`` uses the lab's rule (:func:`lab_num_groups`), so the MTCM-KD
      backbone and the COHRA default share one spelling.
    - ``"layer"`` is layer normalization of a feature map, i.e. ``GroupNorm(1, channels)`` (Wu & He 2018
      show LN over (C, spatial) is GN with one group). MONAI's ``"layer"`` is ``nn.LayerNorm``, which needs
      a fixed spatial shape and so cannot serve a fully convolutional network.

    Raises:
        ValueError: when the name is not one of :data:`NORMS`, or the channels do not split into the groups.
    """
    key, kwargs = check_norm(norm)
    if key == "layer":
        return nn.GroupNorm(1, channels, **kwargs)
    if key == "group":
        kwargs.setdefault("num_groups", lab_num_groups(channels))
        if channels % kwargs["num_groups"]:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by {kwargs['num_groups']} groups.")
    return get_norm_layer((key, kwargs), spatial_dims, channels)


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
    # Biased, "same"-padded convs everywhere: the lab's blocks keep the bias even before a norm, and
    # reproducing MTCM-KD's parameter count depends on it.
    return Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=kernel_size // 2
    )


class CBAMChannelGate(nn.Module):
    """CBAM channel attention (Woo et al. 2018), as in the lab's MTCM-KD code.

    Global average- and max-pooled descriptors pass through one shared MLP
    (``C -> max(1, C // reduction) -> C``); their sum, through a sigmoid, rescales each channel.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: C, the channels of the input.
        reduction: MLP reduction ratio r.
        act: hidden activation of the MLP (MONAI-style name or tuple).

    Shape: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16, act: str | tuple = "leakyrelu") -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), make_act(act), nn.Linear(hidden, channels))
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Reduce over the spatial dims in place rather than through ``x.flatten(2)`` (a full copy for a
        # channels-last input), and average as sum / count: ``mean`` of a bf16 tensor on CPU first copies
        # the whole input to float32, while ``sum`` accumulates in float32 without the copy (a bf16 COHRA-UNet
        # window about 14 % faster in ``make bench``).
        spatial = list(range(2, x.dim()))
        count = x[0, 0].numel()
        scores = self.mlp(x.sum(dim=spatial) / count) + self.mlp(self._global_max(x).flatten(1))
        # A list-built shape rather than *unpacking, which TorchScript cannot compile.
        shape = [x.shape[0], x.shape[1]] + [1] * self.spatial_dims
        return x * torch.sigmoid(scores).reshape(shape)

    def _global_max(self, x: torch.Tensor) -> torch.Tensor:
        # A max pool over the whole extent gives the same values as ``amax`` over the spatial dims, but on CPU it
        # is a vectorised kernel for channels-last and bf16 input, where ``amax`` is not (about 18 times faster for
        # a 32 x 128^3 bf16 window), and its backward is faster in training too.
        extent = x.shape[2:]
        if self.spatial_dims == 3:
            return F.max_pool3d(x, extent)
        if self.spatial_dims == 2:
            return F.max_pool2d(x, extent)
        return F.max_pool1d(x, extent)


class CBAMSpatialGate(nn.Module):
    """CBAM spatial attention, as in the lab's MTCM-KD code.

    The channel-wise max and mean maps are stacked, convolved (``kernel_size``, one output channel),
    normalized with ``GroupNorm(1, 1)`` and activated -- the lab's ``BasicConv`` -- and a sigmoid of the
    result rescales every voxel.

    Args:
        spatial_dims: number of spatial dimensions.
        kernel_size: convolution size (7 in CBAM and in the lab's code).
        act: activation before the sigmoid (MONAI-style name or tuple).

    Shape: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7, act: str | tuple = "leakyrelu") -> None:
        super().__init__()
        self.conv = _conv(spatial_dims, 2, 1, kernel_size)
        self.norm = nn.GroupNorm(1, 1)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sum / C rather than mean: see CBAMChannelGate.forward.
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.sum(dim=1, keepdim=True) / x.shape[1]], dim=1)
        return x * torch.sigmoid(self.act(self.norm(self.conv(pooled))))


class PreActResidualBlock(nn.Module):
    """Pre-activation residual block with a projection skip (He et al. 2016; the lab's ``ResNetBlock``).

    ``norm, act, conv3(stride), norm, act, conv3`` plus, when ``residual``, a skip ``conv3(stride), norm``.
    With ``residual=False`` the same main path runs without the skip (the "plain block" option), so the
    study axis changes the skip alone.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: C_in.
        out_channels: C_out.
        stride: stride of the first conv and of the skip conv (2 downsamples).
        norm: normalization (see :func:`make_norm`).
        act: activation (MONAI-style).
        residual: add the projection skip.

    Shape: ``(B, C_in, *S) -> (B, C_out, *S / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str | tuple = "group",
        act: str | tuple = "leakyrelu",
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            make_norm(norm, spatial_dims, in_channels),
            make_act(act),
            _conv(spatial_dims, in_channels, out_channels, 3, stride),
            make_norm(norm, spatial_dims, out_channels),
            make_act(act),
            _conv(spatial_dims, out_channels, out_channels, 3),
        )
        self.skip: nn.Module | None = None
        if residual:
            self.skip = nn.Sequential(
                _conv(spatial_dims, in_channels, out_channels, 3, stride), make_norm(norm, spatial_dims, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return out


class ResidualStem(nn.Module):
    """Full-resolution input stem of the lab's backbone.

    ``conv3, norm, act, conv3`` plus, when ``residual``, a ``conv3`` skip from the input (no norm on the skip).
    The stem normalizes *between* its convs (post-activation) because the raw image has no features to
    pre-normalize yet.

    Shape: ``(B, C_in, *S) -> (B, C_out, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str | tuple = "instance",
        act: str | tuple = "leakyrelu",
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            _conv(spatial_dims, in_channels, out_channels, 3),
            make_norm(norm, spatial_dims, out_channels),
            make_act(act),
            _conv(spatial_dims, out_channels, out_channels, 3),
        )
        self.skip: nn.Module | None = _conv(spatial_dims, in_channels, out_channels, 3) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return out


class TokenTransformer(nn.Module):
    """Transformer self-attention over a feature map, returned at the map's resolution with a residual add.

    ``patch embedding (conv, kernel = stride = patch_size) + learned positional embedding -> num_layers
    pre-norm MONAI TransformerBlocks -> LayerNorm -> transposed conv back to the input grid -> + input``.

    The positional embedding is a ``(1, hidden_size, *grid_size)`` parameter for the token grid of the
    training patch. An input whose token grid differs (a larger sliding window, a whole volume) gets the
    embedding resized by (bi/tri)linear interpolation, the usual ViT practice for a new resolution; at the
    training grid the embedding is used as is.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: C of the feature map.
        hidden_size: token dimension D (divisible by ``num_heads``).
        patch_size: voxels per token side; the map's spatial size must be divisible by it.
        grid_size: token grid the positional embedding is sized for.
        num_layers: transformer layers.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size as a multiple of D.
        dropout: dropout of the attention, MLP and embedding.

    Shape: ``(B, C, *S) -> (B, C, *S)``, with ``S / patch_size`` tokens per side.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        hidden_size: int,
        patch_size: int,
        grid_size: Sequence[int],
        num_layers: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(grid_size) != spatial_dims:
            raise ValueError(f"grid_size {tuple(grid_size)} must have {spatial_dims} entries.")
        self.embed = Conv[Conv.CONV, spatial_dims](channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *grid_size))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            layer = TransformerBlock(hidden_size, int(hidden_size * mlp_ratio), num_heads, dropout, qkv_bias=True)
            # MONAI builds the cross-attention LayerNorm even without cross-attention. Its parameters would
            # never get a gradient, which DistributedDataParallel (find_unused_parameters=False) rejects.
            layer.norm_cross_attn = nn.Identity()
            self.layers.append(layer)
        self.norm = nn.LayerNorm(hidden_size)
        self.unembed = Conv[Conv.CONVTRANS, spatial_dims](
            hidden_size, channels, kernel_size=patch_size, stride=patch_size
        )
        self.interp_mode = "trilinear" if spatial_dims == 3 else "bilinear"

    def positional_embedding(self, grid: list[int]) -> torch.Tensor:
        """The positional embedding for a token grid, interpolated when it is not the training grid."""
        pos = self.pos_embed
        if grid != list(pos.shape[2:]):
            pos = F.interpolate(pos, size=grid, mode=self.interp_mode, align_corners=False)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        tokens = self.embed_dropout(tokens + self.positional_embedding(list(tokens.shape[2:])))
        seq = tokens.flatten(2).transpose(1, 2)
        for layer in self.layers:
            seq = layer(seq)
        tokens = self.norm(seq).transpose(1, 2).reshape(tokens.shape)
        return x + self.unembed(tokens)
