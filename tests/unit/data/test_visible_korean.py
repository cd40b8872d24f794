"""Visible Korean reader (common.data.visible_korean): colour table, colour-to-label conversion, slice checks, the
block-wise split, the ``prepare`` command on phantoms and the bundle's MONAI preprocessing chain."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

import common.data.visible_korean as vk
import common.data.visible_korean.transforms as vk_transforms
from common.data.visible_korean import (
    GROUP_LABELS,
    ColourCoding,
    UnknownColoursError,
    VKDataError,
    VKFileNotFoundError,
    list_slices,
    preprocessing_config,
    read_colour_table,
    read_pair,
    segmentation_to_labels,
    split_slices,
    vk_preprocessing,
)
from common.synthetic._fields import case_rng
from common.synthetic.visible_korean import LEVELS, STRUCTURES, generate_visible_korean, make_visible_korean_case
from tests.helpers import REPO_ROOT

SIZE = (64, 96)  # H, W of the phantoms
CASES = 12  # 2 quality-check slices leave 10: an 8:2 split

HEADER = "structure,group,red,green,blue\n"
# A hand-made table: two bone structures, a muscle, an "other" structure.
TABLE = {
    "femur": ("bone", (10, 20, 30)),
    "sacrum": ("bone", (11, 20, 30)),
    "psoas": ("muscle", (40, 50, 60)),
    "skin": ("other", (70, 80, 90)),
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vk_phantoms")
    generate_visible_korean(out, cases=CASES, size=SIZE, seed=0, workers=1, verbose=False)
    return out


def run_prepare(dataset_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "common.data.visible_korean", "prepare", "--dataset-dir", str(dataset_dir)]
    return subprocess.run([*cmd, "--out", str(out), *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_rgb16_png(path: Path, height: int, width: int) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one, and reads one as 8-bit RGB without complaint)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + np.full((width, 3), 1000, ">u2").tobytes() for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def rgb_of(index: np.ndarray) -> np.ndarray:
    """Colour-coded segmentation from indices into ``[black, *TABLE]``."""
    palette = np.array([(0, 0, 0)] + [rgb for _, rgb in TABLE.values()], np.uint8)
    return palette[index]


# ---------------------------------------------------------------------------------------------------------------
# colour table
# ---------------------------------------------------------------------------------------------------------------


def test_read_colour_table_accepts_bom_extra_columns_any_order_and_blank_lines(tmp_path):
    path = tmp_path / "colour_table.csv"
    text = "\ufeffblue, green,red,structure,group,korean_name\n30,20,10,femur,bone,x\n\n60,50,40,psoas,muscle,y\n"
    path.write_text(text, encoding="utf-8")
    table = read_colour_table(path)
    assert table == {"femur": ("bone", (10, 20, 30)), "psoas": ("muscle", (40, 50, 60))}
    group, rgb = table["psoas"]
    assert (group, rgb) == (table["psoas"].group, table["psoas"].rgb) == ("muscle", (40, 50, 60))


def test_read_colour_table_of_phantoms_and_synthetic_reexport(phantoms):
    import common.synthetic.visible_korean as synthetic
    from common.synthetic.visible_korean import colour_table

    assert synthetic.read_colour_table is read_colour_table, "one reader, re-exported by the generator"
    table = read_colour_table(phantoms / "colour_table.csv")
    assert list(table) == [s.name for s in STRUCTURES]
    assert {n: e.rgb for n, e in table.items()} == colour_table()
    assert {n: e.group for n, e in table.items()} == {s.name: s.group for s in STRUCTURES}


@pytest.mark.parametrize(
    "content, expected",
    [
        ("structure,group,red,green\nfemur,bone,1,2\n", r"row 1: the header lacks column\(s\) blue"),
        ("structure,group,red,red,green,blue\nfemur,bone,1,1,2,3\n", r"row 1: the header repeats column\(s\) red"),
        (HEADER + "femur,bone,1,2,3\npsoas,cartilage,4,5,6\n", r"row 3 \('psoas'\): bad group 'cartilage'"),
        (HEADER + "femur,bone,256,2,3\n", r"row 2 \('femur'\): red '256' is not an integer in 0-255"),
        (HEADER + "femur,bone,1,-2,3\n", r"row 2 \('femur'\): green '-2' is not an integer in 0-255"),
        (HEADER + "femur,bone,1,2,3.5\n", r"row 2 \('femur'\): blue '3.5' is not an integer in 0-255"),
        (
            HEADER + "femur,bone,1,2,3\npsoas,muscle,1,2,3\n",
            r"row 3 \('psoas'\): duplicate colour \(1, 2, 3\), already used by 'femur' in row 2",
        ),
        (
            HEADER + "femur,bone,1,2,3\nfemur,bone,4,5,6\n",
            r"row 3 \('femur'\): duplicate structure 'femur' \(first in row 2\)",
        ),
        (HEADER + "femur,bone,0,0,0\n", r"row 2 \('femur'\): colour \(0, 0, 0\) is reserved for unlabelled"),
        (HEADER + "femur,bone,1,2\n", r"row 2: 4 value\(s\), expected 5"),
        (HEADER + ",bone,1,2,3\n", r"row 2 \(''\): empty structure name"),
        (HEADER, r"has a header but no rows"),
        ("\n\n", r"is empty"),
    ],
)
def test_read_colour_table_rejects_bad_tables(tmp_path, content, expected):
    path = tmp_path / "my_colours.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=expected) as info:
        read_colour_table(path)
    assert str(path) in str(info.value), "the message names the file"
    assert isinstance(info.value, VKDataError)


def test_read_colour_table_lists_every_bad_row_and_missing_file(tmp_path):
    path = tmp_path / "colour_table.csv"
    path.write_text(HEADER + "femur,bone,1,2,3\npsoas,tendon,4,5,6\nskin,other,7,8,9\nfat,other,0,0,0\n")
    with pytest.raises(VKDataError, match="2 bad row") as info:
        read_colour_table(path)
    assert "row 3 ('psoas')" in str(info.value) and "row 5 ('fat')" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_colour_table(tmp_path / "nowhere.csv")
    path.write_bytes(HEADER.encode() + b"f\xe9mur,bone,1,2,3\n")  # Latin-1, not UTF-8
    with pytest.raises(VKDataError, match="is not UTF-8"):
        read_colour_table(path)


def test_data_module_does_not_import_synthetic_or_monai():
    code = (
        "import sys, common.data.visible_korean\n"
        "print([name for name in ('common.synthetic', 'monai') if name in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", "the real-data reader must not depend on the generator (nor load MONAI)"


# ---------------------------------------------------------------------------------------------------------------
# colour-coded segmentation -> label map
# ---------------------------------------------------------------------------------------------------------------


def test_conversion_maps_groups_and_black():
    index = np.array([[0, 1, 2], [3, 4, 0]])  # black, femur, sacrum / psoas, skin, black
    labels = segmentation_to_labels(rgb_of(index), TABLE)
    assert labels.dtype == np.uint8 and labels.shape == (2, 3)
    np.testing.assert_array_equal(labels, [[0, 1, 1], [2, 0, 0]])
    assert vk.VK_LABELS == {"background": 0, "bone": 1, "muscle": 2}


def test_unknown_colours_raise_with_counts_most_frequent_first():
    seg = rgb_of(np.ones((4, 5), int))
    seg[0, :2] = (9, 9, 9)
    seg[1:, 0] = (1, 2, 3)
    with pytest.raises(UnknownColoursError) as info:
        ColourCoding(TABLE)(seg, name="segmentations/VK_0007.png")
    message = str(info.value)
    assert "segmentations/VK_0007.png" in message
    assert "(1, 2, 3) x 3 px, (9, 9, 9) x 2 px" in message
    assert info.value.colours == [((1, 2, 3), 3), ((9, 9, 9), 2)]


def test_unknown_colours_list_is_truncated():
    seg = rgb_of(np.zeros((1, 15), int))
    seg[0, :, 0] = np.arange(1, 16)  # 15 different unknown colours, one pixel each
    with pytest.raises(UnknownColoursError, match=r"and 5 more colour\(s\) \(5 px\)"):
        segmentation_to_labels(seg, TABLE)


def test_unknown_colours_as_background_warn(caplog):
    index = np.array([[1, 3], [0, 3]])
    seg = rgb_of(index)
    seg[1, 0] = (5, 6, 7)
    with caplog.at_level(logging.WARNING, logger="common.data.visible_korean"):
        labels = segmentation_to_labels(seg, TABLE, unknown="background", name="VK_0003.png")
    np.testing.assert_array_equal(labels, [[1, 2], [0, 2]])
    assert "VK_0003.png" in caplog.text and "(5, 6, 7) x 1 px" in caplog.text


def test_conversion_rejects_bad_arrays_tables_and_policy():
    with pytest.raises(VKDataError, match=r"shape \(4, 4\).*expected an RGB image of shape \(H, W, 3\)"):
        segmentation_to_labels(np.zeros((4, 4), np.uint8), TABLE)
    with pytest.raises(VKDataError, match="dtype float32"):
        segmentation_to_labels(np.zeros((4, 4, 3), np.float32), TABLE)
    with pytest.raises(VKDataError, match="unknown must be one of"):
        segmentation_to_labels(np.zeros((4, 4, 3), np.uint8), TABLE, unknown="ignore")
    with pytest.raises(VKDataError, match="share the colour"):
        ColourCoding({"a": ("bone", (1, 2, 3)), "b": ("muscle", (1, 2, 3))})
    with pytest.raises(VKDataError, match="bad group"):
        ColourCoding({"a": ("tendon", (1, 2, 3))})


GROUP_OF_INDEX = np.array([0] + [GROUP_LABELS[group] for group, _ in TABLE.values()], np.uint8)
PROPERTY_CODING = ColourCoding(TABLE)  # built once: hypothesis calls the test many times


@settings(max_examples=40, deadline=None)
@given(index=arrays(np.int64, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.integers(0, len(TABLE))))
def test_conversion_property(index):
    coding = PROPERTY_CODING
    labels = coding(rgb_of(index))
    assert labels.shape == index.shape
    np.testing.assert_array_equal(labels, GROUP_OF_INDEX[index])
    assert set(np.unique(labels)) == set(np.unique(GROUP_OF_INDEX[index])) <= {0, 1, 2}


# ---------------------------------------------------------------------------------------------------------------
# slice files and dataset folder
# ---------------------------------------------------------------------------------------------------------------


def test_read_pair_checks(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = write_png(tmp_path / "image.png", rgb)
    seg = write_png(tmp_path / "seg.png", rgb[::-1].copy())
    got_image, got_seg = read_pair(image, seg)
    np.testing.assert_array_equal(got_image, rgb)
    np.testing.assert_array_equal(got_seg, rgb[::-1])

    with pytest.raises(VKFileNotFoundError, match=r"Segmentation '.*missing.png' does not exist"):
        read_pair(image, tmp_path / "missing.png")
    rgba = write_png(tmp_path / "rgba.png", np.zeros((6, 8, 4), np.uint8))
    with pytest.raises(VKDataError, match=r"'.*rgba.png' has 8-bit RGBA pixels; expected 8-bit RGB"):
        read_pair(image, rgba)
    grey = write_png(tmp_path / "grey.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(VKDataError, match=r"Image '.*grey.png' has 8-bit greyscale pixels"):
        read_pair(grey, seg)
    deep = write_rgb16_png(tmp_path / "deep.png", 6, 8)
    with pytest.raises(VKDataError, match=r"'.*deep.png' has 16-bit RGB pixels"):
        read_pair(image, deep)
    small = write_png(tmp_path / "small.png", rgb[:5])
    with pytest.raises(
        VKDataError, match=r"Segmentation '.*small.png' is 5 x 8 \(H x W\) but its image '.*image.png' is 6 x 8"
    ):
        read_pair(image, small)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(VKDataError, match=r"'.*text.png' is not a PNG file"):
        read_pair(text, seg)


def _layout(root: Path, names: list[str], segmentation_names: list[str] | None = None) -> Path:
    tile = np.full((4, 4, 3), 7, np.uint8)
    (root / "colour_table.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "colour_table.csv").write_text(HEADER + "femur,bone,1,2,3\n")
    for name in names:
        write_png(root / "images" / f"{name}.png", tile)
    for name in names if segmentation_names is None else segmentation_names:
        write_png(root / "segmentations" / f"{name}.png", tile)
    return root


def test_list_slices_orders_by_number_and_ignores_hidden_files(tmp_path):
    root = _layout(tmp_path / "ds", ["VK_0010", "VK_0002", "VK_0100"])
    (root / "images" / ".VK_0003.png.tmp").write_bytes(b"")
    slices = list_slices(root)
    assert [(s.name, s.number) for s in slices] == [("VK_0002", 2), ("VK_0010", 10), ("VK_0100", 100)]
    assert slices[0].image == root / "images" / "VK_0002.png"
    assert slices[0].segmentation == root / "segmentations" / "VK_0002.png"


def test_list_slices_errors(tmp_path):
    with pytest.raises(VKFileNotFoundError, match="does not exist"):
        list_slices(tmp_path / "absent")
    bare = tmp_path / "bare"
    (bare / "segmentations").mkdir(parents=True)
    with pytest.raises(VKFileNotFoundError, match=r"has no colour_table.csv, images/ \(found: segmentations\)") as info:
        list_slices(bare)
    assert "Expected layout" in str(info.value)
    root = _layout(tmp_path / "unmatched", ["VK_0001", "VK_0002"], ["VK_0002", "VK_0003"])
    with pytest.raises(
        VKDataError,
        match=r"1 image\(s\) without a segmentation: VK_0001; 1 segmentation\(s\) without an image: VK_0003",
    ):
        list_slices(root)
    with pytest.raises(VKDataError, match=r"slice name\(s\) slice_a do not end in a slice number"):
        list_slices(_layout(tmp_path / "unnumbered", ["VK_0001", "slice_a"]))
    with pytest.raises(VKDataError, match="same slice number: VK_0001 = VK_1"):
        list_slices(_layout(tmp_path / "clash", ["VK_0001", "VK_1"]))
    empty = _layout(tmp_path / "empty", [])
    (empty / "images").mkdir()
    (empty / "segmentations").mkdir()
    with pytest.raises(VKFileNotFoundError, match="holds no PNG slices"):
        list_slices(empty)


# ---------------------------------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------------------------------


def test_split_sizes_disjoint_deterministic():
    numbers = list(range(3, 203))
    split = split_slices(numbers, val_fraction=0.2, quality_check=4, seed=0, block_size=10)
    sizes = {k: len(v) for k, v in split.items()}
    # test: round(0.2 * 200) = 40; validation: round(0.2 * (200 - 40 - 4)) = 31
    assert sizes == {"test": 40, "training": 125, "validation": 31, "quality_check": 4}
    assert sorted(split["test"] + split["training"] + split["validation"] + split["quality_check"]) == numbers
    rest = set(numbers) - set(split["test"])
    assert len({n // 10 for n in split["test"]} & {n // 10 for n in rest}) <= 1, "test slices are whole blocks but one"
    assert split == split_slices(numbers, 0.2, 4, seed=0, block_size=10)
    assert split != split_slices(numbers, 0.2, 4, seed=1, block_size=10)
    assert all(v == sorted(v) for v in split.values())


def test_split_keeps_blocks_together_and_spreads_quality_check():
    numbers = list(range(200))
    for seed in range(5):
        split = split_slices(numbers, val_fraction=0.2, quality_check=4, seed=seed, block_size=10, test_fraction=0)
        assert split["test"] == []
        side = {n: k for k, ns in split.items() for n in ns}
        held_out = {"validation", "quality_check"}
        # q + v = 4 + 39 = 43 held-out slices: four whole blocks plus three slices of one cut block
        mixed = [b for b in range(20) if len({side[n] in held_out for n in range(10 * b, 10 * b + 10)}) > 1]
        assert len(mixed) == 1, mixed
        assert len({n // 10 for n in split["quality_check"]}) == 4, "quality-check slices come from different blocks"
    per_slice = split_slices(numbers, 0.2, 0, seed=0, block_size=1, test_fraction=0)
    assert per_slice["validation"] != list(range(min(per_slice["validation"]), min(per_slice["validation"]) + 40))


def test_split_rejects_bad_arguments():
    with pytest.raises(VKDataError, match="val_fraction"):
        split_slices(range(10), val_fraction=1.0)
    with pytest.raises(VKDataError, match="quality_check"):
        split_slices(range(10), quality_check=-1)
    with pytest.raises(VKDataError, match="block_size"):
        split_slices(range(10), block_size=0)
    with pytest.raises(VKDataError, match="test_fraction"):
        split_slices(range(10), test_fraction=1.0)
    with pytest.raises(VKDataError, match="3 slice\\(s\\) cannot give 1 test and 2 quality-check"):
        split_slices(range(3), quality_check=2)
    assert {k: len(v) for k, v in split_slices(range(3), 0.2, 0).items()} == {
        "test": 1,
        "training": 1,
        "validation": 1,
        "quality_check": 0,
    }


# ---------------------------------------------------------------------------------------------------------------
# prepare command
# ---------------------------------------------------------------------------------------------------------------


SPLITS = ("test", "training", "validation", "quality_check")


def expected_labels(index: int) -> np.ndarray:
    """Group label map of phantom ``index`` from the generator's own structure indices (independent of the reader)."""
    case = make_visible_korean_case(SIZE, case_rng(0, index), LEVELS[index % len(LEVELS)])
    group_of_structure = np.array([0] + [GROUP_LABELS[s.group] for s in STRUCTURES], np.uint8)
    return group_of_structure[case.label]


