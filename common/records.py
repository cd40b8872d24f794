"""Records of finished study steps: what a later machine needs of a step instead of doing it again.

The phantom studies (``make study-fct``, ``study-cohra``, ``study-refnet``) take longer than one of this project's
machines lives. A record is a folder, committed with the repository, that keeps the small files a finished step
left (a run's results and curves, a base model's predictions; never weights). On a machine that lacks the step, the
study restores them from the record when the step's settings are still those recorded, and does only what the
record lacks. Paths under the working directory the study ran from are written as :data:`RECORD_ROOT`, so a record
made in one checkout restores in another of the same layout (in JSON files and in CSV tables, which name the
cases' files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, atomic_write_json

__all__ = ["RECORD_ROOT", "relocate", "restore", "save"]

RECORD_ROOT = "{study_root}"


def relocate(value: Any, old: str, new: str) -> Any:
    """``value`` (parsed JSON, or a CSV file's text) with the paths under ``old`` in its strings moved under ``new``:
    whole paths, and paths inside a string (a command line in a provenance manifest)."""
    if isinstance(value, str):  # "old/..." where a path starts: not inside a longer path ("/elsewhere/old/...")
        return new if value == old else re.sub(rf"(?<![\w.{re.escape(os.sep)}-]){re.escape(old + os.sep)}",
                                               lambda _: new + os.sep, value)  # fmt: skip
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    return value


def _copy(files: Iterable[Path], source: Path, target: Path, old_root: str, new_root: str) -> None:
    for file in files:
        destination = target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if file.suffix == ".json":
            atomic_write_json(destination, relocate(json.loads(file.read_text()), old_root, new_root))
        elif file.suffix == ".csv":  # per-case tables name the cases' files
            atomic_write_bytes(destination, relocate(file.read_text(), old_root, new_root).encode())
        else:
            atomic_write_bytes(destination, file.read_bytes())


def save(files: Iterable[Path], source: Path, record: Path, root: str) -> None:
    """Make ``record`` hold exactly ``files`` (under folder ``source``), the paths under ``root`` in their JSON
    written as :data:`RECORD_ROOT` (a step done again replaces its record whole: its files may have other names)."""
    if record.is_dir():
        shutil.rmtree(record)
    _copy(files, source, record, root, RECORD_ROOT)


def restore(record: Path, target: Path, marker: str, expected: Any, root: str) -> bool:
    """Copy every file of ``record`` into ``target`` when its JSON file ``marker`` (e.g. ``result.json``), read back
    under ``root``, passes ``expected`` (a function of the parsed marker); return whether it did."""
    marker_file = record / marker
    if not marker_file.is_file() or not expected(relocate(json.loads(marker_file.read_text()), RECORD_ROOT, root)):
        return False
    _copy(sorted(p for p in record.rglob("*") if p.is_file()), record, target, RECORD_ROOT, root)
    return True
