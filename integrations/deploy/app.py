"""A MONAI Deploy application that runs a bundle of this zoo from its TorchScript export, one case per run.

Usage (in ``.venv-deploy``, ``make deploy-env``; no PYTHONPATH needed)::

    .venv-deploy/bin/python integrations/deploy/app.py --bundle bundles/<name> --input <case folder> \\
        --output <folder> [--modality-suffix _t1.nii.gz _t1ce.nii.gz _t2.nii.gz _flair.nii.gz]

The bundle folder holds the export, ``models/model.ts``, written by ``python -m monai.bundle ckpt_export`` with
``configs/inference.json`` and the bundle's Deploy overlay ``configs/deploy.json`` (both stored in the archive, and
read from there). The graph is the SDK's own::

    ImageLoader (disk -> Image) -> MonaiBundleInferenceOperator (Image -> Image) -> LabelMapWriter (Image -> disk)

``ImageLoader`` stands in for the DICOM series operators of a clinical app: it reads the image file(s) of the case
folder with MONAI's reader (a NIfTI volume, or a PNG photograph for the 2D bundle), several files in the order of
``--modality-suffix``, stacked as channels. The SDK's bundle operator drops the bundle's ``LoadImage``/``SaveImage``
transforms and runs the rest of ``preprocessing``, the ``inferer`` and ``postprocessing``. ``LabelMapWriter`` writes
the label map on the input's grid: ``<output>/pred.nii.gz`` with the input's affine, or ``<output>/pred.png``.

The bundle configs import the zoo's ``common`` package. It is imported from the bundle folder when that holds
``common/`` (an unpacked release carries its own copy), otherwise from the repository the bundle lies in
(``<repository>/bundles/<name>`` -> ``<repository>/common``).

The SDK lives in its own environment because, installed next to MONAI, it becomes ``monai.deploy``, which
``import monai`` then loads eagerly.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import monai.deploy.core as md
import nibabel as nib
import numpy as np
from monai.deploy.core import (
    Application,
    DataPath,
    ExecutionContext,
    Image,
    InputContext,
    IOType,
    Operator,
    OutputContext,
)
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from monai.transforms import LoadImage
from PIL import Image as PILImage

EXPORT = Path("models") / "model.ts"


class AppInputError(ValueError):
    """The command line names a bundle, export or case folder that cannot be used; the message says why."""


def common_root(bundle: Path) -> Path:
    """The folder to import ``common`` from: ``bundle`` itself if it holds ``common/``, else its repository."""
    candidates = [bundle, bundle.parent.parent]
    for folder in candidates:
        if (folder / "common" / "__init__.py").is_file():
            return folder
    expected = " or ".join(str(c / "common") for c in candidates)
    raise AppInputError(f"{bundle}: no common package; expected {expected} (a release carries its own)")


def case_files(folder: Path, modality_suffixes: list[str]) -> list[Path]:
    """The image file(s) of the case folder, in channel order."""
    if not folder.is_dir():
        raise AppInputError(f"{folder}: no such folder; expected the folder of one case's image file(s)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not modality_suffixes:
        if len(files) != 1:
            raise AppInputError(
                f"{folder}: expected one image file, found {[f.name for f in files]} (several: --modality-suffix)"
            )
        return files
    chosen = []
    for suffix in modality_suffixes:
        matches = [f for f in files if f.name.endswith(suffix)]
        if len(matches) != 1:
            raise AppInputError(f"{folder}: expected one file ending in {suffix!r}, found {[f.name for f in files]}")
        chosen.append(matches[0])
    return chosen


class ZooBundleInferenceOperator(MonaiBundleInferenceOperator):
    """``MonaiBundleInferenceOperator`` that works with the MONAI of this zoo (1.6) and knows the bundle folder.

    SDK 0.5.1 reads ``_meta_["optional_packages_version"]``, but MONAI 1.6's config parser renames that key to
    ``required_packages_version`` when it reads metadata, so the unmodified operator fails with a KeyError on every
    bundle. The operator reads the parser back through this property right after parsing the archive's configs
    (and before it builds anything from them), so the property restores the old name there and sets
    ``bundle_root``, which the exported configs leave at ".": the files a config reads beside the export (RefNet's
    base model) are then found in the bundle folder, whatever the working directory (the SDK changes it per
    operator).
    """

    def __init__(self, *args, bundle_root: Path, **kwargs):
        self._bundle_root = str(bundle_root)
        super().__init__(*args, **kwargs)

    @property
    def parser(self):
        parser = self._parser
        if parser is not None:
            meta = parser["_meta_"]
            meta.setdefault("optional_packages_version", meta.get("required_packages_version", {}))
            if parser["bundle_root"] != self._bundle_root:
                parser["bundle_root"] = self._bundle_root
        return parser

    @parser.setter
    def parser(self, parser):
        self._parser = parser


@md.input("image_path", DataPath, IOType.DISK)
@md.output("image", Image, IOType.IN_MEMORY)
class ImageLoader(Operator):
    """The case folder's image file(s) -> an SDK ``Image`` holding MONAI's array and meta data."""

    def __init__(self, modality_suffixes: list[str]):
        super().__init__()
        self.modality_suffixes = modality_suffixes

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext):
        files = case_files(Path(op_input.get().path), self.modality_suffixes)
        # Several files stack along a new first axis (channel first); one file keeps its own layout, so the
        # bundle's preprocessing adds the channel axis, as it must for the SDK's DICOM volumes.
        data = LoadImage(image_only=True)([str(f) for f in files] if len(files) > 1 else str(files[0]))
        op_output.set(Image(data.numpy(), metadata=dict(data.meta)), "image")


@md.input("pred", Image, IOType.IN_MEMORY)
@md.output("result", DataPath, IOType.DISK)
class LabelMapWriter(Operator):
    """The label map ``Image`` ((D, H, W), a photograph's (1, H, W)) -> ``pred.nii.gz`` or ``pred.png``."""

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext):
        pred = op_input.get("pred")
        label_map, meta = np.asarray(pred.asnumpy(), dtype=np.uint8), pred.metadata()
        out = Path(op_output.get().path)
        out.mkdir(parents=True, exist_ok=True)
        if len(meta["spatial_shape"]) == 2:  # a photograph: rows and columns as in the input PNG
            _write_atomically(out / "pred.png", lambda tmp: PILImage.fromarray(label_map[0]).save(tmp, format="PNG"))
        else:  # a volume: back to the (x, y, z) order of the input file, with its affine
            image = nib.Nifti1Image(np.transpose(label_map, (2, 1, 0)), np.asarray(meta["original_affine"]))
            _write_atomically(out / "pred.nii.gz", lambda tmp: nib.save(image, tmp))


