"""Checkpoints that survive a kill at any moment, and finding the one to resume from.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), and Ignite's ``Checkpoint`` deletes the file it
rotates out *before* it writes the new one; a training job killed at the wrong moment (pre-emption, OOM killer,
SIGKILL) is left with a truncated checkpoint or none at all. :class:`AtomicCheckpointSaver` is a drop-in
replacement for bundle configs: every file is written to a temporary file and renamed into place, and files rotated
out are deleted only after their successor is complete. :func:`latest_checkpoint` then resumes from the newest
*intact* epoch checkpoint, warning about any newer one that is damaged (keep ``n_saved`` >= 2 so that one exists).
The saver keeps the newest ``n_saved`` epoch files *on disk*, those of an earlier process included, so a resumed run
rotates out the files of the run it resumed.

Loading goes through :class:`CheckpointLoader` (MONAI's handler, same arguments) or :func:`load_checkpoint`: a file
that is missing, empty, truncated, not a checkpoint, a pickle that would run code (``torch.load(weights_only=True)``
refuses it; nothing here ever loads with ``weights_only=False``) or weights of another architecture or width stops
with one :class:`CheckpointError` naming the file, what is wrong and what to do, which a bundle run prints as its
last line (:mod:`common.errors`). A failed save (a full disk, a quota) stops the same way, naming the folder.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import pickletools
import re
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from monai.handlers import CheckpointSaver
from monai.networks.utils import copy_model_state

from common.errors import BadInputError

__all__ = [
    "CHECKPOINT_GLOB",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckpointError",
    "CheckpointLoader",
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "latest_checkpoint",
    "load_checkpoint",
    "missing_weights_help",
    "read_checkpoint",
    "weights_misfit",
    "with_best_metric",
    "with_weights",
]

CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"  # what MONAI's CheckpointSaver names its save_interval checkpoints

logger = logging.getLogger(__name__)


class CheckpointError(BadInputError):
    """A checkpoint cannot be read, does not fit what loads it, or cannot be saved; the message names the file (or
    folder), what is wrong and what to do. A bundle run prints it as its last line (:mod:`common.errors`)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint a config loads does not exist."""


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed (a full disk, a quota, permissions); the previous files are left as they were."""


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` with atomic writes (temp file + ``os.replace``) and removals deferred until after
    the next successful save; ``filename`` fixes the file name as MONAI's saver does (``model.pt``).

    ``keep`` (for numbered files such as ``checkpoint_epoch=N.pt``): after each save, only the ``keep`` newest files
    of the saved file's series with numbers up to the saved one stay in the folder, those an earlier process wrote
    included. Ignite only knows the files its own process saved, so without this every resume would leave
    ``n_saved`` more behind. Files numbered above the one saved (from some other, longer run) are left alone.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, keep: int | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self.keep = keep
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        if self.save_on_rank != _rank():
            return
        try:
            self._write(checkpoint, self.dirname / filename)
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
            raise CheckpointSaveError(
                f"{self.dirname}: cannot save {filename} ({reason}); the checkpoints saved there before are intact. "
                "Free space there (or set another ckpt_dir), then continue with --resume true"
            ) from error
        for old in self._superseded:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)
        self._superseded.clear()
        if self.keep is not None:
            self._prune(filename)

    def _write(self, checkpoint: Mapping, path: Path) -> None:
        # DiskSaver's own atomic write leaves its temp file behind when the rename fails; this one never does, and
        # its temp name says which checkpoint it was becoming
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.dirname)
        try:
            with os.fdopen(fd, "wb") as file:
                writer = _WriteAll(file)
                try:
                    torch.save(checkpoint, writer, **self.kwargs)
                except RuntimeError as error:
                    if writer.error is not None:  # torch reports a failed write as an opaque "unexpected pos"
                        raise writer.error from error
                    raise
                file.flush()
                os.fsync(file.fileno())  # the rename must never publish data still in the page cache only
            os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IRGRP | stat.S_IROTH)  # as DiskSaver: readable by the group
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _prune(self, filename: str) -> None:
        numbered = re.fullmatch(r"(.*=)(\d+)(\.\w+)", filename)
        if numbered is None:
            return
        prefix, number, suffix = numbered.group(1), int(numbered.group(2)), numbered.group(3)
        series = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
        older = []
        for path in self.dirname.iterdir():
            match = series.fullmatch(path.name)
            if match and int(match.group(1)) <= number:
                older.append((int(match.group(1)), path))
        for _, path in sorted(older, reverse=True)[self.keep :]:
            logger.info(f"{path}: removed, {self.keep} newer checkpoints are kept (n_saved)")
            path.unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)


class _WriteAll:
    """The file object ``torch.save`` writes to: every write completes or raises, and the ``OSError`` is kept (torch
    turns a short or failed write into a ``RuntimeError`` that no longer says why, e.g. no space left)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = self.file.write(view[done:])
                if not written:
                    raise OSError(errno.EIO, "the file system accepted no more bytes")
                done += written
        except OSError as error:
            self.error = error
            raise
        return done

    def flush(self) -> None:
        self.file.flush()


def _rank() -> int:
    import ignite.distributed as idist

    return idist.get_rank()


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, same file names) whose files are never seen half-written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                keep = checkpoint.n_saved if checkpoint is self._interval_checkpoint else None
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename, keep)

    def state_dict(self) -> dict:
        """Which best-model files exist and with what score, to store in the training checkpoint.

        MONAI's ``load_state_dict`` restores it on resume. Without it a resumed saver starts with no record, and the
        first validation after the resume overwrites the best model with whatever it scored.
        """
        if self._key_metric_checkpoint is None:
            raise ValueError("AtomicCheckpointSaver.state_dict: no best-model record to save (save_key_metric is off)")
        return dict(self._key_metric_checkpoint.state_dict())


def _intact(path: Path) -> bool:
    """A ``torch.save`` file is a zip archive; a truncated or overwritten one fails the CRC of some member."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = CHECKPOINT_GLOB) -> str:
    """The most recent intact epoch checkpoint in ``ckpt_dir``, by its epoch number.

    Newer checkpoints that are damaged (truncated, not a ``torch.save`` archive) are skipped with a warning.

    Raises:
        CheckpointNotFoundError: naming the folder and the expected file pattern, when there is no intact checkpoint.
    """
    candidates = list(Path(ckpt_dir).glob(pattern))

    def epoch(path: Path) -> int:
        return int(path.stem.rsplit("=", 1)[-1])

    for path in sorted(candidates, key=epoch, reverse=True):
        if _intact(path):
            return str(path)
        logger.warning(f"{path}: damaged checkpoint (not a complete torch.save archive), trying the previous one")
    found = f"; found only damaged ones: {sorted(p.name for p in candidates)}" if candidates else ""
    raise CheckpointNotFoundError(
        f"{ckpt_dir}: no checkpoint to resume from (expected files named {pattern}, written by a training run "
        f"of this bundle{found}); start without resume=true"
    )


# ---- loading -------------------------------------------------------------------------------------------------

_PICKLE_GLOBAL_OPS = {"GLOBAL", "INST", "STACK_GLOBAL"}


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a pickle refers to, read with ``pickletools`` (nothing is imported or run)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: whatever was read before the damage
        pass
    return found


def _code_globals(path: Path) -> list[str]:
    """Globals outside torch and collections that the pickle of ``path`` (plain, or a torch.save archive) names."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, EOFError):
        return []
    safe = ("torch.", "collections.OrderedDict", "builtins.set", "numpy.")  # what a state dict itself holds
    return sorted({g for g in _pickle_globals(data) if not g.startswith(safe)})


def _unreadable(path: Path, error: BaseException) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, and what to do about it."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(4)
    if size == 0:
        return "the file is empty (0 bytes, as a save or copy that stopped leaves it); expected a torch.save checkpoint"
    code = _code_globals(path) if isinstance(error, pickle.UnpicklingError) else []
    if code:
        return (
            f"the file is a pickle that would import and run {', '.join(code[:3])} when loaded, so "
            "torch.load(weights_only=True) refuses it; expected a checkpoint of tensors only (a state dict as the "
            "bundles' training writes); never load a file you do not trust with weights_only=False"
        )
    if head.startswith(b"PK"):
        return (
            f"the torch.save archive is truncated or damaged ({size} bytes, {type(error).__name__} while reading it); "
            "copy or download it again, or use the previous checkpoint"
        )
    return (
        f"the file is not a PyTorch checkpoint ({size} bytes starting with {head!r}); expected a file written by "
        "torch.save, e.g. the models/model.pt of this bundle's training"
    )


def read_checkpoint(
    path: str | os.PathLike, map_location: Any = None, if_missing: str | None = None
) -> Mapping[str, Any]:
    """The checkpoint at ``path``, loaded with ``torch.load(weights_only=True)``: a dict of state dicts or tensors.

    Args:
        path: a ``torch.save`` file.
        map_location: as for ``torch.load``.
        if_missing: what the error says after ``<path>: `` when there is no such file (e.g.
            :func:`missing_weights_help`); default: that a checkpoint was expected there.

    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointError: the file is a folder, empty, truncated, not a checkpoint, or a pickle that would run code.
    """
    if path is None or str(path) == "":
        raise CheckpointNotFoundError("no checkpoint path given (load_path is empty); expected a checkpoint file")
    file = Path(path)
    if not file.exists():
        raise CheckpointNotFoundError(
            f"{file}: " + (if_missing or "no such file; expected a checkpoint written by this bundle's training there")
        )
    if not file.is_file():
        raise CheckpointError(f"{file}: is a folder; expected a checkpoint file (torch.save) at this path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's pickle-protocol note on files it then refuses
            checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointError(f"{file}: {_unreadable(file, e)}") from e
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{file}: holds a {type(checkpoint).__name__}, not a dict; expected a state dict or MONAI's "
            "{'model': state_dict, ...} as the bundles' training writes"
        )
    return checkpoint


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('h') else 's'}"


def weights_misfit(module: nn.Module, state: Any, strict: bool = True) -> str | None:
    """How ``state`` (a state dict) does not fit ``module``: missing, unexpected keys (``strict``), shape mismatches."""
    if not isinstance(state, Mapping):
        return f"holds a {type(state).__name__} where a state dict was expected"
    own = module.state_dict()
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    shapes = [(k, _shape(state[k]), _shape(v)) for k, v in own.items() if k in state and _shape(state[k]) != _shape(v)]
    parts = []
    if missing:
        parts.append(f"{_plural(len(missing), 'missing key')} (e.g. '{missing[0]}')")
    if unexpected:
        parts.append(f"{_plural(len(unexpected), 'unexpected key')} (e.g. '{unexpected[0]}')")
    if shapes:
        k, theirs, ours = shapes[0]
        mismatches = _plural(len(shapes), "shape mismatch")
        parts.append(f"{mismatches} (e.g. '{k}': {theirs} in the file, {ours} in the network)")
    return ", ".join(parts) or None


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj


def load_checkpoint(
    load_path: str | os.PathLike,
    load_dict: Mapping[str, Any],
    map_location: Any = None,
    strict: bool = True,
    strict_shape: bool = True,
    if_missing: str | None = None,
) -> Mapping[str, Any]:
    """Load the checkpoint at ``load_path`` into the objects of ``load_dict``, as MONAI's ``CheckpointLoader`` does
    (same arguments and rules: a one-item ``load_dict`` also takes a bare state dict), or stop with one clear error.

    Every network is checked against its state dict before anything is loaded, so a misfit names the item, how many
    keys are missing or unexpected and the first shape that differs, rather than torch's page of key names. Returns
    the checkpoint read.

    Raises:
        CheckpointNotFoundError, CheckpointError: see :func:`read_checkpoint`; also an item of ``load_dict`` that the
            checkpoint lacks, a network whose weights do not fit (``strict``: keys; ``strict_shape``: shapes), or any
            other object (optimizer, scheduler, engine) whose state does not load.
    """
    checkpoint = dict(read_checkpoint(load_path, map_location, if_missing))
    held = ", ".join(f"'{k}'" for k in checkpoint) or "nothing"
    first = next(iter(load_dict))
    if len(load_dict) == 1 and first not in checkpoint:  # a bare state dict of the one object
        checkpoint = {first: checkpoint}
    lacking = [k for k in load_dict if k not in checkpoint]
    if lacking:
        raise CheckpointError(
            f"{load_path}: lacks {', '.join(repr(k) for k in lacking)} (it holds {held}); expected a checkpoint "
            "written by the same config (a training checkpoint holds the network, optimizer, scheduler and trainer)"
        )
    to_load = dict(load_dict)
    if strict_shape:
        for key, obj in to_load.items():
            module = _unwrap(obj)
            if isinstance(module, nn.Module):
                misfit = weights_misfit(module, checkpoint[key], strict)
                if misfit:
                    raise CheckpointError(
                        f"{load_path}: its '{key}' weights do not fit the {type(module).__name__} of this config "
                        f"({misfit}); expected weights of the same network with the same settings (width, depth, "
                        "channels, variant configs stacked as in training)"
                    )
    else:  # MONAI's transfer-learning mode: matching layers of networks only
        for key in list(to_load):
            if isinstance(to_load[key], nn.Module):
                checkpoint[key] = copy_model_state(to_load[key], checkpoint[key], inplace=False)[0]
            else:
                warnings.warn(
                    f"strict_shape is False: '{key}' is not loaded from {load_path}, only networks are.", stacklevel=2
                )
                to_load.pop(key)
    for key, obj in to_load.items():
        try:
            Checkpoint.load_objects(to_load={key: obj}, checkpoint={key: checkpoint[key]}, strict=strict)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(
                f"{load_path}: its '{key}' state does not load into this config's {type(_unwrap(obj)).__name__} "
                f"({detail}); expected a checkpoint written by the same config"
            ) from e
    return checkpoint


def with_weights(
    network: nn.Module,
    path: str | os.PathLike | None,
    map_location: Any = None,
    strict: bool = True,
    if_missing: str | None = None,
) -> nn.Module:
    """``network`` with the weights at ``path`` loaded (a state dict or MONAI's ``{"model": ...}``), or unchanged
    when ``path`` is None; for configs that build a network with its weights (a base model, an ensemble member).

    RefNet's base model is loaded this way where it is built because MONAI Label's bundle inference instantiates
    the ``inferer`` but never runs ``initialize`` (where the bundle's checkpoint loaders are).
    """
    if path is not None:
        load_checkpoint(path, {"model": network}, map_location, strict, if_missing=if_missing)
    return network


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` handler (same arguments, strict by default) that reads through
    :func:`load_checkpoint`: every failure is one :class:`CheckpointError` naming the file and what to do.

    ``if_missing``: what the error says when the file does not exist (e.g. :func:`missing_weights_help`).
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
        strict_shape: bool = True,
        if_missing: str | None = None,
    ) -> None:
        super().__init__(load_path, load_dict, name, map_location, strict, strict_shape)
        self.if_missing = if_missing

    def __call__(self, engine: Any) -> None:
        prior_max_epochs = engine.state.max_epochs  # MONAI's rule: the config's epochs win over the checkpoint's
        load_checkpoint(
            self.load_path, self.load_dict, self.map_location, self.strict, self.strict_shape, self.if_missing
        )
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise CheckpointError(
                f"{self.load_path}: the checkpoint is at epoch {engine.state.epoch}, past the {prior_max_epochs} "
                f"epochs this run is set to; to train further, set epochs above {engine.state.epoch}"
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")


def missing_weights_help(
    bundle_root: str | os.PathLike, train_config: str = "configs/train.json", switch: str | None = "load_pretrain"
) -> str:
    """The ``if_missing`` text of a bundle's default weights: there are none, and the ways on.

    Train them (the README's command), fetch released ones (what ``large_files.yml`` lists, if anything), or, where
    the config has a ``switch`` (inference's ``load_pretrain``), turn loading off to check the pipeline with random
    weights (``switch`` None: evaluation, where random weights would score nothing).
    """
    root = Path(bundle_root)
    listed = _large_files(root / "large_files.yml")
    download = (
        f"download the released ones (python -m monai.bundle download_large_files --bundle_path {root}, which fetches "
        f"{', '.join(listed)})"
        if listed
        else "download released ones when there are some (large_files.yml lists none yet; then python -m monai.bundle "
        f"download_large_files --bundle_path {root})"
    )
    train = (
        f"train them (python -m monai.bundle run --config_file {root / train_config} --bundle_root {root} "
        "--dataset_dir <your data>)"
    )
    if switch is None:
        return f"no trained weights (no such file); {train} or {download}"
    return (
        f"no trained weights (no such file); {train}, {download}, or pass --{switch} False to check the pipeline "
        "with random weights"
    )


def _large_files(path: Path) -> list[str]:
    """The paths ``large_files.yml`` lists (empty if none or no such file)."""
    try:
        import yaml

        entries = (yaml.safe_load(path.read_text()) or {}).get("large_files") or []
    except (OSError, ImportError, AttributeError, yaml.YAMLError):
        return []
    return [str(e.get("path", "?")) for e in entries if isinstance(e, Mapping)]


def with_best_metric(evaluator: Any) -> Any:
    """``evaluator``, its best metric and the epoch of it added to what its ``state_dict`` saves.

    A training checkpoint holds the evaluator so that a resumed run compares new scores with the best one so far;
    MONAI's evaluators save neither by default.
    """
    for key in ("best_metric", "best_metric_epoch"):
        if key not in evaluator.state_dict_user_keys:
            evaluator.state_dict_user_keys.append(key)
    return evaluator
