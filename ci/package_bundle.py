"""Build the release zips of bundles, ``<out>/<name>_v<version>.zip``, reproducible byte for byte, and their catalogue.

    python -m ci.package_bundle bundles/<name> [bundles/<other> ...] [--out dist/] [--base-url URL]

The zip holds one top-level folder ``<name>/`` (what ``monai.bundle download --url`` extracts) with the bundle's
files, the weights under ``models/`` when present, and the part of the shared ``common/`` package that the zoo's
bundles use at the bundle root, so that the configs' ``common.*`` references import with nothing but the bundle on
disk. A bundle uses every module that its configs and Python files name, the study runners of the study configs it
ships (``ablation.json``: ``common.ablation``; ``crossval_*.json``: ``common.crossval``), and all they import in
turn. Every release carries what *all* the zoo's bundles use, not only its own part: MONAI Label (and any process
that loads several bundles) imports one ``common``, the first on ``sys.path``, for every bundle it serves, so each
copy must hold what any of them needs. The phantom generators and the release tools stay out. Entries are
sorted and carry a fixed timestamp and mode, so the same inputs give the same bytes (and the same sha256).

Weights normally travel apart from the zip: ``large_files.yml`` names them with a URL and sha256, and
``python -m monai.bundle download_large_files`` fetches them into ``models/`` after the download.

After packaging, ``<out>/model_info.json`` lists every release zip in ``<out>`` (older versions included), in the
shape of the model zoo's ``models/model_info.json``: keyed by ``<name>_v<version>`` with ``source`` (the download
address: ``--base-url`` + file name, or the bare file name when no base URL is given) and ``checksum``, so that
MONAI's ``get_bundle_versions`` can read it, plus the file, its sha256 and size, and the versions of MONAI,
PyTorch and NumPy that the bundle's metadata names. Next to it goes ``<out>/verify_release.py``, a verbatim copy of
the standard-library-only :mod:`common.verify_release`, so that users can check a downloaded zip against the
catalogue before unpacking it with nothing but Python:
``python verify_release.py <name>_v<version>.zip --catalogue model_info.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

from ci import zoo
from ci.large_files import WEIGHT_SUFFIXES
from common.io import atomic_write_bytes, atomic_write_json, sha256_file

CATALOGUE_NAME = "model_info.json"
# Published verbatim: users run it before they have any code of the zoo, so it stays standard-library only.
VERIFIER_SOURCE = zoo.REPO_ROOT / "common" / "verify_release.py"
VERIFIER_NAME = "verify_release.py"
# Not part of a release: caches, local run outputs, and anything a user trained or evaluated into the folder.
EXCLUDED_DIRS = {"__pycache__", "eval", "logs", ".ipynb_checkpoints"}
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
COMMON_NAME = re.compile(r"\bcommon(?:\.\w+)+")
STUDY_RUNNERS = {"ablation.json": "common.ablation", "crossval_*.json": "common.crossval"}


def _module_file(dotted: str) -> Path | None:
    """The file of the longest importable prefix of ``dotted`` (``common.a.b.name`` -> ``common/a/b.py``)."""
    parts = dotted.split(".")
    while parts:
        base = zoo.REPO_ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        parts.pop()
    return None


def _imported_names(path: Path) -> set[str]:
    """Dotted names of what ``path`` imports from ``common``, relative imports resolved."""
    package = path.relative_to(zoo.REPO_ROOT).with_suffix("").parts
    package = package[:-1] if package[-1] != "__init__" else package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [node.module])])
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.add(base)
    return {n for n in names if n == "common" or n.startswith("common.")}


def _common_files(bundle: Path) -> list[Path]:
    """The files of ``common/`` that a release of ``bundle`` carries: what it and every bundle of the zoo use."""
    files: set[Path] = set()
    for user in {bundle.resolve(), *(b.resolve() for b in zoo.find_bundles())}:
        files.update(_used_common_files(user))
    return sorted(files)


def _used_common_files(bundle: Path) -> list[Path]:
    """The files of ``common/`` that the bundle uses: named in its configs and Python files, the runners of its
    study configs, everything those import, and the ``__init__.py`` and ``__main__.py`` of every package on the way."""
    names = {"common"}
    for path in bundle.rglob("*"):
        if path.suffix in (".json", ".py") and not EXCLUDED_DIRS & set(path.relative_to(bundle).parts):
            names |= set(COMMON_NAME.findall(path.read_text(errors="replace")))
    for pattern, runner in STUDY_RUNNERS.items():
        if any((bundle / "configs").glob(pattern)):
            names.add(runner)
    files: set[Path] = set()
    pending = [f for f in map(_module_file, names) if f is not None]
    while pending:
        path = pending.pop()
        if path in files:
            continue
        files.add(path)
        packages = [p for p in path.parents if zoo.REPO_ROOT / "common" in (p, *p.parents)]
        # a shipped package keeps its command line (python -m common.data.brats make-split ...)
        pending += [f for p in packages for f in (p / "__init__.py", p / "__main__.py") if f.is_file()]
        pending += [f for f in map(_module_file, _imported_names(path)) if f is not None]
    return sorted(files)


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
    for path in _common_files(bundle):
        files.append((path, f"{name}/{path.relative_to(zoo.REPO_ROOT).as_posix()}"))
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


def _release_metadata(zip_path: Path) -> tuple[str, dict]:
    """The bundle name and ``configs/metadata.json`` inside a release zip, checked against the zip's file name."""
    with zipfile.ZipFile(zip_path) as archive:
        names = {n.split("/", 1)[0] for n in archive.namelist()}
        if len(names) != 1:
            raise ValueError(f"{zip_path}: expected one top-level folder, found {sorted(names)}")
        (name,) = names
        try:
            meta = json.loads(archive.read(f"{name}/configs/metadata.json"))
        except KeyError:
            raise ValueError(f"{zip_path}: no {name}/configs/metadata.json inside") from None
    if zip_path.name != f"{name}_v{meta.get('version')}.zip":
        raise ValueError(f"{zip_path}: holds {name} version {meta.get('version')!r}, which the file name contradicts")
    return name, meta


