"""COHRA-UNet: a configurable hybrid residual attention UNet, and the MTCM-KD backbone as one of its presets.

The thesis behind COHRA-UNet ("configured and optimized hybrid residual attention UNet", S. Ahmad, KNUT 2024)
is public only as an abstract: it studied activations, normalizations, upsampling, losses, spatial / channel /
transformer self-attention and their placement, and CNN-transformer hybrids, then combined the best settings.
Its final configuration is unpublished. :class:`COHRAUNet` therefore exposes every studied axis as a
constructor argument so the study can be re-run as an ablation grid, and its defaults are a labelled
reconstruction (research notes ``brats_methods.md`` section 2.3) built on the lab's sourced residual
channel-attention UNet (section 1.2), which :func:`mtcm_kd_backbone` reproduces exactly.

Run ``python -m common.networks.cohra_unet`` for the parameter count and FLOPs of the default network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import ChannelSELayer, UpSample
from monai.networks.layers.factories import Conv
from monai.networks.nets.attentionunet import AttentionBlock
from monai.utils import ensure_tuple_rep

from common.networks.blocks import (
    CBAMChannelGate,
    CBAMSpatialGate,
    PreActResidualBlock,
    ResidualStem,
    TokenTransformer,
    check_norm,
    resolve_act,
)

__all__ = [
    "ATTENTION_PLACEMENTS",
    "BLOCKS",
    "CHANNEL_ATTENTIONS",
    "SPATIAL_ATTENTIONS",
    "UPSAMPLE_MODES",
    "COHRAUNet",
    "model_complexity",
    "mtcm_kd_backbone",
]

BLOCKS = ("residual", "plain")
UPSAMPLE_MODES = ("deconv", "linear", "nearest", "pixelshuffle")
_UPSAMPLE_ALIASES = {"trilinear": "linear", "bilinear": "linear", "transposed": "deconv"}
CHANNEL_ATTENTIONS = ("cbam", "se", "none")
SPATIAL_ATTENTIONS = ("cbam", "attention_gate", "none")
ATTENTION_PLACEMENTS = ("decoder", "skip", "encoder")


def _check_option(arg: str, value: str, options: Sequence[str]) -> str:
    key = value.lower() if isinstance(value, str) else value
    if key not in options:
        raise ValueError(f"COHRAUNet: unknown {arg}={value!r}; expected one of {tuple(options)}.")
    return key


class _PassSkip(nn.Module):
    """Stands in for an attention gate that is switched off; keeps the decoder's call signature scriptable."""

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


