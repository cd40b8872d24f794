"""Every bundle serves in MONAI Label's ``monaibundle`` sample app, over HTTP, from a local model folder.

What a user does, done here on phantoms: the sample app comes from the installed package (``monailabel apps
--download``), each bundle's release zip (``ci/package_bundle.py``, which vendors ``common/``) is unpacked into the
app's ``model/`` folder, and ``monailabel start_server`` runs on 127.0.0.1 with ``--conf models <all four>`` and
``--conf zoo_source local`` (offline: the default source lists and downloads bundles from the zoo). One study folder
holds a synthetic image per bundle in the form MONAI Label hands a bundle: ONE file per study.

- cohra_unet_brats: the four BraTS modalities stacked into one 4-channel NIfTI (order t1, t1ce, t2, flair);
- mtcm_kd_t1ce_student: the T1ce NIfTI;
- refnet_synapse: the CT NIfTI (base Swin UNETR, then RefNet);
- fct_visible_korean: an RGB PNG slice, with its label in ``labels/final/`` so that ``/train`` has data.

``/infer/<model>`` must return a label map on the image's grid whose values are in the bundle's label set, and a
one-epoch ``/train/fct_visible_korean`` must start and finish. Weights are random (none are published); they are
written into the temporary copies only. Bundles are shrunk with their ``configs/demo.json`` inference overlay,
written into the copy's ``configs/inference.json`` (MONAI Label passes no overrides to inference).

MONAI Label runs from its own virtual environment, ``.venv-monailabel`` (``make setup-monailabel``, part of
``make test-integration``; see requirements-monailabel.txt for why it is separate). That environment has torch's
CPU build, and torchvision publishes no CPU build of 0.28 for it (its wheel needs CUDA torch's libraries and fails
to import), so the server gets a stand-in ``torchvision.utils`` on its PYTHONPATH: monailabel imports
``make_grid``/``save_image`` from it for pathology debug images only; the stand-in raises if they are ever called.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from ci import demo, zoo
from tests.helpers import REPO_ROOT, prepare_demo_data

pytestmark = pytest.mark.integration

MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
MONAILABEL_PYTHON = MONAILABEL_VENV / "bin" / "python"
# `python -m monailabel.main` is what the `monailabel` script runs; the script also puts the folder above the
# environment (here the repository root) on PYTHONPATH, which would hide whether the bundles' vendored `common` works.
MONAILABEL = [str(MONAILABEL_PYTHON), "-m", "monailabel.main"]
SETUP_HINT = "create it with `make setup-monailabel` (or run `make test-integration`, which does)"

BUNDLES = ("cohra_unet_brats", "mtcm_kd_t1ce_student", "refnet_synapse", "fct_visible_korean")
TRAIN_BUNDLE = "fct_visible_korean"
# What /info/ reports: MONAI Label takes the length of the first metadata input's spatial_shape. RefNet's own input
# is an axial slice, so refnet_synapse reports 2 although it segments 3D CT volumes (its study is a 3D NIfTI).
DIMENSION = {"cohra_unet_brats": 3, "mtcm_kd_t1ce_student": 3, "refnet_synapse": 2, "fct_visible_korean": 2}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
SERVER_START_S = 180
INFER_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 300

TORCHVISION_STANDIN = '''"""Stand-in for torchvision: see tests/integration/test_monailabel.py."""
'''
TORCHVISION_UTILS_STANDIN = '''"""monailabel imports these for pathology debug images only; no bundle calls them."""


def make_grid(*args, **kwargs):
    raise NotImplementedError("torchvision is not installed in .venv-monailabel (no CPU build for torch 2.13)")


save_image = make_grid
'''


@dataclass
class Study:
    """One image in the server's study folder and what the bundle's label map must look like."""

    image_id: str
    path: Path
    spatial_shape: tuple[int, ...]
    labels: set[int]


def _require_venv() -> None:
    installed = MONAILABEL_PYTHON.is_file() and (
        subprocess.run([str(MONAILABEL_PYTHON), "-c", "import monailabel"], capture_output=True).returncode == 0
    )
    if not installed:
        pytest.fail(f"MONAI Label is not installed in '{MONAILABEL_VENV}'; {SETUP_HINT}.", pytrace=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def _write_config(path: Path, overrides: dict) -> None:
    """Apply ``id#path`` overrides to a bundle config file, the way ``monai.bundle run`` would at run time."""
    parser = ConfigParser()
    parser.read_config(str(path))
    for key, value in overrides.items():
        parser[key] = value
    ConfigParser.export_config_file(parser.get(), str(path), indent=4)


