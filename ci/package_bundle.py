"""Build the release zip of a bundle: ``<out>/<name>_v<version>.zip``, reproducible byte for byte.

    python ci/package_bundle.py bundles/<name> [--out dist/]

The zip holds one top-level folder ``<name>/`` (what ``monai.bundle download --url`` extracts) with the bundle's
files, the weights under ``models/`` when present, and a copy of the shared ``common/`` package at the bundle
root, so that the configs' ``common.*`` references import with nothing but the bundle on disk. Entries are
sorted and carry a fixed timestamp and mode, so the same inputs give the same bytes (and the same sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import zoo

WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx")
# Not part of a release: caches, local run outputs, and anything a user trained or evaluated into the folder.
EXCLUDED_DIRS = {"__pycache__", "eval", "logs", ".ipynb_checkpoints"}
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def _release_files(bundle: Path) -> list[tuple[Path, str]]:
    """(source file, archive name) pairs of everything the release zip holds, in archive order."""
    name = bundle.name
    files = []
    for path in bundle.rglob("*"):
        rel = path.relative_to(bundle)
        if not path.is_file() or EXCLUDED_DIRS & set(rel.parts) or path.suffix == ".pyc":
            continue
        if rel.parts[0] == "models" and path.suffix not in WEIGHT_SUFFIXES:
            continue
        if rel.parts[0] == "common":
            raise ValueError(f"{bundle}: holds its own common/; the shared package is vendored at packaging time")
        files.append((path, f"{name}/{rel.as_posix()}"))
    common = zoo.REPO_ROOT / "common"
    for path in common.rglob("*.py"):
        if "__pycache__" not in path.parts:
            files.append((path, f"{name}/common/{path.relative_to(common).as_posix()}"))
    return sorted(files, key=lambda item: item[1])


def package_bundle(bundle: Path, out_dir: Path) -> Path:
    """Write ``<out_dir>/<name>_v<version>.zip`` atomically and return its path."""
    bundle = bundle.resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle (expected {meta_file})")
    version = zoo.load_json(meta_file).get("version")
    if not version:
        raise ValueError(f"{meta_file}: no 'version'")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{bundle.name}_v{version}.zip"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for source, arcname in _release_files(bundle):
                info = zipfile.ZipInfo(arcname, date_time=FIXED_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                info.create_system = 3  # unix, whatever the packaging machine is
                archive.writestr(info, source.read_bytes(), compresslevel=9)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory, e.g. bundles/cohra_unet_brats")
    parser.add_argument("--out", type=Path, default=zoo.REPO_ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        target = package_bundle(args.bundle, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{target}  sha256 {sha256(target)}  {target.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
