"""Output folders of inference runs: checked before the first case, written all-or-nothing per case, one model each.

Three promises, kept by :func:`prepare_output_folder` (the last entry of every inference config's ``initialize``
list: after the inputs are listed and the weights loaded, so that a bad input or checkpoint makes no folder, and
before the first case), :func:`release_output_folder` (its ``finalize``) and the writers of
:mod:`common.transforms.writers` and :mod:`common.transforms.overlay`:

1. **The folder is usable before the first case.** It is created if missing and must take a real file (a probe file
   is written, synced and removed; permission bits alone do not say whether a root-owned process, a read-only mount
   or an NFS export will accept a write), and its file system must have at least :data:`OUTPUT_MIN_FREE_MB` MiB free.
   That fixed minimum is deliberately conservative and independent of the data: the largest output of the zoo is one
   compressed BraTS or BTCV label map (well under 1 MiB; a Visible Korean label map plus its overlay PNG at
   2048 x 1216 is about 3 MiB), so 64 MiB covers dozens of cases, and a disk that fills up later is still caught per
   case (promise 2). Counting the cases would mean listing the dataset, which is the data work this check runs before.
2. **A case's outputs appear together or not at all.** Inside :func:`outputs_of_one_case` (which
   :class:`common.transforms.writers.AllOrNothingCompose` opens around a case's postprocessing) every writer writes a
   hidden temporary file next to its target and :func:`publish` only records it; when the whole postprocessing has
   run, all temporary files are renamed onto their targets, one ``os.replace`` after the other. If anything fails
   first (a full disk, a file-size limit, a failing transform) the temporary files are removed and no file of the
   case appears; if a rename fails half-way, the targets already renamed are removed again. What remains is a window
   of a few microseconds between two renames in which only a kill of the process (``SIGKILL``) can split a case.
   A write that fails raises :class:`OutputFolderError` naming the folder, the file and the cause, so the run ends
   with ``error: <folder>: ...`` (:mod:`common.errors`).
3. **One model per folder.** Two runs writing into one folder would silently mix two models' label maps, each file
   looking equally valid. Of the two usual remedies, a lock plus a manifest was chosen over a new sub-folder per run:
   MONAI users, MONAI Label and the demo expect ``output_dir/<case>_seg.nii.gz`` exactly where ``--output_dir`` says,
   and re-running the same model over a folder (after adding cases, or after a failed run) should simply complete
   it. So:

   * a **lock file** ``.run.lock`` (PID, host, start time) is created atomically (a fully written temporary file
     hard-linked onto the name, so a reader never sees it empty) and removed when the run finalizes or the process
     exits (a folder the run made and left empty goes too). A second run
     finding it stops with a message naming the holder. A lock left by a process that no longer exists on this host
     (killed, out of memory) is taken over with a warning; a lock of another host cannot be checked and must be
     removed by hand.
   * a **manifest** ``.run.json`` records what produced the outputs: the bundle (its folder name) and its version
     (``metadata.json``), the bundle config files of the run (``inference.json``, ``refine.json``, ...), and every
     checkpoint with its path, size, modification time and sha256. It is written atomically just before the first
     output of the run appears (the checkpoints hashed again then, since a run may train them after its
     ``initialize``), so a run that fails before writing anything leaves no manifest behind. A later run compares
     its own, at ``initialize`` and again before its first output: the same bundle, version, config files and
     checkpoint contents (sha256; a copied checkpoint is the same model) overwrite the outputs; anything else stops
     with a message saying what differs and what to do (another ``--output_dir``, or remove the folder). Settings
     given on the command line or in overlay files (input paths, ``tta_mirroring``, ...) are not compared: the
     folder is meant to collect one model's results on many inputs.
     A folder without a manifest (outputs of an older release, training logs) is accepted.

This module imports only the standard library and :mod:`common.errors`, so it works wherever a bundle runs.
"""

from __future__ import annotations

import ast
import atexit
import contextvars
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import BadInputError

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "OUTPUT_MIN_FREE_MB",
    "OutputFolderError",
    "outputs_of_one_case",
    "prepare_output_folder",
    "publish",
    "release_output_folder",
    "temporary_path_for",
    "write_output_bytes",
    "write_output_file",
]

logger = logging.getLogger(__name__)

OUTPUT_MIN_FREE_MB = 64
"""Free space (MiB) an output folder's file system must have before a run starts (module docstring)."""

LOCK_NAME = ".run.lock"
MANIFEST_NAME = ".run.json"

# mkstemp creates files readable by their owner only; give outputs the permissions a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class OutputFolderError(BadInputError):
    """An output folder cannot take this run's outputs; the message starts with the folder and says why."""


# ---------------------------------------------------------------------------------------------------------------
# writing one file, and the outputs of one case together
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _CaseOutputs:
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary file, target)
    failure: OutputFolderError | None = None


