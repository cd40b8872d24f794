"""The two-stage inferer of bundle ``refnet_synapse``: a 3D base model, then RefNet slice by slice.

:class:`BaseThenRefineInferer` is a MONAI ``Inferer``, so a bundle's ``SupervisedEvaluator`` runs the whole
cascade with its ``network`` being RefNet (what ``network_def`` defines, what ``ckpt_export`` exports and what the
checkpoint ``models/model.pt`` holds) while the base model travels inside the inferer as a second network with its
own weights (``models/base_model.pt``). MONAI Label and MONAI Deploy, which read ``preprocessing``, ``inferer``,
``network`` and ``postprocessing`` from ``inference.json``, therefore get CT in and the refined label map out.
RefNet's input is built by :class:`common.transforms.refinement.RefNetInputd`, the transform that builds it in
training, so the cascade gives RefNet what it was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Spacing, SpatialResample
from monai.utils import convert_to_dst_type

from common.transforms.refinement import RefNetInputd

__all__ = ["BaseThenRefineInferer", "load_weights"]


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


class BaseThenRefineInferer(Inferer):
    """CT volume -> base model (sliding window, at its own voxel spacing) -> RefNet on every axial slice.

    ``__call__(inputs, network)`` takes the preprocessed CT batch ``(B, 1, H, W, D)`` (a ``MetaTensor`` carrying
    each item's affine, intensities scaled as the base model was trained) and RefNet as ``network``, and returns
    RefNet's logits ``(B, num_classes, H, W, D)`` on the CT's grid, with the inputs' meta data. For every item:

    1. the CT is resampled to ``base_spacing`` (``monai.transforms.Spacing``, bilinear; skipped when ``None``);
    2. ``base_inferer`` (a ``SlidingWindowInferer``) runs ``base_network`` and the softmax gives class
       probabilities, which are resampled back onto the CT's grid (bilinear, then used as is: interpolating
       probabilities rather than label ids keeps boundaries between organs sensible);
    3. ``network_input`` (:class:`~common.transforms.refinement.RefNetInputd`) builds RefNet's input from the base
       label map (the probabilities' ``argmax``) or the probabilities, and the CT, as in training; and
       ``refine_inferer`` (a ``SliceInferer`` over the last spatial axis) runs RefNet slice by slice.

    Args:
        base_network: the base segmentation model, e.g. MONAI ``SwinUNETR`` with ``num_classes`` outputs.
        base_inferer: how to run it on a whole volume, e.g. ``SlidingWindowInferer(roi_size=(96, 96, 96))``.
        refine_inferer: how to run RefNet on a volume, e.g. ``SliceInferer(spatial_dim=2, roi_size=(-1, -1))``.
        base_spacing: voxel spacing (mm) the base model was trained at, or ``None`` to run it on the CT's grid.
        network_input: RefNet's input transform with the variant's settings (the ``refnet_input`` of the bundle's
            configs); ``None``: ``RefNetInputd()``, the paper's RefNet (one-hot base labels of 13 classes only).
    """

    def __init__(
        self,
        base_network: nn.Module,
        base_inferer: Inferer,
        refine_inferer: Inferer,
        base_spacing: Sequence[float] | None = (1.5, 1.5, 2.0),
        network_input: RefNetInputd | None = None,
    ) -> None:
        super().__init__()
        self.base_network = base_network
        self.base_inferer = base_inferer
        self.refine_inferer = refine_inferer
        self.base_spacing = None if base_spacing is None else tuple(float(s) for s in base_spacing)
        self.network_input = RefNetInputd() if network_input is None else network_input

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
            x = self.refnet_input(inputs[item])
            outputs.append(_plain(self.refine_inferer(x[None], network, *args, **kwargs)))
        return convert_to_dst_type(torch.cat(outputs, dim=0), dst=inputs)[0]

    def refnet_input(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, H, W, D)`` CT -> RefNet's input volume: the base model's output through ``network_input``."""
        probabilities = self.base_probabilities(image)
        transform = self.network_input
        if probabilities.shape[0] != transform.num_classes:
            raise ValueError(
                f"BaseThenRefineInferer: the base model gives {probabilities.shape[0]} classes, RefNet's input "
                f"expects {transform.num_classes}."
            )
        labels = probabilities.argmax(0, keepdim=True).to(probabilities.dtype)
        data = {
            transform.image_key: _plain(image),
            transform.base_key: labels,
            transform.probabilities_key: probabilities,
        }
        return _plain(transform(data)[transform.output_key])
