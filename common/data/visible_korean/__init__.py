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

from . import preparation, reader, transforms
from .preparation import *  # noqa: F403
from .reader import *  # noqa: F403
from .transforms import *  # noqa: F403

# what the modules export, and nothing else: one list of public names per module
__all__ = [*preparation.__all__, *reader.__all__, *transforms.__all__]