_ACTIVE_CASE: contextvars.ContextVar[_CaseOutputs | None] = contextvars.ContextVar("_ACTIVE_CASE", default=None)


def _describe_os_error(error: OSError) -> str:
    name = errno.errorcode.get(error.errno, "") if error.errno else ""
    text = error.strerror or str(error)
    return f"{text} ({name})" if name else text


def _write_failure(folder: Path, what: str, error: BaseException) -> OutputFolderError:
    """The error of a failed write; remembered by the active case, because ``SaveImaged`` turns what its writer
    raises into text (``cannot find a suitable writer``) and only the case can raise it again."""
    cause = _describe_os_error(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
    failure = OutputFolderError(f"{folder}: {what} failed: {cause}.")
    case = _ACTIVE_CASE.get()
    if case is not None and case.failure is None:
        case.failure = failure
    return failure


def temporary_path_for(target: str | os.PathLike) -> Path:
    """A new empty hidden file next to ``target`` that keeps its extension (``.<name>.<random><ext>``).

    Same folder, so the final ``os.replace`` is atomic; the leading dot keeps globs such as ``*.nii.gz`` away from it;
    the extension is kept because writers such as nibabel pick the format (compression) by it.
    """
    target = Path(target)
    extension = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=extension, dir=target.parent)
    except OSError as e:
        raise _write_failure(target.parent, f"creating a temporary file for {target.name}", e) from e
    os.close(fd)
    return Path(tmp)


def _commit(staged: Sequence[tuple[Path, Path]]) -> None:
    """Rename every temporary file onto its target; on a failure take back what was renamed and remove the rest."""
    _write_pending_manifests([target for _, target in staged])
    renamed: list[Path] = []
    try:
        for tmp, target in staged:
            os.replace(tmp, target)
            renamed.append(target)
    except OSError as e:
        for target in renamed:
            target.unlink(missing_ok=True)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        target = staged[len(renamed)][1]
        raise _write_failure(target.parent, f"renaming the finished {target.name} into place", e) from e


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the finished temporary file ``tmp`` appear as ``target``: now, or with the rest of the active case."""
    case = _ACTIVE_CASE.get()
    if case is None:
        _commit([(Path(tmp), Path(target))])
    else:
        case.staged.append((Path(tmp), Path(target)))


def write_output_file(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write an output through ``write(temporary_path)`` and :func:`publish` it; on any failure remove the temporary.

    Raises:
        OutputFolderError: the file system refused the write (full disk, file-size limit, read-only, permissions).
            Other exceptions of ``write`` pass through unchanged.
    """
    target = Path(target)
    tmp = temporary_path_for(target)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_failure(target.parent, f"writing {target.name}", e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, target)


