"""What the zoo's tools share: where things are, which bundles exist, and how a bundle is run.

A bundle is any directory under ``bundles/`` holding ``configs/metadata.json``; nothing keeps a list of them.
Tools run bundles the way users do, through ``python -m monai.bundle run`` from the repository root, so that
``common`` is importable exactly as the README describes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

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


def bundle_env(extra_pythonpath: Sequence[Path] = (REPO_ROOT,)) -> dict[str, str]:
    """Environment for a bundle subprocess: ``common`` importable, no thread oversubscription surprises."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def monai_bundle_run(
    config_files: Sequence[Path],
    cwd: Path = REPO_ROOT,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> float:
    """Run ``python -m monai.bundle run`` on stacked config files and return the wall time in seconds.

    Settings travel as a last config file (an overlay) rather than ``--id value`` pairs, so that lists, booleans
    and expressions keep their JSON types. Output goes to ``log_file`` (or is inherited); a failure raises
    ``RuntimeError`` carrying the log tail.
    """
    files = "[" + ",".join(repr(str(f)) for f in config_files) + "]"
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", files]
    start = time.perf_counter()
    if log_file is None:
        proc = subprocess.run(cmd, cwd=cwd, env=dict(env or bundle_env()))
        tail = ""
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=cwd, env=dict(env or bundle_env()), stdout=log, stderr=subprocess.STDOUT)
        tail = "\n".join(log_file.read_text().splitlines()[-40:])
    if proc.returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise RuntimeError(f"monai.bundle run {files} exited with {proc.returncode}{where}\n{tail}")
    return time.perf_counter() - start
