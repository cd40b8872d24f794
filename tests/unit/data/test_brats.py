"""BraTS layouts, datalists, split files and label conventions (common.data.brats) on tiny fake BraTS trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.data import MetaTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClassesd, LoadImaged

import common.data.brats.reader as brats_reader
from common.data.brats import (
    BRATS_2021,
    BRATS_2023,
    BratsConvention,
    BratsDataError,
    BratsFileNotFoundError,
    BratsLabelError,
    CheckBratsLabelsd,
    ConvertBratsLabelsd,
    RegionsToBratsLabelsd,
    brats_datalist,
    case_files,
    check_brats_labels,
    convention_for_et_label,
    convert_brats_labels,
    detect_convention,
    inference_convention,
    load_fold,
    make_folds,
    read_split,
    regions_to_brats_labels,
    split_convention,
    write_split_file,
)
from common.errors import bad_input_message
from tests.helpers import REPO_ROOT

SHAPE = (8, 8, 8)
# each modality gets its own constant intensity so that channel order can be checked after loading
MODALITY_VALUE = {"t1": 1.0, "t1ce": 2.0, "t2": 3.0, "flair": 4.0}


def case_name(conv: BratsConvention, i: int) -> str:
    return f"BraTS2021_{i:05d}" if conv is BRATS_2021 else f"BraTS-GLI-{i:05d}-000"


def write_case(root: Path, conv: BratsConvention, case: str, skip: tuple[str, ...] = (), ext: str = ".nii.gz") -> Path:
    """One fake case folder; ``skip`` holds file suffixes (e.g. ``"t1c"``, ``"seg"``) not to write."""
    case_dir = root / case
    case_dir.mkdir(parents=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for modality, suffix in conv.suffixes.items():
        if suffix not in skip:
            data = np.full(SHAPE, MODALITY_VALUE[modality], dtype=np.float32)
            nib.save(nib.Nifti1Image(data, affine), case_dir / conv.file_name(case, suffix, ext))
    if conv.label_suffix not in skip:
        seg = np.zeros(SHAPE, dtype=np.uint8)
        seg[2:6, 2:6, 2:6] = 2
        seg[3:5, 3:5, 3:5] = 1
        seg[4, 4, 4] = conv.et_label
        nib.save(nib.Nifti1Image(seg, affine), case_dir / conv.file_name(case, conv.label_suffix, ext))
    return case_dir


def make_tree(root: Path, conv: BratsConvention, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_case(root, conv, case_name(conv, i))
    return root


@pytest.fixture(scope="module")
def tree2021(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("brats2021") / "data", BRATS_2021, 3)


@pytest.fixture(scope="module")
def tree2023(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("brats2023") / "data", BRATS_2023, 3)


@pytest.fixture(scope="module")
def tree11(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eleven cases: 5 folds cannot be equal, so balance is really tested."""
    return make_tree(tmp_path_factory.mktemp("brats11") / "data", BRATS_2023, 11)


# ---------------------------------------------------------------------------------------------------------------
# detection and datalists
# ---------------------------------------------------------------------------------------------------------------


def test_detect_both_conventions(tree2021: Path, tree2023: Path) -> None:
    assert detect_convention(tree2021) is BRATS_2021
    assert detect_convention(tree2023) is BRATS_2023
    assert BRATS_2021.et_label == 4 and BRATS_2023.et_label == 3


def test_detect_ignores_files_and_hidden_folders_and_reads_2020_naming(tmp_path: Path) -> None:
    write_case(tmp_path, BRATS_2021, "BraTS20_Training_001", ext=".nii")  # BraTS 2020 names, decompressed
    (tmp_path / ".cache").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "name_mapping.csv").write_text("x")
    assert detect_convention(tmp_path) is BRATS_2021
    items = brats_datalist(tmp_path)
    assert items[0]["image"][0].endswith("BraTS20_Training_001_t1.nii")