def write_output_bytes(target: str | os.PathLike, data: bytes) -> None:
    """:func:`write_output_file` of ``data``, synced to disk before it is published."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    write_output_file(target, write)


@contextmanager
def outputs_of_one_case(name: str = "") -> Iterator[None]:
    """Within this block, outputs written through :func:`publish` appear together at its end, or none if it fails.

    Args:
        name: the case, for the error message.

    Raises:
        OutputFolderError: a write of the case failed, even where a caller (``SaveImaged``) swallowed that error and
            raised its own; the original exception is its cause.
    """
    case = _CaseOutputs()
    token = _ACTIVE_CASE.set(case)
    try:
        yield
    except BaseException as error:
        for tmp, _ in case.staged:
            tmp.unlink(missing_ok=True)
        if case.failure is not None:
            kept = f" No output of case {name} was kept." if name else " No output of this case was kept."
            if case.failure is error:
                case.failure.args = (str(error) + kept,)
                raise
            raise OutputFolderError(str(case.failure) + kept) from error
        raise
    finally:
        _ACTIVE_CASE.reset(token)
    _commit(case.staged)


# ---------------------------------------------------------------------------------------------------------------
# checking the folder
# ---------------------------------------------------------------------------------------------------------------


def _check_usable(folder: Path) -> None:
    if not folder.exists():
        _CREATED_FOLDERS.add(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: is a file, not a folder; expected a folder for the outputs.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(
            f"{folder}: cannot be created ({_describe_os_error(e)}); expected a writable folder for the outputs."
        ) from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
    except OSError as e:
        raise OutputFolderError(
            f"{folder}: is not writable ({_describe_os_error(e)}); expected a folder this run can write its outputs "
            "to (check its permissions and whether its file system is mounted read-only)."
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputFolderError(f"{folder}: a test write failed ({_describe_os_error(e)}).") from e
    finally:
        Path(probe).unlink(missing_ok=True)


def _check_free_space(folder: Path, min_free_mb: float) -> None:
    free = shutil.disk_usage(folder).free
    if free < min_free_mb * 2**20:
        raise OutputFolderError(
            f"{folder}: only {free / 2**20:.1f} MiB free on its file system; this run needs at least "
            f"{min_free_mb:g} MiB for its outputs. Free some space or choose another --output_dir."
        )


# ---------------------------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------------------------

_HELD_LOCKS: set[Path] = set()
# folders this process made; a run that stops before its first output removes them again, so that no empty output
# folder suggests a run that wrote nothing was a success
_CREATED_FOLDERS: set[Path] = set()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def release_output_folder(folder: str | os.PathLike) -> None:
    """End this process's run in ``folder``: its lock is removed, and the folder too if this run made it and wrote
    nothing (a bundle config's ``finalize``; at exit for runs that stop on an error)."""
    folder = Path(folder).expanduser().absolute()
    lock = folder / LOCK_NAME
    holder = _read_json(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)
    _HELD_LOCKS.discard(lock)
    if folder in _CREATED_FOLDERS:
        _CREATED_FOLDERS.discard(folder)
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass


def _release_locks() -> None:
    for folder in {lock.parent for lock in _HELD_LOCKS} | set(_CREATED_FOLDERS):
        release_output_folder(folder)


atexit.register(_release_locks)


def _link_lock(record_file: Path, lock: Path) -> bool:
    """Create ``lock`` with the content of ``record_file`` atomically; False if it exists."""
    try:
        os.link(record_file, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: O_EXCL, with a moment in which the lock is empty
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(record_file.read_bytes())
        return True


def _acquire_lock(folder: Path) -> None:
    lock = folder / LOCK_NAME
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "started": _now(), "command": sys.argv}
    fd, record_file = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.chmod(record_file, _FILE_MODE)
    try:
        for _ in range(3):
            if _link_lock(Path(record_file), lock):
                break
            holder = _read_json(lock)
            if holder is None and not lock.exists():
                continue  # released in between
            if holder and holder.get("host") == host and holder.get("pid") == os.getpid():
                os.replace(record_file, lock)  # this process again (runs started from Python)
                break
            if holder and holder.get("host") == host and isinstance(holder.get("pid"), int):
                if _pid_exists(holder["pid"]):
                    raise OutputFolderError(
                        f"{folder}: another run (process {holder['pid']} on this host, started "
                        f"{holder.get('started', '?')}) is writing into this folder (lock file {lock}); wait for it "
                        "to finish or use another --output_dir."
                    )
                stale = f"process {holder['pid']}, started {holder.get('started', '?')}, no longer exists"
            elif holder:
                raise OutputFolderError(
                    f"{folder}: a run on host {holder.get('host', '?')} (process {holder.get('pid', '?')}, started "
                    f"{holder.get('started', '?')}) holds the lock file {lock}; wait for it to finish, use another "
                    "--output_dir, or remove the lock file if that run has ended."
                )
            else:
                stale = "its content is unreadable"
            logger.warning("%s: taking over the stale lock file %s (%s).", folder, lock, stale)
            print(f"warning: {folder}: taking over the stale lock file {lock} ({stale}).", file=sys.stderr)
            lock.unlink(missing_ok=True)
        else:
            raise OutputFolderError(f"{folder}: could not take the lock file {lock}; other runs keep taking it.")
    finally:
        Path(record_file).unlink(missing_ok=True)
    _HELD_LOCKS.add(lock)


# ---------------------------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _PendingManifest:
    manifest: dict[str, Any]
    checkpoints: list[str]


_PENDING_MANIFESTS: dict[Path, _PendingManifest] = {}


def _config_files_from_command_line(argv: Sequence[str]) -> list[str]:
    """The ``--config_file`` of a ``python -m monai.bundle run`` command line, as MONAI reads it (list or commas)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
    if not value:
        return []
    if value.lstrip().startswith(("[", "(")):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
        return [str(v) for v in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]
    return [value] if Path(value).is_file() or "," not in value else [v.strip() for v in value.split(",")]


def _bundle_configs(bundle_root: Path | None, argv: Sequence[str]) -> list[str]:
    """Names of the run's config files that belong to the bundle (its ``configs/`` folder); overlays are left out."""
    files = _config_files_from_command_line(argv)
    if bundle_root is None:
        return [Path(f).name for f in files]
    configs = (bundle_root / "configs").resolve()
    return [Path(f).name for f in files if Path(f).resolve().parent == configs]


def _checkpoint_record(path: str) -> dict[str, Any]:
    from common.io import sha256_file

    file = Path(path).expanduser().absolute()
    if not file.is_file():
        return {"path": str(file), "sha256": None}
    stat = file.stat()
    modified = _dt.datetime.fromtimestamp(stat.st_mtime, _dt.UTC).astimezone().isoformat(timespec="seconds")
    return {"path": str(file), "bytes": stat.st_size, "modified": modified, "sha256": sha256_file(file)}


def _model_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "bundle": manifest.get("bundle"),
        "version": manifest.get("version"),
        "configs": manifest.get("configs"),
        "checkpoints": sorted(c.get("sha256") or "missing" for c in manifest.get("checkpoints") or []),
    }


