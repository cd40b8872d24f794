"""Visible Korean (VK) body slices: colour table, colour-coded segmentations to bone/muscle label maps, the 8:2
split with a quality-check list, and the MONAI preprocessing of the ``fct_visible_korean`` bundle.

- :mod:`.reader`: the dataset folder (colour table, ``images/``, ``segmentations/``), 8-bit RGB PNG reading, the
  block-wise test/training/validation/quality-check split and the bundle's datalists (:func:`load_datalist`,
  :func:`image_datalist`).
- :mod:`.transforms`: the label convention {0 background, 1 bone, 2 muscle} (:data:`VK_LABELS`), the colour coding
  that turns segmentations into it (:class:`ColourCoding`) and the bundle's MONAI preprocessing
  (:func:`preprocessing_config`).
- :mod:`.preparation`: :func:`prepare` writes every label map and then ``datalist.json``.
- ``python -m common.data.visible_korean prepare ...`` (:mod:`.__main__`): the command line of :func:`prepare`.

Everything public is importable from here (``common.data.visible_korean.X``), which is how configs name it.
Importing this package loads neither MONAI nor the phantom generator.
"""

from .preparation import prepare
from .reader import (
    COLOUR_TABLE_COLUMNS,
    COLOUR_TABLE_NAME,
    DATALIST_NAME,
    GROUPS,
    ColourTableEntry,
    SlicePaths,
    VKDataError,
    VKFileNotFoundError,
    image_datalist,
    list_slices,
    load_datalist,
    read_colour_table,
    read_pair,
    read_rgb_png,
    split_slices,
)
from .transforms import (
    GROUP_LABELS,
    UNKNOWN_COLOUR_POLICIES,
    VK_LABELS,
    ColourCoding,
    UnknownColoursError,
    format_colour_counts,
    preprocessing_config,
    segmentation_to_labels,
    vk_preprocessing,
)

__all__ = [
    "VK_LABELS",
    "GROUPS",
    "GROUP_LABELS",
    "COLOUR_TABLE_NAME",
    "COLOUR_TABLE_COLUMNS",
    "DATALIST_NAME",
    "UNKNOWN_COLOUR_POLICIES",
    "VKDataError",
    "VKFileNotFoundError",
    "UnknownColoursError",
    "ColourTableEntry",
    "ColourCoding",
    "SlicePaths",
    "read_colour_table",
    "segmentation_to_labels",
    "format_colour_counts",
    "read_rgb_png",
    "read_pair",
    "list_slices",
    "split_slices",
    "prepare",
    "load_datalist",
    "image_datalist",
    "preprocessing_config",
    "vk_preprocessing",
]