def test_prepare_end_to_end(phantoms, tmp_path):
    out = tmp_path / "prepared"
    args = ("--quality-check", "2", "--block-size", "2", "--seed", "0")
    result = run_prepare(phantoms, out, *args)
    assert result.returncode == 0, result.stderr
    datalist_bytes = (out / "datalist.json").read_bytes()
    datalist = json.loads(datalist_bytes)

    # test round(0.2 x 12) = 2, quality check 2, validation round(0.2 x 8) = 2, training 6
    counts = [datalist[f"num_{k}"] for k in ("test", "training", "validation", "quality_check")]
    assert counts == [len(datalist[k]) for k in ("test", "training", "validation", "quality_check")] == [2, 6, 2, 2]
    assert datalist["test_fraction"] == 0.2
    images = [item["image"] for key in SPLITS for item in datalist[key]]
    assert sorted(images) == [str(phantoms / "images" / f"VK_{i:04d}.png") for i in range(CASES)], "disjoint, complete"
    assert datalist["labels"] == {"0": "background", "1": "bone", "2": "muscle"}
    assert (datalist["seed"], datalist["val_fraction"], datalist["block_size"]) == (0, 0.2, 2)
    assert datalist["dataset_dir"] == str(phantoms.resolve())
    assert datalist["colour_table_sha256"] == hashlib.sha256((phantoms / "colour_table.csv").read_bytes()).hexdigest()

    coding = ColourCoding.from_file(phantoms / "colour_table.csv")
    for key in SPLITS:
        for item in datalist[key]:
            image, label = Path(item["image"]), Path(item["label"])
            assert image.is_absolute() and label.is_absolute() and label.parent == out.resolve() / "labels"
            with Image.open(label) as im:
                assert im.mode == "L"
                written = np.asarray(im)
            index = int(re.search(r"(\d+)$", label.stem).group(1))
            _, seg = read_pair(image, phantoms / "segmentations" / label.name)
            np.testing.assert_array_equal(written, coding(seg))
            np.testing.assert_array_equal(written, expected_labels(index))
            assert set(np.unique(written)) == {0, 1, 2}

    from monai.data import load_decathlon_datalist

    for key in SPLITS:
        loaded = load_decathlon_datalist(out / "datalist.json", data_list_key=key, base_dir=tmp_path / "elsewhere")
        assert loaded == datalist[key], "absolute paths survive any base_dir"

    label_bytes = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    again = run_prepare(phantoms, out, *args)
    assert again.returncode == 0, again.stderr
    assert (out / "datalist.json").read_bytes() == datalist_bytes, "the same arguments give the same datalist"
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == label_bytes
    assert not [p for p in (out / "labels").iterdir() if p.name.startswith(".")], "no temporary files left"

    other_seed = run_prepare(phantoms, tmp_path / "seed1", "--quality-check", "2", "--block-size", "2", "--seed", "1")
    assert other_seed.returncode == 0, other_seed.stderr
    assert json.loads((tmp_path / "seed1" / "datalist.json").read_text())["validation"] != datalist["validation"]


