"""RefNet's datalists (bundle ``refnet_synapse``): CT, ground truth and base prediction of each case, read and written.

RefNet learns to refine a base model's segmentation, so each of its training items pairs a BTCV case (CT and ground
truth) with a base model's prediction of it. :mod:`common.base_predictions` makes those predictions and writes them
with :func:`write_datalist`; the bundle configs read them with :func:`load_refinement_datalist`. The format of
``<out>/datalist.json``::

    {"description": "...", "descriptions": {"base-oof": "...", ...}, "num_classes": 13,
     "training": [{"case": "0005", "image": "Training/img/img0005.nii.gz", "label": "Training/label/label0005.nii.gz",
                   "base": "predictions/seed0_fold1/img0005_base.nii.gz", "seed": 0, "fold": 1,
                   "source": "out_of_fold", "made_by": "base-oof"}, ...],
     "test": [{"case": "0008", ..., "source": "test"}, ...]}

``image`` and ``label`` are relative to the BTCV ``RawData`` folder, ``base`` (and ``base_probabilities`` when the
base model's class probabilities were saved) to the datalist's folder, so both trees can move. ``source`` is one of
:data:`SOURCES`. Base label maps are uint8 NIfTI in the 12-organ convention with the CT's geometry; probabilities
are 13-channel uint8 NIfTI holding ``round(255 p)``.

The configs also take from here what they select of a datalist (:func:`split_validation_cases`,
:func:`corrupted_gt_items`), the one-item datalist of ``configs/refine.json`` (:func:`refine_datalist`) and the
checks of the files they name (:func:`require_file`, :func:`base_weights_file`), whose errors name the file and how
to make it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from common.data.btcv import BTCVDataError, btcv_case_paths, find_raw_data_dir
from common.io import atomic_write_json

__all__ = [
    "DATALIST_NAME",
    "NUM_CLASSES",
    "SOURCES",
    "RefinementDataError",
    "RefinementFileNotFoundError",
    "ValidationSplit",
    "base_weights_file",
    "corrupted_gt_items",
    "datalist_entry",
    "load_refinement_datalist",
    "refine_datalist",
    "require_file",
    "split_validation_cases",
    "write_datalist",
]

DATALIST_NAME = "datalist.json"
SOURCES = ("out_of_fold", "in_sample", "test", "corrupted_gt")
NUM_CLASSES = 13  # background + the 12 organs of common.data.btcv.SYNAPSE12_LABELS
_PATH_KEYS_IN_DATASET = ("image", "label")
_PATH_KEYS_IN_DATALIST = ("base", "base_probabilities")


class RefinementDataError(BTCVDataError):
    """A refinement datalist, or a file it or ``configs/refine.json`` names, is not what was expected."""


class RefinementFileNotFoundError(RefinementDataError, FileNotFoundError):
    """A refinement datalist, or a file it or ``configs/refine.json`` names, does not exist."""


def require_file(path: str | os.PathLike, what: str) -> str:
    """``path`` as a string if it is a file; otherwise ``FileNotFoundError`` naming ``what`` was expected there."""
    if not Path(path).is_file():
        raise RefinementFileNotFoundError(f"'{path}' does not exist: expected the {what} there.")
    return str(path)


def base_weights_file(path: str | os.PathLike) -> str:
    """``path`` if the base model's weights are there (``inference.json``, ``predict_base.json``); else an error."""
    return require_file(path, "base model weights (train them with configs/train_base.json)")


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------


def datalist_entry(raw_dir: Path, datalist_dir: Path, case: str, base: Path, **extra: Any) -> dict[str, Any]:
    """The datalist entry of ``case`` with base prediction ``base`` (and its ``_prob`` file when there is one).

    Args:
        raw_dir: the BTCV ``RawData`` folder, which ``image`` and ``label`` are made relative to.
        datalist_dir: the folder of ``datalist.json``, which ``base`` is made relative to.
        case: the case id (``"0005"``).
        base: the base label map ``.../img<case>_base.nii.gz``; ``img<case>_prob.nii.gz`` beside it is added as
            ``base_probabilities`` when it exists.
        extra: further fields (``seed``, ``fold``, ``source``).
    """
    paths = btcv_case_paths(raw_dir, case)
    entry: dict[str, Any] = {
        "case": case,
        "image": paths.image.relative_to(raw_dir).as_posix(),
        "label": paths.label.relative_to(raw_dir).as_posix(),
        "base": base.relative_to(datalist_dir).as_posix(),
    }
    probabilities = base.with_name(base.name.replace("_base.nii", "_prob.nii"))
    if probabilities.is_file():
        entry["base_probabilities"] = probabilities.relative_to(datalist_dir).as_posix()
    entry.update(extra)
    return entry


