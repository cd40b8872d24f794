"""Every bundle runs inside the MONAI Deploy application: ``ckpt_export``, then ``integrations/deploy/app.py``.

For each bundle, on a copy of it with random weights (the demo's tiny network widths written into the copy's
``configs/inference.json``; nothing is written into ``bundles/``), laid out as a user has it: the unpacked release
zip (``ci/package_bundle.py``, which carries ``common/`` and ``configs/deploy.json``) or, for one bundle, a
repository (``<root>/bundles/<name>`` next to ``<root>/common``):

1. ``python -m monai.bundle ckpt_export`` writes ``models/model.ts`` with the bundle's ``metadata.json``,
   ``inference.json`` and its shipped Deploy overlay ``deploy.json`` as extra files, the command of the README.
2. The app runs in ``.venv-deploy`` (MONAI Deploy App SDK 0.5.1, the pure-Python release) with no PYTHONPATH, from
   a working directory of its own: it finds ``common`` from the bundle folder, and the SDK's
   ``MonaiBundleInferenceOperator`` runs the bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` (without
   their LoadImage/SaveImage) on the TorchScript network. It writes ``pred.nii.gz`` or, for the 2D bundle, ``pred.png``.
3. The label map lies on the input's grid (and affine), holds labels of the bundle's convention only, and is the one
   the bundle itself writes: ``monai.bundle.run`` of the copy's ``inference.json`` with the same weights on the same
   case; at least 98 % of voxels must agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from PIL import Image

from ci import demo, package_bundle, zoo
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

DEPLOY_PYTHON = REPO_ROOT / ".venv-deploy" / "bin" / "python"
DEPLOY_APP = REPO_ROOT / "integrations" / "deploy" / "app.py"
TIMEOUT_S = 300
MIN_AGREEMENT = 0.98
#: the settings of configs/deploy.json that the bundle's own inference takes too, so that both run the same path
DEPLOY_SETTINGS = ("et_label", "fast_cpu_runtime")

#: bundle -> (file name endings of one case's image files, in channel order; labels its label map may hold)
CASES: dict[str, tuple[list[str], set[int]]] = {
    "cohra_unet_brats": (["_t1.nii.gz", "_t1ce.nii.gz", "_t2.nii.gz", "_flair.nii.gz"], {0, 1, 2, 4}),
    "fct_visible_korean": ([".png"], {0, 1, 2}),
    "mtcm_kd_t1ce_student": (["_t1ce.nii.gz"], {0, 1, 2, 4}),
    "refnet_synapse": ([".nii.gz"], set(range(13))),
}
#: every bundle as a release; the quickest also inside a repository, where the app takes the repository's common/
LAYOUTS = [(name, "release") for name in sorted(CASES)] + [("fct_visible_korean", "repository")]


def _deploy_python() -> Path:
    if not DEPLOY_PYTHON.is_file():
        pytest.fail(f"no {DEPLOY_PYTHON}: the MONAI Deploy App SDK lives in its own environment; run `make deploy-env`")
    return DEPLOY_PYTHON


def _no_pythonpath_env() -> dict[str, str]:
    """The environment of a user's shell: nothing of the repository importable through PYTHONPATH."""
    env = zoo.bundle_env(extra_pythonpath=())
    env.pop("PYTHONPATH", None)
    return env


