"""The shared checks every bundle goes through, run through the tools' real entry points.

Each bundle in ``bundles/`` (and the tooling fixture) must pass ``ci/verify_bundle.py`` and survive a release the
way a user meets it: ``make package`` builds a reproducible zip and the catalogue ``model_info.json``; the zip and
the weights are served from 127.0.0.1; in an empty folder outside the repository, ``python -m monai.bundle
download --url`` fetches the bundle, ``python -m monai.bundle download_large_files`` fetches its weights (and
refuses a file whose sha256 differs from ``large_files.yml``), ``python -m monai.bundle run`` infers with them,
and ``monai.bundle.load`` returns the network holding them.
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

import pytest

from ci import large_files, package_bundle, zoo
from common.io import sha256_file
from tests.helpers import BUNDLES_UNDER_TEST, FIXTURE_BUNDLE, REPO_ROOT, prepare_demo_data

BUNDLE_IDS = [b.name for b in BUNDLES_UNDER_TEST]


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def _outside_repo_env() -> dict:
    """An environment in which nothing of the repository is importable (no PYTHONPATH at all)."""
    env = zoo.bundle_env(extra_pythonpath=())
    env.pop("PYTHONPATH", None)
    return env


def _copy_bundle(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` at ``dest/<name>`` without weights or local run outputs."""
    copy = dest / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    return copy


def _initial_weights(bundle: Path, target: Path, overrides: dict | None = None) -> Path:
    """Save the state dict of a freshly built ``network_def`` of ``bundle``'s inference.json to ``target``.

    ``overrides`` are the config overrides inference will run with (they may change the network's size). No
    trained weights exist here; initial ones take every path that real ones would.
    """
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for key, value in (overrides or {}).items():
        parser[key] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), target)
    return target


def _with_random_weights(bundle: Path, dest: Path, overrides: dict | None = None) -> Path:
    """A copy of ``bundle`` whose ``models/model.pt`` holds the state dict of a freshly built ``network_def``."""
    copy = _copy_bundle(bundle, dest)
    _initial_weights(copy, copy / "models" / "model.pt", overrides)
    return copy


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=BUNDLE_IDS)
def test_verify_bundle_passes(bundle: Path):
    result = _run([sys.executable, "-m", "ci.verify_bundle", str(bundle)], cwd=REPO_ROOT)
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
    (broken / "large_files.yml").write_text(
        'large_files:\n- path: "models/model.pt"\n  url: "https://example.org/model.pt"\n  hash_val: ""\n'
    )

    result = _run([sys.executable, "-m", "ci.verify_bundle", str(broken)], cwd=REPO_ROOT)
    assert result.returncode == 1
    summary = result.stdout[result.stdout.index("FAILED") :]
    assert "large_files.yml" in summary and "missing or empty hash_val, hash_type" in summary
    assert "version '0.2.0' has no entry in changelog" in summary
    assert "'#' in" in summary and "metadata.json/description" in summary
    assert "output channel number `2` doesn't match: `3`" in summary
    assert "val_interval" in summary


def test_verify_bundle_names_missing_files(tmp_path: Path):
    broken = tmp_path / FIXTURE_BUNDLE.name
    shutil.copytree(FIXTURE_BUNDLE, broken)
    (broken / "LICENSE").unlink()
    (broken / "docs" / "data_license.txt").unlink()
    result = _run([sys.executable, "-m", "ci.verify_bundle", str(broken)], cwd=REPO_ROOT)
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