def write_catalogue(out_dir: Path, base_url: str | None = None) -> Path:
    """Write ``<out_dir>/model_info.json`` for every ``*_v*.zip`` in ``out_dir`` (the same zips give the same bytes),
    and ``<out_dir>/verify_release.py`` that checks a zip against it."""
    catalogue = {}
    for zip_path in sorted(out_dir.glob("*_v*.zip")):
        name, meta = _release_metadata(zip_path)
        digest = sha256_file(zip_path)
        catalogue[f"{name}_v{meta['version']}"] = {
            "source": f"{base_url.rstrip('/')}/{zip_path.name}" if base_url else zip_path.name,
            "checksum": digest,
            "name": name,
            "display_name": meta.get("name"),
            "version": meta["version"],
            "file": zip_path.name,
            "sha256": digest,
            "size": zip_path.stat().st_size,
            "monai_version": meta.get("monai_version"),
            "pytorch_version": meta.get("pytorch_version"),
            "numpy_version": meta.get("numpy_version"),
            "required_packages_version": meta.get("required_packages_version", {}),
        }
    target = out_dir / CATALOGUE_NAME
    atomic_write_json(target, catalogue)
    # the catalogue never travels without the script that checks a zip against it
    atomic_write_bytes(out_dir / VERIFIER_NAME, VERIFIER_SOURCE.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+", help="bundle directories, e.g. bundles/cohra_unet_brats")
    parser.add_argument("--out", type=Path, default=zoo.REPO_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--base-url", help=f"where the zips will be served, for 'source' in {CATALOGUE_NAME}")
    args = parser.parse_args(argv)
    try:
        for bundle in args.bundles:
            target = package_bundle(bundle, args.out)
            print(f"{target}  sha256 {sha256_file(target)}  {target.stat().st_size} bytes")
        catalogue = write_catalogue(args.out, args.base_url)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{catalogue}  {len(json.loads(catalogue.read_text()))} release(s)")
    print(f"{catalogue.with_name(VERIFIER_NAME)}  python {VERIFIER_NAME} <zip> --catalogue {CATALOGUE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