def test_prepare_defaults(phantoms, tmp_path):
    datalist = vk.prepare(phantoms, tmp_path)
    # 12 slices: round(0.2 * 12) = 2 test, 4 quality-check (the default), round(0.2 * 6) = 1 validation, 5 training
    counts = [datalist[f"num_{k}"] for k in ("test", "training", "validation", "quality_check")]
    assert counts == [2, 5, 1, 4]
    assert datalist["block_size"] == 50 and datalist["unknown_colours"] == "error"
    assert json.loads((tmp_path / "datalist.json").read_text()) == datalist


@pytest.fixture
def phantoms_with_unknown_colours(phantoms, tmp_path) -> Path:
    root = tmp_path / "vk_bad"
    shutil.copytree(phantoms, root)
    for name, colour, rows in (("VK_0003", (1, 2, 3), slice(0, 2)), ("VK_0008", (4, 5, 6), slice(0, 1))):
        path = root / "segmentations" / f"{name}.png"
        seg = np.asarray(Image.open(path)).copy()
        seg[rows, :5] = colour
        write_png(path, seg)
    return root


def test_prepare_unknown_colours_stop_and_name_every_file(phantoms_with_unknown_colours, tmp_path):
    root = phantoms_with_unknown_colours
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "datalist.json").write_text("{}")  # an earlier run's datalist must not survive a failed run
    result = run_prepare(root, out)
    assert result.returncode != 0
    assert "segmentations/VK_0003.png" in result.stderr and "(1, 2, 3) x 10 px" in result.stderr
    assert "segmentations/VK_0008.png" in result.stderr and "(4, 5, 6) x 5 px" in result.stderr
    assert "2 of 12 segmentation(s)" in result.stderr and "colour_table.csv" in result.stderr
    assert not (out / "datalist.json").exists()
    assert not [p for p in out.rglob(".*")], "no half-written files"


