"""Check a downloaded release zip against the zoo's catalogue ``model_info.json`` before unpacking it.

    python verify_release.py <name>_v<version>.zip --catalogue model_info.json

``python -m monai.bundle download --url ...`` checks no hash (MONAI 1.6 passes ``hash_val=None``), so a bundle zip
fetched by URL is only as trustworthy as the connection it came over. The catalogue that ``ci/package_bundle.py``
publishes next to the zips records each zip's sha256 and size; this compares a downloaded zip with its entry and
refuses archive members that would land outside the extraction folder (absolute paths, drive letters, ``..``,
symbolic links), before anything is extracted. It prints one ``ok`` line and exits 0 when the zip passes, else
ends with one ``error: <zip>: <what is wrong>`` line and exits 1.

This file is published verbatim as ``verify_release.py`` next to ``model_info.json``, so that a user can check a
zip before they have any of the zoo's code: it must import nothing outside the Python standard library. In a
checkout of the repository, ``python -m common.release verify`` runs this same code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["check", "unsafe_members", "verify_release_zip"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # release zips can be large
            digest.update(block)
    return digest.hexdigest()


def unsafe_members(zip_path: str | Path) -> list[str]:
    """Names of the members of ``zip_path`` that are absolute, climb out with ``..``, or are symbolic links.

    Raises:
        ValueError: ``zip_path`` is not a readable zip archive.
    """
    unsafe = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{zip_path}: not a zip archive ({e})") from e
    for info in infos:
        name = info.filename
        # Zip names use "/", but extractors on Windows also honour "\" and drive letters.
        windows = PureWindowsPath(name)
        absolute = PurePosixPath(name).is_absolute() or windows.is_absolute() or bool(windows.drive)
        climbs = ".." in PurePosixPath(name.replace("\\", "/")).parts
        link = stat.S_ISLNK(info.external_attr >> 16)
        if absolute or climbs or link:
            unsafe.append(name)
    return unsafe


def _catalogue_entries(zip_path: Path, catalogue: Path) -> dict:
    try:
        entries = json.loads(catalogue.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{zip_path}: cannot read the catalogue {catalogue} ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{zip_path}: the catalogue {catalogue} is not valid JSON ({e})") from e
    if not isinstance(entries, dict):
        raise ValueError(f"{zip_path}: the catalogue {catalogue} holds a {type(entries).__name__}, expected an object")
    return entries


def verify_release_zip(zip_path: str | Path, catalogue: str | Path) -> dict:
    """Check ``zip_path`` against its entry in the catalogue (``model_info.json``) and return that entry.

    Raises:
        ValueError: naming the zip and what is wrong (missing, catalogue unreadable, no entry for its file name,
            sha256, size, not a zip, unsafe members).
    """
    zip_path, catalogue = Path(zip_path), Path(catalogue)
    if not zip_path.is_file():
        raise ValueError(f"{zip_path}: no such file")
    entries = _catalogue_entries(zip_path, catalogue)
    matches = [e for e in entries.values() if isinstance(e, dict) and e.get("file") == zip_path.name]
    if len(matches) != 1:
        raise ValueError(
            f"{zip_path}: {len(matches)} entries for {zip_path.name!r} in {catalogue} (expected exactly one; "
            f"it lists {sorted(str(e.get('file')) for e in entries.values() if isinstance(e, dict))})"
        )
    (entry,) = matches
    digest = _sha256(zip_path)
    if digest != entry.get("sha256"):
        raise ValueError(f"{zip_path}: sha256 {digest} differs from {entry.get('sha256')} in {catalogue}: do not use")
    if zip_path.stat().st_size != entry.get("size"):
        raise ValueError(f"{zip_path}: {zip_path.stat().st_size} bytes, {catalogue} says {entry.get('size')}")
    unsafe = unsafe_members(zip_path)
    if unsafe:
        raise ValueError(f"{zip_path}: members outside the bundle folder (absolute, '..' or links): {unsafe}")
    return entry


def check(zip_path: str | Path, catalogue: str | Path) -> int:
    """Verify ``zip_path`` and report it: one ``ok`` line on stdout (returns 0) or one ``error:`` line on stderr
    (returns 1)."""
    try:
        entry = verify_release_zip(zip_path, catalogue)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{zip_path}: ok, {entry.get('name')} version {entry.get('version')}, sha256 {entry['sha256']}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of the check (shared with ``python -m common.release verify``)."""
    parser.add_argument("zip", type=Path, help="the downloaded <name>_v<version>.zip")
    parser.add_argument("--catalogue", type=Path, required=True, help="the model_info.json published with it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return check(args.zip, args.catalogue)


if __name__ == "__main__":
    sys.exit(main())