def test_datalist_2021_default_order(tree2021: Path) -> None:
    items = brats_datalist(tree2021)
    assert [it["case"] for it in items] == [case_name(BRATS_2021, i) for i in range(3)]
    first = items[0]
    case = first["case"]
    assert first["image"] == [str(tree2021 / case / f"{case}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
    assert first["label"] == str(tree2021 / case / f"{case}_seg.nii.gz")


def test_datalist_2023_maps_2021_names_in_given_order(tree2023: Path) -> None:
    items = brats_datalist(tree2023, modalities=("flair", "t1ce", "t2", "t1"))
    case = items[0]["case"]
    assert items[0]["image"] == [str(tree2023 / case / f"{case}-{s}.nii.gz") for s in ("t2f", "t1c", "t2w", "t1n")]
    assert items[0]["label"] == str(tree2023 / case / f"{case}-seg.nii.gz")
    # the 2023 names work as aliases and give the same files
    assert brats_datalist(tree2023, modalities=("t2f", "t1c", "t2w", "t1n")) == items
    no_label = brats_datalist(tree2023, modalities=["t1ce"], with_label=False)
    assert "label" not in no_label[0] and len(no_label[0]["image"]) == 1


@pytest.mark.parametrize("conv_name", ["tree2021", "tree2023"])
def test_loaded_channels_follow_modality_order(conv_name: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(conv_name)
    order = ("flair", "t1ce", "t2", "t1")
    item = brats_datalist(root, modalities=order)[0]
    data = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(item)
    assert tuple(data["image"].shape) == (4, *SHAPE)
    assert [float(data["image"][c].mean()) for c in range(4)] == [MODALITY_VALUE[m] for m in order]


def test_missing_dataset_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BratsFileNotFoundError) as e:
        detect_convention(missing)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz" in msg
    assert "BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz" in msg
    with pytest.raises(BratsFileNotFoundError, match="does not exist"):
        brats_datalist(missing)


def test_dataset_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "data.zip"
    f.write_bytes(b"")
    with pytest.raises(BratsFileNotFoundError, match="is not a folder") as e:
        detect_convention(f)
    assert str(f) in str(e.value)


def test_empty_dir_and_single_case_hint(tmp_path: Path) -> None:
    with pytest.raises(BratsFileNotFoundError) as e:
        detect_convention(tmp_path)
    assert f"'{tmp_path}' holds no case folders" in str(e.value)
    assert "BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz" in str(e.value)

    case_dir = write_case(tmp_path / "x", BRATS_2023, "BraTS-GLI-00001-000")
    with pytest.raises(BratsFileNotFoundError, match="looks like a single case folder"):
        detect_convention(case_dir)


def test_unknown_naming(tmp_path: Path) -> None:
    write_case(tmp_path, BRATS_2021, "BraTS2021_00000")
    odd = tmp_path / "patient7"
    odd.mkdir()
    (odd / "patient7_T1.nii.gz").write_bytes(b"")
    with pytest.raises(BratsDataError) as e:
        detect_convention(tmp_path)
    msg = str(e.value)
    assert f"'{odd}'" in msg and "follows no known BraTS naming" in msg and "patient7_T1.nii.gz" in msg
    assert "patient7_{t1,t1ce,t2,flair,seg}.nii.gz" in msg and "patient7-{t1n,t1c,t2w,t2f,seg}.nii.gz" in msg


def test_nested_dataset_folder_hint(tmp_path: Path) -> None:
    make_tree(tmp_path / "BraTS2021_Training_Data", BRATS_2021, 1)
    with pytest.raises(BratsDataError, match="itself holds case folders: pass it as the dataset folder") as e:
        detect_convention(tmp_path)
    assert str(tmp_path / "BraTS2021_Training_Data") in str(e.value)


def test_mixed_conventions(tmp_path: Path) -> None:
    write_case(tmp_path, BRATS_2021, "BraTS2021_00000")
    write_case(tmp_path, BRATS_2023, "BraTS-GLI-00000-000")
    with pytest.raises(BratsDataError) as e:
        detect_convention(tmp_path)
    msg = str(e.value)
    assert "mixes naming conventions" in msg and str(tmp_path) in msg
    assert "'BraTS2021_00000'" in msg and "'BraTS-GLI-00000-000'" in msg


def test_missing_modality_and_seg(tmp_path: Path) -> None:
    write_case(tmp_path, BRATS_2023, "BraTS-GLI-00000-000")
    write_case(tmp_path, BRATS_2023, "BraTS-GLI-00001-000", skip=("t1c",))
    write_case(tmp_path, BRATS_2023, "BraTS-GLI-00002-000", skip=("seg",))
    with pytest.raises(BratsFileNotFoundError) as e:
        brats_datalist(tmp_path)
    msg = str(e.value)
    assert "missing 2 file(s)" in msg
    assert str(tmp_path / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz") in msg
    assert str(tmp_path / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-seg.nii.gz") in msg
    assert "<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz" in msg
    # without labels only the modality is missing, and only when it is requested
    with pytest.raises(BratsFileNotFoundError, match="missing 1 file"):
        brats_datalist(tmp_path, with_label=False)
    assert len(brats_datalist(tmp_path, modalities=("flair",), with_label=False)) == 3


def test_unknown_modality_name(tree2021: Path) -> None:
    with pytest.raises(BratsDataError, match="Unknown BraTS modality 'dwi'"):
        brats_datalist(tree2021, modalities=("t1", "dwi"))


# ---------------------------------------------------------------------------------------------------------------
# split files
# ---------------------------------------------------------------------------------------------------------------


def test_make_folds_partition_balance_and_relative_paths(tree11: Path) -> None:
    split = make_folds(tree11, folds=5, seed=3)
    entries, testing = split["training"], split["testing"]
    cases = [e["case"] for e in entries + testing]
    assert sorted(cases) == [case_name(BRATS_2023, i) for i in range(11)]  # every case exactly once
    assert len(testing) == 2 and all("fold" not in e for e in testing)  # round(0.2 x 11) held out
    sizes = [sum(e["fold"] == k for e in entries) for k in range(5)]
    assert sum(sizes) == 9 and max(sizes) - min(sizes) <= 1
    assert split["convention"] == "brats2023" and split["et_label"] == 3 and split["num_folds"] == 5
    assert split["modalities"] == ["t1", "t1ce", "t2", "flair"] and split["seed"] == 3
    assert split["test_fraction"] == 0.2
    for e in entries + testing:
        for p in [*e["image"], e["label"]]:
            assert not os.path.isabs(p) and p.startswith(e["case"] + "/")
            assert (tree11 / p).is_file()
        assert e["image"][0].endswith("-t1n.nii.gz") and e["label"].endswith("-seg.nii.gz")


def test_make_folds_deterministic_by_seed(tree11: Path) -> None:
    def assignment(seed: int) -> dict[str, int]:
        return {e["case"]: e["fold"] for e in make_folds(tree11, folds=5, seed=seed)["training"]}

    assert assignment(7) == assignment(7)
    assert assignment(7) != assignment(8)
    assert [e["case"] for e in make_folds(tree11, folds=5, seed=7)["testing"]] != [
        e["case"] for e in make_folds(tree11, folds=5, seed=8)["testing"]
    ]
    no_test = make_folds(tree11, folds=5, seed=7, test_fraction=0)
    assert no_test["testing"] == [] and len(no_test["training"]) == 11


def test_make_folds_rejects_bad_fold_counts(tree2021: Path) -> None:
    with pytest.raises(BratsDataError, match="fewer than 5 folds"):
        make_folds(tree2021, folds=5)
    with pytest.raises(BratsDataError, match="folds must be an integer >= 2"):
        make_folds(tree2021, folds=1)
    with pytest.raises(BratsDataError, match=r"after 1 held-out test case\(s\), fewer than 3 folds"):
        make_folds(tree2021, folds=3)
    with pytest.raises(BratsDataError, match=r"test_fraction must be in \[0, 1\)"):
        make_folds(tree2021, folds=2, test_fraction=1.0)


def test_write_and_load_fold(tree11: Path, tmp_path: Path) -> None:
    out = tmp_path / "splits" / "folds.json"
    out.parent.mkdir()
    out.write_text("old content")  # replaced atomically
    split = write_split_file(tree11, out, folds=5, seed=1, modalities=("flair", "t1ce", "t2", "t1"))
    assert json.loads(out.read_text()) == split
    assert [p.name for p in out.parent.iterdir()] == ["folds.json"]  # no temp file left behind

    seen = []
    for fold in range(5):
        train, val = load_fold(out, tree11, fold)
        assert len(train) + len(val) == 9 and val
        assert all(it["fold"] == fold for it in val) and all(it["fold"] != fold for it in train)
        assert not {it["case"] for it in train} & {it["case"] for it in val}
        for it in train + val:
            assert all(os.path.isabs(p) and os.path.isfile(p) for p in [*it["image"], it["label"]])
        assert val[0]["image"][0].endswith("-t2f.nii.gz")  # modality order kept
        seen += [it["case"] for it in val]
        train, val, test = read_split(out, tree11, fold, modalities=("flair", "t1ce", "t2", "t1"))
        assert len(test) == 2 and not {it["case"] for it in test} & {it["case"] for it in train + val}
        assert all(os.path.isabs(p) and os.path.isfile(p) for it in test for p in [*it["image"], it["label"]])
    assert sorted(seen + [it["case"] for it in test]) == [case_name(BRATS_2023, i) for i in range(11)]
    with pytest.raises(BratsDataError, match="holds a 'testing' list"):
        read_split(out, tree11, 0, modalities=("flair", "t1ce", "t2", "t1"), test_fold=-1)


def test_load_fold_errors(tree11: Path, tmp_path: Path) -> None:
    out = tmp_path / "folds.json"
    write_split_file(tree11, out, folds=5, test_fraction=0)
    with pytest.raises(BratsDataError, match=r"has no fold 5; its folds are \[0, 1, 2, 3, 4\]"):
        load_fold(out, tree11, 5)
    with pytest.raises(BratsFileNotFoundError, match="does not exist"):
        load_fold(tmp_path / "nope.json", tree11, 0)
    other = make_tree(tmp_path / "other", BRATS_2023, 1)
    with pytest.raises(BratsFileNotFoundError) as e:
        load_fold(out, other, 0)
    msg = str(e.value)  # 10 of 11 cases are absent from `other`: 10 x 5 files
    assert "50 file(s)" in msg and f"are missing under dataset folder '{other}'" in msg and "... and 40 more" in msg
    assert f"'{other}{os.sep}BraTS-GLI-000" in msg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"validation": []}))
    with pytest.raises(BratsDataError, match="is not a fold file"):
        load_fold(bad, tree11, 0)
    bad.write_text("{not json")
    with pytest.raises(BratsDataError, match="is not valid JSON") as e:
        load_fold(bad, tree11, 0)
    assert str(bad) in str(e.value)


def test_load_fold_reads_swinunetr_style_file(tree2021: Path, tmp_path: Path) -> None:
    """A file in the research-contributions format (no extra keys) loads as well."""
    items = brats_datalist(tree2021)
    entries = [
        {
            "fold": i % 2,
            "image": [os.path.relpath(p, tree2021) for p in it["image"]],
            "label": os.path.relpath(it["label"], tree2021),
        }
        for i, it in enumerate(items)
    ]
    f = tmp_path / "brats21_folds.json"
    f.write_text(json.dumps({"training": entries}))
    train, val = load_fold(f, tree2021, 1)
    assert [it["image"] for it in val] == [items[1]["image"]] and len(train) == 2


# ---------------------------------------------------------------------------------------------------------------
# which label convention a run uses
# ---------------------------------------------------------------------------------------------------------------


def test_split_convention_is_the_one_the_split_file_records(
    tree2021: Path, tree2023: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tree, expected in ((tree2021, BRATS_2021), (tree2023, BRATS_2023)):
        out = tmp_path / f"{expected.name}.json"
        split = write_split_file(tree, out, folds=2, test_fraction=0)
        assert split["convention"] == expected.name and split["et_label"] == expected.et_label
        with monkeypatch.context() as m:  # recorded: the dataset folder is not listed again
            m.setattr(brats_reader, "detect_convention", lambda *_: pytest.fail("dataset folder listed again"))
            assert split_convention(out, tree) is expected


def test_split_convention_falls_back_to_the_dataset_folder(tree2021: Path, tree2023: Path, tmp_path: Path) -> None:
    authors = tmp_path / "folds_data.json"  # the MTCM-KD authors' format records no convention
    cases = [item["case"] for item in brats_datalist(tree2023)]
    authors.write_text(json.dumps([{"train_samples": cases[:2], "valid_samples": cases[2:]}]))
    assert split_convention(authors, tree2023) is BRATS_2023
    swinunetr = tmp_path / "brats21_folds.json"  # nor does SwinUNETR's
    item = brats_datalist(tree2021)[0]
    entry = {"fold": 0, "image": [os.path.relpath(p, tree2021) for p in item["image"]]}
    swinunetr.write_text(json.dumps({"training": [entry]}))
    assert split_convention(swinunetr, tree2021) is BRATS_2021


def test_split_convention_stops_when_the_record_contradicts_the_folder(tree2021: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    split = write_split_file(tree2021, out, folds=2, test_fraction=0)
    out.write_text(json.dumps({**split, "convention": "brats2023", "et_label": 3}))
    with pytest.raises(BratsDataError) as e:
        split_convention(out, tree2021)
    message = str(e.value)
    case_dir = tree2021 / split["training"][0]["case"]
    assert f"Split file '{out}' records the brats2023 convention (ET label 3)" in message
    assert f"case folder '{case_dir}' holds BraTS 2021" in message and "ET label 4" in message
    assert "make-split" in message and bad_input_message(e.value) == message  # one `error:` line in a bundle run
    out.write_text(json.dumps({**split, "et_label": 3}))
    with pytest.raises(BratsDataError, match="records the brats2021 convention, whose ET label is 4, but et_label 3"):
        split_convention(out, tree2021)
    out.write_text(json.dumps({**split, "convention": "brats2019"}))
    with pytest.raises(BratsDataError, match=r"records the convention 'brats2019'; expected one of"):
        split_convention(out, tree2021)
    with pytest.raises(BratsFileNotFoundError, match="does not exist. Expected one of"):
        split_convention(out, tmp_path / "nowhere")
    with pytest.raises(BratsFileNotFoundError, match="make one with"):
        split_convention(tmp_path / "nowhere.json", tree2021)


def test_inference_convention_from_a_lone_file_or_the_dataset_folder(tree2023: Path, tmp_path: Path) -> None:
    assert inference_convention("", "/in/BraTS-GLI-00000-000-t1c.nii.gz") is BRATS_2023
    assert inference_convention(tree2023, "/in/BraTS-GLI-00000-000-t2f.nii") is BRATS_2023
    assert inference_convention(tree2023, Path("/in/BraTS2021_00000_t1ce.nii.gz")) is BRATS_2021  # the file decides
    assert inference_convention(tree2023, "/in/t1ce.nii.gz") is BRATS_2021
    assert inference_convention(tree2023, "") is BRATS_2023  # no lone file: the folder's
    assert inference_convention(tree2023) is BRATS_2023
    assert inference_convention(tmp_path / "nowhere") is BRATS_2021  # MONAI Label passes no dataset folder
    assert inference_convention("") is BRATS_2021


def test_case_files_from_any_one_modality_in_the_model_order(tree2021: Path, tree2023: Path) -> None:
    for tree, conv in ((tree2021, BRATS_2021), (tree2023, BRATS_2023)):
        case = case_name(conv, 1)
        folder = tree / case
        for _, suffix in conv.modality_suffixes:
            expected = [folder / conv.file_name(case, conv.suffixes[m]) for m in ("t1", "t1ce", "t2", "flair")]
            assert case_files(folder / conv.file_name(case, suffix)) == expected
        assert case_files(folder / conv.file_name(case, conv.suffixes["flair"]), ["t1ce"]) == [
            folder / conv.file_name(case, conv.suffixes["t1ce"])
        ]


def test_case_files_names_what_is_missing_or_misnamed(tmp_path: Path) -> None:
    write_case(tmp_path, BRATS_2021, "BraTS2021_00007", skip=("t2",))
    flair = tmp_path / "BraTS2021_00007" / "BraTS2021_00007_flair.nii.gz"
    with pytest.raises(BratsFileNotFoundError, match=r"BraTS2021_00007_t2\.nii\.gz' does not exist: the t2 image"):
        case_files(flair)
    with pytest.raises(BratsDataError, match="is not named like one modality of a BraTS case"):
        case_files(tmp_path / "stacked_4ch.nii.gz")
    with pytest.raises(BratsDataError, match="is not named like"):
        case_files(tmp_path / "_flair.nii.gz")  # a suffix alone names no case


def test_label_names_per_convention() -> None:
    assert BRATS_2021.labels == {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4}
    assert list(BRATS_2023.labels.values()) == [1, 2, 3]


def test_convention_for_et_label() -> None:
    assert convention_for_et_label(4) is BRATS_2021 and convention_for_et_label(3) is BRATS_2023
    assert convention_for_et_label(np.int64(3)) is BRATS_2023
    for bad in (2, 5, 3.0, "3", None):
        with pytest.raises(BratsDataError, match=r"et_label must be one of 4 \(brats2021\), 3 \(brats2023\)"):
            convention_for_et_label(bad)


@pytest.mark.parametrize("bundle", ["cohra_unet_brats", "mtcm_kd_t1ce_student"])
def test_bundle_configs_take_the_convention_from_these_functions(bundle: str, tree2023: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    configs = REPO_ROOT / "bundles" / bundle / "configs"
    out = tmp_path / "split.json"
    write_split_file(tree2023, out, folds=2, test_fraction=0)
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tree2023), "split_file": str(out)})
    assert parser.get_parsed_content("et_label") == 3
    if bundle == "mtcm_kd_t1ce_student":
        assert parser.get_parsed_content("label_convention") == "brats2023"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tree2023)})
    assert parser.get_parsed_content("et_label") == 3
    parser.update({"dataset_dir": str(tmp_path / "nowhere")})
    assert parser.get_parsed_content("et_label", lazy=False) == 4
    if bundle == "mtcm_kd_t1ce_student":
        parser.update({"input_image": "/in/BraTS-GLI-00000-000-t1c.nii.gz"})
        assert parser.get_parsed_content("et_label", lazy=False) == 3
        assert parser.get_parsed_content("output_convention", lazy=False) == "brats2023"
        parser.update({"et_label": 4})
        assert parser.get_parsed_content("output_convention", lazy=False) == "brats2021"