def test_prepare_unknown_colours_as_background(phantoms_with_unknown_colours, tmp_path):
    root = phantoms_with_unknown_colours
    out = tmp_path / "prepared"
    result = run_prepare(root, out, "--unknown-colours", "background")
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "VK_0003.png" in result.stderr and "VK_0008.png" in result.stderr
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["files_with_unknown_colours"] == ["VK_0003", "VK_0008"]
    assert datalist["unknown_colours"] == "background"
    label = np.asarray(Image.open(out / "labels" / "VK_0003.png"))
    assert not label[:2, :5].any()
    np.testing.assert_array_equal(label[2:], expected_labels(3)[2:])


def test_prepare_reports_every_bad_file_and_missing_folders(phantoms, tmp_path):
    root = tmp_path / "vk_mixed"
    shutil.copytree(phantoms, root)
    write_png(root / "images" / "VK_0001.png", np.zeros((SIZE[0], SIZE[1], 4), np.uint8))  # RGBA photograph
    write_png(root / "segmentations" / "VK_0005.png", np.zeros((10, 10, 3), np.uint8))  # wrong size
    result = run_prepare(root, tmp_path / "out")
    assert result.returncode != 0
    assert "2 problem(s)" in result.stderr
    assert "images/VK_0001.png' has 8-bit RGBA pixels; expected 8-bit RGB" in result.stderr
    assert "segmentations/VK_0005.png' is 10 x 10 (H x W) but its image" in result.stderr
    assert not (tmp_path / "out" / "datalist.json").exists()

    shutil.rmtree(root / "images")
    result = run_prepare(root, tmp_path / "out")
    assert result.returncode != 0 and "has no images/" in result.stderr and "Expected layout" in result.stderr
    result = run_prepare(root / "segmentations", tmp_path / "out")
    assert result.returncode != 0 and "pass the folder that contains images/" in result.stderr
    result = run_prepare(tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode != 0 and "nowhere' does not exist" in result.stderr
    (root / "images").mkdir()
    result = run_prepare(root, tmp_path / "out")
    assert result.returncode != 0 and "12 segmentation(s) without an image" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# MONAI preprocessing chain
# ---------------------------------------------------------------------------------------------------------------


def test_docstring_chain_is_the_config():
    block = re.search(r"transforms\)::\n\n(    \[.*?\n    \])\n", vk_transforms.__doc__, re.DOTALL)
    assert block is not None
    assert json.loads(block.group(1)) == preprocessing_config()


@pytest.fixture(scope="module")
def coded_slices(phantoms, tmp_path_factory) -> list[tuple[Path, Path, np.ndarray]]:
    """Photographs whose grey value encodes the label (50 + 60 * label), at a wide and a tall size: after the chain,
    the photograph still tells where each label should be, so image/label alignment can be measured."""
    out = tmp_path_factory.mktemp("vk_coded")
    labels = expected_labels(1)
    slices = []
    for height, width in (SIZE, (90, 40)):
        label = np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))
        image = write_png(out / f"image_{height}x{width}.png", np.repeat((50 + 60 * label)[..., None], 3, -1))
        slices.append((image, write_png(out / f"label_{height}x{width}.png", label), label))
    return slices


