"""The shared checks every bundle goes through, run through the tools' real entry points.

Each bundle in ``bundles/`` (and the tooling fixture) must: pass ``ci/verify_bundle.py``; package into a
reproducible zip that runs inference with ``python -m monai.bundle run`` outside the repository; download with
``python -m monai.bundle download --url`` from a local HTTP server and load with ``monai.bundle.load``.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import demo
import package_bundle
import pytest
import zoo
from conftest import BUNDLES_UNDER_TEST, FIXTURE_BUNDLE, REPO_ROOT

BUNDLE_IDS = [b.name for b in BUNDLES_UNDER_TEST]


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def _outside_repo_env() -> dict:
    """An environment in which nothing of the repository is importable (no PYTHONPATH at all)."""
    env = zoo.bundle_env(extra_pythonpath=())
    env.pop("PYTHONPATH", None)
    return env


def _with_random_weights(bundle: Path, dest: Path, overrides: dict | None = None) -> Path:
    """A copy of ``bundle`` whose ``models/model.pt`` holds the state dict of a freshly built ``network_def``.

    ``overrides`` are the config overrides inference will run with (they may change the network's size).
    """
    import torch
    from monai.bundle import ConfigParser

    copy = dest / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.json"))
    for key, value in (overrides or {}).items():
        parser[key] = value
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    (copy / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), copy / "models" / "model.pt")
    return copy


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("phantoms")


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=BUNDLE_IDS)
def test_verify_bundle_passes(bundle: Path):
    result = _run([sys.executable, "ci/verify_bundle.py", str(bundle)], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"PASSED {bundle.name}" in result.stdout
    if zoo.find_schema() is None:
        pytest.skip("metadata schema not validated: no offline copy of the schema on this machine")
    assert "ok   schema" in result.stdout


def test_verify_bundle_lists_every_failure(tmp_path: Path):
    broken = tmp_path / FIXTURE_BUNDLE.name
    shutil.copytree(FIXTURE_BUNDLE, broken)
    meta_file = broken / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "0.2.0"  # without a changelog entry
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3  # the network gives 2
    meta["description"] = "see https://example.org/page#section"
    meta_file.write_text(json.dumps(meta))
    train_file = broken / "configs" / "train.json"
    train = json.loads(train_file.read_text())
    train["train"]["handlers"][0]["interval"] = 1  # ValidationHandler no longer references @val_interval
    train_file.write_text(json.dumps(train))

    result = _run([sys.executable, "ci/verify_bundle.py", str(broken)], cwd=REPO_ROOT)
    assert result.returncode == 1
    summary = result.stdout[result.stdout.index("FAILED") :]
    assert "version '0.2.0' has no entry in changelog" in summary
    assert "'#' in" in summary and "metadata.json/description" in summary
    assert "output channel number `2` doesn't match: `3`" in summary
    assert "val_interval" in summary


def test_verify_bundle_names_missing_files(tmp_path: Path):
    broken = tmp_path / FIXTURE_BUNDLE.name
    shutil.copytree(FIXTURE_BUNDLE, broken)
    (broken / "LICENSE").unlink()
    (broken / "docs" / "data_license.txt").unlink()
    result = _run([sys.executable, "ci/verify_bundle.py", str(broken)], cwd=REPO_ROOT)
    assert result.returncode == 1
    assert "missing in" in result.stdout and "LICENSE" in result.stdout and "docs/data_license.txt" in result.stdout


def test_package_is_reproducible_and_vendors_common(tmp_path: Path):
    first = package_bundle.package_bundle(FIXTURE_BUNDLE, tmp_path / "a")
    second = package_bundle.package_bundle(FIXTURE_BUNDLE, tmp_path / "b")
    assert first.name == "tiny_wt_segmentation_v0.1.0.zip"
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert all(n.startswith("tiny_wt_segmentation/") for n in names)
    assert "tiny_wt_segmentation/common/__init__.py" in names
    assert "tiny_wt_segmentation/configs/inference.json" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") or "/models/" in n for n in names)


def test_package_includes_weights_when_present(tmp_path: Path):
    bundle = _with_random_weights(FIXTURE_BUNDLE, tmp_path)
    names = zipfile.ZipFile(package_bundle.package_bundle(bundle, tmp_path / "dist")).namelist()
    assert "tiny_wt_segmentation/models/model.pt" in names


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=BUNDLE_IDS)
def test_packaged_bundle_infers_outside_the_repo(bundle: Path, tmp_path: Path, phantom_root: Path):
    spec = zoo.load_json(bundle / "configs" / "demo.json")
    dataset_dir = demo.synthetic_dir(phantom_root, spec["synthetic"])
    work_dir = tmp_path / "work"
    demo.prepare_data(spec, dataset_dir, work_dir, tmp_path / "data.log")

    src = _with_random_weights(bundle, tmp_path / "src", spec.get("inference"))
    zip_path = package_bundle.package_bundle(src, tmp_path / "dist")
    release = tmp_path / "release"
    zipfile.ZipFile(zip_path).extractall(release)
    extracted = release / bundle.name
    env = _outside_repo_env()
    where = _run([sys.executable, "-c", "import common, sys; print(common.__file__); print(sys.path)"], extracted, env)
    assert where.stdout.startswith(str(extracted / "common")), where.stdout + where.stderr
    assert str(REPO_ROOT) + "'" not in where.stdout, "the repository root must not be importable"

    overlay = {"dataset_dir": str(dataset_dir), "demo_work_dir": str(work_dir), **spec.get("inference", {})}
    (tmp_path / "overlay.json").write_text(json.dumps(overlay))
    files = f"['configs/inference.json','{tmp_path / 'overlay.json'}']"
    result = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", files], extracted, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predictions = sorted((extracted / "eval").rglob("*.nii.gz")) + sorted((extracted / "eval").rglob("*.png"))
    assert predictions, f"no prediction written under {extracted / 'eval'}"


@pytest.fixture
def http_server(tmp_path: Path):
    """A static file server on 127.0.0.1 serving ``tmp_path/www``, stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=BUNDLE_IDS)
def test_download_from_url_then_load(bundle: Path, tmp_path: Path, http_server):
    www, base_url = http_server
    zip_path = package_bundle.package_bundle(_with_random_weights(bundle, tmp_path / "src"), www)
    downloads = tmp_path / "downloads"
    env = _outside_repo_env()
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", bundle.name]
    cmd += ["--url", f"{base_url}/{zip_path.name}", "--bundle_dir", str(downloads)]
    result = _run(cmd, tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (downloads / bundle.name / "configs" / "metadata.json").is_file()

    # As the README says: a bundle whose configs use `common` needs its folder on sys.path before `load`.
    script = f"""
import sys, torch
from monai.bundle import load
sys.path.insert(0, {str(downloads / bundle.name)!r})
net = load(name={bundle.name!r}, bundle_dir={str(downloads)!r})
saved = torch.load({str(downloads / bundle.name / "models" / "model.pt")!r}, weights_only=True)
assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items()), "weights not loaded"
print("loaded", type(net).__name__, sum(p.numel() for p in net.parameters()))
"""
    result = _run([sys.executable, "-c", script], tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "loaded" in result.stdout
