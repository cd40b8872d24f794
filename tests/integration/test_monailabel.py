"""The zoo's MONAI Label app (integrations/monailabel) serves every bundle over HTTP, started as the README says.

What a user does, done here on phantoms: each bundle's release zip (``ci/package_bundle.py``, which vendors
``common/``) is unpacked into one folder of bundles, and ``monailabel start_server --app integrations/monailabel
--studies <folder> --conf bundles <folder>`` runs on 127.0.0.1 with the ``monailabel`` script of
``.venv-monailabel`` (``make setup-monailabel``), nothing injected: the torchvision stand-in that environment needs
is the one the Makefile installs from the repository. The studies folder holds what a Slicer user has:

- three BraTS cases as four files each (``<case>_t1.nii.gz`` ... ``<case>_flair.nii.gz``), their label maps
  saved against the FLAIR image in ``labels/final/``; ``cohra_unet_brats`` and ``mtcm_kd_t1ce_student`` are asked
  to segment a case by its FLAIR image and read the modalities they need from the case's other files;
- a CT NIfTI for ``refnet_synapse`` (base Swin UNETR, then RefNet);
- RGB PNG slices with their labels for ``fct_visible_korean``.

Checked: ``/info/`` names exactly the label values each bundle returns (BraTS 2021: 1, 2, 4) and the dimension of
the image it reads; every returned label map is on the image's grid with values among those named; ``/info/``
answers while RefNet infers; the trainers are the bundles that can train on studies (``cohra_unet_brats`` from
four-file cases, ``fct_visible_korean``), and a one-epoch run validates, replaces ``models/model.pt``, leaves no
epoch checkpoint in ``models/`` and fills ``train_stats``; a bundle released with another ``common`` is refused.

``cohra_unet_brats`` and ``mtcm_kd_t1ce_student`` are served on OpenVINO, their default ``fast_cpu_runtime``: a
request converts nothing that an earlier one converted, the same label map on a second request, and
``cohra_unet_brats`` is trained after it in the same server.

Weights are random (none are published); they are written into the unpacked copies only. Bundles are shrunk with
their ``configs/demo.json`` inference overlay, written into the copy's ``configs/inference.json`` (MONAI Label
passes no overrides to inference).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage
import torch
from monai.bundle import ConfigParser
from PIL import Image

import common
from ci import demo, zoo
from common.data.brats import BRATS_2021
from tests.helpers import REPO_ROOT, prepare_demo_data

pytestmark = pytest.mark.integration

MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
MONAILABEL_PYTHON = MONAILABEL_VENV / "bin" / "python"
SETUP_HINT = "create it with `make setup-monailabel` (or run `make test-integration`, which does)"
APP = REPO_ROOT / "integrations" / "monailabel"

BUNDLES = ("cohra_unet_brats", "mtcm_kd_t1ce_student", "refnet_synapse", "fct_visible_korean")
TRAINERS = ("cohra_unet_brats", "fct_visible_korean")
#: a bundle served on OpenVINO (its default fast_cpu_runtime) and a trainer, so that training follows OpenVINO in the
#: same server
OPENVINO = "cohra_unet_brats"
#: a copy of a release whose common is another version: the server must leave it out
MISMATCHED = "fct_visible_korean_other_common"
DIMENSION = {"cohra_unet_brats": 3, "mtcm_kd_t1ce_student": 3, "refnet_synapse": 3, "fct_visible_korean": 2}
ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior vena cava", "portal and splenic veins", "pancreas", "adrenal glands")  # fmt: skip
LABELS = {
    "cohra_unet_brats": {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4},
    "mtcm_kd_t1ce_student": {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4},
    "refnet_synapse": {name: value for value, name in enumerate(ORGANS, start=1)},
    "fct_visible_korean": {"bone": 1, "muscle": 2},
}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_CASES = 3
SERVER_START_S = 180
INFER_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 420
#: the longest /info/ may take while RefNet infers (it answered nothing until the inference ended before)
INFO_WHILE_INFERRING_S = 5.0
LARGE_CT_SHAPE = (160, 160, 64)


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


def _install_bundles(bundles_dir: Path, work: Path) -> None:
    """The release zips unpacked into ``bundles_dir``, shrunk, with random weights; plus :data:`MISMATCHED`."""
    dist = work / "dist"
    paths = [str(REPO_ROOT / "bundles" / name) for name in BUNDLES]
    subprocess.run([sys.executable, "-m", "ci.package_bundle", *paths, "--out", str(dist)], cwd=REPO_ROOT, check=True)
    bundles_dir.mkdir()
    for name in BUNDLES:
        (zip_path,) = dist.glob(f"{name}_v*.zip")
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(bundles_dir)
        bundle_dir = bundles_dir / name
        spec = zoo.load_json(REPO_ROOT / "bundles" / name / "configs" / "demo.json")
        # Small networks for 2 CPU cores. The demo's datalist is not MONAI Label's business, and the demo skips
        # RefNet's base model weights, which MONAI Label must load (common.engines.with_weights).
        overlay = {k: v for k, v in spec.get("inference", {}).items() if k not in ("datalist", "load_base_model")}
        if name == "cohra_unet_brats":
            # 8 windows instead of 27 over the 64 x 64 x 48 phantom: this network is the slowest of the four on CPU.
            overlay["inferer#inferer#overlap"] = 0.0
        _write_config(bundle_dir / "configs" / "inference.json", overlay)
        if name in TRAINERS:
            # The demo's sizes; its data files are not used (MONAI Label sets train#dataset#data and validate#...).
            train = {k: v for k, v in spec["train"].items() if k not in ("datalist_file", "split_file", "dataset_dir")}
            _write_config(bundle_dir / "configs" / "train.json", {**train, "num_workers": 0})
        _save_random_weights(bundle_dir)
    other = bundles_dir / MISMATCHED
    shutil.copytree(bundles_dir / "fct_visible_korean", other)
    init = other / "common" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{common.__version__}"', '__version__ = "0.0.1"'))


def _phantoms(name: str, phantom_root: Path, work: Path) -> Path:
    """The phantoms of a bundle's demo (shared with the other tests of the session), without its prepare steps."""
    spec = zoo.load_json(REPO_ROOT / "bundles" / name / "configs" / "demo.json")["synthetic"]
    dataset_dir = demo.synthetic_dir(phantom_root, spec).resolve()
    demo.generate_phantoms(spec, dataset_dir, work / f"{name}_data.log")
    return dataset_dir


