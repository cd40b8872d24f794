"""A bundle's ``large_files.yml``: the published weights, each with its URL and sha256.

    python -m ci.large_files check bundles/<name>
    python -m ci.large_files add bundles/<name> path/to/model.pt --url https://host/<name>_v<version>_model.pt

``python -m monai.bundle download_large_files --bundle_path <bundle>`` reads this file and passes every entry to
``monai.apps.download_url``, which saves the file to ``<bundle>/<path>`` only if its hash matches (a mismatch
raises ``HashCheckError`` and leaves nothing behind). MONAI drops an empty ``hash_val`` and then downloads without
any check, so here every entry must carry a sha256: ``add`` computes it from the very file that gets uploaded.

Until weights are published the list is empty, ``large_files: []``: ``download_large_files`` then does nothing,
and the header comment says what an entry looks like.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from common.io import atomic_write_bytes, sha256_file

FILE_NAME = "large_files.yml"
HASH_TYPE = "sha256"
ENTRY_KEYS = ("path", "url", "hash_val", "hash_type")
WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx")  # what ci/package_bundle.py ships from models/
SHA256 = re.compile(r"[0-9a-f]{64}")
HEADER = """\
# Weights of this bundle, fetched into models/ by
#   python -m monai.bundle download_large_files --bundle_path <bundle folder>
# which refuses a file whose sha256 differs from hash_val. Entries are written by
#   python -m ci.large_files add bundles/<name> <weights file> --url <where it is uploaded>
# An empty list means that no weights are published yet.
"""


def read_large_files(bundle: Path) -> list[dict]:
    """The checked entries of ``<bundle>/large_files.yml``; a bad file raises one ``ValueError`` naming each problem."""
    import yaml

    file = bundle / FILE_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (write 'large_files: []' when no weights are published)")
    try:
        content = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{file}: not valid YAML ({e})") from e
    if not isinstance(content, dict) or not isinstance(content.get("large_files"), list):
        raise ValueError(f"{file}: expected a mapping with a 'large_files' list, found {content!r}")
    entries = content["large_files"]
    problems = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"large_files[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with {', '.join(ENTRY_KEYS)}, found {entry!r}")
            continue
        missing = [k for k in ENTRY_KEYS if not entry.get(k)]
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if missing:
            problems.append(f"{where}: missing or empty {', '.join(missing)}")
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)}")
        path = str(entry.get("path", ""))
        parts = PurePosixPath(path).parts
        if path and (parts[:1] != ("models",) or ".." in parts or PurePosixPath(path).suffix not in WEIGHT_SUFFIXES):
            problems.append(f"{where}: path {path!r} should be models/<file> ending in {', '.join(WEIGHT_SUFFIXES)}")
        if path in seen:
            problems.append(f"{where}: path {path!r} listed twice")
        seen.add(path)
        url = str(entry.get("url", ""))
        if url and (urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc):
            problems.append(f"{where}: url {url!r} is not an http(s) address")
        if entry.get("hash_type") and entry["hash_type"] != HASH_TYPE:
            problems.append(f"{where}: hash_type {entry['hash_type']!r}, expected {HASH_TYPE!r}")
        hash_val = str(entry.get("hash_val", ""))
        if hash_val and not SHA256.fullmatch(hash_val):
            problems.append(f"{where}: hash_val {hash_val!r} is not a sha256 (64 lowercase hex digits)")
    if problems:
        raise ValueError(f"{file}: " + "; ".join(problems))
    return entries


def write_large_files(bundle: Path, entries: list[dict]) -> Path:
    """Write ``entries`` as ``<bundle>/large_files.yml`` (header comment included), atomically."""
    lines = [HEADER.rstrip("\n")]
    if not entries:
        lines.append("large_files: []")
    else:
        lines.append("large_files:")
        for entry in entries:
            # Quoted scalars: a URL or a hash must never be read back as another YAML type.
            lines += [f'{"-" if i == 0 else " "} {k}: "{entry[k]}"' for i, k in enumerate(ENTRY_KEYS)]
    file = bundle / FILE_NAME
    atomic_write_bytes(file, ("\n".join(lines) + "\n").encode())
    read_large_files(bundle)  # what was written must read back as valid
    return file


def add_weights(bundle: Path, weights: Path, url: str, path: str | None = None) -> dict:
    """Record ``weights`` (to be uploaded to ``url``) in the bundle's list, replacing an entry with the same path."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such weights file")
    entry = {
        "path": path or f"models/{weights.name}",
        "url": url,
        "hash_val": sha256_file(weights),
        "hash_type": HASH_TYPE,
    }
    entries = [e for e in read_large_files(bundle) if e["path"] != entry["path"]] + [entry]
    write_large_files(bundle, entries)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a bundle's large_files.yml")
    check.add_argument("bundle", type=Path)
    add = commands.add_parser("add", help="record a weights file with its URL and sha256")
    add.add_argument("bundle", type=Path)
    add.add_argument("weights", type=Path, help="the file that is (or will be) uploaded")
    add.add_argument("--url", required=True, help="where the file is downloaded from")
    add.add_argument("--path", help="where it goes in the bundle (default: models/<file name>)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            entries = read_large_files(args.bundle)
            print(f"{args.bundle / FILE_NAME}: {len(entries)} file(s)")
        else:
            entry = add_weights(args.bundle, args.weights, args.url, args.path)
            print(f"{args.bundle / FILE_NAME}: {entry['path']} <- {entry['url']} sha256 {entry['hash_val']}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
