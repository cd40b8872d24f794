"""RefNet: a 2D UNet that refines a 3D base model's multi-organ segmentation, slice by slice.

RefNet (Jo, Choi, Seo, Park, "RefNet: UNet-based Segmentation Output Refining method for Improved 3D Medical Image
Segmentation", Yonsei University; seed paper 003) takes the label map a 3D segmentation model (Swin UNETR in the
paper) predicted for a Synapse/BTCV CT, cuts it into 2D slices along depth, embeds every slice's 13 integer class ids
(background + 12 organs) with an embedding layer, and lets a UNet predict refined logits for the same 13 classes. The
refined slices are stacked back into a volume with the input's affine; in a bundle MONAI's
``SliceInferer(spatial_dim=2)`` does the slicing and the stacking. The loss is in
:mod:`common.losses.refinement`, the label-map corruptions used as extra training inputs in
:mod:`common.transforms.refinement`.

Beyond the paper, and off by default, :class:`RefNet` can also see the CT (its stated future work, the auto-context /
cascade recipe behind larger refinement gains in the literature) and can take the base model's class probabilities
instead of its hard labels (research notes ``fct_refnet.md`` section 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet

__all__ = ["LABEL_INPUTS", "RefNet"]

LABEL_INPUTS = ("labels", "probabilities")


def _norm_name(norm: str | tuple) -> str:
    name = norm[0] if isinstance(norm, tuple) else norm
    return str(name).lower()


class RefNet(nn.Module):
    """Embedding of a base model's label map (plus optional image channels) followed by a 2D UNet.

    **The paper's RefNet** (the default, ``label_input="labels"``, ``image_channels=0``): every pixel's class id
    ``s`` in ``0..num_classes-1`` becomes the learned vector ``embedding.weight[s]`` (``nn.Embedding(num_classes,
    embedding_dim)``), and MONAI's ``BasicUNet(spatial_dims=2)`` maps the ``(B, embedding_dim, H, W)`` embedding to
    ``(B, num_classes, H, W)`` logits. The paper describes the UNet only as "based on UNet [Ronneberger 2015]" and
    does not give the embedding width; ``embedding_dim=16`` is the value of the research notes' CPU experiment
    (``fct_refnet.md`` section 6), not the paper's, and the UNet widths are BasicUNet's defaults
    ``(32, 32, 64, 128, 256, 32)``. Ronneberger's widths are ``features=(64, 128, 256, 512, 1024, 64)``.

    **Input layout** ``(B, C, H, W)``, one 2D slice per batch item:

    - ``label_input="labels"``: ``C = 1 + image_channels``. Channel 0 holds integer class ids stored as float
      (MONAI pipelines give float tensors); they are rounded and cast to ``long`` here. Values that are not integers
      or not in ``[0, num_classes)`` raise ``ValueError``.
    - ``label_input="probabilities"``: ``C = num_classes + image_channels``. Channels ``0..num_classes-1`` hold the
      base model's class probabilities (softmax output; not checked to sum to 1). They are embedded as the
      probability-weighted sum of the embedding vectors, ``sum_c p_c * embedding.weight[c]``, so a one-hot input gives
      exactly the embedding of the hard label and a network trained on hard labels accepts soft ones.
    - the last ``image_channels`` channels (image-aware RefNet) hold the CT slice, and optionally its neighbouring
      slices (see ``common.transforms.refinement.AddNeighbouringSlicesd``), already intensity-normalised; they are
      concatenated to the embedding, so the UNet sees ``embedding_dim + image_channels`` channels.

    **Output**: ``(B, num_classes, H, W)`` logits, no activation.

    **Slice size**: any ``H, W`` of at least 16 (BasicUNet pools four times and pads odd sizes back itself); with
    instance normalisation (the default) the 1/16-resolution bottleneck also needs at least two pixels, i.e.
    ``(H // 16) * (W // 16) >= 2``. Smaller slices raise ``ValueError``. Multiples of 16 avoid BasicUNet's padding.

    Args:
        num_classes: number of classes, background included (13: background + the 12 Synapse organs).
        embedding_dim: length of each class's embedding vector (16, see above).
        image_channels: extra image channels after the label input (0: the paper's label-only RefNet; 1: the CT
            slice; ``1 + 2k``: the CT slice and ``k`` neighbours on each side).
        label_input: ``"labels"`` (hard class ids, the paper) or ``"probabilities"`` (class probabilities).
        features: BasicUNet widths: five encoder levels, then the last decoder level.
        act: activation, MONAI name or ``(name, kwargs)`` (BasicUNet's LeakyReLU 0.1 by default).
        norm: normalisation, MONAI name or ``(name, kwargs)`` (BasicUNet's affine instance norm by default).
        dropout: dropout probability in every convolution block of the UNet (0).
        upsample: BasicUNet upsampling mode: ``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``.

    Raises:
        ValueError: for an unknown ``label_input`` or a non-positive size argument, and in ``forward`` for an input
            that is not 4D, has the wrong number of channels, is smaller than the UNet allows, or (label mode) holds
            label values that are not integers in ``[0, num_classes)``.

    TorchScript: ``torch.jit.script(RefNet(...))`` compiles in both input modes and matches eager mode
    (``tests/unit/networks/test_refnet.py``); a scripted module raises the same messages as ``torch.jit.Error``.

    Class ids: ``num_classes=13`` is the Synapse "12 organs" convention of the paper (research notes ``fct_refnet.md``
    section 4): the 13 BTCV organs with both adrenal glands merged, so BTCV's left adrenal id 13 must become 12
    before the label maps reach RefNet; ids 0..11 are BTCV's (``common.data.btcv.BTCV_LABELS``).
    """

    def __init__(
        self,
        num_classes: int = 13,
        embedding_dim: int = 16,
        image_channels: int = 0,
        label_input: str = "labels",
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if label_input not in LABEL_INPUTS:
            raise ValueError(f"RefNet: unknown label_input={label_input!r}; expected one of {LABEL_INPUTS}.")
        if num_classes < 2:
            raise ValueError(f"RefNet: num_classes must be at least 2 (background and one organ), got {num_classes}.")
        if embedding_dim < 1:
            raise ValueError(f"RefNet: embedding_dim must be positive, got {embedding_dim}.")
        if image_channels < 0:
            raise ValueError(f"RefNet: image_channels must be >= 0, got {image_channels}.")
        if len(features) != 6:
            raise ValueError(f"RefNet: features must hold 6 BasicUNet widths, got {tuple(features)}.")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.image_channels = int(image_channels)
        self.label_input = label_input
        self.label_channels = 1 if label_input == "labels" else self.num_classes
        self.in_channels = self.label_channels + self.image_channels
        # BasicUNet max-pools four times
        self.downsampling_factor = 16
        # instance norm needs more than one value per channel, also at the 1/16-resolution bottleneck
        self.min_bottleneck_pixels = 2 if _norm_name(norm).startswith("instance") else 1
        self.embedding = nn.Embedding(self.num_classes, self.embedding_dim)
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=self.embedding_dim + self.image_channels,
            out_channels=self.num_classes,
            features=tuple(features),
            act=act,
            norm=norm,
            dropout=dropout,
            upsample=upsample,
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"RefNet expects a (B, C, H, W) slice batch, got shape {list(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"RefNet ({self.label_input} input, {self.image_channels} image channels) expects "
                f"{self.in_channels} input channels ({self.label_channels} label + {self.image_channels} image), "
                f"got {x.shape[1]} in shape {list(x.shape)}."
            )
        height, width, factor = x.shape[2], x.shape[3], self.downsampling_factor
        if height < factor or width < factor or (height // factor) * (width // factor) < self.min_bottleneck_pixels:
            raise ValueError(
                f"RefNet: slice size {height}x{width} is too small for the 4-level UNet; each side must be at least "
                f"{factor} and the 1/{factor} bottleneck must hold at least "
                f"{self.min_bottleneck_pixels} pixel(s)."
            )

    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` float class ids -> ``(B, embedding_dim, H, W)`` embedding."""
        ids = torch.round(labels[:, 0])
        if bool(torch.any(torch.abs(labels[:, 0] - ids) > 1e-3)):
            raise ValueError(
                "RefNet: channel 0 must hold integer class ids, found non-integer values (a label map resampled with "
                "linear interpolation?)."
            )
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"RefNet: class ids must lie in [0, {self.num_classes}), found values from {low} to {high} in "
                "channel 0."
            )
        return self.embedding(ids.long()).permute(0, 3, 1, 2)

    def embed_probabilities(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes, H, W)`` class probabilities -> ``(B, embedding_dim, H, W)`` expected embedding."""
        return torch.einsum("bchw,ce->behw", probabilities, self.embedding.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, label channels + image_channels, H, W)`` -> ``(B, num_classes, H, W)`` logits (see the class doc)."""
        self._check_input(x)
        if self.label_input == "labels":
            embedded = self.embed_labels(x[:, : self.label_channels])
        else:
            embedded = self.embed_probabilities(x[:, : self.label_channels])
        if self.image_channels > 0:
            embedded = torch.cat([embedded, x[:, self.label_channels :].to(embedded.dtype)], dim=1)
        return self.unet(embedded)