def _brats_studies(studies: Path, phantom_root: Path, work: Path) -> Study:
    """BraTS cases as the archives store them, four files each, flat in the studies folder as Slicer users keep
    them; each label map saved against the case's FLAIR image. The first case's FLAIR is the study to infer."""
    dataset_dir = _phantoms("cohra_unet_brats", phantom_root, work)
    labels_dir = studies / "labels" / "final"
    labels_dir.mkdir(parents=True, exist_ok=True)
    cases = sorted(p for p in dataset_dir.iterdir() if p.is_dir())[:BRATS_CASES]
    for case_dir in cases:
        for modality in BRATS_MODALITIES:
            shutil.copyfile(
                case_dir / f"{case_dir.name}_{modality}.nii.gz", studies / f"{case_dir.name}_{modality}.nii.gz"
            )
        shutil.copyfile(case_dir / f"{case_dir.name}_seg.nii.gz", labels_dir / f"{case_dir.name}_flair.nii.gz")
    flair = studies / f"{cases[0].name}_flair.nii.gz"
    shape = tuple(int(s) for s in nib.load(flair).shape[:3])
    return Study(flair.name.removesuffix(".nii.gz"), flair, shape, {0, *BRATS_2021.label_values})


def _ct_study(studies: Path, phantom_root: Path, work: Path) -> Study:
    dataset_dir = _phantoms("refnet_synapse", phantom_root, work)
    source = sorted((dataset_dir / "RawData" / "Training" / "img").glob("img*.nii.gz"))[0]
    target = studies / source.name
    shutil.copyfile(source, target)
    shape = tuple(int(s) for s in nib.load(target).shape[:3])
    return Study(target.name.removesuffix(".nii.gz"), target, shape, set(range(13)))


def _large_ct_study(studies: Path, small: Study) -> Study:
    """The CT phantom enlarged to :data:`LARGE_CT_SHAPE` (nearest neighbour, same field of view), so that
    RefNet's inference lasts long enough to ask the server something else meanwhile."""
    image = nib.load(small.path)
    factors = [n / s for n, s in zip(LARGE_CT_SHAPE, image.shape, strict=True)]
    data = scipy.ndimage.zoom(np.asarray(image.dataobj), factors, order=0)
    affine = image.affine @ np.diag([*(1 / f for f in factors), 1.0])
    target = studies / "large_ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), target)
    return Study("large_ct", target, LARGE_CT_SHAPE, set(range(13)))


