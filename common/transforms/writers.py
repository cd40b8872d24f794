"""Outputs written atomically, and the outputs of one case written together (:mod:`common.outputs`).

- :class:`AtomicNibabelWriter` is MONAI's ``NibabelWriter`` writing to a hidden temporary file in the output folder
  (same file system) that is then renamed onto the target, for
  ``SaveImaged(writer="common.transforms.writers.AtomicNibabelWriter")``. Everything else ``SaveImaged`` does (file
  names, dtype, affine, resampling) is unchanged. The PNG counterpart is
  :class:`common.transforms.overlay.AtomicPILWriter`.
- :class:`AllOrNothingCompose` is the ``Compose`` of an inference config's ``postprocessing``: every file its
  transforms write through these writers (a label map, an overlay, class probabilities) appears when the whole
  postprocessing of the case has run, or, if any step fails, none does. A failed write ends the run with
  ``error: <folder>: writing <file> failed: <cause>. No output of case <name> was kept.`` although ``SaveImaged``
  reports a failed writer only as "cannot find a suitable writer". Whoever unpacks ``.transforms`` (MONAI Label)
  gets plain transforms whose writers rename at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.config import PathLike
from monai.data import NibabelWriter
from monai.transforms import Compose

from common.outputs import outputs_of_one_case, write_output_file

__all__ = ["AllOrNothingCompose", "AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` whose :meth:`write` goes through a temporary file and an atomic rename."""

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write as ``NibabelWriter.write`` does, to ``.<name>.<random><ext>`` next to ``filename``, then rename.

        The temporary name keeps the extension (nibabel picks compression by it) and starts with a dot, so globs
        such as ``*.nii.gz`` never see it; on any failure it is removed. Inside :class:`AllOrNothingCompose` the
        rename waits for the end of the case.

        Raises:
            common.outputs.OutputFolderError: the file system refused the write.
        """
        write_output_file(filename, lambda tmp: NibabelWriter.write(self, str(tmp), verbose=verbose, **obj_kwargs))


def _case_name(data: Any) -> str:
    """The input file of a case, for messages: ``filename_or_obj`` of its first image that has one."""
    if isinstance(data, Mapping):
        for value in data.values():
            meta = getattr(value, "meta", None)
            name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
            if isinstance(name, (str, os.PathLike)) and str(name):
                return Path(name).name
    return ""


class AllOrNothingCompose(Compose):
    """``Compose`` whose written files appear together once every transform has run, or not at all (module doc).

    Takes the arguments of ``monai.transforms.Compose``. Only writers that publish through :mod:`common.outputs`
    (:class:`AtomicNibabelWriter`, :class:`common.transforms.overlay.AtomicPILWriter`,
    :class:`common.transforms.overlay.SaveOverlayd`) take part; other writers write at once.
    """

    def __call__(self, input_, start=0, end=None, threading=False, lazy: bool | None = None):  # noqa: D102
        with outputs_of_one_case(_case_name(input_)):
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
