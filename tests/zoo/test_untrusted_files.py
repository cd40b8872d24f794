"""Untrusted files: a release zip is checked against the catalogue's sha256 before use, zips with entries outside
the bundle folder are refused (by MONAI's download, the path users take, and by ``common.release``), and a
``logging.conf`` that would run code through ``fileConfig`` fails ``ci/verify_bundle.py``."""

from __future__ import annotations

import functools
import http.server
import json
import logging.config
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from ci import verify_bundle, zoo
from common.release import unsafe_members, verify_release_zip
from tests.helpers import REPO_ROOT

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