def _png_studies(studies: Path, phantom_root: Path, work: Path) -> list[Study]:
    prepared = work / "visible_korean"
    _, dataset_dir = prepare_demo_data(REPO_ROOT / "bundles" / "fct_visible_korean", phantom_root, prepared)
    labels_dir = studies / "labels" / "final"
    labels_dir.mkdir(parents=True, exist_ok=True)
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
    bundles_dir = work / "zoo"
    _install_bundles(bundles_dir, work)

    studies = work / "studies"
    studies.mkdir()
    brats = _brats_studies(studies, phantom_root, work)
    pngs = _png_studies(studies, phantom_root, work)
    study_of = {
        "cohra_unet_brats": brats,
        "mtcm_kd_t1ce_student": brats,
        "refnet_synapse": _ct_study(studies, phantom_root, work),
        "fct_visible_korean": pngs[0],
    }
    study_of["refnet_synapse_large"] = _large_ct_study(studies, study_of["refnet_synapse"])

    # A user's shell: nothing of this test's own Python environment leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["MONAI_LABEL_SESSION_PATH"] = str(work / "sessions")  # not the user's home folder
    env["OMP_NUM_THREADS"] = "2"
    env["ZOO_OPENVINO_CACHE"] = str(work / "openvino")  # not the user's cache folder

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    # The README's commands: the environment activated (the monailabel script runs the python first on PATH), then
    # the server.
    server = ["monailabel", "start_server", "--app", str(APP), "--studies", str(studies), "--conf", "bundles"]
    server += [str(bundles_dir), "--host", "127.0.0.1", "--port", str(port)]
    cmd = ["bash", "-c", f". {shlex.quote(str(MONAILABEL_VENV / 'bin' / 'activate'))} && exec {shlex.join(server)}"]
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
        yield {
            "bundles": bundles_dir,
            "url": base_url,
            "info": info,
            "studies": study_of,
            "work": work,
            "log": log_path,
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log_path: Path, chars: int = 6000) -> str:
    return log_path.read_text(errors="replace")[-chars:]


def test_info_names_the_returned_labels_and_the_image_dimension(server):
    models = server["info"]["models"]
    assert sorted(models) == sorted(BUNDLES), f"/info/ models {sorted(models)}:\n{_tail(server['log'])}"
    for name in BUNDLES:
        assert models[name]["labels"] == LABELS[name], f"{name}: /info/ labels {models[name]['labels']}"
        assert models[name]["dimension"] == DIMENSION[name], f"{name}: dimension {models[name]['dimension']}"


def test_a_bundle_released_with_another_common_is_refused(server):
    assert MISMATCHED not in server["info"]["models"]
    lines = [line for line in _tail(server["log"], 10**6).splitlines() if "error:" in line and MISMATCHED in line]
    assert lines and "ships common 0.0.1" in lines[0], f"no error line for {MISMATCHED}:\n{_tail(server['log'])}"


@pytest.mark.parametrize("name", BUNDLES)
def test_infer_returns_a_label_map_on_the_image_grid(server, name):
    study: Study = server["studies"][name]
    url = f"{server['url']}/infer/{name}?image={study.image_id}&output=image"
    status, payload, _ = _http("POST", url, body={"device": "cpu"}, timeout=INFER_TIMEOUT_S)
    assert status == 200, f"/infer/{name} answered {status}: {payload[:2000]!r}\n{_tail(server['log'])}"
    label_map = _read_label_map(payload, server["work"], study)
    assert label_map.shape == study.spatial_shape, f"{name}: label map {label_map.shape}, image {study.spatial_shape}"
    values = {int(v) for v in np.unique(label_map)}
    named = {0, *LABELS[name].values()}
    assert values <= named, f"{name}: label values {sorted(values)}, /info/ names {sorted(named)}"


def test_brats_bundles_read_the_modalities_they_need_from_the_case_files(server):
    log = _tail(server["log"], 10**6)
    case = server["studies"]["cohra_unet_brats"].image_id.removesuffix("_flair")
    four = [f"{case}_{m}.nii.gz" for m in BRATS_MODALITIES]
    assert f"reading {four}" in log, f"cohra_unet_brats did not read the four files of {case}:\n{_tail(server['log'])}"
    assert f"reading {[f'{case}_t1ce.nii.gz']}" in log, "mtcm_kd_t1ce_student did not read the case's T1ce"


