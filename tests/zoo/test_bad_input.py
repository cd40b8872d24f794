"""Bad input stops every bundle with one clear message naming the file, what was found and what was expected.

One test per kind of bad input, parametrized over the bundles it applies to. Most tests build the
bundle's own preprocessing or datalist from its configs with ``ConfigParser`` and feed it a tiny bad file, so they
check what each bundle is configured to do; the message is read with :func:`common.errors.bad_input_message`, which
is what a failed ``python -m monai.bundle run`` prints last. :func:`test_entry_points_exit_nonzero_with_the_message`
drives the real entry points (train, train + evaluate, inference, and the Visible Korean ``prepare`` command) in
subprocesses, one per bundle, and checks the exit status, the last line of stderr and that no output was left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.errors import bad_input_message
from common.transforms.validation import InputValidationError, ValidateImageFilesd
from tests.helpers import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"
SHAPE = (8, 8, 6)
MODALITIES = ("t1", "t1ce", "t2", "flair")
NIFTI_BUNDLES = ["cohra_unet_brats", "mtcm_kd_t1ce_student", "refnet_synapse"]
ALL_BUNDLES = [*NIFTI_BUNDLES, "fct_visible_korean"]


# ---------------------------------------------------------------------------------------------------------------
# tiny files
# ---------------------------------------------------------------------------------------------------------------


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)


def brats_label(values: tuple[int, ...] = (0, 1, 2, 4)) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(values):
        label[i, :, :] = v
    return label


def brats_case(root: Path, case: str = "BraTS2021_00000") -> dict[str, Path]:
    """A BraTS 2021 case folder with 8 x 8 x 6 modalities and a seg holding every label value."""
    folder = root / case
    files = {m: nifti(folder / f"{case}_{m}.nii.gz", volume(i)) for i, m in enumerate(MODALITIES)}
    files["seg"] = nifti(folder / f"{case}_seg.nii.gz", brats_label())
    return files


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def photograph(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# the bundles' own pipelines
# ---------------------------------------------------------------------------------------------------------------


def parsed(bundle: str, configs: list[str], overrides: dict[str, Any], id: str) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLES / bundle), **overrides})
    return parser.get_parsed_content(id)


def inference_item(bundle: str, image: Path | list[Path]) -> dict[str, Any]:
    """The inference datalist item of one case: BraTS COHRA-UNet stacks four files, the others read one."""
    return {"image": [str(p) for p in image] if isinstance(image, list) else str(image)}


def run_inference_preprocessing(bundle: str, image: Path | list[Path]) -> Any:
    return parsed(bundle, ["inference.json"], {}, "preprocessing")(inference_item(bundle, image))


def run_validation_preprocessing(bundle: str, item: dict[str, Any]) -> Any:
    """The bundle's validation preprocessing (train.json), which loads images and label maps."""
    overrides = {"et_label": 4} if bundle in ("cohra_unet_brats", "mtcm_kd_t1ce_student") else {}
    return parsed(bundle, ["train.json"], overrides, "validate#preprocessing")(item)


def bad_input(action: Callable[[], Any], *needles: str) -> str:
    """Run ``action``, which must fail on bad input; return the message a bundle run would print last."""
    with pytest.raises(Exception) as info:
        action()
    message = bad_input_message(info.value)
    assert message, f"no bad-input message in {info.value!r}"
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    return message


def case_image(bundle: str, files: dict[str, Path]) -> Path | list[Path]:
    """What the bundle's inference reads of a BraTS case (cohra: all modalities, mtcm: T1ce)."""
    if bundle == "cohra_unet_brats":
        return [files[m] for m in MODALITIES]
    return files["t1ce"]


def good_image(bundle: str, tmp_path: Path) -> tuple[Path | list[Path], Path]:
    """A valid inference input of ``bundle`` and the file of it that a test spoils."""
    if bundle == "fct_visible_korean":
        path = png(tmp_path / "VK_0000.png", photograph())
        return path, path
    if bundle == "refnet_synapse":
        path = nifti(tmp_path / "img0001.nii.gz", volume())
        return path, path
    files = brats_case(tmp_path)
    return case_image(bundle, files), files["flair"] if bundle == "cohra_unet_brats" else files["t1ce"]