def _case_files(bundle: str, dataset_dir: Path) -> list[Path]:
    """The image file(s) of the first phantom case, in channel order."""
    suffixes, _ = CASES[bundle]
    if bundle == "refnet_synapse":
        files = sorted((dataset_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[:1]
    elif bundle == "fct_visible_korean":
        files = sorted((dataset_dir / "images").glob("*.png"))[:1]
    else:
        case = sorted(p for p in dataset_dir.iterdir() if p.is_dir())[0]
        files = [case / f"{case.name}{suffix}" for suffix in suffixes]
    assert files and all(f.is_file() for f in files), f"{bundle}: phantom case files missing in {dataset_dir}: {files}"
    return files


def _bundle_folder(bundle: Path, layout: str, tmp_path: Path) -> tuple[Path, Path]:
    """(the bundle folder, the folder the README's export command runs in) for ``layout``."""
    if layout == "release":
        with zipfile.ZipFile(package_bundle.package_bundle(bundle, tmp_path / "dist")) as archive:
            archive.extractall(tmp_path / "release")
        folder = tmp_path / "release" / bundle.name
        assert (folder / "common" / "__init__.py").is_file() and (folder / "configs" / "deploy.json").is_file()
        return folder, folder
    root = tmp_path / "repository"
    folder = root / "bundles" / bundle.name
    shutil.copytree(bundle, folder, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    (root / "common").symlink_to(REPO_ROOT / "common", target_is_directory=True)
    return folder, root


def _make_tiny(folder: Path) -> None:
    """The demo's tiny network sizes written into the folder's inference.json, base model weights read."""
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    for key, value in zoo.load_json(folder / "configs" / "demo.json").get("inference", {}).items():
        parser[key] = value
    if "load_base_model" in parser:  # the demo skips RefNet's base weights; here both runs read models/base_model.pt
        parser["load_base_model"] = True
    config = {k: v for k, v in parser.get().items() if k != "_meta_"}
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=4))


def _random_weights(folder: Path) -> None:
    """Initial weights saved where a trained bundle keeps its own: models/model.pt (and refnet's base_model.pt)."""
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    (folder / "models").mkdir()
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "models" / "model.pt")
    if "base_network_def" in parser:
        torch.save(parser.get_parsed_content("base_network_def").state_dict(), folder / "models" / "base_model.pt")


