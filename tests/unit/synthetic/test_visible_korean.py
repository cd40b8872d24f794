"""Synthetic Visible Korean slices: layout, colour table, colour coding, group statistics and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.synthetic import generate_visible_korean
from common.synthetic._fields import case_rng
from common.synthetic._output import MANIFEST_NAME
from common.synthetic.visible_korean import (
    LEVELS,
    STRUCTURES,
    colour_table,
    make_visible_korean_case,
    read_colour_table,
)

SIZE = (96, 160)  # H, W
CASES = 4  # one slice per anatomical level


@pytest.fixture(scope="module")
def vk(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vk")
    generate_visible_korean(out, cases=CASES, size=SIZE, seed=0, workers=1, verbose=False)
    return out


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _slices(root: Path):
    for i in range(CASES):
        yield _rgb(root / "images" / f"VK_{i:04d}.png"), _rgb(root / "segmentations" / f"VK_{i:04d}.png")


def _group_maps(seg: np.ndarray, table) -> dict[str, np.ndarray]:
    """Per-group boolean masks of a colour-coded segmentation, via the colour table."""
    code = seg.astype(np.int32) @ np.array([65536, 256, 1])
    out = {}
    for group in ("bone", "muscle", "other"):
        codes = [r * 65536 + g * 256 + b for grp, (r, g, b) in table.values() if grp == group]
        out[group] = np.isin(code, codes)
    return out


def test_layout(vk):
    names = [f"VK_{i:04d}.png" for i in range(CASES)]
    assert sorted(p.name for p in (vk / "images").iterdir()) == names
    assert sorted(p.name for p in (vk / "segmentations").iterdir()) == names
    assert (vk / "colour_table.csv").is_file()
    for photo, seg in _slices(vk):
        assert photo.shape == seg.shape == (*SIZE, 3) and photo.dtype == seg.dtype == np.uint8
    manifest = json.loads((vk / MANIFEST_NAME).read_text())
    assert manifest["cases"] == [n[:-4] for n in names] and manifest["args"]["size"] == list(SIZE)
    assert "colour_table.csv" in manifest["files"]


def test_colour_table(vk):
    header = (vk / "colour_table.csv").read_text().splitlines()[0]
    assert header == "structure,group,red,green,blue"
    table = read_colour_table(vk / "colour_table.csv")
    assert list(table) == [s.name for s in STRUCTURES]
    colours = [rgb for _, rgb in table.values()]
    assert len(set(colours)) == len(colours), "each structure needs its own colour"
    assert (0, 0, 0) not in colours
    groups = [g for g, _ in table.values()]
    assert groups.count("bone") >= 10 and groups.count("muscle") >= 15 and "other" in groups
    for name in table:  # paired structures come in both sides
        if name.endswith("_right"):
            assert name[: -len("_right")] + "_left" in table
    assert {n: rgb for n, (_, rgb) in table.items()} == colour_table(), "the table is fixed across runs"


def test_read_colour_table_rejects_bad_file(tmp_path):
    bad = tmp_path / "colour_table.csv"
    bad.write_text("name,group,r,g,b\nfemur,bone,1,2,3\n")
    with pytest.raises(ValueError, match="colour_table.csv"):
        read_colour_table(bad)
    bad.write_text("structure,group,red,green,blue\nfemur,cartilage,1,2,3\n")
    with pytest.raises(ValueError, match="bad group"):
        read_colour_table(bad)


def test_segmentation_colours_are_in_table(vk):
    table = read_colour_table(vk / "colour_table.csv")
    known = {rgb for _, rgb in table.values()} | {(0, 0, 0)}
    for _, seg in _slices(vk):
        present = {tuple(int(c) for c in rgb) for rgb in np.unique(seg.reshape(-1, 3), axis=0)}
        assert present <= known, present - known
        assert len(present) > 10


def test_groups_present_and_fractions_sane(vk):
    table = read_colour_table(vk / "colour_table.csv")
    for _, seg in _slices(vk):
        groups = _group_maps(seg, table)
        labelled = seg.any(axis=-1)
        bone, muscle = groups["bone"].sum() / labelled.sum(), groups["muscle"].sum() / labelled.sum()
        assert 0.01 < bone < 0.3 and 0.1 < muscle < 0.8, (bone, muscle)
        assert 0.1 < labelled.mean() < 0.8
        assert not (groups["bone"] & groups["muscle"]).any()


def test_background_is_not_black_and_unlabelled(vk):
    for photo, seg in _slices(vk):
        corners = np.stack([photo[0, 0], photo[0, -1], photo[-1, 0], photo[-1, -1]])
        assert corners.mean() > 30, "the frozen-block background is coloured"
        assert corners[:, 2].mean() > corners[:, 0].mean(), "bluish background"
        assert not seg[[0, 0, -1, -1], [0, -1, 0, -1]].any()


def test_photo_separates_bone_and_muscle(vk):
    table = read_colour_table(vk / "colour_table.csv")
    for photo, seg in _slices(vk):
        groups = _group_maps(seg, table)
        bone, muscle = photo[groups["bone"]].mean(0), photo[groups["muscle"]].mean(0)
        assert np.abs(bone - muscle).sum() > 90, (bone, muscle)
        assert bone.sum() > muscle.sum(), "bone is paler than muscle"
        assert muscle[0] > muscle[1] + 40, "muscle is red-brown"


def test_many_structures_and_sides_at_moderate_size():
    seen = set()
    for k, level in enumerate(LEVELS):
        case = make_visible_korean_case((192, 320), case_rng(1, k), level)
        seen |= {STRUCTURES[i - 1] for i in np.unique(case.label) if i}
        if level == "thigh":
            cols = {
                side: np.nonzero(case.label == 1 + [s.name for s in STRUCTURES].index(f"femur_{side}"))[1]
                for side in ("right", "left")
            }
            assert cols["right"].mean() < cols["left"].mean(), "patient right is on the image left"
    assert sum(s.group == "bone" for s in seen) >= 10
    assert sum(s.group == "muscle" for s in seen) >= 15
    assert sum(s.group == "other" for s in seen) >= 5


def test_deterministic_and_varies(vk, tmp_path):
    generate_visible_korean(tmp_path, cases=2, size=SIZE, seed=0, workers=1, verbose=False)
    for i in range(2):
        for folder in ("images", "segmentations"):
            name = f"VK_{i:04d}.png"
            np.testing.assert_array_equal(_rgb(vk / folder / name), _rgb(tmp_path / folder / name))
    assert (vk / "colour_table.csv").read_bytes() == (tmp_path / "colour_table.csv").read_bytes()
    a = make_visible_korean_case(SIZE, case_rng(0, 0), "thigh")
    b = make_visible_korean_case(SIZE, case_rng(0, 4), "thigh")
    assert not np.array_equal(a.label, b.label), "pose and shapes vary between slices of one level"
