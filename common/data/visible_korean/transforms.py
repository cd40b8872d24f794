"""Visible Korean label convention and preprocessing: colour-coded segmentations to bone/muscle label maps, and the
MONAI preprocessing of the ``fct_visible_korean`` bundle.

Label maps (:class:`ColourCoding`, :func:`segmentation_to_labels`): :data:`VK_LABELS` = {0 background, 1 bone,
2 muscle}. A pixel whose colour is a ``bone`` structure's becomes 1, a ``muscle`` structure's 2, an ``other``
structure's or black 0. A colour that is in no row of the table is an error by default (a wrong or outdated table
would otherwise silently turn structures into background); ``unknown="background"`` maps such colours to 0 and logs
a warning. Either way the message names the file and lists the unknown colours with their pixel counts, most
frequent first. The look-up is one gather from a 2**24-entry table indexed by the packed RGB value, so a
2048 x 1216 slice takes milliseconds.

MONAI preprocessing of the bundle (:func:`preprocessing_config`; the bundle configs list these
transforms)::

    [
        {"_target_": "LoadImaged", "keys": ["image", "label"]},
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0,
         "clip": true},
        {"_target_": "Resized", "keys": ["image", "label"], "spatial_size": 256, "size_mode": "longest",
         "mode": ["area", "nearest-exact"]},
        {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": [256, 256]}
    ]

- The configs add the input checks of :mod:`common.transforms.validation` (``ValidateImageFilesd`` before
  ``LoadImaged``, ``ValidateImaged`` after ``EnsureChannelFirstd``), which pass good data through unchanged and
  stop on a truncated, non-PNG, non-RGB or blank file with its name.
- ``LoadImaged`` reads PNGs with MONAI's ``PILReader``, which swaps the two axes (``reverse_indexing``): an H x W
  photograph arrives as ``(W, H, 3)`` and its label as ``(W, H)``. Both are swapped alike, so they stay aligned, and
  ``SaveImaged(output_ext=".png")`` swaps back, so predictions are written H x W like the input.
- The photograph becomes ``(3, W, H)``, the label ``(1, W, H)``; intensities are divided by 255 (a fixed range, not
  per-image min/max, so a pale slice stays pale).
- The longest side is resized to 256 keeping the aspect ratio (2048 x 1216 becomes 256 x 152). The photograph uses
  ``area`` averaging: a box filter, so shrinking 8-fold does not alias (``bilinear`` with ``anti_aliasing`` would
  too, but its large Gaussian blur is far slower on a CPU). The label uses ``nearest-exact``, so its values stay in
  {0, 1, 2}; plain ``nearest`` samples the first source pixel of each output pixel instead of its centre and
  shifts the label by half an output pixel (3.5 source pixels at 8-fold) against the area-averaged photograph.
- The short side is padded symmetrically with zeros to 256. Together this is pad-to-square then resize, without
  distorting the 1.68 : 1 slices (a plain resize to 256 x 256 would squash them).
- Inference: ``Invertd(keys="pred", transform="@preprocessing", orig_keys="image", nearest_interp=False)`` on the
  ``(3, 256, 256)`` softmax output undoes the padding and the resize, then ``AsDiscreted(keys="pred",
  argmax=True)`` gives the label map at the photograph's own size (``nearest_interp=True`` on the argmax works
  too); ``SaveImaged(keys="pred", output_ext=".png", output_dtype=numpy.uint8, scale=None, resample=False)``
  writes it as an H x W PNG.

MONAI is imported only when :func:`vk_preprocessing` is called, so reading and preparing a dataset work without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .reader import GROUPS, RGB, VKDataError, read_colour_table

__all__ = [
    "VK_LABELS",
    "GROUP_LABELS",
    "UNKNOWN_COLOUR_POLICIES",
    "UnknownColoursError",
    "ColourCoding",
    "segmentation_to_labels",
    "format_colour_counts",
    "preprocessing_config",
    "vk_preprocessing",
]

logger = logging.getLogger(__name__)

VK_LABELS: dict[str, int] = {"background": 0, "bone": 1, "muscle": 2}
"""Label values of the prepared label maps and of the network's classes."""

