"""BraTS on disk: file-naming conventions, datalists and k-fold split files.

Two file-naming conventions are in use for the BraTS glioma training data:

======================  ===============================================  ==================================
convention              case folder / files                              labels
======================  ===============================================  ==================================
``brats2021``           ``BraTS2021_00000/BraTS2021_00000_<m>.nii.gz``   0, 1 NCR, 2 ED, **4 ET**
                        ``<m>`` in ``t1, t1ce, t2, flair, seg``
``brats2023``           ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-<m>``  0, 1 NCR, 2 ED, **3 ET**
                        ``.nii.gz``, ``<m>`` in ``t1n, t1c, t2w, t2f,``
                        ``seg``
======================  ===============================================  ==================================

Detection looks at the files inside each case folder (``<folder><sep><suffix>.nii[.gz]``), not at the folder
names, so the BraTS 2018-2020 training sets (``BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz``, ET=4)
are read as ``brats2021`` too.

Modalities are always named in the 2021 vocabulary (``t1, t1ce, t2, flair``); the 2023 file suffixes
(``t1n, t1c, t2w, t2f``) are accepted as aliases and are what is looked up on disk for 2023 data.

Split files follow MONAI research-contributions' SwinUNETR ``brats21_folds.json``
(``{"training": [{"fold": k, "image": [...], "label": ...}, ...]}``, paths relative to the dataset folder) and add
a ``testing`` list of held-out cases (20 % by default; never trained on, never used for model selection) and the
keys ``convention``, ``et_label``, ``modalities``, ``num_folds``, ``seed`` and ``test_fraction``. :func:`read_split`
reads both this format and the MTCM-KD authors' ``folds_data.json``.

Which label convention a run uses is decided here too, once per kind of run, so the configs hold no rule of their
own: training takes the one its split file records (:func:`split_convention`; it was detected when the split was
made, so the dataset folder is not listed again), inference that of the data it reads (:func:`inference_convention`),
and a config that is given ``et_label`` derives the convention from it (:func:`convention_for_et_label`).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import BadInputError
from common.io import atomic_write_json

__all__ = [
    "BRATS_2021",
    "BRATS_2023",
    "BRATS_CONVENTIONS",
    "DEFAULT_MODALITIES",
    "DEFAULT_TEST_FRACTION",
    "BratsConvention",
    "BratsDataError",
    "BratsFileNotFoundError",
    "brats_datalist",
    "case_files",
    "case_name_formatter",
    "convention_for_et_label",
    "detect_convention",
    "inference_convention",
    "load_fold",
    "make_folds",
    "read_split",
    "split_convention",
    "write_split_file",
]

# ---------------------------------------------------------------------------------------------------------------
# naming conventions
# ---------------------------------------------------------------------------------------------------------------

#: Canonical modality names (BraTS 2021 vocabulary) in the channel order the COHRA-UNet bundle stacks.
DEFAULT_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# 2023 file suffixes accepted as modality names; they map onto the canonical (2021) names.
_MODALITY_ALIASES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}

_IMAGE_EXTENSIONS = (".nii.gz", ".nii")  # BraTS ships .nii.gz; some users decompress the archive

#: Share of the cases a new split file holds out as its ``testing`` list (never trained on, never used for selection).
DEFAULT_TEST_FRACTION = 0.2


class BratsDataError(BadInputError):
    """A BraTS dataset folder, split file or label map is not what was expected."""


class BratsFileNotFoundError(BratsDataError, FileNotFoundError):
    """A BraTS dataset folder or case file does not exist."""


@dataclass(frozen=True)
class BratsConvention:
    """One BraTS file-naming and label convention.

    Args:
        name: short id used in split files and configs, ``"brats2021"`` or ``"brats2023"``.
        title: human-readable name for messages.
        case_example: an example case folder name.
        separator: the character between the case id and the file suffix.
        modality_suffixes: ``(canonical modality, file suffix)`` pairs, canonical names in the 2021 vocabulary.
        label_suffix: file suffix of the segmentation.
        et_label: label value of the enhancing tumour (4 up to BraTS 2022, 3 from BraTS 2023 on).
        label_names: names of the labels 1, 2 and ``et_label``, as the challenge of that year names its classes.
    """

    name: str
    title: str
    case_example: str
    separator: str
    modality_suffixes: tuple[tuple[str, str], ...]
    label_suffix: str
    et_label: int
    label_names: tuple[str, str, str]

    @property
    def suffixes(self) -> dict[str, str]:
        """Canonical modality name -> file suffix."""
        return dict(self.modality_suffixes)

    @property
    def label_values(self) -> tuple[int, ...]:
        """The values a label map of this convention may hold: background, NCR, ED, ET."""
        return (0, 1, 2, self.et_label)

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value of every tumour label (background excluded), in the order of the values."""
        return dict(zip(self.label_names, self.label_values[1:], strict=True))

    def file_name(self, case: str, suffix: str, ext: str = ".nii.gz") -> str:
        """File name of ``suffix`` (a file suffix such as ``"t2f"`` or ``"seg"``) in the folder of ``case``."""
        return f"{case}{self.separator}{suffix}{ext}"

    def pattern(self, case: str | None = None) -> str:
        """Expected file names, e.g. ``BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``."""
        all_suffixes = ",".join([s for _, s in self.modality_suffixes] + [self.label_suffix])
        return f"{case or self.case_example}{self.separator}{{{all_suffixes}}}.nii.gz"

    def describe(self) -> str:
        """One line for error messages: case folder, file pattern and ET label."""
        return (
            f"{self.title}: case folders like '{self.case_example}' "
            f"holding '{self.pattern()}', ET label {self.et_label}"
        )


