"""The two-stage inferer of bundle ``refnet_synapse``: a 3D base model, then RefNet slice by slice.

:class:`BaseThenRefineInferer` is a MONAI ``Inferer``, so a bundle's ``SupervisedEvaluator`` runs the whole
cascade with its ``network`` being RefNet (what ``network_def`` defines, what ``ckpt_export`` exports and what the
checkpoint ``models/model.pt`` holds) while the base model travels inside the inferer as a second network with its
own weights (``models/base_model.pt``). MONAI Label and MONAI Deploy, which read ``preprocessing``, ``inferer``,
``network`` and ``postprocessing`` from ``inference.json``, therefore get CT in and the refined label map out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Spacing, SpatialResample
from monai.utils import convert_to_dst_type

from common.transforms.refinement import AddNeighbouringSlicesd

__all__ = ["BASE_INPUTS", "BaseThenRefineInferer", "load_weights", "refnet_input"]

BASE_INPUTS = ("labels", "probabilities")


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def load_weights(network: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """``network`` with the weights of the checkpoint at ``path`` loaded (strictly), or unchanged when ``path`` is None.

    The checkpoint is a state dict or MONAI's ``{"model": state dict}``. This loads the base model where it is built,
    because MONAI Label's ``monaibundle`` app instantiates ``inferer`` but never runs ``initialize`` (where the
    bundle's checkpoint loaders are), which would leave the base model randomly initialised there.
    """
    if path is None:
        return network
    if not Path(path).is_file():
        raise FileNotFoundError(f"'{path}' does not exist: expected the base model weights there.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint))
    return network


def refnet_input(
    probabilities: torch.Tensor,
    image: torch.Tensor | None,
    base_input: str = "labels",
    num_neighbours: int | None = None,
) -> torch.Tensor:
    """RefNet's input volume from a base model's class probabilities and, optionally, the CT.

    Args:
        probabilities: ``(C, H, W, D)`` class probabilities of the base model on the CT's grid.
        image: ``(1, H, W, D)`` intensity-scaled CT, or ``None`` for the label-only RefNet.
        base_input: ``"labels"``: the one-hot encoding of the base label map (``argmax``), which RefNet
            (``label_input="probabilities"``) embeds exactly as the paper's embedding lookup of the hard labels;
            ``"probabilities"``: the probabilities themselves.
        num_neighbours: CT slices taken on each side of every slice (``AddNeighbouringSlicesd``); ignored without
            ``image``.

    Returns:
        ``(C + (2 * num_neighbours + 1 if image is given else 0), H, W, D)``, the base channels first.
    """
    if base_input not in BASE_INPUTS:
        raise ValueError(f"base_input must be one of {BASE_INPUTS}, got {base_input!r}.")
    if base_input == "labels":
        num_classes = probabilities.shape[0]
        base = F.one_hot(probabilities.argmax(0), num_classes).movedim(-1, 0).to(probabilities.dtype)
    else:
        base = probabilities
    parts = [_plain(base)]
    if image is not None:
        stacked = AddNeighbouringSlicesd("image", num_neighbours=num_neighbours or 0)({"image": image})["image"]
        parts.append(_plain(stacked).to(device=base.device, dtype=base.dtype))
    return torch.cat(parts, dim=0)


class BaseThenRefineInferer(Inferer):
    """CT volume -> base model (sliding window, at its own voxel spacing) -> RefNet on every axial slice.

    ``__call__(inputs, network)`` takes the preprocessed CT batch ``(B, 1, H, W, D)`` (a ``MetaTensor`` carrying
    each item's affine, intensities scaled as the base model was trained) and RefNet as ``network``, and returns
    RefNet's logits ``(B, num_classes, H, W, D)`` on the CT's grid, with the inputs' meta data. For every item:

    1. the CT is resampled to ``base_spacing`` (``monai.transforms.Spacing``, bilinear; skipped when ``None``);
    2. ``base_inferer`` (a ``SlidingWindowInferer``) runs ``base_network`` and the softmax gives class
       probabilities, which are resampled back onto the CT's grid (bilinear, then used as is: interpolating
       probabilities rather than label ids keeps boundaries between organs sensible);
    3. :func:`refnet_input` builds RefNet's input (one-hot base labels or probabilities, plus the CT and its
       neighbouring slices for the image-aware RefNet), and ``refine_inferer`` (a ``SliceInferer`` over the last
       spatial axis) runs RefNet slice by slice.

    Args:
        base_network: the base segmentation model, e.g. MONAI ``SwinUNETR`` with ``num_classes`` outputs.
        base_inferer: how to run it on a whole volume, e.g. ``SlidingWindowInferer(roi_size=(96, 96, 96))``.
        refine_inferer: how to run RefNet on a volume, e.g. ``SliceInferer(spatial_dim=2, roi_size=(-1, -1))``.
        base_spacing: voxel spacing (mm) the base model was trained at, or ``None`` to run it on the CT's grid.
        base_input: ``"labels"`` or ``"probabilities"`` (see :func:`refnet_input`).
        use_image: give RefNet the CT as well (image-aware RefNet).
        num_neighbours: CT slices on each side of every slice when ``use_image``.
    """

    def __init__(
        self,
        base_network: nn.Module,
        base_inferer: Inferer,
        refine_inferer: Inferer,
        base_spacing: Sequence[float] | None = (1.5, 1.5, 2.0),
        base_input: str = "labels",
        use_image: bool = False,
        num_neighbours: int = 0,
    ) -> None:
        super().__init__()
        if base_input not in BASE_INPUTS:
            raise ValueError(f"base_input must be one of {BASE_INPUTS}, got {base_input!r}.")
        if num_neighbours < 0:
            raise ValueError(f"num_neighbours must be >= 0, got {num_neighbours}.")
        self.base_network = base_network
        self.base_inferer = base_inferer
        self.refine_inferer = refine_inferer
        self.base_spacing = None if base_spacing is None else tuple(float(s) for s in base_spacing)
        self.base_input = base_input
        self.use_image = bool(use_image)
        self.num_neighbours = int(num_neighbours)

    def base_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, H, W, D)`` CT (``MetaTensor`` with its affine) -> ``(C, H, W, D)`` base probabilities on its grid."""
        if self.base_spacing is None:
            logits = self.base_inferer(image[None], self.base_network)
            return torch.softmax(_plain(logits).float(), dim=1)[0]
        if not isinstance(image, MetaTensor):
            raise ValueError(
                "BaseThenRefineInferer: resampling to base_spacing needs MetaTensor inputs with an affine."
            )
        # a fresh MetaTensor, so that resampling here leaves no trace in the input's applied_operations (Invertd)
        ct = MetaTensor(_plain(image), affine=image.affine.clone())
        resampled = Spacing(pixdim=self.base_spacing, mode="bilinear")(ct)
        logits = self.base_inferer(resampled[None], self.base_network)
        probabilities = MetaTensor(torch.softmax(_plain(logits).float(), dim=1)[0], affine=resampled.affine)
        back = SpatialResample(mode="bilinear", padding_mode="border")(
            probabilities, dst_affine=ct.affine, spatial_size=ct.shape[1:]
        )
        return _plain(back)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """``(B, 1, H, W, D)`` CT batch and RefNet -> ``(B, num_classes, H, W, D)`` RefNet logits."""
        if inputs.dim() != 5 or inputs.shape[1] != 1:
            raise ValueError(
                f"BaseThenRefineInferer expects a (B, 1, H, W, D) CT batch, got shape {list(inputs.shape)}."
            )
        outputs = []
        for item in range(inputs.shape[0]):
            image = inputs[item]
            probabilities = self.base_probabilities(image)
            x = refnet_input(
                probabilities, _plain(image) if self.use_image else None, self.base_input, self.num_neighbours
            )
            outputs.append(_plain(self.refine_inferer(x[None], network, *args, **kwargs)))
        return convert_to_dst_type(torch.cat(outputs, dim=0), dst=inputs)[0]
