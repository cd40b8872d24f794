"""PNG outputs of 2D segmentations of photographs: label maps written atomically, and coloured overlays.

- :class:`AtomicPILWriter`: MONAI's ``PILWriter`` that writes through a temporary file and a rename
  (:mod:`common.outputs`), for ``SaveImaged(writer="common.transforms.overlay.AtomicPILWriter")``. ``SaveImaged``
  otherwise keeps all its behaviour (file naming, orientation, dtype); only the final write changes, so a reader
  never sees half a PNG.
- :class:`SaveOverlayd`: blends a label map over the photograph it was predicted from, one colour per class, and
  writes ``<output_dir>/<name>_<postfix>.png`` atomically. The photograph is read again from its file
  (``image.meta["filename_or_obj"]``), at full resolution and in its original colours, because by postprocessing
  time the ``image`` key holds the resized, normalised network input.

Both publish through :mod:`common.outputs`: inside :class:`common.transforms.writers.AllOrNothingCompose` (the
bundle's ``postprocessing``) a slice's label map and overlay appear together or not at all, and a failed write
(full disk) raises :class:`common.outputs.OutputFolderError` naming the folder, the file and the cause.

Orientation: MONAI's ``PILReader`` swaps the two axes of a PNG (``reverse_indexing``), so an ``H x W`` photograph's
label map arrives as ``(1, W, H)``; :class:`SaveOverlayd` swaps it back like ``PILWriter`` does, and checks that the
result has the photograph's ``H x W``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection, PathLike
from monai.data import PILWriter
from monai.data.image_writer import ImageWriter
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from PIL import Image

from common.outputs import write_output_bytes

__all__ = ["VK_OVERLAY_COLOURS", "AtomicPILWriter", "blend_overlay", "SaveOverlayd"]

#: Overlay colours of the Visible Korean classes (1 bone, 2 muscle): cyan and magenta stand out from the
#: photographs' red-brown muscle, yellowish fat and whitish bone, which a red or yellow overlay would blend into.
VK_OVERLAY_COLOURS: dict[int, tuple[int, int, int]] = {1: (0, 255, 255), 2: (255, 0, 255)}


def _png_bytes(image: Image.Image, filename: PathLike, **kwargs: Any) -> bytes:
    extension = Path(filename).suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"'{filename}': Pillow cannot write files ending in {extension!r}; use '.png'.")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **kwargs)
    return buffer.getvalue()


class AtomicPILWriter(PILWriter):
    """``monai.data.PILWriter`` whose :meth:`write` goes through a temporary file and an atomic rename."""

    def write(self, filename: PathLike, verbose: bool = False, **kwargs: Any) -> None:
        """Create the PIL image as ``PILWriter.write`` does and write it to ``filename`` atomically.

        Args:
            filename: the output file; its extension picks the format (``.png``).
            verbose: log the file name.
            kwargs: ``reverse_indexing`` (default True) and ``image_mode`` (default None) as for ``PILWriter``;
                the rest go to ``PIL.Image.save``.
        """
        ImageWriter.write(self, filename, verbose=verbose)
        self.data_obj = self.create_backend_obj(
            data_array=self.data_obj,
            dtype=self.output_dtype,
            reverse_indexing=kwargs.pop("reverse_indexing", True),
            image_mode=kwargs.pop("image_mode", None),
            scale=self.scale,
        )
        write_output_bytes(filename, _png_bytes(self.data_obj, filename, **kwargs))


def blend_overlay(
    photograph: np.ndarray, labels: np.ndarray, colours: Mapping[int, Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """The photograph with every labelled pixel blended towards its class colour.

    Args:
        photograph: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` integer label map; values without a colour (background) leave the photograph as is.
        colours: label value -> ``(r, g, b)`` in 0-255.
        alpha: weight of the class colour, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if photograph.ndim != 3 or photograph.shape[-1] != 3:
        raise ValueError(f"blend_overlay: expected an (H, W, 3) photograph, got shape {photograph.shape}.")
    if labels.shape != photograph.shape[:2]:
        raise ValueError(
            f"blend_overlay: label map shape {labels.shape} differs from the photograph's {photograph.shape[:2]}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend_overlay: alpha must be in [0, 1], got {alpha}.")
    out = photograph.astype(np.float32)
    for value, colour in colours.items():
        mask = labels == value
        out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<name>_<output_postfix>.png``: the label map of ``keys`` blended over the photograph.

    ``<name>`` is the photograph's file name without extension, the naming of ``SaveImaged(separate_folder=False)``.

    Args:
        keys: label maps, ``(1, W, H)`` (as ``PILReader`` loads an ``H x W`` PNG; ``reverse_indexing=True``) or
            ``(1, H, W)`` (``reverse_indexing=False``), at the photograph's own size (after ``Invertd``).
        output_dir: folder of the overlays (created if missing).
        image_key: key whose ``meta["filename_or_obj"]`` names the photograph.
        output_postfix: appended to the file name.
        colours: label value -> ``(r, g, b)``; default :data:`VK_OVERLAY_COLOURS`.
        alpha: weight of the class colour (0.5).
        reverse_indexing: the label map's axes are swapped against the PNG's, as ``PILReader`` loads them (True).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: naming the photograph, when the label map does not have its size, or when a key's meta data
            do not name a file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: PathLike,
        image_key: str = "image",
        output_postfix: str = "overlay",
        colours: Mapping[int, Sequence[int]] | None = None,
        alpha: float = 0.5,
        reverse_indexing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.output_postfix = output_postfix
        self.colours = {int(k): tuple(int(c) for c in v) for k, v in (colours or VK_OVERLAY_COLOURS).items()}
        self.alpha = float(alpha)
        self.reverse_indexing = reverse_indexing

    def _photograph_path(self, data: Mapping[Hashable, Any], key: Hashable) -> Path:
        for source in (data.get(self.image_key), data[key]):
            meta = getattr(source, "meta", None) or {}
            name = meta.get("filename_or_obj")
            if isinstance(name, (str, os.PathLike)) and str(name):
                return Path(name)
        raise ValueError(
            f"SaveOverlayd: neither '{self.image_key}' nor '{key}' carries meta['filename_or_obj'] naming the "
            "photograph; load the image with LoadImaged so that its file name travels with it."
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = self._photograph_path(d, key)
            with Image.open(path) as im:
                photograph = np.asarray(im.convert("RGB"))
            labels = convert_to_numpy(d[key])
            if labels.ndim == 3 and labels.shape[0] == 1:
                labels = labels[0]
            if labels.ndim != 2:
                raise ValueError(
                    f"SaveOverlayd: the label map of '{path}' has shape {labels.shape}; expected a single-channel "
                    "label map, e.g. (1, W, H) as PILReader loads it (apply AsDiscreted(argmax=True) before this)."
                )
            if self.reverse_indexing:
                labels = labels.T
            if labels.shape != photograph.shape[:2]:
                raise ValueError(
                    f"SaveOverlayd: the label map of '{path}' is {labels.shape[0]} x {labels.shape[1]} (H x W) but "
                    f"the photograph is {photograph.shape[0]} x {photograph.shape[1]}; expected the photograph's "
                    "size (invert the resize and padding with Invertd before this transform)."
                )
            overlay = blend_overlay(photograph, np.rint(labels).astype(np.int64), self.colours, self.alpha)
            target = self.output_dir / f"{path.stem}_{self.output_postfix}.png"
            write_output_bytes(target, _png_bytes(Image.fromarray(overlay), target))
        return d