# ---------------------------------------------------------------------------------------------------------------
# one test per kind of bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_missing_dataset_folder(bundle, tmp_path):
    missing = tmp_path / "no_such_dataset"
    expected = {
        "cohra_unet_brats": "does not exist. Expected one of:",
        "mtcm_kd_t1ce_student": "does not exist. Expected one of:",
        "fct_visible_korean": "expected an 8-bit RGB PNG photograph or a folder of them",
        "refnet_synapse": "expected a CT NIfTI file or a folder of them",
    }[bundle]
    bad_input(
        lambda: parsed(bundle, ["inference.json"], {"dataset_dir": str(missing)}, "datalist"), str(missing), expected
    )
    # training reads the same folder through its split file or datalist
    train_ids = {"fct_visible_korean": "train#dataset#data", "refnet_synapse": "datalist"}.get(bundle, "et_label")
    overrides = {"dataset_dir": str(missing)}
    if bundle == "refnet_synapse":  # its datalist (base predictions) lives apart from the BTCV folder
        (tmp_path / "datalist.json").write_text('{"training": [], "test": []}')
        overrides["datalist_file"] = str(tmp_path / "datalist.json")
    bad_input(lambda: parsed(bundle, ["train.json"], overrides, train_ids), str(missing), "expected")


@pytest.mark.parametrize("bundle", ["cohra_unet_brats", "mtcm_kd_t1ce_student"])
def test_case_with_a_missing_modality(bundle, tmp_path):
    files = brats_case(tmp_path / "data")
    brats_case(tmp_path / "data", "BraTS2021_00001")
    lost = files["t1ce"]
    lost.unlink()
    bad_input(
        lambda: parsed(bundle, ["inference.json"], {"dataset_dir": str(tmp_path / "data")}, "datalist"),
        str(lost),
        "must hold '<case>_{t1,t1ce,t2,flair,seg}.nii.gz'",
    )


@pytest.mark.parametrize("bundle", ["cohra_unet_brats", "mtcm_kd_t1ce_student", "refnet_synapse"])
def test_files_of_a_case_on_different_grids(bundle, tmp_path):
    if bundle == "refnet_synapse":
        label = nifti(tmp_path / "label0001.nii.gz", np.zeros(SHAPE, np.uint8))
        shifted = np.eye(4)
        shifted[:3, 3] = 5.0
        base = nifti(tmp_path / "img0001_base.nii.gz", np.zeros(SHAPE, np.uint8), shifted)
        item = {"label": str(label), "base": str(base)}
        bad_input(lambda: run_validation_preprocessing(bundle, item), str(base), "affine", "not on the grid of")
        return
    files = brats_case(tmp_path)
    item = {"image": [str(files[m]) for m in MODALITIES], "label": str(files["seg"])}
    if bundle == "mtcm_kd_t1ce_student":
        # the student validates on T1ce alone; its teachers train on all four modalities, loaded by "load"
        from monai.transforms import Compose

        pipeline = Compose(parsed(bundle, ["train.json"], {"et_label": 4}, "load"))
    else:
        pipeline = parsed(bundle, ["train.json"], {"et_label": 4}, "validate#preprocessing")
    nifti(files["t2"], volume(3, (8, 8, 5)))  # one slice fewer
    bad_input(lambda: pipeline(dict(item)), str(files["t2"]), "shape (8, 8, 5)", "expected the files of one case")
    nifti(files["t2"], volume(3), np.diag([1.0, 1.0, 2.0, 1.0]))  # same shape, 2 mm slices
    bad_input(lambda: pipeline(dict(item)), str(files["t2"]), "affine", "share shape and affine")


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_wrong_channel_count(bundle, tmp_path):
    if bundle == "fct_visible_korean":
        image = png(tmp_path / "grey.png", photograph()[..., 0])
        expected = "has 1 channel(s) (shape (16, 12)); this bundle expects 3"
    elif bundle == "cohra_unet_brats":
        files = brats_case(tmp_path)
        image = [files[m] for m in MODALITIES[:3]]  # FLAIR left out
        expected = "The 3 files of one case give 3 channel(s) for 'image'"
    else:
        image = nifti(tmp_path / "two_channels.nii.gz", volume(0, (*SHAPE, 2)))
        expected = "has 2 channel(s) (shape (8, 8, 6, 2)); this bundle expects 1"
    first = image[0] if isinstance(image, list) else image
    bad_input(lambda: run_inference_preprocessing(bundle, image), str(first), expected)