def write_datalist(
    out: Path, sections: Mapping[str, list[dict[str, Any]]], description: str, made_by: str | None = None
) -> Path:
    """Write ``out/datalist.json``, merging into an existing one; return its path.

    A ``test`` section given replaces the file's: the test cases are predicted by one base model. A ``training``
    section given replaces the training entries that the command ``made_by`` wrote before (and entries that name
    no command) and keeps those of other commands, so that, e.g., the paper's in-sample predictions
    (``base-in-sample``) and out-of-fold ones (``base-oof``) go into one datalist, from which ``train.json``'s
    ``training_sources`` picks. Every new entry records ``made_by``; ``description`` is kept per command.
    """
    target = out / DATALIST_NAME
    content: dict[str, Any] = json.loads(target.read_text()) if target.is_file() else {}
    descriptions = {**content.get("descriptions", {}), str(made_by): description}
    content.update({"descriptions": descriptions, "description": " ".join(descriptions.values())})
    content["num_classes"] = NUM_CLASSES
    for section, entries in sections.items():
        new = [{**e, "made_by": made_by} for e in entries]
        kept = [e for e in content.get(section, []) if section == "training" and e.get("made_by", made_by) != made_by]
        content[section] = kept + new
    atomic_write_json(target, content)
    return target


# ---------------------------------------------------------------------------------------------------------------
# reading, for the bundle configs
# ---------------------------------------------------------------------------------------------------------------