BRATS_2021 = BratsConvention(
    name="brats2021",
    title="BraTS 2021 (also 2018-2020 file naming)",
    case_example="BraTS2021_00000",
    separator="_",
    modality_suffixes=(("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t2"), ("flair", "flair")),
    label_suffix="seg",
    et_label=4,
    label_names=("necrotic tumour core", "peritumoral edema", "enhancing tumour"),
)
BRATS_2023 = BratsConvention(
    name="brats2023",
    title="BraTS 2023 glioma",
    case_example="BraTS-GLI-00000-000",
    separator="-",
    modality_suffixes=(("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")),
    label_suffix="seg",
    et_label=3,
    label_names=("non-enhancing tumour core", "surrounding FLAIR hyperintensity", "enhancing tumour"),
)
BRATS_CONVENTIONS: dict[str, BratsConvention] = {c.name: c for c in (BRATS_2021, BRATS_2023)}


def _expected_layouts() -> str:
    return "Expected one of:\n" + "\n".join(f"  - {c.describe()}" for c in BRATS_CONVENTIONS.values())


def _as_convention(convention: str | BratsConvention) -> BratsConvention:
    if isinstance(convention, BratsConvention):
        return convention
    if convention not in BRATS_CONVENTIONS:
        raise BratsDataError(f"Unknown BraTS convention {convention!r}; expected one of {sorted(BRATS_CONVENTIONS)}.")
    return BRATS_CONVENTIONS[convention]


def _canonical_modalities(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):  # a bare string would be iterated character by character
        modalities = [modalities]
    if len(modalities) == 0:
        raise BratsDataError("No modalities given; expected a subset of ('t1', 't1ce', 't2', 'flair').")
    canonical = []
    for m in modalities:
        key = str(m).lower()
        key = _MODALITY_ALIASES.get(key, key)
        if key not in DEFAULT_MODALITIES:
            raise BratsDataError(
                f"Unknown BraTS modality {m!r}; expected one of {DEFAULT_MODALITIES} "
                f"(or the BraTS 2023 names {tuple(_MODALITY_ALIASES)})."
            )
        canonical.append(key)
    return canonical


def _existing_dir(dataset_dir: str | os.PathLike) -> Path:
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise BratsFileNotFoundError(f"BraTS dataset folder '{root}' does not exist. {_expected_layouts()}")
    if not root.is_dir():
        raise BratsFileNotFoundError(f"BraTS dataset path '{root}' is not a folder. {_expected_layouts()}")
    return root


def _case_dirs(root: Path) -> list[Path]:
    # hidden folders and archive debris such as __MACOSX are not cases
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _find_case_file(case_dir: Path, convention: BratsConvention, suffix: str) -> Path | None:
    for ext in _IMAGE_EXTENSIONS:
        candidate = case_dir / convention.file_name(case_dir.name, suffix, ext)
        if candidate.is_file():
            return candidate
    return None