@pytest.mark.parametrize("bundle", NIFTI_BUNDLES)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(bundle, value, tmp_path):
    image, spoiled = good_image(bundle, tmp_path)
    array = volume(7)
    array[1, 2, 3] = value
    nifti(spoiled, array)
    kind = "1 NaN and 0 infinite" if np.isnan(value) else "0 NaN and 1 infinite"
    bad_input(lambda: run_inference_preprocessing(bundle, image), str(spoiled), kind, "expected finite intensities")


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_empty_or_constant_image(bundle, tmp_path):
    image, spoiled = good_image(bundle, tmp_path)
    if bundle == "fct_visible_korean":
        png(spoiled, np.full((12, 16, 3), 200, np.uint8))
        constant = "every voxel is 200"  # checked before intensities are scaled
    else:
        nifti(spoiled, np.zeros(SHAPE, np.float32))
        constant = "every voxel is 0"
    bad_input(
        lambda: run_inference_preprocessing(bundle, image), str(spoiled), constant, "expected an image with contrast"
    )
    # an empty file (no bytes at all) is not an image either
    spoiled.write_bytes(b"")
    bad_input(lambda: run_inference_preprocessing(bundle, image), str(spoiled), "is empty (0 bytes); expected")


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_truncated_or_not_nifti(bundle, tmp_path):
    image, spoiled = good_image(bundle, tmp_path)
    data = spoiled.read_bytes()
    spoiled.write_bytes(data[: len(data) * 2 // 3])
    bad_input(lambda: run_inference_preprocessing(bundle, image), str(spoiled), "truncated", "expected")
    spoiled.write_bytes(b"\x00" * 12 + b"DICM" + b"\x00" * 400)  # a DICOM-like file named .nii.gz / .png
    expected = "expected a PNG image" if bundle == "fct_visible_korean" else "expected a NIfTI image"
    bad_input(lambda: run_inference_preprocessing(bundle, image), str(spoiled), expected)


@pytest.mark.parametrize("bundle", ["cohra_unet_brats", "mtcm_kd_t1ce_student", "refnet_synapse"])
def test_label_values_outside_the_convention(bundle, tmp_path):
    if bundle == "refnet_synapse":
        label = nifti(tmp_path / "label0001.nii.gz", np.full(SHAPE, 14, np.uint8))
        base = nifti(tmp_path / "img0001_base.nii.gz", np.zeros(SHAPE, np.uint8))
        item = {"label": str(label), "base": str(base)}
        bad_input(lambda: run_validation_preprocessing(bundle, item), str(label), "holds values [14]", "0..13")
        return
    files = brats_case(tmp_path)
    nifti(files["seg"], brats_label((0, 1, 2, 3)))  # a BraTS 2023 label map (ET = 3) in a BraTS 2021 dataset
    item = {"image": [str(files[m]) for m in MODALITIES], "label": str(files["seg"])}
    if bundle == "mtcm_kd_t1ce_student":
        item["image"] = [str(files[m]) for m in ("t1", "t1ce", "t2", "flair")]
    bad_input(
        lambda: run_validation_preprocessing(bundle, item),
        str(files["seg"]),
        "holds values [0, 1, 2, 3]",
        "allows only [0, 1, 2, 4]",
    )


def test_visible_korean_mask_colour_missing_from_the_colour_table(tmp_path):
    from common.data.visible_korean import COLOUR_TABLE_NAME, prepare, read_colour_table
    from common.synthetic.__main__ import main as make_phantoms

    args = ["visible_korean", "--out", str(tmp_path / "vk"), "--cases", "2", "--size", "32", "40", "--workers", "1"]
    assert make_phantoms([*args, "--quiet"]) in (0, None)
    table = read_colour_table(tmp_path / "vk" / COLOUR_TABLE_NAME)
    segmentation = sorted((tmp_path / "vk" / "segmentations").glob("*.png"))[0]
    rgb = np.asarray(Image.open(segmentation).convert("RGB")).copy()
    rgb[0, 0] = (1, 2, 3)  # a colour in no row of the table
    assert (1, 2, 3) not in {tuple(e.rgb) for e in table.values()}
    png(segmentation, rgb)
    bad_input(
        lambda: prepare(tmp_path / "vk", tmp_path / "out", quality_check=0, test_fraction=0),
        segmentation.name,
        "(1, 2, 3)",
        COLOUR_TABLE_NAME,
    )
    assert not (tmp_path / "out" / "datalist.json").exists()


@pytest.mark.parametrize("bundle", NIFTI_BUNDLES)
@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1)])
def test_2d_image_given_to_a_3d_bundle(bundle, shape, tmp_path):
    image, spoiled = good_image(bundle, tmp_path)
    nifti(spoiled, volume(5, shape))
    bad_input(lambda: run_inference_preprocessing(bundle, image), str(spoiled), "is a 2D image", "expects a 3D volume")