def test_cli_make_split(tree11: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "folds.json"
    cmd = [sys.executable, "-m", "common.data.brats", "make-split", "--dataset-dir", str(tree11), "--out", str(out)]
    run = subprocess.run(
        [*cmd, "--folds", "3", "--seed", "5"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    split = json.loads(out.read_text())
    assert split["num_folds"] == 3 and split["seed"] == 5 and len(split["training"]) == 9
    assert split == make_folds(tree11, folds=3, seed=5)
    assert "2 held-out test and 9 cross-validation cases" in run.stdout
    run = subprocess.run([*cmd, "--test-fraction", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["testing"] == []


def test_cli_error_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (a second interpreter start costs seconds): a bad folder gives exit code 2 and one line."""
    from common.data.brats.__main__ import main

    rc = main(["make-split", "--dataset-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and str(tmp_path / "none") in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# label conventions
# ---------------------------------------------------------------------------------------------------------------

LABELS = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}


def label_maps(values: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.uint8, (1, 3, 4, 5), elements=st.sampled_from(values))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), convention=st.sampled_from(sorted(LABELS)), as_float=st.booleans())
def test_regions_round_trip(data: st.DataObject, convention: str, as_float: bool) -> None:
    """label map -> MONAI TC/WT/ET -> RegionsToBratsLabelsd -> the same label map, for both ET conventions."""
    et = LABELS[convention][3]
    label = data.draw(label_maps(LABELS[convention]))
    meta = MetaTensor(torch.as_tensor(label), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    meta.meta["filename_or_obj"] = "case_seg.nii.gz"
    regions = ConvertToMultiChannelBasedOnBratsClassesd(keys="label", et_label=et)({"label": meta})["label"]
    assert tuple(regions.shape) == (3, 3, 4, 5)
    if as_float:  # a bundle casts the bool stack to float for the losses
        regions = regions.float()
    back = RegionsToBratsLabelsd(keys="pred", et_label=et)({"pred": regions})["pred"]
    assert isinstance(back, MetaTensor) and back.dtype == torch.float32
    np.testing.assert_array_equal(back.numpy(), label)
    assert back.meta["filename_or_obj"] == "case_seg.nii.gz"
    assert torch.equal(back.affine, meta.affine)


@settings(max_examples=25, deadline=None)
@given(label=label_maps(LABELS["brats2021"]))
def test_convert_labels_round_trip(label: np.ndarray) -> None:
    index = convert_brats_labels(label, "brats2021", "index")
    assert index.dtype == label.dtype and set(np.unique(index)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(index, np.where(label == 4, 3, label))
    np.testing.assert_array_equal(convert_brats_labels(index, "index", "brats2021"), label)
    as2023 = convert_brats_labels(torch.as_tensor(label), "brats2021", "brats2023")
    np.testing.assert_array_equal(as2023.numpy(), index)
    np.testing.assert_array_equal(convert_brats_labels(as2023, "brats2023", "brats2021").numpy(), label)


def test_convert_labels_dict_keeps_meta_and_regions_numpy() -> None:
    lab = MetaTensor(torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]]), meta={"filename_or_obj": "a_seg.nii.gz"})
    out = ConvertBratsLabelsd(keys="label", source="brats2021", target="index")({"label": lab})["label"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a_seg.nii.gz"
    assert out.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    regions = np.zeros((3, 2, 2), dtype=bool)
    regions[1, 0, 0] = True  # WT only -> ED
    regions[:2, 0, 1] = True  # TC and WT -> NCR
    regions[2, 1, 1] = True  # ET outside TC/WT still ET
    out_np = regions_to_brats_labels(regions, et_label=3)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (1, 2, 2)
    assert out_np[0].tolist() == [[2.0, 1.0], [0.0, 3.0]]
    with pytest.raises(BratsDataError, match=r"shape \(3, \*spatial\)"):
        regions_to_brats_labels(np.zeros((1, 3, 2, 2)))


def test_label_check_names_file_and_values() -> None:
    lab = MetaTensor(
        torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]), meta={"filename_or_obj": "/d/BraTS-GLI-1-000-seg.nii.gz"}
    )
    with pytest.raises(BratsLabelError) as e:
        CheckBratsLabelsd(keys="label", convention="brats2021")({"label": lab})
    msg = str(e.value)
    assert "'/d/BraTS-GLI-1-000-seg.nii.gz'" in msg
    assert "holds values [0, 1, 2, 3]" in msg and "allows only [0, 1, 2, 4]" in msg and "unexpected: [3]" in msg
    assert "brats2023" in msg  # hint: it is 2023 data
    assert CheckBratsLabelsd(keys="label", convention="brats2023")({"label": lab})["label"] is lab
    # a wrong source convention stops instead of silently losing ET
    with pytest.raises(BratsLabelError, match="BraTS-GLI-1-000-seg"):
        convert_brats_labels(lab, "brats2021", "index")
    # without meta data the name comes from the caller / the dict's meta dict
    with pytest.raises(BratsLabelError, match=r"'x.nii.gz' holds values \[0, 0.5\]"):
        check_brats_labels(np.array([0.0, 0.5]), "index", name="x.nii.gz")
    with pytest.raises(BratsLabelError, match="'lab.nii'"):
        CheckBratsLabelsd(keys="label")({"label": np.array([7]), "label_meta_dict": {"filename_or_obj": "lab.nii"}})
