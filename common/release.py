"""Check a downloaded release zip against the zoo's catalogue before using it.

    python -m common.release verify <name>_v<version>.zip --catalogue model_info.json

``python -m monai.bundle download --url ...`` checks no hash (MONAI 1.6 passes ``hash_val=None``), so a bundle zip
fetched by URL is only as trustworthy as the connection it came over. The catalogue ``model_info.json`` that
``ci/package_bundle.py`` publishes next to the zips records each zip's sha256 and size; this command compares a
downloaded zip with its entry and also refuses archive members that would land outside the extraction folder
(absolute paths, ``..``, links), before anything is extracted. Exit status 0 only when the zip passes.
Weights listed in a bundle's ``large_files.yml`` need no such step: ``download_large_files`` checks their sha256.
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from common.io import sha256_file

__all__ = ["unsafe_members", "verify_release_zip"]


def unsafe_members(zip_path: str | Path) -> list[str]:
    """Names of the members of ``zip_path`` that are absolute, climb out with ``..``, or are symbolic links."""
    unsafe = []
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            name = info.filename
            # Zip names use "/", but extractors on Windows also honour "\" and drive letters.
            windows = PureWindowsPath(name)
            absolute = PurePosixPath(name).is_absolute() or windows.is_absolute() or bool(windows.drive)
            climbs = ".." in PurePosixPath(name.replace("\\", "/")).parts
            link = stat.S_ISLNK(info.external_attr >> 16)
            if absolute or climbs or link:
                unsafe.append(name)
    return unsafe


def verify_release_zip(zip_path: str | Path, catalogue: str | Path) -> dict:
    """Check ``zip_path`` against its entry in the catalogue (``model_info.json``) and return that entry.

    Raises:
        ValueError: naming the zip and what differs (no entry for its file name, sha256, size, unsafe members).
    """
    zip_path, catalogue = Path(zip_path), Path(catalogue)
    try:
        entries = json.loads(catalogue.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{catalogue}: not valid JSON ({e})") from e
    matches = [e for e in entries.values() if isinstance(e, dict) and e.get("file") == zip_path.name]
    if len(matches) != 1:
        raise ValueError(
            f"{zip_path}: {len(matches)} entries for {zip_path.name!r} in {catalogue} (expected exactly one; "
            f"it lists {sorted(e.get('file') for e in entries.values() if isinstance(e, dict))})"
        )
    (entry,) = matches
    digest = sha256_file(zip_path)
    if digest != entry.get("sha256"):
        raise ValueError(f"{zip_path}: sha256 {digest} differs from {entry.get('sha256')} in {catalogue}: do not use")
    if zip_path.stat().st_size != entry.get("size"):
        raise ValueError(f"{zip_path}: {zip_path.stat().st_size} bytes, {catalogue} says {entry.get('size')}")
    unsafe = unsafe_members(zip_path)
    if unsafe:
        raise ValueError(f"{zip_path}: members outside the bundle folder (absolute, '..' or links): {unsafe}")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="compare a release zip with its model_info.json entry")
    verify.add_argument("zip", type=Path, help="the downloaded <name>_v<version>.zip")
    verify.add_argument("--catalogue", type=Path, required=True, help="the model_info.json published with it")
    args = parser.parse_args(argv)
    try:
        entry = verify_release_zip(args.zip, args.catalogue)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.zip}: ok, {entry['name']} version {entry['version']}, sha256 {entry['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