def test_files_check_names_every_kind_of_file_problem(tmp_path):
    """The pre-load check on its own: missing file, folder, unknown extension, and a label on another grid."""
    check = ValidateImageFilesd(["image", "label"], spatial_dims=3, channels={"image": 1, "label": 1})
    image = nifti(tmp_path / "ct.nii.gz", volume())
    with pytest.raises(InputValidationError, match=r"'.*missing\.nii\.gz' does not exist; expected an image file"):
        check({"image": str(tmp_path / "missing.nii.gz"), "label": str(image)})
    with pytest.raises(InputValidationError, match="is a folder"):
        check({"image": str(tmp_path), "label": str(image)})
    (tmp_path / "ct.mha").write_bytes(b"x")
    with pytest.raises(InputValidationError, match="unsupported extension; expected .nii.gz, .nii or .png"):
        check({"image": str(tmp_path / "ct.mha"), "label": str(image)})
    label = nifti(tmp_path / "label.nii.gz", np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(InputValidationError, match=r"label\.nii\.gz' \(shape \(8, 8, 7\).*not on the grid of"):
        check({"image": str(image), "label": str(label)})
    plain = nifti(tmp_path / "plain.nii", volume())  # uncompressed: the file size tells truncation
    plain.write_bytes(plain.read_bytes()[:-10])
    with pytest.raises(InputValidationError, match=r"plain\.nii' is truncated: it holds 1878 bytes .* expected 1888"):
        check({"image": str(plain), "label": str(image)})
    out = check({"image": str(image), "label": str(nifti(tmp_path / "ok.nii.gz", np.zeros(SHAPE, np.uint8)))})
    assert out["files_of_image"] == [str(image)]


# ---------------------------------------------------------------------------------------------------------------
# the real entry points, one subprocess per bundle, all at once
# ---------------------------------------------------------------------------------------------------------------


def _bundle_run(bundle: str, configs: list[str], overlay: dict[str, Any], work: Path) -> subprocess.Popen:
    overlay_file = work / "overlay.json"
    overlay_file.write_text(json.dumps({"bundle_root": str(BUNDLES / bundle), **overlay}))
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs] + [str(overlay_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(map(repr, files)) + "]"]
    return _start(cmd, work)


def _start(cmd: list[str], work: Path) -> subprocess.Popen:
    from common.bundle_run import bundle_env

    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=bundle_env(), stdout=open(work / "stdout.txt", "w"), stderr=subprocess.PIPE, text=True
    )


def _demo_overlay(bundle: str, stage: str) -> dict[str, Any]:
    return json.loads((BUNDLES / bundle / "configs" / "demo.json").read_text())[stage]


