"""What the zoo's tools share: where things are, which bundles exist, and how a bundle is run.

A bundle is any directory under ``bundles/`` holding ``configs/metadata.json``; nothing keeps a list of them.
Tools run bundles the way users do, through ``python -m monai.bundle run`` from the repository root, so that
``common`` is importable exactly as the README describes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Bundles run the same way from the tools and from a packaged bundle's ablation runner.
from common.bundle_run import bundle_env, monai_bundle_run  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent

BUNDLES_DIR = REPO_ROOT / "bundles"
SCHEMA_NAME = "meta_schema_20240725.json"
# md5 of MONAI's released meta_schema_20240725.json (pinned in MONAI's tests/testing_data/data_config.json).
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
SCHEMA_ENV = "MONAI_BUNDLE_SCHEMA"


def find_bundles(bundles_dir: Path = BUNDLES_DIR) -> list[Path]:
    """Every bundle directory below ``bundles_dir``, sorted by name."""
    if not bundles_dir.is_dir():
        return []
    return sorted(p for p in bundles_dir.iterdir() if (p / "configs" / "metadata.json").is_file())


def find_schema(explicit: str | os.PathLike | None = None) -> Path | None:
    """The offline copy of MONAI's metadata schema: a given path, ``$MONAI_BUNDLE_SCHEMA``, or ``../shared/monai/``."""
    candidates = [explicit, os.environ.get(SCHEMA_ENV), REPO_ROOT.parent / "shared" / "monai" / SCHEMA_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_json(path: Path) -> dict:
    """Parse a JSON file, naming the file in the error if it is malformed."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
