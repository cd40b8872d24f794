"""A minimal MONAI Deploy application around a bundle's TorchScript export, run by ``tests/integration/test_deploy.py``.

It runs in ``.venv-deploy`` (``make deploy-env``), where the MONAI Deploy App SDK 0.5.1 is installed; it is kept
out of ``.venv`` because ``import monai`` would then load ``monai.deploy`` eagerly. The graph is the SDK's own:

    ImageLoader (disk -> Image) -> MonaiBundleInferenceOperator (Image -> Image) -> LabelMapWriter (Image -> disk)

``ImageLoader`` stands in for the DICOM series operators of a clinical app: it reads the NIfTI files of the input
folder with MONAI's reader, in the order given by ``--modality-suffix`` (several files are stacked as channels,
channel first, which is what a multi-modal bundle expects), and hands the array and MONAI's meta data over as an
SDK ``Image``. The bundle operator drops the bundle's ``LoadImage``/``SaveImage`` transforms and runs the rest of
``preprocessing``, the ``inferer`` and ``postprocessing`` read from the TorchScript archive's extra files.
``LabelMapWriter`` saves the label map it receives as ``pred.npy``.

Usage::

    .venv-deploy/bin/python tests/integration/deploy_app.py --model model.ts --configs inference deploy \\
        --input in_dir --output out_dir [--modality-suffix _t1.nii.gz _t1ce.nii.gz ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import monai.deploy.core as md
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


class ZooBundleInferenceOperator(MonaiBundleInferenceOperator):
    """``MonaiBundleInferenceOperator`` that works with the MONAI of this repository (1.6.1).

    SDK 0.5.1 reads ``_meta_["optional_packages_version"]``, but MONAI 1.6's config parser renames that key to
    ``required_packages_version`` when it reads metadata, so the unmodified operator fails with a KeyError on
    every bundle. The parser the operator reads back through this property carries the old name again.
    """

    @property
    def parser(self):
        parser = self._parser
        if parser is not None:
            meta = parser["_meta_"]
            meta.setdefault("optional_packages_version", meta.get("required_packages_version", {}))
        return parser

    @parser.setter
    def parser(self, parser):
        self._parser = parser


@md.input("image_path", DataPath, IOType.DISK)
@md.output("image", Image, IOType.IN_MEMORY)
class ImageLoader(Operator):
    """The input folder's image file(s) -> an SDK ``Image`` holding MONAI's array and meta data."""

    def __init__(self, modality_suffixes: list[str]):
        super().__init__()
        self.modality_suffixes = modality_suffixes

    def _files(self, folder: Path) -> list[Path]:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if not self.modality_suffixes:
            if len(files) != 1:
                raise ValueError(f"{folder}: expected one image file, found {[f.name for f in files]}")
            return files
        chosen = []
        for suffix in self.modality_suffixes:
            matches = [f for f in files if f.name.endswith(suffix)]
            if len(matches) != 1:
                raise ValueError(f"{folder}: expected one file ending in {suffix!r}, found {[f.name for f in files]}")
            chosen.append(matches[0])
        return chosen

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext):
        files = self._files(Path(op_input.get().path))
        # Several files stack along a new first axis (channel first); one file keeps its own layout, so the
        # bundle's preprocessing has to add the channel axis, as it must for the SDK's DICOM volumes.
        data = LoadImage(image_only=True)([str(f) for f in files] if len(files) > 1 else str(files[0]))
        op_output.set(Image(data.numpy(), metadata=dict(data.meta)), "image")


@md.input("pred", Image, IOType.IN_MEMORY)
@md.output("result", DataPath, IOType.DISK)
class LabelMapWriter(Operator):
    """The label map ``Image`` -> ``<output folder>/pred.npy``."""

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext):
        out = Path(op_output.get().path)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "pred.npy", np.asarray(op_input.get("pred").asnumpy()))


class BundleApp(Application):
    """Loader -> bundle inference -> writer, configured from the command line."""

    def __init__(self, model: Path, configs: list[str], modality_suffixes: list[str]):
        self.model, self.configs, self.modality_suffixes = model, configs, modality_suffixes
        super().__init__(do_run=False)

    def compose(self):
        loader = ImageLoader(self.modality_suffixes)
        bundle = ZooBundleInferenceOperator(
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_path=str(self.model),
            bundle_config_names=BundleConfigNames(config_names=self.configs),
        )
        self.add_flow(loader, bundle, {"image": "image"})
        self.add_flow(bundle, LabelMapWriter(), {"pred": "pred"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the bundle's TorchScript export (ckpt_export)")
    parser.add_argument("--configs", nargs="+", default=["inference"], help="config names stored in the export")
    parser.add_argument("--input", type=Path, required=True, help="folder with the image file(s) of one case")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--modality-suffix", nargs="*", default=[], help="file name endings, in channel order")
    args = parser.parse_args(argv)
    # The SDK's Application parses sys.argv as its own command line; it gets its paths from run() instead.
    sys.argv = sys.argv[:1]
    app = BundleApp(args.model.resolve(), args.configs, args.modality_suffix)
    app.run(input=str(args.input), output=str(args.output), model=str(args.model.resolve()), log_level="WARNING")


if __name__ == "__main__":
    sys.exit(main())