def _classify_case_dir(case_dir: Path) -> BratsConvention | None:
    """The convention whose file names appear in ``case_dir`` (any one modality or the seg suffices)."""
    names = set(os.listdir(case_dir))
    for conv in BRATS_CONVENTIONS.values():
        for suffix in [s for _, s in conv.modality_suffixes] + [conv.label_suffix]:
            if any(conv.file_name(case_dir.name, suffix, ext) in names for ext in _IMAGE_EXTENSIONS):
                return conv
    return None


def detect_convention(dataset_dir: str | os.PathLike) -> BratsConvention:
    """Detect the BraTS naming convention of a dataset folder that holds one sub-folder per case.

    Every non-hidden sub-folder must be a case folder of the same convention; a folder is recognised by its
    files being named ``<folder name><separator><suffix>.nii[.gz]``.

    Args:
        dataset_dir: the folder holding the case folders.

    Returns:
        :data:`BRATS_2021` or :data:`BRATS_2023`.

    Raises:
        BratsFileNotFoundError: the folder does not exist or holds no case folder.
        BratsDataError: a sub-folder follows no known naming, or the folder mixes both conventions.
    """
    root = _existing_dir(dataset_dir)
    case_dirs = _case_dirs(root)
    if not case_dirs:
        hint = ""
        if _classify_case_dir(root) is not None:
            hint = f" '{root}' looks like a single case folder; pass the folder that contains the case folders."
        raise BratsFileNotFoundError(
            f"BraTS dataset folder '{root}' holds no case folders.{hint} {_expected_layouts()}"
        )

    found: dict[str, list[Path]] = {name: [] for name in BRATS_CONVENTIONS}
    unknown: list[Path] = []
    for case_dir in case_dirs:
        conv = _classify_case_dir(case_dir)
        (found[conv.name] if conv is not None else unknown).append(case_dir)

    if unknown:
        first = unknown[0]
        held = sorted(os.listdir(first))[:5]
        hint = ""
        if not any(found.values()) and any(_classify_case_dir(p) for p in _case_dirs(first)):
            hint = f" '{first}' itself holds case folders: pass it as the dataset folder."
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise BratsDataError(
            f"Folder '{first}'{more} in BraTS dataset folder '{root}' follows no known BraTS naming "
            f"(it holds {held or 'nothing'}).{hint} For this folder the expected files are "
            f"'{BRATS_2021.pattern(first.name)}' or '{BRATS_2023.pattern(first.name)}'. {_expected_layouts()}"
        )
    present = [name for name, dirs in found.items() if dirs]
    if len(present) > 1:
        examples = ", ".join(f"{BRATS_CONVENTIONS[n].title}: '{found[n][0].name}'" for n in present)
        raise BratsDataError(
            f"BraTS dataset folder '{root}' mixes naming conventions ({examples}); keep one convention per "
            f"dataset folder. {_expected_layouts()}"
        )
    return BRATS_CONVENTIONS[present[0]]


# a lone BraTS 2023 image file: <case>-<t1n|t1c|t2w|t2f>.nii[.gz]
_BRATS_2023_IMAGE_ENDINGS = tuple(
    f"{BRATS_2023.separator}{suffix}{ext}" for _, suffix in BRATS_2023.modality_suffixes for ext in _IMAGE_EXTENSIONS
)


