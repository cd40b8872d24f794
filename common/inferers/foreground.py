"""Compute only where the brain is: the foreground that the BraTS bundles crop to before their sliding window.

BraTS images are skull-stripped: every voxel outside the brain is exactly 0. A sliding window over the whole
240 x 240 x 155 grid (18 windows of 128^3 at overlap 0.5) spends most of its windows on that background. With
``crop_foreground`` (opt-in, in their ``inference.json`` and ``evaluate.json``) the BraTS bundles crop each case to
the bounding box of its non-zero voxels with MONAI's ``CropForegroundd`` (8 windows for a typical brain of about
140 x 170 x 140 voxels, 4 for the shallower phantoms) and paste the label map back onto the full grid with
``Invertd``, which fills the rest with 0, the background label. It is off by default: the windows then start at the
brain's box, not the grid's corner, so each voxel is seen with other context, and on briefly trained phantom
weights the label maps agreed with the uncropped ones far below Dice 0.995 (``bench/foreground_crop.py``).

The crop is a preprocessing transform rather than part of the inferer so that everything downstream (fold ensembles
and mirroring of :class:`common.inferers.EnsembleInferer`, the sliding window's progress bar) sees the smaller
volume, and so that
the same two transforms serve ``monai.bundle run``, MONAI Label (which keeps ``Invertd`` and then restores onto the
image grid) and MONAI Deploy (whose bundle operator hands the preprocessed inputs to the postprocessing for
inversion).

:func:`nonzero_foreground` is the ``select_fn`` of that crop:

* ``!= 0`` rather than MONAI's default ``> 0``: skull-stripped background is exactly zero, while brain voxels may be
  negative (intensities after ``NormalizeIntensityd(nonzero=True)``, which leaves zeros at zero, or raw data that
  was rescaled); ``> 0`` would cut them off.
* an image without any non-zero voxel is kept whole instead of being cropped to an empty volume that no network can
  take: the crop is then a no-op and the label map is whatever the network predicts on the full grid.
"""

from __future__ import annotations

import torch

__all__ = ["foreground_box", "nonzero_foreground"]


def nonzero_foreground(image: torch.Tensor) -> torch.Tensor:
    """The voxels that are not exactly 0 (in any channel, as ``CropForegroundd`` combines them), or every voxel when
    none is: a ``select_fn`` for ``CropForegroundd`` that never crops to nothing."""
    foreground = image != 0
    return foreground if bool(foreground.any()) else torch.ones_like(foreground)


def foreground_box(image: torch.Tensor, margin: int = 0) -> tuple[slice, ...]:
    """Spatial slices of the box ``CropForegroundd(select_fn=nonzero_foreground, margin=margin,
    allow_smaller=True)`` crops ``image`` ``(C, *spatial)`` to: for counting windows without running the crop."""
    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(image, select_fn=nonzero_foreground, margin=margin, allow_smaller=True)
    return tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))