@pytest.mark.parametrize("bundle", zoo.find_bundles(), ids=lambda b: b.name)
def test_release_carries_the_common_code_its_bundle_uses(bundle: Path, tmp_path: Path):
    """Every ``common`` module the configs name imports from the unzipped release alone (the repository out of
    reach), the study runners of its study configs ship, and the phantom generators don't. Every release carries the
    same ``common`` (what all the zoo's bundles use): MONAI Label serves them all with whichever copy it imported."""
    archive = zipfile.ZipFile(package_bundle.package_bundle(bundle, tmp_path / "dist"))
    archive.extractall(tmp_path / "release")
    names = set(archive.namelist())
    referenced = set()
    for config in (bundle / "configs").glob("*.json"):
        referenced |= set(package_bundle.COMMON_NAME.findall(config.read_text()))
    modules = {str(package_bundle._module_file(n).relative_to(REPO_ROOT).with_suffix("")) for n in referenced}
    modules = sorted(m.removesuffix("/__init__").replace("/", ".") for m in modules)
    runners = [r for p, r in package_bundle.STUDY_RUNNERS.items() if any((bundle / "configs").glob(p))]
    probe = "".join(f"import {m}; " for m in [*modules, *runners]) + "import common; print(common.__file__)"
    result = _run([sys.executable, "-c", probe], tmp_path / "release" / bundle.name, _outside_repo_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(tmp_path / "release")), result.stdout
    for main in (n for n in names if n.endswith("/__main__.py")):  # the data commands the README gives
        package = main.removeprefix(f"{bundle.name}/").removesuffix("/__main__.py").replace("/", ".")
        result = _run(
            [sys.executable, "-m", package, "--help"], tmp_path / "release" / bundle.name, _outside_repo_env()
        )
        assert result.returncode == 0, result.stderr
    assert not any(n.startswith(f"{bundle.name}/common/synthetic/") for n in names)
    assert not any(n.startswith(f"{bundle.name}/common/release.py") for n in names)
    assert f"{bundle.name}/common/verify_release.py" not in names  # published next to the catalogue instead
    other = zoo.find_bundles()[0] if bundle != zoo.find_bundles()[0] else zoo.find_bundles()[1]
    other_names = zipfile.ZipFile(package_bundle.package_bundle(other, tmp_path / "other")).namelist()
    common = sorted(n.split("/", 1)[1] for n in names if n.startswith(f"{bundle.name}/common/"))
    assert common == sorted(n.split("/", 1)[1] for n in other_names if n.startswith(f"{other.name}/common/"))


def test_package_includes_weights_when_present(tmp_path: Path):
    bundle = _with_random_weights(FIXTURE_BUNDLE, tmp_path)
    names = zipfile.ZipFile(package_bundle.package_bundle(bundle, tmp_path / "dist")).namelist()
    assert "tiny_wt_segmentation/models/model.pt" in names


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


def _net_override(bundle: Path, overlay: dict) -> dict:
    """``monai.bundle.load``'s ``net_override`` for the network that ``overlay`` sizes.

    ``load`` builds ``network_def`` from train.json and takes only ``network_def#`` overrides: the overlay's own
    ``network_def#...`` keys, and the values of the ids that ``network_def`` refers to (e.g. ``"@roi_size"``).
    """
    network_def = zoo.load_json(bundle / "configs" / "train.json")["network_def"]
    override = {k.split("#", 1)[1]: v for k, v in overlay.items() if k.startswith("network_def#")}
    for arg, value in network_def.items():
        if isinstance(value, str) and value.startswith("@") and value[1:] in overlay:
            override.setdefault(arg, overlay[value[1:]])
    return override