GROUP_LABELS: dict[str, int] = {"bone": VK_LABELS["bone"], "muscle": VK_LABELS["muscle"], "other": 0}
"""Label value of every structure of a group."""

UNKNOWN_COLOUR_POLICIES: tuple[str, ...] = ("error", "background")

DEFAULT_SIZE = 256

ColourCount = tuple[RGB, int]

_UNKNOWN = 255  # look-up value of colours in no row of the table; never a label value
_SHOWN_COLOURS = 10  # unknown colours listed per message


class UnknownColoursError(VKDataError):
    """A segmentation holds colours that are in no row of the colour table.

    Attributes:
        name: the segmentation's file name (or what the caller called the array).
        colours: ``[((r, g, b), pixel count), ...]``, most frequent first.
    """

    def __init__(self, name: str, colours: Sequence[ColourCount]):
        self.name = name
        self.colours = list(colours)
        super().__init__(
            f"Segmentation '{name}' holds {len(self.colours)} colour(s) that are in no row of the colour table: "
            f"{format_colour_counts(self.colours)}. Expected only colours of the table or (0, 0, 0) for unlabelled; "
            "add the structures to the table, or pass unknown='background' (--unknown-colours background) to "
            "treat them as background."
        )


# ---------------------------------------------------------------------------------------------------------------
# colour-coded segmentation -> label map
# ---------------------------------------------------------------------------------------------------------------


def _packed(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> ``(...)`` int32 ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpacked(code: int) -> RGB:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def format_colour_counts(colours: Sequence[ColourCount], limit: int = _SHOWN_COLOURS) -> str:
    """``"(12, 34, 56) x 120 px, (1, 2, 3) x 5 px and 4 more colour(s) (9 px)"``: the first ``limit`` colours."""
    shown = ", ".join(f"{tuple(rgb)} x {count} px" for rgb, count in colours[:limit])
    rest = colours[limit:]
    if rest:
        shown += f" and {len(rest)} more colour(s) ({sum(c for _, c in rest)} px)"
    return shown


def _check_rgb_array(segmentation: Any, name: str) -> np.ndarray:
    array = np.asarray(segmentation)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise VKDataError(
            f"Segmentation '{name}' is an array of shape {array.shape} and dtype {array.dtype}; expected an RGB "
            "image of shape (H, W, 3) and dtype uint8."
        )
    return array


class ColourCoding:
    """Converts colour-coded segmentations to label maps {0 background, 1 bone, 2 muscle} with one colour table.

    Build it once and apply it to many slices: it holds a 16 MiB look-up table indexed by the packed RGB value.

    Args:
        table: structure -> ``(group, (r, g, b))``, as returned by :func:`read_colour_table`.
        source: what to call the table in messages (e.g. its file name).

    Raises:
        VKDataError: a group is not one of :data:`GROUPS`, a colour is (0, 0, 0) or outside 0-255, or one colour
            belongs to two structures.
    """

    def __init__(self, table: Mapping[str, tuple[str, Sequence[int]]], source: str = "colour table") -> None:
        self._lut = np.full(1 << 24, _UNKNOWN, np.uint8)
        self._lut[0] = 0
        owner: dict[RGB, str] = {}
        for name, (group, colour) in table.items():
            rgb = tuple(int(c) for c in colour)
            if group not in GROUPS:
                raise VKDataError(f"{source}: structure '{name}' has bad group '{group}'; expected one of {GROUPS}.")
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb) or rgb == (0, 0, 0):
                raise VKDataError(
                    f"{source}: structure '{name}' has colour {rgb}; expected 3 integers in 0-255, not (0, 0, 0) "
                    "(reserved for unlabelled pixels)."
                )
            if rgb in owner:
                raise VKDataError(f"{source}: structures '{owner[rgb]}' and '{name}' share the colour {rgb}.")
            owner[rgb] = name
            self._lut[(rgb[0] << 16) | (rgb[1] << 8) | rgb[2]] = GROUP_LABELS[group]

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ColourCoding:
        """Read ``path`` with :func:`read_colour_table` and build the coding."""
        return cls(read_colour_table(path), source=f"Colour table '{path}'")

    def decode(self, segmentation: np.ndarray, name: str = "<array>") -> tuple[np.ndarray, list[ColourCount]]:
        """Label map of ``segmentation`` with unknown colours set to 0, and the unknown colours.

        Args:
            segmentation: ``(H, W, 3)`` uint8 colour-coded segmentation.
            name: what to call the array in messages.

        Returns:
            ``(labels, unknown)``: ``labels`` is ``(H, W)`` uint8 with values in {0, 1, 2}; ``unknown`` lists
            ``((r, g, b), pixel count)`` of the colours in no row of the table, most frequent first (empty if none).
        """
        codes = _packed(_check_rgb_array(segmentation, name))
        labels = self._lut[codes]
        is_unknown = labels == _UNKNOWN
        if not is_unknown.any():
            return labels, []
        values, counts = np.unique(codes[is_unknown], return_counts=True)
        order = np.lexsort((values, -counts))  # most frequent first, ties by colour for a stable message
        unknown = [(_unpacked(int(v)), int(c)) for v, c in zip(values[order], counts[order], strict=True)]
        labels[is_unknown] = 0
        return labels, unknown

    def __call__(self, segmentation: np.ndarray, name: str = "<array>", unknown: str = "error") -> np.ndarray:
        """``(H, W)`` uint8 label map of an ``(H, W, 3)`` uint8 segmentation.

        Args:
            segmentation: colour-coded segmentation.
            name: what to call it in messages (the file name).
            unknown: ``"error"`` raises :class:`UnknownColoursError` when a colour is in no row of the table;
                ``"background"`` maps such colours to 0 and logs a warning listing them.
        """
        _check_policy(unknown)
        labels, colours = self.decode(segmentation, name)
        if colours:
            if unknown == "error":
                raise UnknownColoursError(name, colours)
            logger.warning(
                "Segmentation '%s': %d colour(s) in no row of the colour table set to background: %s",
                name,
                len(colours),
                format_colour_counts(colours),
            )
        return labels


