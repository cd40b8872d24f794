"""The manifest protocol and the per-case worker pool shared by the generators.

Protocol (the same for every dataset):

1. If ``out_dir/synthetic_manifest.json`` exists and records the same generator, format version and arguments,
   and every file it lists exists, nothing is done.
2. Otherwise the old manifest is deleted *first*, so an interrupted regeneration never looks complete.
3. Every file is written atomically (:mod:`common.io`).
4. Files that the previous manifest listed and the new run does not produce are removed (only those: nothing else
   in the folder is touched), so a reader that globs the folder does not see stale cases.
5. The new manifest is written last.
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.io import atomic_write_json
from common.progress import progress_bar

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "nifti_bytes",
    "png_bytes",
    "generate_dataset",
]

MANIFEST_NAME = "synthetic_manifest.json"
# Bump when the content produced for identical arguments changes, so that old outputs are regenerated.
FORMAT_VERSION = 1


def nifti_bytes(array: np.ndarray, affine: np.ndarray, compresslevel: int = 1) -> bytes:
    """Gzipped NIfTI-1 file content for ``array`` with qform and sform both set to ``affine`` (scanner code 1).

    Level 1 compression is what nibabel uses by default; higher levels cost seconds per volume for a few percent.
    ``mtime=0`` makes the bytes reproducible.
    """
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=compresslevel, mtime=0)


def png_bytes(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG file content of an ``(H, W, 3)`` uint8 RGB array."""
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        with open(out_dir / MANIFEST_NAME, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_up_to_date(manifest: Mapping[str, Any] | None, header: Mapping[str, Any], out_dir: Path) -> bool:
    if manifest is None or any(manifest.get(k) != v for k, v in header.items()):
        return False
    files = manifest.get("files")
    return isinstance(files, list) and all((out_dir / f).is_file() for f in files)


def _remove_stale(out_dir: Path, old_files: Iterable[str], new_files: set[str]) -> None:
    for rel in old_files:
        if rel in new_files or not isinstance(rel, str):
            continue
        path = out_dir / rel
        if path.is_file():
            path.unlink()
        # Drop the case folders this generator created once they are empty; never anything above out_dir.
        parent = path.parent
        while parent != out_dir and out_dir in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def generate_dataset(
    out_dir: str | os.PathLike,
    generator: str,
    args: Mapping[str, Any],
    jobs: Sequence[tuple[str, Any]],
    write_case: Callable[[Any], list[str]],
    workers: int | None = None,
    shared_files: Callable[[Path], list[str]] | None = None,
    verbose: bool = True,
) -> list[str]:
    """Build a dataset of independent cases under ``out_dir`` following the module-level protocol.

    Args:
        out_dir: destination folder (created if missing).
        generator: name recorded in the manifest, e.g. ``"common.synthetic.brats"``.
        args: every argument that determines the content (JSON-serialisable); recorded and compared.
        jobs: ``(case_id, payload)`` per case; ``write_case(payload)`` writes that case's files and returns their
            paths relative to ``out_dir``. ``write_case`` must be a module-level function (it is pickled).
        workers: processes for the cases; ``None`` means ``os.cpu_count()``, ``1`` runs in this process.
        shared_files: optional callable that writes files common to all cases (e.g. a colour table) and returns
            their relative paths; it runs in this process before the cases.
        verbose: show progress: a bar over the cases where :func:`common.progress.progress_enabled` allows (a
            terminal, not CI), else one line per case on stdout; and a summary line.

    Returns:
        The case ids, in job order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    case_ids = [case_id for case_id, _ in jobs]
    header = {"generator": generator, "format_version": FORMAT_VERSION, "args": json.loads(json.dumps(dict(args)))}
    old = _read_manifest(out)
    if _is_up_to_date(old, header, out):
        if verbose:
            print(f"{generator}: {out} is up to date ({len(case_ids)} cases), nothing to do", flush=True)
        return case_ids
    (out / MANIFEST_NAME).unlink(missing_ok=True)

    files: list[str] = list(shared_files(out)) if shared_files is not None else []
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, len(jobs)))
    payloads = [payload for _, payload in jobs]
    if workers == 1:
        results: Iterable[list[str]] = map(write_case, payloads)
        pool = None
    else:
        pool = multiprocessing.get_context().Pool(workers)
        results = pool.imap(write_case, payloads)
    name = generator.rsplit(".", 1)[-1]
    bar = progress_bar(total=len(jobs), desc=f"{name} phantoms", unit="case", enabled=verbose, leave=True)
    try:
        with bar:  # closed before an error propagates
            for i, (case_id, written) in enumerate(zip(case_ids, results, strict=True)):
                files.extend(written)
                bar.set_postfix_str(case_id, refresh=False)
                bar.update(1)
                if verbose and bar.disable:
                    print(f"{generator}: [{i + 1}/{len(jobs)}] {case_id}", flush=True)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    old_files = old.get("files", []) if old is not None else []
    _remove_stale(out, old_files if isinstance(old_files, list) else [], set(files))
    manifest = {**header, "cases": case_ids, "files": files}
    atomic_write_json(out / MANIFEST_NAME, manifest)
    if verbose:
        print(f"{generator}: wrote {len(case_ids)} cases to {out}", flush=True)
    return case_ids