def _save_random_weights(bundle_dir: Path) -> None:
    """``models/model.pt`` (and RefNet's base model) from the copy's own network definitions, randomly initialised."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    (bundle_dir / "models").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle_dir / "models" / "model.pt")
    if "base_network_def" in parser:
        base = parser.get_parsed_content("base_network_def")
        torch.save(base.state_dict(), Path(parser.get_parsed_content("base_ckpt")))


def _install_bundles(app_dir: Path, work: Path, phantom_root: Path) -> None:
    dist = work / "dist"
    paths = [str(REPO_ROOT / "bundles" / name) for name in BUNDLES]
    subprocess.run([sys.executable, "-m", "ci.package_bundle", *paths, "--out", str(dist)], cwd=REPO_ROOT, check=True)
    model_dir = app_dir / "model"
    model_dir.mkdir(exist_ok=True)
    for name in BUNDLES:
        (zip_path,) = dist.glob(f"{name}_v*.zip")
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(model_dir)
        bundle_dir = model_dir / name
        spec = zoo.load_json(REPO_ROOT / "bundles" / name / "configs" / "demo.json")
        # Small networks for 2 CPU cores. The demo's datalist is not MONAI Label's business, and the demo skips
        # RefNet's base model weights, which MONAI Label must load (common.engines.with_weights).
        overlay = {k: v for k, v in spec.get("inference", {}).items() if k not in ("datalist", "load_base_model")}
        if name == "cohra_unet_brats":
            # 8 windows instead of 27 over the 64 x 64 x 48 phantom: this network is the slowest of the four on CPU.
            overlay["inferer#inferer#overlap"] = 0.0
        _write_config(bundle_dir / "configs" / "inference.json", overlay)
        if name == TRAIN_BUNDLE:
            # The demo's sizes; its datalist file is not used (MONAI Label sets train#dataset#data and validate#...).
            train = {k: v for k, v in spec["train"].items() if k != "datalist_file"}
            _write_config(bundle_dir / "configs" / "train.json", {**train, "num_workers": 0, "val_interval": 1})
        _save_random_weights(bundle_dir)


def _phantoms(name: str, phantom_root: Path, work: Path) -> Path:
    """The phantoms of a bundle's demo (shared with the other tests of the session), without its prepare steps."""
    spec = zoo.load_json(REPO_ROOT / "bundles" / name / "configs" / "demo.json")["synthetic"]
    dataset_dir = demo.synthetic_dir(phantom_root, spec).resolve()
    demo.generate_phantoms(spec, dataset_dir, work / f"{name}_data.log")
    return dataset_dir


def _brats_studies(studies: Path, phantom_root: Path, work: Path) -> list[Study]:
    dataset_dir = _phantoms("cohra_unet_brats", phantom_root, work)
    case_dir = sorted(p for p in dataset_dir.iterdir() if p.is_dir())[0]
    case = case_dir.name
    volumes = [nib.load(case_dir / f"{case}_{m}.nii.gz") for m in BRATS_MODALITIES]
    stacked = np.stack([np.asarray(v.dataobj, dtype=np.float32) for v in volumes], axis=-1)
    four_channel = studies / f"{case}_4ch.nii.gz"
    nib.save(nib.Nifti1Image(stacked, volumes[0].affine), four_channel)
    t1ce = studies / f"{case}_t1ce.nii.gz"
    shutil.copyfile(case_dir / f"{case}_t1ce.nii.gz", t1ce)
    shape = tuple(int(s) for s in volumes[0].shape[:3])
    # BraTS 2021 label convention: 0 background, 1 necrosis, 2 oedema, 4 enhancing tumour.
    labels = {0, 1, 2, 4}
    return [
        Study(four_channel.name.removesuffix(".nii.gz"), four_channel, shape, labels),
        Study(t1ce.name.removesuffix(".nii.gz"), t1ce, shape, labels),
    ]


def _ct_study(studies: Path, phantom_root: Path, work: Path) -> Study:
    dataset_dir = _phantoms("refnet_synapse", phantom_root, work)
    source = sorted((dataset_dir / "RawData" / "Training" / "img").glob("img*.nii.gz"))[0]
    target = studies / source.name
    shutil.copyfile(source, target)
    shape = tuple(int(s) for s in nib.load(target).shape[:3])
    return Study(target.name.removesuffix(".nii.gz"), target, shape, set(range(13)))


def _png_studies(studies: Path, phantom_root: Path, work: Path) -> list[Study]:
    prepared = work / "visible_korean"
    _, dataset_dir = prepare_demo_data(REPO_ROOT / "bundles" / "fct_visible_korean", phantom_root, prepared)
    labels_dir = studies / "labels" / "final"
    labels_dir.mkdir(parents=True)
    result = []
    for image in sorted((dataset_dir / "images").glob("*.png"))[:5]:
        shutil.copyfile(image, studies / image.name)
        shutil.copyfile(prepared / "labels" / image.name, labels_dir / image.name)
        width, height = Image.open(image).size
        result.append(Study(image.stem, studies / image.name, (width, height), {0, 1, 2}))
    return result


