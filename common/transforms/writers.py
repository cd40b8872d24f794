"""NIfTI outputs written atomically: a reader (or a run stopped mid-write) never leaves half a label map behind.

:class:`AtomicNibabelWriter` is MONAI's ``NibabelWriter`` writing to a hidden temporary file in the output folder
(same file system) and renaming it onto the target, for
``SaveImaged(writer="common.transforms.writers.AtomicNibabelWriter")``. Everything else ``SaveImaged`` does (file
names, dtype, affine, resampling) is unchanged. The PNG counterpart is
:class:`common.transforms.overlay.AtomicPILWriter`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from monai.config import PathLike
from monai.data import NibabelWriter

from common.io import FILE_MODE

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` whose :meth:`write` goes through a temporary file and an atomic rename."""

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write as ``NibabelWriter.write`` does, to ``.<name>.<random><ext>`` next to ``filename``, then rename.

        The temporary name keeps the extension (nibabel picks compression by it) and starts with a dot, so globs
        such as ``*.nii.gz`` never see it; on any failure it is removed.
        """
        target = Path(filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        extension = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=extension, dir=target.parent)
        os.close(fd)
        try:
            super().write(tmp, verbose=verbose, **obj_kwargs)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
