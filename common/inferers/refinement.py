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

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Spacing, SpatialResample
from monai.utils import convert_to_dst_type

from common.progress import progress_bar
from common.transforms.refinement import RefNetInputd

__all__ = ["OUTPUTS", "BaseThenRefineInferer"]

#: What :class:`BaseThenRefineInferer` returns: RefNet's logits, or their argmax (the label map).
OUTPUTS = ("logits", "labels")


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _on_grid_of(volume: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether ``volume`` ``(C, *spatial)`` lies on ``image``'s grid: same shape, same affine where both have one."""
    if tuple(volume.shape[1:]) != tuple(image.shape[1:]):
        return False
    if not (isinstance(volume, MetaTensor) and isinstance(image, MetaTensor)):
        return True
    return bool(torch.allclose(volume.affine.to(torch.float64), image.affine.to(torch.float64), atol=1e-6))


def _label_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int32


class BaseThenRefineInferer(Inferer):
    """CT volume -> base model (sliding window, at its own voxel spacing) -> RefNet on every axial slice.

    ``__call__(inputs, network)`` takes the preprocessed CT batch ``(B, 1, H, W, D)`` (a ``MetaTensor`` carrying
    each item's affine, intensities scaled as the base model was trained) and RefNet as ``network``, and returns,
    with the inputs' meta data, RefNet's logits ``(B, num_classes, H, W, D)`` (``output="logits"``) or their argmax,
    the label map ``(B, 1, H, W, D)`` as ``uint8`` (``output="labels"``), both on the CT's grid. For every item:

    1. the CT is resampled to ``base_spacing`` (``monai.transforms.Spacing``, bilinear; skipped when ``None``);
    2. ``base_inferer`` (a ``SlidingWindowInferer``) runs ``base_network`` and the softmax gives class
       probabilities (:meth:`base_probabilities`), which stay on the base model's grid;
    3. slab by slab (``slab_size`` axial slices at a time) the probabilities are resampled onto the CT's grid
       (bilinear, then used as is: interpolating probabilities rather than label ids keeps boundaries between
       organs sensible), ``network_input`` (:class:`~common.transforms.refinement.RefNetInputd`) builds RefNet's
       input from the base label map (the probabilities' ``argmax``) or the probabilities, and the CT, as in
       training (:meth:`refnet_input`), and ``refine_inferer`` (a ``SliceInferer`` over the last spatial axis) runs
       RefNet on the slab's slices.

    Why slabs: RefNet works on each axial slice alone, so splitting the depth axis changes no value, while a
    whole-volume pass holds several copies of ``num_classes`` float32 channels at the CT's resolution (resampled
    probabilities, the one-hot input, the logits): 5.5 GB each for a 512 x 512 x 400 CT. With slabs and
    ``output="labels"`` the largest volumes held are the CT and the base probabilities on the base model's grid;
    ``output="logits"`` adds the logits of the whole volume.

    Args:
        base_network: the base segmentation model, e.g. MONAI ``SwinUNETR`` with ``num_classes`` outputs.
        base_inferer: how to run it on a whole volume, e.g. ``SlidingWindowInferer(roi_size=(96, 96, 96))``.
        refine_inferer: how to run RefNet on a volume, e.g. ``SliceInferer(spatial_dim=2, roi_size=(-1, -1))``.
        base_spacing: voxel spacing (mm) the base model was trained at, or ``None`` to run it on the CT's grid.
        network_input: RefNet's input transform with the variant's settings (the ``refnet_input`` of the bundle's
            configs); ``None``: ``RefNetInputd()``, the paper's RefNet (one-hot base labels of 13 classes only).
        output: ``"logits"`` or ``"labels"`` (what a postprocessing ``AsDiscreted(argmax=True)`` would make of
            the logits, taken slab by slab).
        slab_size: axial slices per slab; memory beyond the whole-volume tensors grows with it, speed hardly does
            (a multiple of the ``SliceInferer``'s ``sw_batch_size`` keeps its batches full).
        progress: show a bar over the slabs of each item, cleared when it is done (the base stage shows its own,
            e.g. :class:`common.fast_inference.FastInferer`'s); shown only where
            :func:`common.progress.progress_enabled` allows.
    """

    def __init__(
        self,
        base_network: nn.Module,
        base_inferer: Inferer,
        refine_inferer: Inferer,
        base_spacing: Sequence[float] | None = (1.5, 1.5, 2.0),
        network_input: RefNetInputd | None = None,
        output: str = "logits",
        slab_size: int = 16,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"BaseThenRefineInferer: output must be one of {OUTPUTS}, got {output!r}.")
        if int(slab_size) < 1:
            raise ValueError(f"BaseThenRefineInferer: slab_size must be >= 1, got {slab_size}.")
        self.base_network = base_network
        self.base_inferer = base_inferer
        self.refine_inferer = refine_inferer
        self.base_spacing = None if base_spacing is None else tuple(float(s) for s in base_spacing)
        self.network_input = RefNetInputd() if network_input is None else network_input
        self.output = output
        self.slab_size = int(slab_size)
        self.progress = bool(progress)

    def base_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, H, W, D)`` CT (``MetaTensor`` with its affine) -> ``(C, h, w, d)`` base probabilities on the base
        model's grid, a ``MetaTensor`` with that grid's affine (the CT's grid when ``base_spacing`` is ``None``)."""
        if self.base_spacing is None:
            logits = self.base_inferer(image[None], self.base_network)
            probabilities = torch.softmax(_plain(logits).float(), dim=1)[0]
            return MetaTensor(probabilities, affine=image.affine) if isinstance(image, MetaTensor) else probabilities
        if not isinstance(image, MetaTensor):
            raise ValueError(
                "BaseThenRefineInferer: resampling to base_spacing needs MetaTensor inputs with an affine."
            )
        # a fresh MetaTensor, so that resampling here leaves no trace in the input's applied_operations (Invertd)
        ct = MetaTensor(_plain(image), affine=image.affine.clone())
        resampled = Spacing(pixdim=self.base_spacing, mode="bilinear")(ct)
        logits = _plain(self.base_inferer(resampled[None], self.base_network))
        probabilities = torch.softmax(logits.float(), dim=1)[0]
        del logits
        return MetaTensor(probabilities, affine=resampled.affine)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """``(B, 1, H, W, D)`` CT batch and RefNet -> RefNet's logits ``(B, num_classes, H, W, D)`` or labels."""
        if inputs.dim() != 5 or inputs.shape[1] != 1:
            raise ValueError(
                f"BaseThenRefineInferer expects a (B, 1, H, W, D) CT batch, got shape {list(inputs.shape)}."
            )
        outputs = [self._refine(inputs[item], network, *args, **kwargs) for item in range(inputs.shape[0])]
        out = outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)
        return convert_to_dst_type(out, dst=inputs, dtype=out.dtype)[0]

    def _refine(self, image: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        probabilities = self._checked(self.base_probabilities(image))
        depth = image.shape[-1]
        # RefNet's input at a slice also holds num_neighbours CT slices on each side (image-aware RefNet)
        halo = self.network_input.num_neighbours if self.network_input.use_image else 0
        out = None
        starts = range(0, depth, self.slab_size)
        with progress_bar(starts, desc="RefNet slabs", unit="slab", enabled=self.progress) as slabs:
            for start in slabs:
                stop = min(start + self.slab_size, depth)
                low, high = max(start - halo, 0), min(stop + halo, depth)
                x = self._input(image, probabilities, low, high)[..., start - low : stop - low]
                result = _plain(self.refine_inferer(x[None], network, *args, **kwargs))[0]
                del x
                if self.output == "labels":
                    result = result.argmax(0, keepdim=True).to(_label_dtype(result.shape[0]))
                if out is None:
                    out = torch.empty((result.shape[0], *image.shape[1:]), dtype=result.dtype, device=result.device)
                out[..., start:stop] = result
        return out

    def refnet_input(self, image: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """``(1, H, W, D)`` CT -> RefNet's input for axial slices ``start`` to ``stop - 1`` (default: all): the
        base model's output through ``network_input``."""
        depth = image.shape[-1]
        stop = depth if stop is None else min(int(stop), depth)
        if not 0 <= start < stop:
            raise ValueError(f"BaseThenRefineInferer: no slices from {start} to {stop} in a CT of depth {depth}.")
        halo = self.network_input.num_neighbours if self.network_input.use_image else 0
        low, high = max(start - halo, 0), min(stop + halo, depth)
        probabilities = self._checked(self.base_probabilities(image))
        return self._input(image, probabilities, low, high)[..., start - low : stop - low]

    def _checked(self, probabilities: torch.Tensor) -> torch.Tensor:
        if probabilities.shape[0] != self.network_input.num_classes:
            raise ValueError(
                f"BaseThenRefineInferer: the base model gives {probabilities.shape[0]} classes, RefNet's input "
                f"expects {self.network_input.num_classes}."
            )
        return probabilities

    def _input(self, image: torch.Tensor, probabilities: torch.Tensor, low: int, high: int) -> torch.Tensor:
        """RefNet's input for slices ``low..high-1`` (the ones at either end see the slab's end as the CT's)."""
        slab = self._probabilities_on_ct_grid(probabilities, image, low, high)
        labels = slab.argmax(0, keepdim=True).to(slab.dtype)
        transform = self.network_input
        data = {
            transform.image_key: _plain(image)[..., low:high],
            transform.base_key: labels,
            transform.probabilities_key: slab,
        }
        return _plain(transform(data)[transform.output_key])

    @staticmethod
    def _probabilities_on_ct_grid(probabilities: torch.Tensor, image: torch.Tensor, low: int, high: int):
        """Slices ``low..high-1`` of the CT's grid, of the base probabilities resampled onto it (bilinear)."""
        if _on_grid_of(probabilities, image):
            return _plain(probabilities)[..., low:high]
        # the slab's grid: the CT's affine with its origin moved to slice `low`
        affine = image.affine.clone().to(torch.float64)
        affine[:3, 3] += affine[:3, 2] * low
        source = _covering_box(probabilities, affine, (*image.shape[1:3], high - low))
        slab = SpatialResample(mode="bilinear", padding_mode="border")(
            source, dst_affine=affine, spatial_size=(*image.shape[1:3], high - low)
        )
        return _plain(slab)


def _covering_box(volume: MetaTensor, dst_affine: torch.Tensor, dst_shape: Sequence[int]) -> MetaTensor:
    """The part of ``volume`` that resampling onto the grid ``(dst_affine, dst_shape)`` reads, as a ``MetaTensor``
    with its own affine: the box around the grid's corners mapped into ``volume``'s voxels, 2 voxels wider on
    each side (bilinear reads the next voxel) and clipped to ``volume``, so the sampled values do not change.

    SpatialResample computes in float64 and converts its whole input first; the box keeps that copy slab-sized.
    """
    src_affine = volume.affine.to(torch.float64)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, n - 1.0], dtype=torch.float64) for n in dst_shape])
    corners = torch.cat([corners, torch.ones(len(corners), 1, dtype=torch.float64)], dim=1)
    in_source = (torch.linalg.inv(src_affine) @ dst_affine @ corners.T)[:3]
    size = volume.shape[1:]
    start = [max(int(torch.floor(in_source[i].min())) - 2, 0) for i in range(3)]
    stop = [min(int(torch.ceil(in_source[i].max())) + 3, size[i]) for i in range(3)]
    if any(b <= a for a, b in zip(start, stop, strict=True)):  # the grid lies beyond the volume: border values
        start = [min(max(a, 0), n - 1) for a, n in zip(start, size, strict=True)]
        stop = [a + 1 for a in start]
    box = _plain(volume)[:, start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    shifted = src_affine.clone()
    shifted[:3, 3] += src_affine[:3, :3] @ torch.tensor(start, dtype=torch.float64)
    return MetaTensor(box, affine=shifted)