def _describe_model(manifest: dict[str, Any]) -> str:
    checkpoints = manifest.get("checkpoints") or []
    weights = ", ".join(f"{c.get('path')} (sha256 {str(c.get('sha256'))[:12]})" for c in checkpoints)
    return (
        f"{manifest.get('bundle')} {manifest.get('version')}, configs {manifest.get('configs')}, "
        f"{'checkpoints ' + weights if weights else 'no checkpoint (untrained network)'}"
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    a, b = _model_identity(old), _model_identity(new)
    names = {"bundle": "bundle", "version": "version", "configs": "config files", "checkpoints": "checkpoint contents"}
    return ", ".join(names[k] for k in a if a[k] != b[k])


def _refuse_other_model(folder: Path, manifest: dict[str, Any]) -> None:
    previous = _read_json(folder / MANIFEST_NAME)
    if previous is not None and _model_identity(previous) != _model_identity(manifest):
        raise OutputFolderError(
            f"{folder}: holds the outputs of another model ({_describe_model(previous)}; see "
            f"{folder / MANIFEST_NAME}), and this run ({_describe_model(manifest)}) differs in its "
            f"{_differences(previous, manifest)}. Use another --output_dir, or remove the folder to replace "
            "those outputs; writing both into one folder would mix two models' results."
        )


def _write_pending_manifests(targets: Sequence[Path]) -> None:
    """Write the manifest of every prepared folder that ``targets`` lie in, before its first output appears.

    The checkpoints are hashed again here, because a run may train (or replace) them after its ``initialize``;
    the comparison with the folder's manifest is repeated with what the outputs really come from.
    """
    from common.io import atomic_write_json

    for folder in list(_PENDING_MANIFESTS):
        if any(folder == t.parent or folder in t.parents for t in map(Path.absolute, targets)):
            pending = _PENDING_MANIFESTS.pop(folder)
            manifest = {**pending.manifest, "checkpoints": [_checkpoint_record(c) for c in pending.checkpoints]}
            _refuse_other_model(folder, manifest)
            try:
                atomic_write_json(folder / MANIFEST_NAME, manifest)
            except OSError as e:
                raise _write_failure(folder, f"writing {MANIFEST_NAME}", e) from e


def _metadata(bundle_root: Path | None) -> tuple[str | None, str | None]:
    if bundle_root is None:
        return None, None
    meta = _read_json(bundle_root / "configs" / "metadata.json") or {}
    return bundle_root.resolve().name, meta.get("version")


def prepare_output_folder(
    folder: str | os.PathLike,
    bundle_root: str | os.PathLike | None = None,
    checkpoints: Sequence[str | os.PathLike | None] = (),
    min_free_mb: float = OUTPUT_MIN_FREE_MB,
) -> str:
    """Check ``folder`` before the first case, lock it for this run and compare its manifest (module docstring).

    Args:
        folder: the run's ``output_dir`` (created if missing).
        bundle_root: the bundle, for its name and version (``configs/metadata.json``) and to tell its config files
            from overlays.
        checkpoints: the weights the run loads (empty entries are skipped); their sha256 identify the model.
        min_free_mb: free space the folder's file system must have, in MiB.

    Returns:
        the folder, absolute.

    Raises:
        OutputFolderError: the folder is a file, cannot be created, is not writable, has too little free space, is
            locked by a running process, or holds the outputs of another model.
    """
    folder = Path(folder).expanduser().absolute()
    _check_usable(folder)
    _check_free_space(folder, min_free_mb)
    root = Path(bundle_root).expanduser().absolute() if bundle_root is not None else None
    name, version = _metadata(root)
    records = [_checkpoint_record(str(c)) for c in checkpoints if c]
    manifest = {
        "bundle": name,
        "version": version,
        "configs": _bundle_configs(root, sys.argv),
        "checkpoints": records,
        "output_dir": str(folder),
        "written_by": {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": sys.argv},
    }
    _acquire_lock(folder)
    try:
        # a checkpoint still missing is either trained by this run or fails its loader with the loader's message;
        # the comparison then waits for the first output (_write_pending_manifests)
        if all(r["sha256"] for r in records):
            _refuse_other_model(folder, manifest)
    except BaseException:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        _HELD_LOCKS.discard(folder / LOCK_NAME)
        raise
    _PENDING_MANIFESTS[folder] = _PendingManifest(manifest, [str(c) for c in checkpoints if c])
    return str(folder)