def inference_convention(
    dataset_dir: str | os.PathLike | None,
    input_image: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> BratsConvention:
    """The BraTS convention inference writes its label maps in: that of the data it reads.

    The one rule of both BraTS bundles' ``inference.json`` (``et_label``), in order:

    - ``input_image`` given (a lone file, or the files of one case that ``LoadImaged`` stacks, of which the first
      decides; ``""``, ``None`` or an empty list is none): :data:`BRATS_2023` when it is named like a BraTS 2023
      image (``<case>-t1n``, ``-t1c``, ``-t2w`` or ``-t2f`` ``.nii[.gz]``), else :data:`BRATS_2021`;
    - ``dataset_dir`` is a folder: its convention (:func:`detect_convention`);
    - otherwise :data:`BRATS_2021`: MONAI Label and MONAI Deploy pass images but no dataset folder.

    Raises:
        BratsFileNotFoundError, BratsDataError: ``dataset_dir`` is a folder that :func:`detect_convention` rejects.
    """
    if isinstance(input_image, (list, tuple)):
        input_image = input_image[0] if input_image else None
    if input_image:
        return BRATS_2023 if os.fspath(input_image).endswith(_BRATS_2023_IMAGE_ENDINGS) else BRATS_2021
    if dataset_dir and os.path.isdir(dataset_dir):
        return detect_convention(dataset_dir)
    return BRATS_2021


def case_files(image: str | os.PathLike, modalities: Sequence[str] = DEFAULT_MODALITIES) -> list[Path]:
    """The files of ``modalities``, in that order, of the BraTS case that the image file ``image`` belongs to.

    A viewer such as 3D Slicer opens one modality of a case at a time; a multimodal model needs all of them. The
    case is read from the file name in either convention (``BraTS2021_00000_flair.nii.gz``,
    ``BraTS-GLI-00000-000-t2f.nii.gz``; any modality of the case will do) and its other modalities are looked up
    next to it, as the BraTS archives store them.

    Raises:
        BratsDataError: ``image`` is not named like a BraTS image.
        BratsFileNotFoundError: a modality of that case is not in the same folder.
    """
    path = Path(image)
    for convention in BRATS_CONVENTIONS.values():
        for _, suffix in convention.modality_suffixes:
            for ext in _IMAGE_EXTENSIONS:
                ending = f"{convention.separator}{suffix}{ext}"
                if path.name.endswith(ending) and len(path.name) > len(ending):
                    case = path.name[: -len(ending)]
                    return [_sibling(path, convention, case, m) for m in _canonical_modalities(modalities)]
    raise BratsDataError(
        f"'{path}' is not named like one modality of a BraTS case; expected '{BRATS_2021.pattern()}' or "
        f"'{BRATS_2023.pattern()}' (any one of the modality files)."
    )


def _sibling(path: Path, convention: BratsConvention, case: str, modality: str) -> Path:
    suffix = convention.suffixes[modality]
    for ext in _IMAGE_EXTENSIONS:
        candidate = path.with_name(convention.file_name(case, suffix, ext))
        if candidate.is_file():
            return candidate
    raise BratsFileNotFoundError(
        f"'{path.parent / convention.file_name(case, suffix)}' does not exist: the {modality} image of case "
        f"'{case}' is expected next to '{path.name}'."
    )


def convention_for_et_label(et_label: int) -> BratsConvention:
    """The BraTS convention whose enhancing-tumour label is ``et_label``: 4 :data:`BRATS_2021`, 3 :data:`BRATS_2023`.

    Configs derive a label convention name (``ConvertBratsLabelsd``'s ``source`` or ``target``) from their
    ``et_label`` with it, so that overriding ``et_label`` alone changes both.

    Raises:
        BratsDataError: ``et_label`` is the ET label of no BraTS convention.
    """
    try:
        value = operator.index(et_label)  # any integer type, not 4.0 or "4"
    except TypeError:
        value = None
    for convention in BRATS_CONVENTIONS.values():
        if convention.et_label == value:
            return convention
    expected = ", ".join(f"{c.et_label} ({c.name})" for c in BRATS_CONVENTIONS.values())
    raise BratsDataError(f"et_label must be one of {expected}, got {et_label!r}.")


def brats_datalist(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    with_label: bool = True,
    convention: str | BratsConvention | None = None,
) -> list[dict[str, Any]]:
    """List the cases of a BraTS dataset folder as MONAI dictionary items.

    Each item is ``{"image": [one path per modality, in the order of modalities], "label": seg path, "case": id}``
    (no ``"label"`` when ``with_label`` is False), sorted by case id. ``LoadImaged(keys="image")`` stacks the list
    into channels in that order, so ``modalities`` IS the channel order of the network input.

    The default order is (T1, T1ce, T2, FLAIR), the order the COHRA-UNet bundle stacks; the MTCM-KD bundle passes
    ``("flair", "t1ce", "t2", "t1")`` to match the lab's teacher/student channel indices.

    Args:
        dataset_dir: folder with one sub-folder per case.
        modalities: modality names in the 2021 vocabulary (``t1, t1ce, t2, flair``); on BraTS 2023 data they are
            looked up as ``t1n, t1c, t2w, t2f``. The 2023 names are accepted too.
        with_label: also require and list the ``seg`` file.
        convention: skip detection and use this convention (``"brats2021"``, ``"brats2023"`` or an instance).

    Raises:
        BratsFileNotFoundError: a case folder lacks a requested modality or its seg; the message names every
            missing file (up to ten) and the expected file names.
        BratsDataError: see :func:`detect_convention`.
    """
    canonical = _canonical_modalities(modalities)
    root = _existing_dir(dataset_dir)
    conv = detect_convention(root) if convention is None else _as_convention(convention)
    suffixes = conv.suffixes
    wanted = [suffixes[m] for m in canonical] + ([conv.label_suffix] if with_label else [])

    items: list[dict[str, Any]] = []
    missing: list[str] = []
    for case_dir in _case_dirs(root):
        case = case_dir.name
        paths = {}
        for suffix in wanted:
            path = _find_case_file(case_dir, conv, suffix)
            if path is None:
                missing.append(f"'{case_dir / conv.file_name(case, suffix)}'")
            else:
                paths[suffix] = str(path)
        if len(paths) == len(wanted):
            item: dict[str, Any] = {"image": [paths[suffixes[m]] for m in canonical]}
            if with_label:
                item["label"] = paths[conv.label_suffix]
            item["case"] = case
            items.append(item)

    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BratsFileNotFoundError(
            f"BraTS dataset folder '{root}' ({conv.title}) is missing {len(missing)} file(s):\n  {shown}{more}\n"
            f"Each case folder <case> must hold '{conv.pattern('<case>')}' (requested: {', '.join(wanted)})."
        )
    if not items:
        raise BratsFileNotFoundError(f"BraTS dataset folder '{root}' holds no case folders. {_expected_layouts()}")
    return items


# ---------------------------------------------------------------------------------------------------------------
# k-fold split files
# ---------------------------------------------------------------------------------------------------------------


def _fold_order_key(seed: int, case: str) -> str:
    # A keyed hash gives an order that depends only on (seed, case id): the same on every platform and Python or
    # NumPy version, and adding or removing a case moves no other case to a different rank among the rest.
    return hashlib.sha256(f"{seed}:{case}".encode()).hexdigest()


def make_folds(
    dataset_dir: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    with_label: bool = True,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, Any]:
    """Hold out a test set of a BraTS dataset folder and assign every other case to one of ``folds`` folds.

    The shuffle is deterministic: cases are ordered by ``sha256(f"{seed}:{case_id}")``; the first
    ``round(test_fraction * cases)`` of that order (at least one when ``test_fraction > 0``) form the held-out
    ``testing`` list, which no training run and no model selection sees, and the i-th of the others goes to fold
    ``i % folds``, so fold sizes differ by at most one and the same seed gives the same split on any machine.

    Returns:
        the split dictionary written by :func:`write_split_file` (paths relative to ``dataset_dir``, POSIX
        separators)::

            {"convention": "brats2021", "et_label": 4, "modalities": ["t1", "t1ce", "t2", "flair"],
             "num_folds": 5, "seed": 0,
             "training": [{"fold": 0, "case": "BraTS2021_00000",
                           "image": ["BraTS2021_00000/BraTS2021_00000_t1.nii.gz", ...],
                           "label": "BraTS2021_00000/BraTS2021_00000_seg.nii.gz"}, ...]}

        ``training`` is sorted by fold, then case id; ``testing`` (MONAI's datalist key for test cases) by case id
        and has no ``fold``.
    """
    if int(folds) != folds or folds < 2:
        raise BratsDataError(f"folds must be an integer >= 2, got {folds!r}.")
    if not 0 <= test_fraction < 1:
        raise BratsDataError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    root = _existing_dir(dataset_dir)
    conv = detect_convention(root)
    canonical = _canonical_modalities(modalities)
    items = brats_datalist(root, canonical, with_label=with_label, convention=conv)
    n_test = max(math.floor(test_fraction * len(items) + 0.5), 1) if test_fraction > 0 else 0
    if len(items) - n_test < folds:
        raise BratsDataError(
            f"BraTS dataset folder '{root}' holds {len(items)} case(s): after {n_test} held-out test case(s), fewer "
            f"than {folds} folds."
        )

    def entry(item: dict[str, Any]) -> dict[str, Any]:
        images = [Path(p).relative_to(root).as_posix() for p in item["image"]]
        out: dict[str, Any] = {"case": item["case"], "image": images}
        if with_label:
            out["label"] = Path(item["label"]).relative_to(root).as_posix()
        return out

    order = sorted(items, key=lambda it: _fold_order_key(seed, it["case"]))
    testing = sorted((entry(item) for item in order[:n_test]), key=lambda e: e["case"])
    training = [{"fold": rank % folds, **entry(item)} for rank, item in enumerate(order[n_test:])]
    training.sort(key=lambda e: (e["fold"], e["case"]))
    return {
        "description": f"{folds}-fold cross-validation split of a {conv.title} dataset folder with {n_test} held-out "
        "test case(s); paths are relative to the dataset folder.",
        "convention": conv.name,
        "et_label": conv.et_label,
        "modalities": canonical,
        "num_folds": int(folds),
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "training": training,
        "testing": testing,
    }


def write_split_file(
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    with_label: bool = True,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, Any]:
    """Make a k-fold split of ``dataset_dir`` (see :func:`make_folds`) and write it atomically to ``out`` as JSON.

    Returns:
        the split dictionary that was written.
    """
    split = make_folds(dataset_dir, folds, seed, modalities, with_label, test_fraction)
    atomic_write_json(Path(out).expanduser(), split)
    return split


def _read_split_json(path: Path) -> Any:
    if not path.is_file():
        raise BratsFileNotFoundError(
            f"Split file '{path}' does not exist; make one with "
            "'python -m common.data.brats make-split --dataset-dir D --out F'."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BratsDataError(f"Split file '{path}' is not valid JSON: {e}") from e


def _absolute_items(
    entries: Sequence[Mapping[str, Any]], root: Path, split_path: Path, check_files: bool
) -> list[dict[str, Any]]:
    """Split-file entries with absolute paths; with ``check_files``, one error naming up to ten missing files."""
    items, missing = [], []
    for entry in entries:
        item = dict(entry)
        images = [entry["image"]] if isinstance(entry["image"], str) else entry["image"]
        item["image"] = [os.path.abspath(os.path.join(root, p)) for p in images]
        if "label" in entry:
            item["label"] = os.path.abspath(os.path.join(root, entry["label"]))
        if check_files:
            missing += [p for p in item["image"] + [item.get("label")] if p is not None and not os.path.isfile(p)]
        items.append(item)
    if missing:
        shown = "\n  ".join(f"'{p}'" for p in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BratsFileNotFoundError(
            f"{len(missing)} file(s) listed in split file '{split_path}' are missing under dataset folder "
            f"'{root}':\n  {shown}{more}\nIs --dataset-dir the folder the split was made from?"
        )
    return items


def load_fold(
    split_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int,
    check_files: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read a split file and return ``(train_items, val_items)`` for ``fold`` with absolute paths.

    Validation items are those of ``fold``; training items are all others of the ``training`` list (a ``testing``
    list is never among them). Items keep their ``fold`` and ``case`` keys. Any file written in the SwinUNETR
    ``brats21_folds.json`` format is accepted.

    Args:
        split_file: JSON split file (see :func:`make_folds`).
        dataset_dir: the folder the relative paths in the split file start from.
        fold: the validation fold.
        check_files: stop with one message listing missing files (up to ten) before any training starts.

    Raises:
        BratsFileNotFoundError: the split file, the dataset folder or (with ``check_files``) a listed file is
            missing.
        BratsDataError: the split file is not valid JSON of the expected format or has no fold ``fold``.
    """
    split_path = Path(split_file).expanduser()
    fold = int(fold)  # config and command-line values may arrive as strings
    split = _read_split_json(split_path)
    entries = split.get("training") if isinstance(split, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "fold" in e and "image" in e for e in entries):
        raise BratsDataError(
            f"Split file '{split_path}' is not a fold file: expected "
            '{"training": [{"fold": k, "image": [...], "label": ...}, ...]}.'
        )
    root = _existing_dir(dataset_dir)
    present = sorted({int(e["fold"]) for e in entries})
    if fold not in present:
        raise BratsDataError(f"Split file '{split_path}' has no fold {fold}; its folds are {present}.")
    items = _absolute_items(entries, root, split_path, check_files)
    return [i for i in items if int(i["fold"]) != fold], [i for i in items if int(i["fold"]) == fold]


_AUTHORS_KEYS = ("train_samples", "valid_samples")


def read_split(
    split_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    test_fold: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train_items, val_items, test_items)`` of a split file in the repository's or the MTCM-KD authors' format.

    This is the one reader the BraTS bundles' configs call. ``fold`` is the validation fold (model selection). The
    held-out test cases are the file's ``testing`` list (:func:`make_folds` writes one); for a file without one
    (SwinUNETR's ``brats21_folds.json``, older split files) ``test_fold`` may name a fold to hold out instead: its
    cases are left out of training and returned as test items. Without either, ``test_items`` is ``[]``. Folds
    count from 0 in the file's fold order; negative values count from the last (``-1``: the last).

    - The repository's format (``python -m common.data.brats make-split``; an object with a ``training`` list) is
      read by :func:`load_fold`. Its ``modalities``, when recorded, must equal ``modalities``: they are the channel
      order the networks are trained on.
    - The authors' ``data_splits/folds_data.json`` (RhineLT/mtcm-kd) is a list with one
      ``{"train_samples": [case ids], "valid_samples": [case ids]}`` object per fold, without test cases. The cases
      are looked up in ``dataset_dir`` (:func:`brats_datalist`, either BraTS naming) and their images stacked in the
      order of ``modalities``.

    Items are ``{"image": [one path per modality], "label": path, "case": id, ...}``.

    Raises:
        BratsFileNotFoundError: the split file or a listed case is missing (up to ten are named).
        BratsDataError: the file is neither format, has no such fold, records other modalities, holds a ``testing``
            list and a ``test_fold`` is given too, or the test fold is the validation fold.
    """
    path = Path(split_file).expanduser()
    modalities = list(modalities)
    split = _read_split_json(path)
    testing: list[dict[str, Any]] = []
    if isinstance(split, dict):
        recorded = split.get("modalities")
        if recorded is not None and list(recorded) != modalities:
            raise BratsDataError(
                f"Split file '{path}' stacks the modalities {list(recorded)}, but this bundle's channels are "
                f"{modalities}; remake it with --modalities {' '.join(modalities)}."
            )
        entries = split.get("training")
        folds = sorted({int(e["fold"]) for e in entries if isinstance(e, dict) and "fold" in e}) if entries else []
        if split.get("testing"):
            if test_fold is not None:
                raise BratsDataError(
                    f"Split file '{path}' holds a 'testing' list of held-out cases; test_fold is only for files "
                    "without one. Leave test_fold unset (null)."
                )
            testing = _absolute_items(split["testing"], _existing_dir(dataset_dir), path, check_files=True)

        def fold_items(k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return load_fold(path, dataset_dir, k)

    else:
        authors_format = isinstance(split, list) and all(
            isinstance(entry, dict) and all(isinstance(entry.get(k), list) for k in _AUTHORS_KEYS) for entry in split
        )
        if not authors_format or not split:
            raise BratsDataError(
                f"Split file '{path}' is in neither known format: expected the repository's "
                '{"training": [{"fold": k, "image": [...], "label": ...}, ...]} or the MTCM-KD authors\' '
                '[{"train_samples": [case ids], "valid_samples": [case ids]}, ...] (one object per fold).'
            )
        folds = list(range(len(split)))
        cases = {item["case"]: item for item in brats_datalist(dataset_dir, modalities)}

        def fold_items(k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            wanted = [split[k][key] for key in _AUTHORS_KEYS]
            missing = [case for ids in wanted for case in ids if case not in cases]
            if missing:
                shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                raise BratsFileNotFoundError(
                    f"Split file '{path}' lists {len(missing)} case(s) of fold {k} that are not case folders of "
                    f"'{dataset_dir}': {shown}."
                )
            return [dict(cases[c]) for c in wanted[0]], [dict(cases[c]) for c in wanted[1]]

    def resolve(k: int, what: str) -> int:
        k = int(k)  # config and command-line values may arrive as strings
        if not folds or not -len(folds) <= k < len(folds):
            raise BratsDataError(f"Split file '{path}' has folds {folds}; got {what} {k}.")
        return folds[k]

    fold = resolve(fold, "fold")
    train, val = fold_items(fold)
    if test_fold is None:
        return train, val, testing
    test_fold = resolve(test_fold, "test_fold")
    if test_fold == fold:
        raise BratsDataError(
            f"test_fold {test_fold} is the validation fold of split file '{path}'; hold out another fold."
        )
    test = fold_items(test_fold)[1]
    held_out = {item["case"] for item in test}
    return [item for item in train if item["case"] not in held_out], val, test


def _first_case_dir(split: Mapping[str, Any], root: Path) -> Path | None:
    """The case folder of the first case a split file lists, or ``None`` when it lists none."""
    for key in ("training", "testing"):
        for entry in split.get(key) or []:
            if isinstance(entry, dict) and entry.get("image"):
                image = entry["image"] if isinstance(entry["image"], str) else entry["image"][0]
                return Path(os.path.join(root, image)).parent
    return None


def split_convention(split_file: str | os.PathLike, dataset_dir: str | os.PathLike) -> BratsConvention:
    """The BraTS convention of the cases a split file lists: the one it records, checked against the dataset folder.

    :func:`make_folds` records the convention it detected (``convention`` and ``et_label``), so training reads it
    here instead of listing the whole dataset folder again; only the folder of the first listed case is looked at,
    to catch a split file made from, or edited for, other data. A split file that records none (the MTCM-KD authors'
    ``folds_data.json``, SwinUNETR's ``brats21_folds.json``) falls back to :func:`detect_convention` of
    ``dataset_dir``. Missing case files are :func:`read_split`'s to report.

    Raises:
        BratsFileNotFoundError: the dataset folder or the split file does not exist.
        BratsDataError: the split file is not valid JSON, records an unknown convention or an ``et_label`` of
            another convention, or its first case folder holds files of the other convention.
    """
    root = _existing_dir(dataset_dir)
    path = Path(split_file).expanduser()
    split = _read_split_json(path)
    recorded = split.get("convention") if isinstance(split, dict) else None
    if recorded is None:
        return detect_convention(root)
    if not isinstance(recorded, str) or recorded not in BRATS_CONVENTIONS:
        raise BratsDataError(
            f"Split file '{path}' records the convention {recorded!r}; expected one of {sorted(BRATS_CONVENTIONS)}."
        )
    convention = BRATS_CONVENTIONS[recorded]
    et_label = split.get("et_label", convention.et_label)
    if et_label != convention.et_label:
        raise BratsDataError(
            f"Split file '{path}' records the {convention.name} convention, whose ET label is {convention.et_label}, "
            f"but et_label {et_label!r}; remake it with 'python -m common.data.brats make-split --dataset-dir {root} "
            f"--out {path}'."
        )
    case_dir = _first_case_dir(split, root)
    found = _classify_case_dir(case_dir) if case_dir is not None and case_dir.is_dir() else None
    if found is not None and found is not convention:
        raise BratsDataError(
            f"Split file '{path}' records the {convention.name} convention (ET label {convention.et_label}), but its "
            f"case folder '{case_dir}' holds {found.title} files ({found.name}, ET label {found.et_label}); was the "
            f"split made from another dataset folder? Remake it with 'python -m common.data.brats make-split "
            f"--dataset-dir {root} --out {path}'."
        )
    return convention


def case_name_formatter(metadict: dict, saver: Any) -> dict:
    """``SaveImage(d)`` ``output_name_formatter`` naming an output after its case folder.

    A stacked BraTS image carries its first modality file as ``filename_or_obj``, so MONAI's default would name
    the prediction ``BraTS2021_00000_t1_seg.nii.gz``; this gives ``BraTS2021_00000_seg.nii.gz``.
    """
    source = Path(str(metadict.get("filename_or_obj", "")))
    return {"subject": source.parent.name or source.name, "idx": metadict.get("patch_index")}
