"""Input checks that stop a bundle on bad data with one message naming the file, what was found and what was expected.

Hospitals feed the bundles whatever their scanners and PACS exports produce. Without these checks a truncated
file, a 2D slice or a NaN voxel surfaces as an error deep inside nibabel, MONAI or the network (or not at all:
NaN losses, all-background predictions). Two dictionary transforms bracket ``LoadImaged`` in every bundle's
preprocessing:

- :class:`ValidateImageFilesd`, before ``LoadImaged``, reads only file headers (and, to catch truncation, the last
  bytes of each file): the file exists and is a readable NIfTI (``.nii``, ``.nii.gz``) or PNG; it is complete; it
  has the spatial dimensions and channel count the bundle expects; and the files of one case (the modalities that
  ``LoadImaged`` stacks, the label map, the base segmentation) share one voxel grid (shape and affine).
- :class:`ValidateImaged`, after ``LoadImaged``, looks at the values: the image is not empty, has no NaN or Inf
  voxel, and no channel is constant (a blank modality); label maps may be constant (all background) but not
  non-finite. Label *values* are checked by the dataset's own transforms
  (:class:`common.data.brats.CheckBratsLabelsd`, :class:`common.data.btcv.BTCVToSynapse12d`) or, for a dataset
  whose convention is a plain set of values (the prepared Visible Korean label maps, {0, 1, 2}), by
  ``ValidateImaged(label_values=...)``, before a value outside the classes reaches the loss as an index
  (``index 7 is out of bounds``, naming no file).

Both raise :class:`InputValidationError` (a :class:`common.errors.BadInputError`), which makes a failed
``python -m monai.bundle run`` end its stderr with ``error: <message>`` (see :mod:`common.errors`). A case that
fails is stopped before anything of it is written; outputs of earlier cases are complete files.

Geometry tolerance: the files stacked into one key must have affines equal within ``numpy.allclose``'s defaults,
the same test ``LoadImaged`` applies when it stacks them; files of different keys (image and label) within
:data:`GRID_ATOL` mm, which allows for rounding by the software that wrote the label map.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from common.errors import BadInputError

__all__ = [
    "GRID_ATOL",
    "ImageFileInfo",
    "InputValidationError",
    "ValidateImageFilesd",
    "ValidateImaged",
    "inspect_image_file",
]

GRID_ATOL = 1e-3
"""Largest difference (mm) between affine entries of an image and its label map that still counts as one grid."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with
_PNG_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}


class InputValidationError(BadInputError):
    """An input file or image fails a check of :mod:`common.transforms.validation`."""


@dataclass(frozen=True)
class ImageFileInfo:
    """What a file's header says about the image in it.

    Attributes:
        path: the file.
        shape: the array shape as stored (NIfTI: x, y, z[, channels]; PNG: width, height, as ``PILReader`` gives it).
        spatial_shape: the spatial part of ``shape``.
        channels: the number of channels ``LoadImaged(ensure_channel_first=True)`` will give it.
        affine: the 4 x 4 voxel-to-world matrix (NIfTI), ``None`` for PNG.
    """

    path: Path
    shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    channels: int
    affine: np.ndarray | None


def _nifti_expectation() -> str:
    return "expected a NIfTI image (.nii, or gzip-compressed .nii.gz)"


def _gzip_stream_length(path: Path) -> int:
    """Uncompressed length of a gzip file, read to its end; raises on a truncated or corrupt stream."""
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            total += len(chunk)
    return total


def _check_nifti_complete(path: Path, image: Any) -> None:
    header = image.header
    # where the voxels start in the file: the array proxy keeps it; the image's header copy reads 0 after loading
    offset = int(getattr(image.dataobj, "offset", 0)) or int(header.get_data_offset())
    data_end = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(header.get_data_dtype().itemsize)
    if path.name.endswith(".gz"):
        # the gzip trailer stores the uncompressed length mod 2**32: a cheap test that only fails on a truncated
        # stream (or a multi-member one, e.g. from bgzip), which the full read then settles
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (stored,) = struct.unpack("<I", f.read(4))
        if stored == data_end % 2**32:
            return
        try:
            length = _gzip_stream_length(path)
        except (EOFError, OSError, zlib.error) as e:
            raise InputValidationError(
                f"'{path}' is truncated or corrupt ({e}); expected a complete gzip-compressed NIfTI file of "
                f"{data_end} bytes (header + {header.get_data_shape()} voxels of {header.get_data_dtype()}). "
                "Was the copy or export interrupted?"
            ) from e
    else:
        length = path.stat().st_size
    if length < data_end:
        raise InputValidationError(
            f"'{path}' is truncated: it holds {length} bytes of NIfTI data; expected {data_end} (header + "
            f"{header.get_data_shape()} voxels of {header.get_data_dtype()}). Was the copy or export interrupted?"
        )