def test_preprocessing_shapes_aspect_labels_and_alignment(coded_slices):
    transform = vk_preprocessing()
    for image_path, label_path, label in coded_slices:
        height, width = label.shape
        d = transform({"image": str(image_path), "label": str(label_path)})
        image, lab = d["image"], d["label"]
        assert tuple(image.shape) == (3, 256, 256) and tuple(lab.shape) == (1, 256, 256)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert set(torch.unique(lab).tolist()) <= {0.0, 1.0, 2.0}
        # PILReader swaps the axes: the first spatial axis is the width; the photograph is non-zero, padding is zero
        content = image[0] > 0
        extent = (int(content.any(1).sum()), int(content.any(0).sum()))
        scale = 256 / max(height, width)
        assert abs(extent[0] - width * scale) <= 1 and abs(extent[1] - height * scale) <= 1, extent
        assert max(extent) == 256
        decoded = torch.round((image[0] * 255 - 50) / 60).clamp(0, 2)
        agreement = (decoded[content] == lab[0][content]).float().mean().item()
        assert agreement > 0.97, agreement


def test_preprocessing_inverts_to_the_original_size(coded_slices, tmp_path):
    from monai.transforms import AsDiscrete, AsDiscreted, Invertd, SaveImaged

    for image_path, label_path, label in coded_slices:
        height, width = label.shape
        for image_only in (False, True):
            transform = vk_preprocessing(label_key=None) if image_only else vk_preprocessing()
            d = transform(
                {"image": str(image_path)} if image_only else {"image": str(image_path), "label": str(label_path)}
            )
            # a perfect network: the one-hot of the preprocessed reference label, as softmax probabilities
            reference = vk_preprocessing()({"image": str(image_path), "label": str(label_path)})["label"]
            d["pred"] = AsDiscrete(to_onehot=3)(reference)
            d = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(d)
            d = AsDiscreted(keys="pred", argmax=True)(d)
            assert tuple(d["pred"].shape) == (1, width, height)
            out_dir = tmp_path / f"pred_{height}x{width}_{image_only}"
            SaveImaged(
                keys="pred",
                output_dir=out_dir,
                output_ext=".png",
                output_dtype=np.uint8,
                output_postfix="seg",
                scale=None,
                resample=False,
                separate_folder=False,
                print_log=False,
            )(d)
            (saved,) = out_dir.iterdir()
            with Image.open(saved) as im:
                prediction = np.asarray(im)
            assert prediction.shape == (height, width), "written back in the photograph's orientation"
            agreement = (prediction == label).mean()
            assert agreement > 0.98, agreement