def _check_policy(unknown: str) -> None:
    if unknown not in UNKNOWN_COLOUR_POLICIES:
        raise VKDataError(f"unknown must be one of {UNKNOWN_COLOUR_POLICIES}, got {unknown!r}.")


def segmentation_to_labels(
    segmentation: np.ndarray,
    table: Mapping[str, tuple[str, Sequence[int]]],
    unknown: str = "error",
    name: str = "<array>",
) -> np.ndarray:
    """``(H, W)`` uint8 label map {0 background, 1 bone, 2 muscle} of an ``(H, W, 3)`` uint8 segmentation.

    A one-off convenience around :class:`ColourCoding`; build a :class:`ColourCoding` once to convert many slices.
    """
    return ColourCoding(table)(segmentation, name=name, unknown=unknown)


# ---------------------------------------------------------------------------------------------------------------
# MONAI preprocessing
# ---------------------------------------------------------------------------------------------------------------


def preprocessing_config(
    image_key: str = "image", label_key: str | None = "label", size: int = DEFAULT_SIZE
) -> list[dict[str, Any]]:
    """The bundle's preprocessing transforms in MONAI bundle config form (module docstring).

    Args:
        image_key: key of the RGB photograph.
        label_key: key of the label map; ``None`` for inference.
        size: side of the square network input.
    """
    keys: str | list[str] = [image_key, label_key] if label_key is not None else image_key
    mode: str | list[str] = ["area", "nearest-exact"] if label_key is not None else "area"
    return [
        {"_target_": "LoadImaged", "keys": keys},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": image_key,
            "a_min": 0,
            "a_max": 255,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"_target_": "Resized", "keys": keys, "spatial_size": size, "size_mode": "longest", "mode": mode},
        {"_target_": "SpatialPadd", "keys": keys, "spatial_size": [size, size]},
    ]


def vk_preprocessing(image_key: str = "image", label_key: str | None = "label", size: int = DEFAULT_SIZE) -> Any:
    """:func:`preprocessing_config` instantiated as a ``monai.transforms.Compose``, for scripts and tests."""
    from monai.bundle import ConfigParser  # MONAI is only needed here; the reader and generator work without it

    config = {"preprocessing": {"_target_": "Compose", "transforms": preprocessing_config(image_key, label_key, size)}}
    return ConfigParser(config).get_parsed_content("preprocessing")