def _run(cmd: list, cwd: Path, what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_no_pythonpath_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    log = result.stdout[-3000:] + result.stderr[-4000:]
    assert result.returncode == 0, f"{what} exited with {result.returncode}\n{log}"
    return result


def _read_label_map(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) if path.suffix == ".png" else np.asarray(nib.load(path).dataobj)


def _grid(image_file: Path) -> tuple[int, ...]:
    """The spatial shape a label map of ``image_file`` has on disk: a PNG's rows and columns, a volume's (x, y, z)."""
    if image_file.suffix == ".png":
        return Image.open(image_file).size[::-1]
    return nib.load(image_file).shape[:3]


@pytest.mark.parametrize("name, layout", LAYOUTS, ids=[f"{n}-{layout}" for n, layout in LAYOUTS])
def test_deploy_app_writes_the_bundles_label_map(name: str, layout: str, tmp_path: Path, phantom_root: Path):
    deploy_python = _deploy_python()
    bundle = REPO_ROOT / "bundles" / name
    spec = zoo.load_json(bundle / "configs" / "demo.json")
    dataset_dir = demo.synthetic_dir(phantom_root, spec["synthetic"]).resolve()
    demo.generate_phantoms(spec["synthetic"], dataset_dir, tmp_path / "phantoms.log")
    files = _case_files(name, dataset_dir)
    folder, export_cwd = _bundle_folder(bundle, layout, tmp_path)
    _make_tiny(folder)
    _random_weights(folder)

    # 1. The export, as the README gives it.
    rel = os.path.relpath(folder, export_cwd)
    configs = f"['{rel}/configs/inference.json','{rel}/configs/deploy.json']"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", f"{rel}/models/model.ts"]
    cmd += ["--ckpt_file", f"{rel}/models/model.pt", "--meta_file", f"{rel}/configs/metadata.json"]
    _run([*cmd, "--config_file", configs, "--bundle_root", rel], export_cwd, f"{name}: ckpt_export")
    with zipfile.ZipFile(folder / "models" / "model.ts") as archive:
        extra = {n for n in archive.namelist() if "/extra/" in n}
        assert {"model/extra/metadata.json", "model/extra/inference.json", "model/extra/deploy.json"} <= extra, extra

    # 2. The Deploy app, from a working directory of its own, with no PYTHONPATH.
    case_dir, app_cwd, out = tmp_path / "input", tmp_path / "app_cwd", tmp_path / "deploy_out"
    case_dir.mkdir()
    app_cwd.mkdir()
    for f in files:
        os.symlink(f, case_dir / f.name)
    cmd = [deploy_python, DEPLOY_APP, "--bundle", folder, "--input", case_dir, "--output", out]
    if len(files) > 1:
        cmd += ["--modality-suffix", *CASES[name][0]]
    app = _run(cmd, app_cwd, f"{name}: the MONAI Deploy app")
    assert "warning: fast_cpu_runtime" not in app.stderr, app.stderr[-2000:]  # deploy.json picks a runtime that runs
    written = sorted(out.iterdir())
    expected_name = "pred.png" if files[0].suffix == ".png" else "pred.nii.gz"
    assert [p.name for p in written] == [expected_name], f"{name}: the Deploy app wrote {written}"
    assert not any(app_cwd.iterdir()), f"{name}: the app left {sorted(app_cwd.iterdir())} in its working directory"
    label_map = _read_label_map(written[0])

    # 3. The bundle's own inference on the same case and weights (in this process: one interpreter start less).
    reference = tmp_path / "reference"
    overlay = {
        "bundle_root": str(folder),
        "datalist": [{"image": [str(f) for f in files] if len(files) > 1 else str(files[0])}],
        "output_dir": str(reference),
        # the label convention and runtime the app ran with (OpenVINO stays out of this process: later tests fork)
        **{k: v for k, v in zoo.load_json(folder / "configs" / "deploy.json").items() if k in DEPLOY_SETTINGS},
    }
    (tmp_path / "reference.json").write_text(json.dumps(overlay))
    configs = [str(folder / "configs" / "inference.json"), str(tmp_path / "reference.json")]
    bundle_run(config_file=configs, logging_file=False)
    own = sorted(reference.glob("*_seg.*"))
    assert len(own) == 1, f"{name}: the bundle's own inference wrote {own}"
    expected = _read_label_map(own[0])

    assert label_map.dtype == np.uint8
    assert label_map.shape == _grid(files[0]), f"{name}: label map {label_map.shape}, input {_grid(files[0])}"
    if expected_name == "pred.nii.gz":
        np.testing.assert_allclose(nib.load(written[0]).affine, nib.load(files[0]).affine, atol=1e-4)
    labels = set(np.unique(label_map).tolist())
    assert labels <= CASES[name][1], f"{name}: labels {sorted(labels)} outside {sorted(CASES[name][1])}"
    # Not bit-equal: TorchScript and eager sums differ in the last bits (fused kernels, and the bf16 autocast of the
    # default fast_cpu path), which flips the argmax of near-tied random-weight logits: about 1 % of the tiny 2D
    # slice's pixels (none with fast_cpu false). A wrong axis order, grid or label mapping disagrees in far more.
    agreement = float((label_map == expected).mean())
    assert agreement >= MIN_AGREEMENT, (
        f"{name}: the Deploy label map agrees with the bundle's own in {agreement:.2%} of voxels "
        f"(expected at least {MIN_AGREEMENT:.0%})"
    )


def test_deploy_app_stops_with_one_error_line(tmp_path: Path):
    """No export in the bundle folder, then no ``common`` to import: one ``error:`` line naming what is missing."""
    deploy_python = _deploy_python()
    folder = tmp_path / "somewhere" / "fct_visible_korean"
    (folder / "models").mkdir(parents=True)
    (tmp_path / "case").mkdir()
    cmd = [deploy_python, DEPLOY_APP, "--bundle", folder, "--input", tmp_path / "case", "--output", tmp_path / "out"]
    for expected in (f"error: {folder / 'models' / 'model.ts'}: no such file", f"error: {folder}: no common package"):
        result = subprocess.run(
            [str(c) for c in cmd], cwd=tmp_path, env=_no_pythonpath_env(), capture_output=True, text=True, timeout=120
        )
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith(expected), result.stderr[-2000:]
        (folder / "models" / "model.ts").touch()  # the next run gets past the export check
    assert not (tmp_path / "out").exists()
