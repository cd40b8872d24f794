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

from .reader import (
    BRATS_2021,
    BRATS_2023,
    BRATS_CONVENTIONS,
    DEFAULT_MODALITIES,
    DEFAULT_TEST_FRACTION,
    BratsConvention,
    BratsDataError,
    BratsFileNotFoundError,
    brats_datalist,
    case_name_formatter,
    convention_for_et_label,
    detect_convention,
    inference_convention,
    load_fold,
    make_folds,
    read_split,
    split_convention,
    write_split_file,
)
from .transforms import (
    LABEL_CONVENTIONS,
    BratsLabelError,
    CheckBratsLabels,
    CheckBratsLabelsd,
    ConvertBratsLabels,
    ConvertBratsLabelsd,
    RegionsToBratsLabels,
    RegionsToBratsLabelsd,
    check_brats_labels,
    convert_brats_labels,
    regions_to_brats_labels,
)

__all__ = [
    "BRATS_2021",
    "BRATS_2023",
    "BRATS_CONVENTIONS",
    "DEFAULT_MODALITIES",
    "DEFAULT_TEST_FRACTION",
    "LABEL_CONVENTIONS",
    "BratsConvention",
    "BratsDataError",
    "BratsFileNotFoundError",
    "BratsLabelError",
    "CheckBratsLabels",
    "CheckBratsLabelsd",
    "ConvertBratsLabels",
    "ConvertBratsLabelsd",
    "RegionsToBratsLabels",
    "RegionsToBratsLabelsd",
    "brats_datalist",
    "case_name_formatter",
    "check_brats_labels",
    "convert_brats_labels",
    "convention_for_et_label",
    "detect_convention",
    "inference_convention",
    "load_fold",
    "make_folds",
    "read_split",
    "regions_to_brats_labels",
    "split_convention",
    "write_split_file",
]
