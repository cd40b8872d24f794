"""Untrusted files: a release zip is checked against the catalogue's sha256 before use, zips with entries outside
the bundle folder are refused (by MONAI's download, the path users take, by ``common.release``, and by the
``verify_release.py`` published with the catalogue, which runs with nothing but Python), and a ``logging.conf``
that would run code through ``fileConfig`` fails ``ci/verify_bundle.py``."""

from __future__ import annotations

import ast
import functools
import http.server
import json
import logging.config
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from ci import package_bundle, verify_bundle, zoo
from common.io import sha256_file
from common.release import unsafe_members, verify_release_zip
from tests.helpers import FIXTURE_BUNDLE, REPO_ROOT

BUNDLE_LOGGING_CONFS = sorted(REPO_ROOT.glob("bundles/*/configs/logging.conf"))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given, "../" and "/" included
    return path


def _catalogue(zip_path: Path, **changes) -> Path:
    import hashlib

    entry = {
        "name": "tiny",
        "version": "0.1.0",
        "file": zip_path.name,
        "sha256": hashlib.sha256(zip_path.read_bytes()).hexdigest(),
        "size": zip_path.stat().st_size,
        **changes,
    }
    path = zip_path.parent / "model_info.json"
    path.write_text(json.dumps({"tiny_v0.1.0": entry}))
    return path


GOOD = {"tiny/configs/metadata.json": b"{}", "tiny/configs/inference.json": b"{}"}


def test_verify_accepts_the_catalogued_zip_and_refuses_a_changed_one(tmp_path):
    zip_path = _zip(tmp_path / "tiny_v0.1.0.zip", GOOD)
    catalogue = _catalogue(zip_path)
    assert verify_release_zip(zip_path, catalogue)["version"] == "0.1.0"
    cmd = [sys.executable, "-m", "common.release", "verify", str(zip_path), "--catalogue", str(catalogue)]
    assert subprocess.run(cmd, cwd=REPO_ROOT, env=zoo.bundle_env(), capture_output=True).returncode == 0

    _zip(zip_path, {**GOOD, "tiny/configs/inference.json": b"{\"run\": \"$__import__('os').system('id')\"}"})
    with pytest.raises(ValueError, match="sha256 .* differs from .*: do not use"):
        verify_release_zip(zip_path, catalogue)
    failed = subprocess.run(cmd, cwd=REPO_ROOT, env=zoo.bundle_env(), capture_output=True, text=True)
    assert failed.returncode == 1 and "differs from" in failed.stderr


def test_verify_refuses_a_zip_the_catalogue_does_not_list(tmp_path):
    catalogue = _catalogue(_zip(tmp_path / "tiny_v0.1.0.zip", GOOD))
    other = _zip(tmp_path / "tiny_v0.2.0.zip", GOOD)
    with pytest.raises(ValueError, match=r"0 entries for 'tiny_v0.2.0.zip'.*\['tiny_v0.1.0.zip'\]"):
        verify_release_zip(other, catalogue)


@pytest.mark.parametrize("evil", ["../outside.txt", "tiny/../../outside.txt", "/tmp/absolute.txt", "C:\\x.txt"])
def test_members_outside_the_bundle_folder_are_refused_even_with_a_matching_hash(tmp_path, evil):
    zip_path = _zip(tmp_path / "tiny_v0.1.0.zip", {**GOOD, evil: b"payload"})
    assert unsafe_members(zip_path) == [evil]
    with pytest.raises(ValueError, match="members outside the bundle folder"):
        verify_release_zip(zip_path, _catalogue(zip_path))


def _without_the_repository(folder: Path, *files: Path) -> Path:
    """``folder`` holding copies of ``files`` and nothing else, as a user's download folder would."""
    folder.mkdir()
    for file in files:
        shutil.copy2(file, folder / file.name)
    return folder