def _inspect_nifti(path: Path, spatial_dims: int) -> ImageFileInfo:
    import nibabel as nib  # a required package of every NIfTI bundle; imported here so PNG-only use needs none

    with open(path, "rb") as f:
        head = f.read(4)
    if path.name.lower().endswith(".gz") and head[:2] != _GZIP_MAGIC:
        raise InputValidationError(
            f"'{path}' is not gzip-compressed (it starts with {head!r}); {_nifti_expectation()}. Is it a DICOM, "
            "an uncompressed .nii or another format renamed to .nii.gz?"
        )
    try:
        image = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error, ValueError, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = reason.replace(f"'{path}'", "the file").replace(str(path), "the file")
        raise InputValidationError(f"'{path}' cannot be read as NIfTI ({reason}); {_nifti_expectation()}.") from e
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputValidationError(f"'{path}' holds a {type(image).__name__}; {_nifti_expectation()}.")
    _check_nifti_complete(path, image)
    shape = tuple(int(s) for s in image.shape)
    spatial = shape[:spatial_dims]
    channels = int(np.prod(shape[spatial_dims:], dtype=np.int64)) if len(shape) > spatial_dims else 1
    return ImageFileInfo(path, shape, spatial, channels, np.asarray(image.affine, dtype=np.float64))


def _inspect_png(path: Path) -> ImageFileInfo:
    from PIL import Image

    with open(path, "rb") as f:
        head = f.read(len(_PNG_SIGNATURE))
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - len(_PNG_END)))
        tail = f.read()
    if head != _PNG_SIGNATURE:
        raise InputValidationError(f"'{path}' is not a PNG file (it starts with {head[:8]!r}); expected a PNG image.")
    if tail != _PNG_END:
        raise InputValidationError(
            f"'{path}' is truncated: it does not end with the PNG end chunk (IEND); expected a complete PNG image. "
            "Was the copy or export interrupted?"
        )
    try:
        with Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError for corrupt headers
        raise InputValidationError(f"'{path}' cannot be read as PNG ({e}); expected a PNG image.") from e
    return ImageFileInfo(path, (width, height), (width, height), _PNG_CHANNELS.get(mode, 1), None)