def load_refinement_datalist(
    datalist_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    base_input: str = "labels",
    check_files: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Read a refinement datalist (module docstring) and return its sections with absolute paths.

    Args:
        datalist_file: the ``datalist.json`` written by :mod:`common.base_predictions`.
        dataset_dir: the BTCV folder (``RawData`` or the folder holding it) that ``image`` and ``label`` are
            relative to.
        base_input: what RefNet is given of the base prediction (``train.json``'s ``base_input``, checked by
            :class:`common.transforms.refinement.RefNetInputd`): ``"probabilities"`` requires every entry to name
            ``base_probabilities``; ``"labels"`` does not.
        check_files: stop at the first file that does not exist.

    Returns:
        ``{"training": [...], "test": [...]}`` (the sections present; a missing section is an empty list).

    Raises:
        FileNotFoundError: naming the datalist, or the first missing file and the entry that names it.
        ValueError: for a file that is not a refinement datalist.
    """
    path = Path(datalist_file).expanduser()
    if not path.is_file():
        raise RefinementFileNotFoundError(
            f"'{path}': no refinement datalist there; make one with python -m common.base_predictions "
            "base-oof / base-test (or corrupt-gt for a quick check)."
        )
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RefinementDataError(f"'{path}': not valid JSON ({e})") from e
    if not isinstance(content, dict) or not any(isinstance(content.get(s), list) for s in ("training", "test")):
        raise RefinementDataError(f"'{path}': expected an object with a 'training' and/or 'test' list of entries.")
    raw_dir = find_raw_data_dir(dataset_dir).resolve()
    sections: dict[str, list[dict[str, Any]]] = {"training": [], "test": []}
    for section in ("training", "test"):
        for i, item in enumerate(content.get(section, [])):
            missing = [k for k in ("case", "image", "label", "base") if k not in item]
            if missing:
                raise RefinementDataError(f"'{path}': {section}[{i}] lacks {missing}.")
            if base_input == "probabilities" and "base_probabilities" not in item:
                raise RefinementDataError(
                    f"'{path}': {section}[{i}] (case {item['case']}) has no base_probabilities, which RefNet with "
                    "probability input needs; make the base predictions with --probabilities."
                )
            entry = dict(item)
            for key in _PATH_KEYS_IN_DATASET:
                entry[key] = str(raw_dir / item[key])
            for key in _PATH_KEYS_IN_DATALIST:
                if key in item:
                    entry[key] = str((path.parent / item[key]).resolve())
            if check_files:
                for key in (*_PATH_KEYS_IN_DATASET, *_PATH_KEYS_IN_DATALIST):
                    if key in entry and not Path(entry[key]).is_file():
                        raise RefinementFileNotFoundError(
                            f"'{entry[key]}' does not exist; it is the {key!r} of {section}[{i}] (case "
                            f"{item['case']}) in '{path}'."
                        )
            sections[section].append(entry)
    return sections


class ValidationSplit(NamedTuple):
    """The entries of a datalist's ``training`` section that train RefNet, and those that validate it."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]


def split_validation_cases(
    entries: Sequence[Mapping[str, Any]],
    num_validation_cases: int,
    training_sources: Sequence[str] | None = None,
) -> ValidationSplit:
    """Hold out whole cases of a ``training`` section to validate RefNet on: ``(train, validation)`` entries.

    The last ``num_validation_cases`` case ids (sorted) are held out; every entry of those cases leaves the
    training entries, and their out-of-fold, test or corrupted-GT entries (not in-sample ones, which a base model
    saw in training) become the validation entries. ``0`` validates on nothing held out: the validation entries
    are then the training entries themselves (monitoring only).

    ``training_sources`` (e.g. ``["in_sample"]``, or one source as a string) keeps only the training entries of
    those sources, after the split: RefNet trained on the paper's in-sample predictions and RefNet trained on
    out-of-fold ones then hold out the same cases and are validated on the same entries, so they differ only in
    their training data.

    Raises:
        RefinementDataError: (a ``ValueError``, which a bundle run ends with as an ``error:`` line) when fewer
            than ``num_validation_cases + 1`` cases are present, or when ``training_sources`` names an unknown
            source or leaves no training entry.
    """
    cases = sorted({str(e["case"]) for e in entries})
    if num_validation_cases < 0 or num_validation_cases >= len(cases):
        raise RefinementDataError(
            f"num_validation_cases must be in 0..{len(cases) - 1}: the datalist holds {len(cases)} case(s) and at "
            f"least one must train RefNet; got {num_validation_cases}."
        )
    if num_validation_cases == 0:
        train, validation = [dict(e) for e in entries], [dict(e) for e in entries]
    else:
        held_out = set(cases[-num_validation_cases:])
        train = [dict(e) for e in entries if e["case"] not in held_out]
        validation = [dict(e) for e in entries if e["case"] in held_out and e.get("source") != "in_sample"]
        if not validation:
            validation = [dict(e) for e in entries if e["case"] in held_out]
    if training_sources is not None:
        if isinstance(training_sources, str):  # --training_sources in_sample on the command line
            training_sources = [training_sources]
        unknown = sorted(set(training_sources) - set(SOURCES))
        if unknown:
            raise RefinementDataError(
                f"training_sources: unknown source(s) {unknown}; expected some of {list(SOURCES)}."
            )
        present = sorted({str(e.get("source")) for e in train})
        train = [e for e in train if e.get("source") in training_sources]
        if not train:
            raise RefinementDataError(
                f"training_sources {list(training_sources)} leaves no training entry: the datalist's training "
                f"entries have the sources {present}."
            )
    return ValidationSplit(train, validation)


def corrupted_gt_items(entries: Sequence[Mapping[str, Any]], copies: int = 1) -> list[dict[str, Any]]:
    """One ``{"case", "image", "label"}`` item per distinct case of ``entries``, repeated ``copies`` times.

    The data of the corrupted-ground-truth augmentation (``configs/refnet_corrupted_gt.json``): its pipeline copies
    ``label`` to ``base`` and corrupts that copy afresh every time an item is drawn.
    """
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}.")
    unique: dict[str, dict[str, Any]] = {}
    for e in entries:
        unique.setdefault(str(e["case"]), {"case": e["case"], "image": e["image"], "label": e["label"]})
    return [dict(item) for _ in range(copies) for item in unique.values()]


def refine_datalist(
    segmentation_file: str | os.PathLike, image_file: str | os.PathLike | None = None, use_image: bool = False
) -> list[dict[str, str]]:
    """The datalist of ``configs/refine.json``: one existing segmentation (``base``) and, optionally, its CT.

    Args:
        segmentation_file: a label map from any model, in the BTCV (0..13) or 12-organ (0..12) convention.
        image_file: the CT it segments; ``None`` or ``""`` when there is none.
        use_image: whether RefNet is image-aware (then the CT is required).

    Raises:
        FileNotFoundError: naming a file that does not exist.
        ValueError: when an image-aware RefNet gets no CT.
    """
    entry = {"base": require_file(Path(segmentation_file).expanduser(), "segmentation to refine")}
    if image_file:
        entry["image"] = require_file(Path(image_file).expanduser(), "CT of the segmentation")
    elif use_image:
        raise RefinementDataError(
            "the image-aware RefNet (use_image true) needs the CT of the segmentation: set image_file, or refine "
            "with the label-only RefNet."
        )
    return [entry]