def test_openvino_serves_one_request_after_another_and_training_after_them(server):
    """The OpenVINO runtime in the long-lived server: a second request converts nothing more, and gives the same
    label map for the same study (OpenVINO's thread pool survives no fork; the server forks none, and training runs
    in a process of its own: the trainer test after this one trains this bundle)."""
    study: Study = server["studies"][OPENVINO]
    url = f"{server['url']}/infer/{OPENVINO}?image={study.image_id}&output=image"
    cache = server["work"] / "openvino"
    maps, converted = [], []
    for _ in range(2):
        status, payload, _ = _http("POST", url, body={"device": "cpu"}, timeout=INFER_TIMEOUT_S)
        assert status == 200, f"/infer/{OPENVINO} answered {status}: {payload[:2000]!r}\n{_tail(server['log'])}"
        maps.append(_read_label_map(payload, server["work"], study))
        converted.append(sorted(p.parent.name for p in cache.glob("*/model.xml")))
    np.testing.assert_array_equal(maps[0], maps[1])
    assert converted[0] and converted[1] == converted[0], f"{OPENVINO}: converted again on a second request {converted}"
    assert "warning: fast_cpu_runtime" not in _tail(server["log"], 10**6), _tail(server["log"])
    checks = [json.loads(p.read_text())["ok"] for p in cache.glob("*/check_*.json")]
    assert checks and all(checks), f"the window shapes' checks against PyTorch: {checks}"


def test_info_answers_while_refnet_infers(server):
    study: Study = server["studies"]["refnet_synapse_large"]
    url = f"{server['url']}/infer/refnet_synapse?image={study.image_id}&output=image"
    answer = {}
    request = threading.Thread(target=lambda: answer.update(result=_http("POST", url, {"device": "cpu"}, 600)))
    started = time.monotonic()
    request.start()
    waits = []
    while request.is_alive():
        asked = time.monotonic()
        status, _, _ = _http("GET", f"{server['url']}/info/", timeout=600)
        if request.is_alive():  # answered while the inference still ran
            waits.append(time.monotonic() - asked)
        assert status == 200
        time.sleep(0.5)
    request.join()
    took = time.monotonic() - started
    assert answer["result"][0] == 200, f"/infer/refnet_synapse answered {answer['result'][0]}"
    # a blocked server would answer the first /info/ only when the inference ends, after more than the limit
    assert took > 2 * INFO_WHILE_INFERRING_S, f"the inference took {took:.1f} s: too short to show anything"
    assert len(waits) >= 3, f"/info/ answered {len(waits)} times during the {took:.0f} s of inference"
    assert max(waits) < INFO_WHILE_INFERRING_S, f"/info/ took up to {max(waits):.1f} s while RefNet inferred: {waits}"


def test_trainers_are_the_bundles_that_can_train_on_studies(server):
    assert sorted(server["info"]["trainers"]) == sorted(TRAINERS)
    log = _tail(server["log"], 10**6)
    for name in set(BUNDLES) - set(TRAINERS):
        assert re.search(rf"{name} is not offered for training here: .+", log), f"no reason given for {name}"


@pytest.mark.parametrize("name", TRAINERS)
def test_one_epoch_validates_saves_the_model_and_reports_stats(server, name):
    models = server["bundles"] / name / "models"
    weights = models / "model.pt"
    before = weights.stat().st_mtime_ns
    # fewer epochs than the bundle's validation interval, from the weights the server started with
    body = {"max_epochs": 1, "val_split": 0.4, "device": "cpu", "multi_gpu": False, "pretrained": True}
    status, payload, _ = _http("POST", f"{server['url']}/train/{name}", body=body)
    assert status == 200, f"/train/{name} answered {status}: {payload[:2000]!r}"
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    task = {}
    while time.monotonic() < deadline:
        status, payload, _ = _http("GET", f"{server['url']}/train/")
        task = json.loads(payload) if status == 200 else {}
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(2)
    assert task.get("status") == "DONE", f"training ended as {task.get('status')}: {task}\n{_tail(server['log'])}"
    assert weights.stat().st_mtime_ns > before, f"training finished but did not save {weights}"
    held = sorted(p.name for p in models.iterdir())
    assert held == ["model.pt"], f"{models} holds {held}: epoch checkpoints belong elsewhere"
    status, payload, _ = _http("GET", f"{server['url']}/info/")
    stats = json.loads(payload)["train_stats"][name]
    assert stats["epochs"] == 1 and stats["best_metric_epoch"] == 1, stats