def inspect_image_file(path: str | os.PathLike, spatial_dims: int = 3) -> ImageFileInfo:
    """Read the header of an image file and check that the file is complete; no voxel data are decoded.

    Args:
        path: a ``.nii``, ``.nii.gz`` or ``.png`` file.
        spatial_dims: spatial dimensions of the bundle's images (3 for volumes, 2 for PNG slices); NIfTI
            dimensions after these count as channels.

    Raises:
        InputValidationError: the file does not exist, has another extension, cannot be read in its format
            (e.g. a DICOM or text file named ``.nii.gz``), or is shorter than its header says.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise InputValidationError(f"'{path}' {state}; expected an image file (.nii.gz, .nii or .png).")
    name = path.name.lower()
    if name.endswith((*_NIFTI_SUFFIXES, ".png")) and path.stat().st_size == 0:
        raise InputValidationError(f"'{path}' is empty (0 bytes); expected an image file (.nii.gz, .nii or .png).")
    if name.endswith(_NIFTI_SUFFIXES):
        return _inspect_nifti(path, spatial_dims)
    if name.endswith(".png"):
        return _inspect_png(path)
    raise InputValidationError(f"'{path}' has an unsupported extension; expected .nii.gz, .nii or .png.")


def _per_key(value: Any, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return {k: value for k in keys}


def _grid_text(info: ImageFileInfo, other: ImageFileInfo) -> str:
    """The part of ``info``'s grid that differs from ``other``'s: its shape, or else its affine."""
    if info.spatial_shape != other.spatial_shape or info.affine is None:
        return f"shape {info.spatial_shape}"
    rows = np.array2string(info.affine[:3], precision=3, separator=", ", suppress_small=True)
    return f"affine {' '.join(rows.split())}"


def _same_grid(a: ImageFileInfo, b: ImageFileInfo, atol: float | None) -> bool:
    if a.spatial_shape != b.spatial_shape:
        return False
    if a.affine is None or b.affine is None:
        return True
    return bool(np.allclose(a.affine, b.affine) if atol is None else np.allclose(a.affine, b.affine, atol=atol))


class ValidateImageFilesd(MapTransform):
    """Check the image files a data item lists, before ``LoadImaged`` reads them (module docstring).

    The item's values for ``keys`` are file paths, or lists of paths that ``LoadImaged`` stacks into channels
    (one file per BraTS modality). The item passes through unchanged, plus ``files_of_<key>``: the list of paths, so
    that :class:`ValidateImaged` can name the file of a bad channel after the files are stacked. (Not
    ``<key>_files``: ``Spacingd`` and others take every ``<key>_*`` entry for a meta dict.)

    Args:
        keys: keys of the file paths.
        spatial_dims: 3 for volumes (a NIfTI with fewer than 3 dimensions, or a single slice, is a 2D image and
            rejected), 2 for PNG slices.
        channels: channel count each key must give after stacking: one number for all keys, a mapping from key to
            number (keys not in it are not checked), or ``None`` for no check.
        same_grid: all files of the item must share one voxel grid (shape, and affine within :data:`GRID_ATOL`).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int = 3,
        channels: int | Mapping[Hashable, int] | None = None,
        same_grid: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.channels = _per_key(channels, self.keys)
        self.same_grid = same_grid

    def _check_spatial(self, info: ImageFileInfo) -> None:
        if self.spatial_dims == 3 and (len(info.shape) < 3 or min(info.shape[:3]) == 1):
            raise InputValidationError(
                f"'{info.path}' is a 2D image (shape {info.shape}); this bundle expects a 3D volume "
                "(x, y, z, each more than one voxel). Was a single slice or a projection exported?"
            )
        if self.spatial_dims == 2 and info.affine is not None and len(info.shape) >= 3 and info.shape[2] > 1:
            raise InputValidationError(
                f"'{info.path}' is a 3D volume (shape {info.shape}); this bundle expects 2D slice images (PNG)."
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference: ImageFileInfo | None = None
        for key in self.key_iterator(d):
            if isinstance(d[key], (np.ndarray, torch.Tensor)):
                continue  # already loaded (MONAI Deploy hands images over in memory); ValidateImaged checks content
            paths = [str(p) for p in ensure_tuple(d[key])]
            if not paths:
                raise InputValidationError(f"Item key {key!r} lists no file; expected at least one image file.")
            infos = [inspect_image_file(p, self.spatial_dims) for p in paths]
            for info in infos:
                self._check_spatial(info)
            for info in infos[1:]:
                if not _same_grid(infos[0], info, atol=None):
                    raise InputValidationError(
                        f"'{info.path}' ({_grid_text(info, infos[0])}) is not on the grid of '{infos[0].path}' "
                        f"({_grid_text(infos[0], info)}); expected the files of one case to share shape and affine "
                        "(register or resample them to one grid first)."
                    )
            found = sum(info.channels for info in infos)
            expected = self.channels.get(key)
            if expected is not None and found != expected:
                if len(infos) == 1:
                    raise InputValidationError(
                        f"'{infos[0].path}' has {found} channel(s) (shape {infos[0].shape}); this bundle expects "
                        f"{expected} for {key!r}."
                    )
                listed = ", ".join(f"'{i.path}' ({i.channels})" for i in infos)
                raise InputValidationError(
                    f"The {len(infos)} files of one case give {found} channel(s) for {key!r}: {listed}; this bundle "
                    f"expects {expected} (one single-channel file per modality)."
                )
            if self.same_grid:
                if reference is None:
                    reference = infos[0]
                elif not _same_grid(reference, infos[0], atol=GRID_ATOL):
                    first, ref = infos[0], reference
                    raise InputValidationError(
                        f"'{first.path}' ({_grid_text(first, ref)}) is not on the grid of '{ref.path}' "
                        f"({_grid_text(ref, first)}); expected the files of one case to share shape and affine."
                    )
            d[f"files_of_{key}"] = paths
        return d


def _source(image: Any, files: Sequence[str] | None, channel: int | None) -> str:
    if files and channel is not None and len(files) > 1 and channel < len(files):
        return str(files[channel])
    if files:
        return str(files[0])
    if isinstance(image, MetaTensor) and image.meta.get("filename_or_obj"):
        return str(image.meta["filename_or_obj"])
    return "<image without file name>"


class ValidateImaged(MapTransform):
    """Check loaded, channel-first images: not empty, finite, no constant channel (module docstring).

    Put it right after ``LoadImaged(ensure_channel_first=True)`` (or ``EnsureChannelFirstd``). Messages name the
    file of the offending channel, taken from ``files_of_<key>`` (written by :class:`ValidateImageFilesd`) or the
    image's ``filename_or_obj``. The data pass through unchanged.

    Args:
        keys: keys of the images and label maps.
        spatial_dims: expected spatial dimensions (the array has one more, the channels); ``None``: no check.
        channels: expected channel count, as for :class:`ValidateImageFilesd`.
        label_keys: keys among ``keys`` that hold label maps or class probabilities, whose channels may be constant
            (all background; a class absent from the case).
        label_values: the values a label map of ``label_keys`` may hold: a sequence of integers, or a label
            convention ``{name: value}`` (e.g. ``common.data.visible_korean.VK_LABELS``), whose names the message
            lists. ``None``: not checked.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = 3,
        channels: int | Mapping[Hashable, int] | None = None,
        label_keys: KeysCollection = (),
        label_values: Sequence[int] | Mapping[str, int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.channels = _per_key(channels, self.keys)
        self.label_keys = set(ensure_tuple(label_keys))
        if isinstance(label_values, Mapping):
            self.label_names: dict[int, str] = {int(v): str(k) for k, v in label_values.items()}
            self.label_values: tuple[int, ...] | None = tuple(sorted(self.label_names))
        else:
            self.label_names = {}
            self.label_values = None if label_values is None else tuple(sorted(int(v) for v in label_values))

    def _check_label_values(self, image: Any, x: torch.Tensor, files: Sequence[str] | None) -> None:
        x = x.to(torch.float64 if x.is_floating_point() else torch.int64)
        allowed = torch.as_tensor(self.label_values, dtype=x.dtype, device=x.device)
        outside = ~torch.isin(x, allowed)
        if not bool(outside.any()):
            return
        found = [v.item() for v in torch.unique(x)]
        found_text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in found)
        convention = ", ".join(f"{v} {n}" for v, n in sorted(self.label_names.items()))
        raise InputValidationError(
            f"'{_source(image, files, None)}' holds label values [{found_text}] ({int(outside.sum())} pixel(s) "
            f"outside the convention); expected only {list(self.label_values or ())}"
            f"{f' ({convention})' if convention else ''}. Was it prepared for another dataset or class set?"
        )

    def _check(self, key: Hashable, image: Any, files: Sequence[str] | None) -> None:
        x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(np.asarray(image))
        if x.numel() == 0:
            raise InputValidationError(
                f"'{_source(image, files, None)}' is empty (shape {tuple(x.shape)}); expected an image with voxels."
            )
        if self.spatial_dims is not None and x.ndim != self.spatial_dims + 1:
            kind = "volume" if self.spatial_dims == 3 else "image"
            raise InputValidationError(
                f"'{_source(image, files, None)}' loads as an array of shape {tuple(x.shape)}; expected channels "
                f"plus {self.spatial_dims} spatial dimensions (a {self.spatial_dims}D {kind})."
            )
        expected = self.channels.get(key)
        if expected is not None and x.shape[0] != expected:
            raise InputValidationError(
                f"'{_source(image, files, None)}' gives {x.shape[0]} channel(s) for {key!r} (shape "
                f"{tuple(x.shape)}); this bundle expects {expected}."
            )
        is_label = key in self.label_keys
        for c in range(x.shape[0]):
            channel = x[c]
            if channel.is_floating_point():
                finite = torch.isfinite(channel)
                if not bool(finite.all()):
                    nan, inf = int(torch.isnan(channel).sum()), int(torch.isinf(channel).sum())
                    raise InputValidationError(
                        f"'{_source(image, files, c)}' holds {nan} NaN and {inf} infinite voxel(s)"
                        f"{'' if x.shape[0] == 1 else f' in channel {c}'}; expected finite "
                        f"{'label values' if is_label else 'intensities'} everywhere."
                    )
            if not is_label:
                low, high = torch.aminmax(channel)
                if bool(low == high):
                    raise InputValidationError(
                        f"'{_source(image, files, c)}' is constant (every voxel is {float(low):g}"
                        f"{'' if x.shape[0] == 1 else f', channel {c}'}); expected an image with contrast. "
                        "Is it blank, or was it exported without its pixel data?"
                    )
        if is_label and self.label_values is not None:
            self._check_label_values(image, x, files)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check(key, d[key], d.get(f"files_of_{key}"))
        return d