def _write_atomically(target: Path, write) -> None:
    """``write(temporary file)`` next to ``target``, then rename: a reader never sees half a label map."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix="".join(target.suffixes))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class BundleApp(Application):
    """Loader -> bundle inference -> writer, for one bundle folder."""

    def __init__(self, bundle: Path, configs: list[str], modality_suffixes: list[str]):
        self.bundle, self.configs, self.modality_suffixes = bundle, configs, modality_suffixes
        super().__init__(do_run=False)

    def compose(self):
        loader = ImageLoader(self.modality_suffixes)
        bundle = ZooBundleInferenceOperator(
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_path=str(self.bundle / EXPORT),
            bundle_config_names=BundleConfigNames(config_names=self.configs),
            bundle_root=self.bundle,
        )
        self.add_flow(loader, bundle, {"image": "image"})
        self.add_flow(bundle, LabelMapWriter(), {"pred": "pred"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help=f"bundle folder holding the export {EXPORT}")
    parser.add_argument(
        "--configs", nargs="+", default=["inference", "deploy"], help="config names stored in the export, in order"
    )
    parser.add_argument("--input", type=Path, required=True, help="folder with the image file(s) of one case")
    parser.add_argument("--output", type=Path, required=True, help="folder for pred.nii.gz or pred.png")
    parser.add_argument("--modality-suffix", nargs="*", default=[], help="file name endings, in channel order")
    args = parser.parse_args(argv)
    bundle, case, output = args.bundle.resolve(), args.input.resolve(), args.output.resolve()
    try:
        if not (bundle / EXPORT).is_file():
            raise AppInputError(
                f"{bundle / EXPORT}: no such file; expected the bundle's TorchScript export "
                "(python -m monai.bundle ckpt_export with configs/inference.json and configs/deploy.json)"
            )
        sys.path.insert(0, str(common_root(bundle)))  # before the operator parses the configs, which import it
        case_files(case, args.modality_suffix)
    except AppInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The SDK's Application parses sys.argv as its own command line; it gets its paths from run() instead.
    sys.argv = sys.argv[:1]
    app = BundleApp(bundle, args.configs, args.modality_suffix)
    # The SDK's working folder (one per operator) goes to a temporary folder, not into the current directory.
    with tempfile.TemporaryDirectory(prefix="monai_deploy_") as workdir:
        app.run(input=str(case), output=str(output), model=str(bundle / EXPORT), workdir=workdir, log_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
