"""BraTS on-disk layouts: naming conventions, datalists, k-fold split files and label conventions.

- :mod:`.reader`: the two file-naming conventions (``brats2021``, ET=4; ``brats2023``, ET=3) and their detection,
  datalists, split files (:func:`write_split_file`, :func:`read_split`) and which label convention a training run
  (:func:`split_convention`, the one its split file records) or an inference run (:func:`inference_convention`)
  uses; nothing in it needs MONAI.
- :mod:`.transforms`: MONAI transforms of the label conventions (:class:`ConvertBratsLabelsd`,
  :class:`CheckBratsLabelsd`, :class:`RegionsToBratsLabelsd`).
- ``python -m common.data.brats make-split ...`` (:mod:`.__main__`): the command line that writes split files.

Everything public is importable from here (``common.data.brats.X``), which is how configs name it.
"""

from . import reader, transforms
from .reader import *  # noqa: F403
from .transforms import *  # noqa: F403

# what the modules export, and nothing else: one list of public names per module
__all__ = [*reader.__all__, *transforms.__all__]