@pytest.mark.integration
@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=BUNDLE_IDS)
def test_release_downloads_fetches_weights_infers_and_loads(
    bundle: Path, tmp_path: Path, phantom_root: Path, http_server
):
    www, base_url = http_server
    spec, dataset_dir = prepare_demo_data(bundle, phantom_root, tmp_path / "work")

    # Publishing: the weights (of the network inference builds at demo size) go to the server on their own, and
    # the release's large_files.yml names them with their sha256; the zip itself carries no weights.
    src = _copy_bundle(bundle, tmp_path / "src")
    version = zoo.load_json(src / "configs" / "metadata.json")["version"]
    weights = _initial_weights(src, www / f"{bundle.name}_v{version}_model.pt", spec.get("inference"))
    large_files.add_weights(src, weights, url=f"{base_url}/{weights.name}", path="models/model.pt")
    zip_path = package_bundle.package_bundle(src, www)
    assert not any("/models/" in n for n in zipfile.ZipFile(zip_path).namelist()), "weights must travel apart"

    # A user, in an empty folder outside the repository, with nothing of the repository importable.
    user = tmp_path / "user"
    user.mkdir()
    env = _outside_repo_env()
    downloads = user / "bundles"
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", bundle.name]
    cmd += ["--url", f"{base_url}/{zip_path.name}", "--bundle_dir", str(downloads)]
    result = _run(cmd, user, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    downloaded = downloads / bundle.name
    assert (downloaded / "configs" / "metadata.json").is_file()
    assert not (downloaded / "models" / "model.pt").exists()

    cmd = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(downloaded)]
    result = _run(cmd, user, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sha256_file(downloaded / "models" / "model.pt") == sha256_file(weights)

    where = _run([sys.executable, "-c", "import common, sys; print(common.__file__); print(sys.path)"], downloaded, env)
    assert where.stdout.startswith(str(downloaded / "common")), where.stdout + where.stderr
    assert str(REPO_ROOT) + "'" not in where.stdout, "the repository root must not be importable"

    overlay = {"dataset_dir": str(dataset_dir), "demo_work_dir": str((tmp_path / "work").resolve())}
    (user / "overlay.json").write_text(json.dumps({**overlay, **spec.get("inference", {})}))
    files = f"['configs/inference.json','{user / 'overlay.json'}']"
    result = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", files], downloaded, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predictions = sorted((downloaded / "eval").rglob("*.nii.gz")) + sorted((downloaded / "eval").rglob("*.png"))
    assert predictions, f"no prediction written under {downloaded / 'eval'}"

    # As the README says: a bundle whose configs use `common` needs its folder on sys.path before `load`.
    net_override = _net_override(bundle, spec.get("inference", {}))
    script = f"""
import sys, torch
from monai.bundle import load
sys.path.insert(0, {str(downloaded)!r})
net = load(name={bundle.name!r}, bundle_dir={str(downloads)!r}, net_override={net_override!r})
saved = torch.load({str(weights)!r}, weights_only=True)
state = net.state_dict()
# load() skips parameters whose shape differs without failing: compare every one.
assert state.keys() == saved.keys(), "network and weights differ in their parameters"
differ = [k for k, v in saved.items() if state[k].shape != v.shape or not torch.equal(state[k], v)]
assert not differ, f"{{len(differ)}} of {{len(saved)}} tensors not loaded, e.g. {{differ[:3]}}"
print("loaded", type(net).__name__, sum(p.numel() for p in net.parameters()))
"""
    result = _run([sys.executable, "-c", script], user, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "loaded" in result.stdout


def test_download_large_files_refuses_a_file_whose_hash_differs(tmp_path: Path, http_server):
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    www, base_url = http_server
    bundle = _copy_bundle(FIXTURE_BUNDLE, tmp_path)
    published = www / "model.pt"
    published.write_bytes(b"the weights that were published")
    large_files.add_weights(bundle, published, url=f"{base_url}/model.pt")
    published.write_bytes(b"what the server hands out now")
    with pytest.raises(HashCheckError, match="hash check of downloaded file failed"):
        download_large_files(bundle_path=str(bundle))
    assert not (bundle / "models" / "model.pt").exists(), "a file that failed its hash check must not be kept"

    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"a stale local copy")
    with pytest.raises(HashCheckError, match="hash check of existing file failed"):
        download_large_files(bundle_path=str(bundle))


def test_large_files_yml_rules(tmp_path: Path):
    bundle = _copy_bundle(FIXTURE_BUNDLE, tmp_path)
    assert large_files.read_large_files(bundle) == []  # nothing published: an empty list
    assert "no weights are published yet" in (bundle / "large_files.yml").read_text()

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    entry = large_files.add_weights(bundle, weights, url="https://example.org/zoo/model.pt")
    assert entry == {
        "path": "models/model.pt",
        "url": "https://example.org/zoo/model.pt",
        "hash_val": sha256_file(weights),
        "hash_type": "sha256",
    }
    large_files.add_weights(bundle, weights, url="https://example.org/zoo/v2/model.pt")  # same path: replaced
    assert [e["url"] for e in large_files.read_large_files(bundle)] == ["https://example.org/zoo/v2/model.pt"]

    (bundle / "large_files.yml").write_text(
        "large_files:\n"
        '- {path: "../model.pt", url: "ftp://host/m.pt", hash_val: "ABC", hash_type: "md5"}\n'
        '- {path: "models/model.pt", url: "https://host/m.pt", hash_val: "", hash_type: "sha256", size: 3}\n'
    )
    with pytest.raises(ValueError) as error:
        large_files.read_large_files(bundle)
    message = str(error.value)
    assert str(bundle / "large_files.yml") in message
    for expected in (
        "path '../model.pt' should be models/<file>",
        "url 'ftp://host/m.pt' is not an http(s) address",
        "hash_type 'md5', expected 'sha256'",
        "hash_val 'ABC' is not a sha256",
        "large_files[1]: missing or empty hash_val",
        "unknown keys size",
    ):
        assert expected in message
    (bundle / "large_files.yml").write_text("weights: []\n")
    with pytest.raises(ValueError, match="expected a mapping with a 'large_files' list"):
        large_files.read_large_files(bundle)


def test_make_package_writes_every_zip_and_a_catalogue_monai_reads(tmp_path: Path, monkeypatch):
    import monai.bundle.scripts

    newer = _copy_bundle(FIXTURE_BUNDLE, tmp_path / "newer")
    meta_file = newer / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "0.2.0"
    meta["changelog"]["0.2.0"] = "a later release"
    meta_file.write_text(json.dumps(meta))
    dist = tmp_path / "dist"
    bundles = [str(b) for b in BUNDLES_UNDER_TEST] + [str(newer)]
    cmd = [
        sys.executable,
        "-m",
        "ci.package_bundle",
        *bundles,
        "--out",
        str(dist),
        "--base-url",
        "https://example.org/zoo/",
    ]
    result = _run(cmd, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    catalogue = json.loads((dist / package_bundle.CATALOGUE_NAME).read_text())
    expected = {f"{b.name}_v{zoo.load_json(b / 'configs' / 'metadata.json')['version']}" for b in BUNDLES_UNDER_TEST}
    assert set(catalogue) == expected | {"tiny_wt_segmentation_v0.2.0"}
    for key, entry in catalogue.items():
        zip_path = dist / entry["file"]
        assert entry["file"] == f"{key}.zip" and zip_path.is_file()
        assert entry["sha256"] == entry["checksum"] == sha256_file(zip_path)
        assert entry["size"] == zip_path.stat().st_size
        assert entry["source"] == f"https://example.org/zoo/{key}.zip"
        assert entry["monai_version"] and entry["pytorch_version"]
    assert catalogue["tiny_wt_segmentation_v0.2.0"]["version"] == "0.2.0"

    # Same zips, same catalogue bytes.
    first = (dist / package_bundle.CATALOGUE_NAME).read_bytes()
    package_bundle.write_catalogue(dist, "https://example.org/zoo")
    assert (dist / package_bundle.CATALOGUE_NAME).read_bytes() == first

    # The catalogue has the model zoo's shape: MONAI's version lookup reads it (served here without a network).
    class Response:
        text = first.decode()

        def raise_for_status(self):
            pass

    monkeypatch.setattr(monai.bundle.scripts.requests, "get", lambda url, **kwargs: Response())
    versions = monai.bundle.scripts.get_bundle_versions("tiny_wt_segmentation", repo="owner/zoo", tag="dev")
    assert versions == {"latest_version": "0.2.0", "all_versions": ["0.1.0", "0.2.0"]}
    info = monai.bundle.scripts.get_bundle_info("tiny_wt_segmentation", "0.1.0", repo="owner/zoo", tag="dev")
    assert info["browser_download_url"] == "https://example.org/zoo/tiny_wt_segmentation_v0.1.0.zip"


def test_package_refuses_a_zip_whose_name_contradicts_its_content(tmp_path: Path):
    zip_path = package_bundle.package_bundle(FIXTURE_BUNDLE, tmp_path)
    zip_path.rename(tmp_path / "tiny_wt_segmentation_v9.9.9.zip")
    with pytest.raises(ValueError, match="version '0.1.0', which the file name contradicts"):
        package_bundle.write_catalogue(tmp_path)