def _read_label_map(payload: bytes, work: Path, study: Study) -> np.ndarray:
    """The label map the server returned, in the image's array axes (x, y[, z])."""
    if study.path.suffix == ".png":
        # MONAI's PNG reader and writer keep the (width, height) axis order of MONAI arrays.
        return np.asarray(Image.open(io.BytesIO(payload))).T
    out = work / f"{study.image_id}_label.nii.gz"
    out.write_bytes(payload)
    return np.asarray(nib.load(out).dataobj)


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_root):
    _require_venv()
    work = tmp_path_factory.mktemp("monailabel")
    subprocess.run(
        [*MONAILABEL, "apps", "--download", "--name", "monaibundle", "--output", str(work / "apps")],
        check=True,
        capture_output=True,
    )
    app_dir = work / "apps" / "monaibundle"
    assert (app_dir / "main.py").is_file(), f"monailabel apps --download gave no monaibundle app in {work / 'apps'}"
    _install_bundles(app_dir, work, phantom_root)

    studies = work / "studies"
    studies.mkdir()
    brats_4ch, brats_t1ce = _brats_studies(studies, phantom_root, work)
    pngs = _png_studies(studies, phantom_root, work)
    study_of = {
        "cohra_unet_brats": brats_4ch,
        "mtcm_kd_t1ce_student": brats_t1ce,
        "refnet_synapse": _ct_study(studies, phantom_root, work),
        "fct_visible_korean": pngs[0],
    }

    standin = work / "standin" / "torchvision"
    standin.mkdir(parents=True)
    (standin / "__init__.py").write_text(TORCHVISION_STANDIN)
    (standin / "utils.py").write_text(TORCHVISION_UTILS_STANDIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(standin.parent)
    env["PATH"] = f"{MONAILABEL_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MONAI_LABEL_DATASTORE_AUTO_RELOAD"] = "false"
    env["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"
    env["MONAI_LABEL_TRACKING_ENABLED"] = "false"
    env["MONAI_LABEL_SESSION_PATH"] = str(work / "sessions")
    env["OMP_NUM_THREADS"] = "2"

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [*MONAILABEL, "start_server", "--app", str(app_dir), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--conf", "models", ",".join(BUNDLES)]
    cmd += ["--conf", "zoo_source", "local", "--conf", "sam2", "false", "--conf", "preload", "false"]
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        info = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, body, _ = _http("GET", f"{base_url}/info/", timeout=5)
                if status == 200:
                    info = json.loads(body)
                    break
            except OSError:
                pass
            time.sleep(1)
        if info is None:
            pytest.fail(f"MONAI Label did not serve /info/ within {SERVER_START_S} s:\n{_tail(log_path)}")
        yield {"app": app_dir, "url": base_url, "info": info, "studies": study_of, "work": work, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log_path: Path, chars: int = 6000) -> str:
    return log_path.read_text(errors="replace")[-chars:]


def test_info_lists_every_bundle_for_inference(server):
    models = server["info"]["models"]
    for name in BUNDLES:
        assert name in models, f"/info/ lists no model '{name}' (models: {sorted(models)}):\n{_tail(server['log'])}"
        assert models[name]["dimension"] == DIMENSION[name], f"{name}: dimension {models[name]['dimension']}"
    assert TRAIN_BUNDLE in server["info"]["trainers"], f"/info/ lists no trainer '{TRAIN_BUNDLE}'"


@pytest.mark.parametrize("name", BUNDLES)
def test_infer_returns_a_label_map_on_the_image_grid(server, name):
    study: Study = server["studies"][name]
    url = f"{server['url']}/infer/{name}?image={study.image_id}&output=image"
    status, payload, _ = _http("POST", url, body={"device": "cpu"}, timeout=INFER_TIMEOUT_S)
    assert status == 200, f"/infer/{name} answered {status}: {payload[:2000]!r}\n{_tail(server['log'])}"
    label_map = _read_label_map(payload, server["work"], study)
    assert label_map.shape == study.spatial_shape, f"{name}: label map {label_map.shape}, image {study.spatial_shape}"
    values = {int(v) for v in np.unique(label_map)}
    assert values <= study.labels, f"{name}: label values {sorted(values)} outside {sorted(study.labels)}"


def test_train_one_epoch_starts_and_finishes(server):
    weights = server["app"] / "model" / TRAIN_BUNDLE / "models" / "model.pt"
    before = weights.stat().st_mtime_ns
    body = {"max_epochs": 1, "val_split": 0.4, "device": "cpu", "multi_gpu": False, "pretrained": True}
    status, payload, _ = _http("POST", f"{server['url']}/train/{TRAIN_BUNDLE}", body=body)
    assert status == 200, f"/train/{TRAIN_BUNDLE} answered {status}: {payload[:2000]!r}"
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    task = {}
    while time.monotonic() < deadline:
        status, payload, _ = _http("GET", f"{server['url']}/train/")
        task = json.loads(payload) if status == 200 else {}
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(2)
    assert task.get("status") == "DONE", f"training ended as {task.get('status')}: {task}\n{_tail(server['log'])}"
    # The validation after the epoch saves the best model over the random-init weights the server started with.
    assert weights.stat().st_mtime_ns > before, f"training finished but did not save {weights}"