class _DecoderStage(nn.Module):
    """One decoder level: upsample, refine the skip, concatenate, attend, residual block.

    Shape: ``(B, C_low, *S), (B, C_skip, *2S) -> (B, C_out, *2S)``.
    """

    def __init__(
        self,
        upsample: nn.Module,
        skip_transformer: nn.Module,
        skip_attention: nn.Module,
        attention_gate: nn.Module,
        concat_attention: nn.Module,
        block: nn.Module,
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.skip_transformer = skip_transformer
        self.skip_attention = skip_attention
        self.attention_gate = attention_gate
        self.concat_attention = concat_attention
        self.block = block

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        skip = self.attention_gate(x, self.skip_attention(self.skip_transformer(skip)))
        return self.block(self.concat_attention(torch.cat([x, skip], dim=1)))


class COHRAUNet(nn.Module):
    """COHRA-UNet, a residual attention UNet with a transformer bottleneck and every studied axis configurable.

    **The defaults are a RECONSTRUCTION.** The thesis' final COHRA-UNet configuration is unpublished (only the
    abstract is public). The default follows the labelled reconstruction of research notes ``brats_methods.md``
    section 2.3, which starts from the lab's sourced MTCM-KD backbone (section 1.2, see :func:`mtcm_kd_backbone`)
    and adds what the abstract names: a CBAM spatial gate after the channel gate, and transformer
    self-attention at the bottleneck. Default network, for input ``(B, 4, 128, 128, 128)``:

    - stem at 32 channels: ``conv3, InstanceNorm, act, conv3`` plus a ``conv3`` skip from the input;
    - encoder of pre-activation residual blocks with projection skips (``norm, act, conv3 / 2, norm, act,
      conv3`` + ``conv3 / 2, norm``): widths 32-64-128-256, three stride-2 downsamplings to the 16^3 bridge;
    - transformer bottleneck: 2^3 patch embedding of the 16^3 x 256 bridge (8^3 = 512 tokens, D = 256), learned
      positional embedding for a 128^3 training patch, 4 pre-norm layers (8 heads, MLP ratio 4), LayerNorm,
      transposed conv back to 16^3, residual add;
    - decoder: transposed-conv upsampling, concatenation with the skip, CBAM channel gate then CBAM spatial
      gate on the concatenation, residual block to the level's width;
    - activation LeakyReLU(0.01), GroupNorm (6 groups when the channels divide by 6, else 4, as in the lab code);
    - 1x1 conv head to 3 region logits (TC, WT, ET; no activation) and deep-supervision heads at 1/2 and 1/4.

    **Outputs.** In ``train()`` mode with ``deep_supervision`` the forward returns a list
    ``[logits, ds_1/2, ds_1/4, ...]``, each ``(B, out_channels, *S / 2^k)`` at its own resolution (MONAI's
    ``DeepSupervisionLoss`` resizes the target); otherwise, and always in ``eval()`` mode, it returns the
    full-resolution ``(B, out_channels, *S)`` logits tensor, so inferers, ``verify_net_in_out`` and TorchScript
    see one tensor. :meth:`forward_features` also returns the decoder features.

    **Input size.** Every spatial size must be divisible by :attr:`size_divisor`
    (``2^len(channels)-1``, times ``transformer_patch_size`` when a transformer is used; 16 by default),
    otherwise the forward raises ``ValueError``. The positional embedding is sized for ``img_size``: a
    sliding-window inferer with ``roi_size == img_size`` uses it unchanged; any other divisible size
    (a larger window, a whole volume) gets it (bi/tri)linearly interpolated to its token grid.

    Args:
        spatial_dims: 3 (volumes) or 2 (slices).
        in_channels: input channels (4: T1, T1ce, T2, FLAIR, in the dataset's channel order).
        out_channels: output logits (3: region-based TC, WT, ET).
        channels: widths from the stem to the bridge; ``len(channels) - 1`` stride-2 downsamplings.
            Default ``(32, 64, 128, 256)``; the section 2.3 deeper option is ``(32, 64, 128, 256, 320)``.
        act: activation, MONAI-style name or ``(name, kwargs)``. Studied: ``"relu"``, ``"leakyrelu"``,
            ``"prelu"``, ``"gelu"``, ``"mish"``, ``"silu"``. Default ``("leakyrelu", {"negative_slope": 0.01})``.
            It is also the hidden activation of the channel gates and the pre-sigmoid one of the spatial gate.
        norm: normalization of the residual blocks: ``"batch"``, ``"instance"``, ``"group"`` (default; without
            ``num_groups`` the lab rule 6-else-4 applies) or ``"layer"`` (``GroupNorm(1, C)``).
        stem_norm: normalization inside the stem, default ``"instance"`` (the lab's stem).
        block: ``"residual"`` (default) or ``"plain"`` (the same blocks and stem without their skip paths).
        upsample: ``"deconv"`` (transposed conv k2 s2, default), ``"linear"`` (bi/trilinear after a 1x1 conv),
            ``"nearest"`` (nearest after a 1x1 conv) or ``"pixelshuffle"`` (MONAI subpixel conv).
            ``"trilinear"``/``"bilinear"`` are accepted for ``"linear"``.
        channel_attention: ``"cbam"`` (CBAM channel gate: avg+max pooling, shared MLP, default), ``"se"``
            (MONAI ``ChannelSELayer``) or ``"none"``.
        spatial_attention: ``"cbam"`` (CBAM spatial gate, 7-wide conv on channel max and mean, applied after
            the channel attention; default), ``"attention_gate"`` (MONAI's additive attention gate on each skip,
            gated by the upsampled decoder feature, Oktay et al. 2018) or ``"none"``.
        attention_placement: where the channel attention and the CBAM spatial gate act: ``"decoder"`` (on the
            upsampled + skip concatenation, default and the sourced placement), ``"skip"`` (on the skip before
            concatenation, the lab's earlier variant) or ``"encoder"`` (on the output of the stem and of every
            encoder stage but the bridge). Attention gates always act on the skips.
        attention_reduction: channel-attention MLP reduction ratio r (16).
        bottleneck_transformer: transformer self-attention on the bridge (default True).
        skip_transformers: number of the deepest skip connections that also pass through a transformer (the
            hybridization option, TransBTS/UNETR-like), 0 to ``len(channels) - 1``. A skip at 1/2^l resolution
            uses patches ``transformer_patch_size * 2^(depth - l)`` wide, so every transformer sees the same
            token grid. Default 0.
        transformer_layers: layers per transformer (4).
        transformer_heads: attention heads (8).
        transformer_mlp_ratio: MLP width as a multiple of the token dimension (4).
        transformer_hidden_size: token dimension D; default ``channels[-1]``.
        transformer_patch_size: bridge voxels per token side (2; 1 is plain MHSA on the bridge map).
        transformer_dropout: dropout inside the transformers (0).
        img_size: training patch (ROI) size the positional embedding is sized for, an int or one per
            spatial dim (128). Must be divisible by :attr:`size_divisor` when a transformer is used.
        deep_supervision: return deep-supervision logits in training mode (True).
        deep_supervision_heads: number of deep-supervision heads, at 1/2, 1/4, ... resolution (2; at most
            ``len(channels) - 2``).

    Raises:
        ValueError: for an unknown option name, inconsistent sizes, or (in forward) an input whose spatial size
            is not divisible by :attr:`size_divisor`.

    TorchScript: every option compiles with ``torch.jit.script`` (``tests/unit/networks/test_cohra_unet.py`` scripts the
    default, the :func:`mtcm_kd_backbone` preset and mixed configurations covering every non-default module,
    and compares them with eager mode); the scripted module keeps :meth:`forward_features`.

    Size of the default network (``python -m common.networks.cohra_unet``): 13,806,214 parameters and
    1807.6 GFLOPs (903.8 GMACs) per ``1 x 4 x 128^3`` forward, counted by ``FlopCounterMode`` (convolutions and
    matrix products only).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01}),
        norm: str | tuple = "group",
        stem_norm: str | tuple = "instance",
        block: str = "residual",
        upsample: str = "deconv",
        channel_attention: str = "cbam",
        spatial_attention: str = "cbam",
        attention_placement: str = "decoder",
        attention_reduction: int = 16,
        bottleneck_transformer: bool = True,
        skip_transformers: int = 0,
        transformer_layers: int = 4,
        transformer_heads: int = 8,
        transformer_mlp_ratio: float = 4.0,
        transformer_hidden_size: int | None = None,
        transformer_patch_size: int = 2,
        transformer_dropout: float = 0.0,
        img_size: int | Sequence[int] = 128,
        deep_supervision: bool = True,
        deep_supervision_heads: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"COHRAUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"COHRAUNet: channels needs at least a stem and a bridge width, got {channels}.")
        depth = len(channels) - 1
        block = _check_option("block", block, BLOCKS)
        upsample = _check_option("upsample", _UPSAMPLE_ALIASES.get(str(upsample).lower(), upsample), UPSAMPLE_MODES)
        channel_attention = _check_option("channel_attention", channel_attention, CHANNEL_ATTENTIONS)
        spatial_attention = _check_option("spatial_attention", spatial_attention, SPATIAL_ATTENTIONS)
        attention_placement = _check_option("attention_placement", attention_placement, ATTENTION_PLACEMENTS)
        act = resolve_act(act)
        # Fail on a bad norm spelling here, with its own message, rather than deep inside a block.
        check_norm(norm)
        check_norm(stem_norm)
        if not 0 <= skip_transformers <= depth:
            raise ValueError(f"COHRAUNet: skip_transformers must be in [0, {depth}], got {skip_transformers}.")
        if deep_supervision and not 0 <= deep_supervision_heads <= depth - 1:
            raise ValueError(
                f"COHRAUNet: deep_supervision_heads must be in [0, {depth - 1}] for {depth} downsamplings, "
                f"got {deep_supervision_heads}."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.deep_supervision = bool(deep_supervision and deep_supervision_heads > 0)
        uses_transformer = bottleneck_transformer or skip_transformers > 0
        #: every input spatial size must be a multiple of this
        self.size_divisor = 2**depth * (transformer_patch_size if uses_transformer else 1)
        self.img_size = ensure_tuple_rep(img_size, spatial_dims)
        if uses_transformer and any(s % self.size_divisor for s in self.img_size):
            raise ValueError(
                f"COHRAUNet: img_size {self.img_size} must be divisible by the total stride {self.size_divisor} "
                f"(2^{depth} downsamplings x transformer_patch_size {transformer_patch_size})."
            )
        residual = block == "residual"
        sd = spatial_dims

        def attention(width: int) -> nn.Module:
            gates: list[nn.Module] = []
            if channel_attention == "cbam":
                gates.append(CBAMChannelGate(sd, width, attention_reduction, act))
            elif channel_attention == "se":
                gates.append(ChannelSELayer(sd, width, r=min(attention_reduction, width), acti_type_1=act))
            if spatial_attention == "cbam":
                gates.append(CBAMSpatialGate(sd, 7, act))
            return nn.Sequential(*gates) if gates else nn.Identity()

        def placed(where: str, width: int) -> nn.Module:
            return attention(width) if attention_placement == where else nn.Identity()

        hidden = transformer_hidden_size or channels[-1]
        grid = [s // self.size_divisor for s in self.img_size]

        def transformer(width: int, patch: int) -> TokenTransformer:
            return TokenTransformer(
                sd, width, hidden, patch, grid, transformer_layers, transformer_heads, transformer_mlp_ratio,
                transformer_dropout,
            )  # fmt: skip

        self.stem = nn.Sequential(
            ResidualStem(sd, in_channels, channels[0], stem_norm, act, residual), placed("encoder", channels[0])
        )
        self.encoder = nn.ModuleList(
            [
                nn.Sequential(
                    PreActResidualBlock(sd, channels[i], channels[i + 1], 2, norm, act, residual),
                    placed("encoder", channels[i + 1]),
                )
                for i in range(depth - 1)
            ]
        )
        self.bridge = PreActResidualBlock(sd, channels[-2], channels[-1], 2, norm, act, residual)
        self.bottleneck = transformer(channels[-1], transformer_patch_size) if bottleneck_transformer else nn.Identity()

        decoder = []
        for level in reversed(range(depth)):  # from the deepest skip up to full resolution
            low, skip, concat = channels[level + 1], channels[level], channels[level + 1] + channels[level]
            decoder.append(
                _DecoderStage(
                    upsample=self._upsample(upsample, low),
                    skip_transformer=(
                        transformer(skip, transformer_patch_size * 2 ** (depth - level))
                        if depth - level <= skip_transformers
                        else nn.Identity()
                    ),
                    skip_attention=placed("skip", skip),
                    attention_gate=(
                        AttentionBlock(sd, f_int=max(1, skip // 2), f_g=low, f_l=skip)
                        if spatial_attention == "attention_gate"
                        else _PassSkip()
                    ),
                    concat_attention=placed("decoder", concat),
                    block=PreActResidualBlock(sd, concat, skip, 1, norm, act, residual),
                )
            )
        self.decoder = nn.ModuleList(decoder)
        self.head = Conv[Conv.CONV, sd](channels[0], out_channels, kernel_size=1)
        self.deep_supervision_heads = nn.ModuleList(
            [
                Conv[Conv.CONV, sd](channels[k], out_channels, kernel_size=1)
                for k in range(1, deep_supervision_heads + 1)
            ]
            if self.deep_supervision
            else []
        )

    def _upsample(self, mode: str, width: int) -> nn.Module:
        # Upsampling keeps the width, so every mode feeds the same concatenation and only the operator changes.
        if mode == "deconv":
            return UpSample(self.spatial_dims, width, width, 2, mode="deconv")
        if mode == "pixelshuffle":
            return UpSample(self.spatial_dims, width, width, 2, mode="pixelshuffle")
        # The 1x1 conv goes before the interpolation: channel mixing commutes with (bi/tri)linear and nearest
        # resizing, so the result is the same as conv-after-resize at 1/2^d of the cost.
        pre_conv = Conv[Conv.CONV, self.spatial_dims](width, width, kernel_size=1)
        return UpSample(
            self.spatial_dims,
            width,
            width,
            2,
            mode="nontrainable",
            pre_conv=pre_conv,
            interp_mode=mode,
            align_corners=False if mode == "linear" else None,
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "COHRAUNet: expected a (B, C, " + str(self.spatial_dims) + " spatial dims) input, got shape "
                + str(list(x.shape)) + "."
            )  # fmt: skip
        for size in x.shape[2:]:
            if size % self.size_divisor != 0:
                raise ValueError(
                    "COHRAUNet: input spatial size " + str(list(x.shape[2:])) + " is not divisible by the total "
                    "stride " + str(self.size_divisor) + "; pad or crop it (e.g. DivisiblePadd(k="
                    + str(self.size_divisor) + "))."
                )  # fmt: skip

    @torch.jit.export
    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution logits and the decoder features, highest resolution first.

        Args:
            x: ``(B, in_channels, *S)``, ``S`` divisible by :attr:`size_divisor`.

        Returns:
            ``(logits, [f_1, f_1/2, f_1/4, ...])``: logits ``(B, out_channels, *S)``; ``f_1/2^k`` is the output of
            the decoder level at 1/2^k resolution, ``(B, channels[k], *S / 2^k)``. MTCM-KD teachers hand
            ``features[1]`` (64 channels at 1/2 resolution in the backbone) to the fusion module.
        """
        self._check_input(x)
        x = self.stem(x)
        skips: list[torch.Tensor] = [x]
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(self.bridge(x))
        features: list[torch.Tensor] = []
        for i, stage in enumerate(self.decoder):
            x = stage(x, skips[len(skips) - 1 - i])
            features.append(x)
        features.reverse()
        return self.head(x), features

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, *S)``, ``S`` divisible by :attr:`size_divisor`.

        Returns:
            ``(B, out_channels, *S)`` logits; in training mode with deep supervision, the list
            ``[logits, ds_1/2 (B, out_channels, *S/2), ds_1/4 (B, out_channels, *S/4), ...]``.
        """
        logits, features = self.forward_features(x)
        if self.training and self.deep_supervision:
            outputs = [logits]
            for k, head in enumerate(self.deep_supervision_heads):
                outputs.append(head(features[k + 1]))
            return outputs
        return logits


def mtcm_kd_backbone(in_channels: int = 1, out_channels: int = 4, **overrides) -> COHRAUNet:
    """The MTCM-KD teacher/student network, ``ResUNET_channel_attention`` (research notes section 1.2), exactly.

    Sourced from RhineLT/mtcm-kd ``models/ResUNet.py``, ``modules.py``, ``attention_modules.py`` @0d44741:
    InstanceNorm stem with a conv skip, pre-activation GroupNorm (6-else-4 groups) residual blocks with 3x3
    projection skips, widths 32-64-128-256, LeakyReLU(0.01), transposed-conv upsampling, a CBAM channel gate on
    each decoder concatenation (no spatial gate, no transformer), a 1x1 head and deep-supervision heads on the
    64-channel (1/2) and 128-channel (1/4) decoder outputs. 9,459,478 parameters with the default 1 input and 4
    outputs. The student's ``forward`` in training mode gives ``[out, ds_1/2, ds_1/4]``; a teacher uses
    :meth:`COHRAUNet.forward_features` and passes ``features[1]`` (64 channels at 1/2) to the fusion module.
    The upstream code Xavier-initialises the student only; weight initialisation is left to the trainer.

    Args:
        in_channels: input channels (1: one MRI sequence per network).
        out_channels: classes (4: background, NCR/NET, ED, ET).
        overrides: any other :class:`COHRAUNet` argument, e.g. ``spatial_dims=2``.
    """
    config = dict(
        spatial_dims=3,
        channels=(32, 64, 128, 256),
        act=("leakyrelu", {"negative_slope": 0.01}),
        norm="group",
        stem_norm="instance",
        block="residual",
        upsample="deconv",
        channel_attention="cbam",
        spatial_attention="none",
        attention_placement="decoder",
        attention_reduction=16,
        bottleneck_transformer=False,
        skip_transformers=0,
        deep_supervision=True,
        deep_supervision_heads=2,
    )
    config.update(overrides)
    return COHRAUNet(in_channels=in_channels, out_channels=out_channels, **config)


def model_complexity(
    spatial_size: int = 128, batch_size: int = 1, build: Callable[..., COHRAUNet] = COHRAUNet, **network_kwargs
) -> dict[str, float]:
    """Parameter count and inference FLOPs of ``build(**network_kwargs)`` (the default :class:`COHRAUNet`).

    The network is built on PyTorch's ``meta`` device, so nothing is allocated; FLOPs come from
    ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, transposed convolutions and matrix products,
    2 FLOPs per multiply-add; norms, activations and pooling are not counted) for one eval-mode forward of a
    ``(batch_size, in_channels, spatial_size^d)`` input.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = build(**network_kwargs).eval()
        x = torch.empty(batch_size, net.in_channels, *([spatial_size] * net.spatial_dims))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return {"parameters": float(sum(p.numel() for p in net.parameters())), "flops": float(counter.get_total_flops())}


if __name__ == "__main__":
    stats = model_complexity()
    print(
        f"COHRAUNet default, input 1x4x128^3: {int(stats['parameters']):,} parameters, "
        f"{stats['flops'] / 1e9:.1f} GFLOPs ({stats['flops'] / 2e9:.1f} GMACs) per forward"
    )
    stats = model_complexity(build=mtcm_kd_backbone)
    print(
        f"mtcm_kd_backbone (1 -> 4), input 1x1x128^3: {int(stats['parameters']):,} parameters, "
        f"{stats['flops'] / 1e9:.1f} GFLOPs ({stats['flops'] / 2e9:.1f} GMACs) per forward"
    )