@pytest.fixture(scope="module")
def entry_point_runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Start one failing run per bundle, wait for all; each entry: returncode, stderr, outputs, expected texts."""
    from common.data.brats import write_split_file

    root = tmp_path_factory.mktemp("entry_points")
    runs: dict[str, dict[str, Any]] = {}

    # COHRA-UNet, train: a truncated FLAIR in every case, read by a DataLoader worker process
    work = root / "cohra"
    work.mkdir()
    for i in range(2):
        files = brats_case(work / "data", f"BraTS2021_0000{i}")
        data = files["flair"].read_bytes()
        files["flair"].write_bytes(data[: len(data) // 2])
    write_split_file(work / "data", work / "datalist.json", folds=2, test_fraction=0)
    overlay = {
        **_demo_overlay("cohra_unet_brats", "train"),
        "dataset_dir": str(work / "data"),
        "demo_work_dir": str(work),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "epochs": 1,
        "num_workers": 1,
        "amp": False,
    }
    runs["cohra_unet_brats train"] = {
        "proc": _bundle_run("cohra_unet_brats", ["train.json"], overlay, work),
        "outputs": work / "models",
        "expected": ["_flair.nii.gz' is truncated", "expected a complete gzip-compressed NIfTI file"],
    }

    # MTCM-KD student, inference: a 2D T1ce slice
    work = root / "mtcm"
    work.mkdir()
    image = nifti(work / "BraTS2021_00000_t1ce.nii.gz", volume(0, (8, 8)))
    overlay = {
        **_demo_overlay("mtcm_kd_t1ce_student", "inference"),
        "input_image": str(image),
        "output_dir": str(work / "out"),
        "load_pretrain": False,
    }
    runs["mtcm_kd_t1ce_student inference"] = {
        "proc": _bundle_run("mtcm_kd_t1ce_student", ["inference.json"], overlay, work),
        "outputs": work / "out",
        "expected": [f"'{image}' is a 2D image", "expects a 3D volume"],
    }

    # FCT, evaluation (train.json + evaluate.json): the prepared dataset folder is missing
    work = root / "fct"
    work.mkdir()
    overlay = {
        **_demo_overlay("fct_visible_korean", "evaluate"),
        "dataset_dir": str(work / "no_such_dataset"),
        "demo_work_dir": str(work / "no_such_dataset"),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
    }
    runs["fct_visible_korean evaluate"] = {
        "proc": _bundle_run("fct_visible_korean", ["train.json", "evaluate.json"], overlay, work),
        "outputs": work / "eval",
        "expected": [str(work / "no_such_dataset" / "datalist.json"), "does not exist; expected the datalist.json"],
    }

    # RefNet, inference: a CT holding NaN
    work = root / "refnet"
    work.mkdir()
    array = volume(0, (16, 16, 8))
    array[3, 3, 3] = np.nan
    ct = nifti(work / "ct" / "img0001.nii.gz", array)
    overlay = {
        **_demo_overlay("refnet_synapse", "inference"),
        "dataset_dir": str(work / "ct"),
        "datalist": "$common.data.btcv.ct_datalist(@dataset_dir)",
        "output_dir": str(work / "out"),
        "load_pretrain": False,
        "base_roi_size": [16, 16, 8],
    }
    runs["refnet_synapse inference"] = {
        "proc": _bundle_run("refnet_synapse", ["inference.json"], overlay, work),
        "outputs": work / "out",
        "expected": [f"'{ct}' holds 1 NaN and 0 infinite voxel(s)", "expected finite intensities"],
    }

    # Visible Korean data preparation: no dataset folder
    work = root / "vk_prepare"
    work.mkdir()
    missing = work / "no_such_dataset"
    cmd = [sys.executable, "-m", "common.data.visible_korean", "prepare", "--dataset-dir", str(missing)]
    runs["fct_visible_korean prepare"] = {
        "proc": _start([*cmd, "--out", str(work / "out")], work),
        "outputs": work / "out",
        "expected": [f"'{missing}'", "does not exist"],
    }

    # FCT, train: one prepared label map holds 7, outside {0 background, 1 bone, 2 muscle}
    from common.data.visible_korean import load_datalist, prepare
    from common.synthetic.__main__ import main as make_phantoms

    work = root / "fct_train"
    work.mkdir()
    args = ["visible_korean", "--out", str(work / "vk"), "--cases", "3", "--size", "32", "40", "--workers", "1"]
    assert make_phantoms([*args, "--quiet"]) in (0, None)
    prepare(work / "vk", work / "prepared", quality_check=0, test_fraction=0)
    spoiled_label = Path(load_datalist(work / "prepared" / "datalist.json", "training")[0]["label"])
    labels = np.asarray(Image.open(spoiled_label)).copy()
    labels[:3, :3] = 7
    png(spoiled_label, labels)
    overlay = {
        **_demo_overlay("fct_visible_korean", "train"),
        "demo_work_dir": str(work / "prepared"),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "epochs": 1,
        "amp": False,
    }
    runs["fct_visible_korean train"] = {
        "proc": _bundle_run("fct_visible_korean", ["train.json"], overlay, work),
        "outputs": work / "models",
        "expected": [f"'{spoiled_label}' holds label values [", ", 7]", "expected only [0, 1, 2] (0 background"],
    }

    for run in runs.values():
        proc = run.pop("proc")
        _, run["stderr"] = proc.communicate(timeout=300)
        run["returncode"] = proc.returncode
    return runs


ENTRY_POINTS = [
    "cohra_unet_brats train",
    "mtcm_kd_t1ce_student inference",
    "fct_visible_korean evaluate",
    "refnet_synapse inference",
    "fct_visible_korean prepare",
    "fct_visible_korean train",
]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_entry_points_exit_nonzero_with_the_message(entry_point, entry_point_runs):
    run = entry_point_runs[entry_point]
    assert run["returncode"] != 0, f"{entry_point} exited with 0"
    proc_stderr: str = run["stderr"]
    assert "error: " in proc_stderr, proc_stderr[-3000:]
    last = proc_stderr.rstrip().rsplit("error: ", 1)[1]
    for needle in run["expected"]:
        assert needle in last, f"{needle!r} not in the last error of {entry_point}: {last!r}"
    assert "Failed to evaluate" not in last and "applying transform" not in last
    outputs = run["outputs"]
    left = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file()) if outputs.exists() else []
    assert not left, f"{entry_point} left output behind: {left}"


def test_complete_gzip_files_are_not_decompressed_by_the_check(tmp_path, monkeypatch):
    """The truncation check of a complete .nii.gz reads its gzip trailer only, not the whole stream."""
    import common.transforms.validation as validation

    def fail(path):
        raise AssertionError(f"{path} was decompressed")

    monkeypatch.setattr(validation, "_gzip_stream_length", fail)
    info = validation.inspect_image_file(nifti(tmp_path / "ct.nii.gz", volume(0, (8, 8, 6, 2))))
    assert (info.spatial_shape, info.channels) == (SHAPE, 2)


def test_inference_outputs_are_written_atomically(tmp_path, monkeypatch):
    """The NIfTI bundles save through AtomicNibabelWriter: a write that fails half-way leaves no file behind."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SaveImaged

    for bundle in NIFTI_BUNDLES:
        assert (
            "common.transforms.writers.AtomicNibabelWriter"
            in (BUNDLES / bundle / "configs" / "inference.json").read_text()
        )
    save = SaveImaged(
        "pred", output_dir=tmp_path, output_postfix="seg", separate_folder=False, resample=False,
        writer="common.transforms.writers.AtomicNibabelWriter",
    )  # fmt: skip
    pred = MetaTensor(torch.ones(1, *SHAPE), meta={"filename_or_obj": "case.nii.gz", "affine": torch.eye(4)})
    save({"pred": pred})
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]
    assert nib.load(str(tmp_path / "case_seg.nii.gz")).shape == SHAPE

    def interrupted(image, filename):
        Path(filename).write_bytes(b"\x1f\x8b half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(nib, "save", interrupted)
    pred.meta["filename_or_obj"] = "other.nii.gz"
    with pytest.raises(Exception, match="No space left on device"):
        save({"pred": pred})
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]