def _run_published_verifier(folder: Path, zip_name: str) -> subprocess.CompletedProcess:
    """``python verify_release.py <zip> --catalogue model_info.json`` as the README gives it, run in ``folder`` by a
    Python that reaches nothing of the repository: isolated mode (no PYTHONPATH, no script or working folder on
    ``sys.path``), and no PYTHONPATH in the environment either."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-I", package_bundle.VERIFIER_NAME, zip_name, "--catalogue", package_bundle.CATALOGUE_NAME]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)


def _assert_refused(result: subprocess.CompletedProcess, zip_name: str, what: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {zip_name}: "), result.stderr
    assert re.search(what, lines[0]), lines[0]


def test_the_published_verifier_is_the_one_implementation_and_needs_only_the_standard_library():
    """``common.release verify`` and the published script run the same module, which imports only the stdlib."""
    import common.release
    import common.verify_release

    assert common.release.verify_release_zip is common.verify_release.verify_release_zip
    assert package_bundle.VERIFIER_SOURCE == Path(common.verify_release.__file__)
    imported = set()
    for node in ast.walk(ast.parse(package_bundle.VERIFIER_SOURCE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import would not resolve in the published copy"
            imported.add(node.module.split(".")[0])
    assert imported and imported <= sys.stdlib_module_names | {"__future__"}, imported - sys.stdlib_module_names


def test_the_published_verifier_checks_a_zip_before_unpacking_with_nothing_but_python(tmp_path):
    dist = tmp_path / "dist"
    zip_path = package_bundle.package_bundle(FIXTURE_BUNDLE, dist)
    catalogue = package_bundle.write_catalogue(dist)
    script = dist / package_bundle.VERIFIER_NAME
    assert script.read_bytes() == package_bundle.VERIFIER_SOURCE.read_bytes(), "published verbatim"

    user = _without_the_repository(tmp_path / "user", zip_path, catalogue, script)
    probe = subprocess.run([sys.executable, "-I", "-c", "import common"], cwd=user, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'common'" in probe.stderr, "common must be out of reach"
    result = _run_published_verifier(user, zip_path.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    version = zoo.load_json(FIXTURE_BUNDLE / "configs" / "metadata.json")["version"]
    assert result.stdout.splitlines() == [
        f"{zip_path.name}: ok, {FIXTURE_BUNDLE.name} version {version}, sha256 {sha256_file(zip_path)}"
    ]

    # one byte changed
    data = bytearray(zip_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (user / zip_path.name).write_bytes(bytes(data))
    _assert_refused(_run_published_verifier(user, zip_path.name), zip_path.name, "sha256 [0-9a-f]{64} differs from")

    # a zip the catalogue does not list
    unlisted = "tiny_wt_segmentation_v9.9.9.zip"
    shutil.copy2(zip_path, user / unlisted)
    _assert_refused(_run_published_verifier(user, unlisted), unlisted, "0 entries for 'tiny_wt_segmentation_v9.9.9")

    # a catalogued zip (its hash matches) with a member that climbs out of the extraction folder
    evil = _zip(tmp_path / "tiny_v0.1.0.zip", {**GOOD, "../evil": b"payload"})
    evil_user = _without_the_repository(tmp_path / "evil_user", evil, _catalogue(evil), script)
    refused = _run_published_verifier(evil_user, evil.name)
    _assert_refused(refused, evil.name, r"outside the bundle folder.*'\.\./evil'")
    assert not (tmp_path / "evil").exists()


@pytest.fixture
def served(tmp_path):
    """An HTTP server on localhost serving ``tmp_path / 'www'``, as a release host would."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("evil", ["../outside.txt", "/ABSOLUTE/outside.txt"])
def test_monai_bundle_download_refuses_path_traversal(tmp_path, served, evil):
    """``monai.bundle download --url`` (MONAI's extractall, called in-process here) refuses the zip, writes nothing."""
    from monai.bundle import download

    root, base_url = served
    absolute = tmp_path / "absolute_target.txt"
    evil = evil.replace("/ABSOLUTE/outside.txt", str(absolute))
    _zip(root / "tiny.zip", {**GOOD, evil: b"payload"})
    downloads = tmp_path / "user" / "bundles"
    with pytest.raises(ValueError, match="Unsafe path detected in archive"):
        download(name="tiny", url=f"{base_url}/tiny.zip", bundle_dir=str(downloads), progress=False)
    assert not (tmp_path / "user" / "outside.txt").exists() and not absolute.exists()


def test_the_bundles_logging_confs_pass_and_load(tmp_path):
    assert len(BUNDLE_LOGGING_CONFS) >= 4
    for path in BUNDLE_LOGGING_CONFS:
        assert verify_bundle.logging_conf_problems(path) == [], path
    logging.config.fileConfig(BUNDLE_LOGGING_CONFS[0], disable_existing_loggers=False)  # what the check allows works


SAFE_CONF = (REPO_ROOT / "bundles" / "cohra_unet_brats" / "configs" / "logging.conf").read_text()


@pytest.mark.parametrize(
    "change, problem",
    [
        (("args=(sys.stdout,)", "args=(__import__('os').system('touch pwned'),)"), "args .* is not literal values"),
        (("args=(sys.stdout,)", "args=(sys.stdout,)\nkwargs={'x': open('/etc/passwd')}"), "kwargs .* is not literal"),
        (("class=StreamHandler", "class=__import__('os').system('id') or StreamHandler"), "class .* is not one of"),
        (("format=", "class=evil.Formatter\nformat="), r"\[formatter_fullFormatter\] class 'evil.Formatter'"),
    ],
)
def test_a_logging_conf_that_runs_code_is_rejected(tmp_path, change, problem):
    path = tmp_path / "logging.conf"
    path.write_text(SAFE_CONF.replace(*change))
    assert path.read_text() != SAFE_CONF
    problems = verify_bundle.logging_conf_problems(path)
    assert len(problems) == 1 and problems[0].startswith("logging.conf ["), problems
    assert re.search(problem, problems[0]), problems


def test_verify_bundle_fails_a_bundle_with_a_malicious_logging_conf(tmp_path):
    verifier = verify_bundle.BundleVerifier(tmp_path, schema=None)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "logging.conf").write_text(SAFE_CONF.replace("(sys.stdout,)", "(exec('x=1'),)"))
    assert not verifier._check("logging.conf", verifier.check_logging_conf)
    assert "is not literal values" in verifier.failures[0]
