"""Synthetic BraTS phantoms: layout, headers, labels, nesting, contrasts, determinism and the manifest protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from common.synthetic import generate_brats
from common.synthetic._fields import case_rng
from common.synthetic._output import MANIFEST_NAME
from common.synthetic.brats import Tissue, brats_affine, make_brats_case
from tests.helpers import REPO_ROOT

SIZE = (48, 48, 32)
CASES = 3
MOD_2021 = ("t1", "t1ce", "t2", "flair")
MOD_2023 = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def brats2021(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brats2021")
    generate_brats(out, cases=CASES, size=SIZE, seed=0, workers=1, verbose=False)
    return out


@pytest.fixture(scope="module")
def brats2023(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brats2023")
    generate_brats(out, cases=2, size=SIZE, seed=0, convention="2023", workers=1, verbose=False)
    return out


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _case_2021(root: Path, index: int) -> dict[str, np.ndarray]:
    cid = f"BraTS2021_{index:05d}"
    return {m: _load(root / cid / f"{cid}_{m}.nii.gz") for m in (*MOD_2021, "seg")}


def test_layout_2021(brats2021):
    ids = [f"BraTS2021_{i:05d}" for i in range(CASES)]
    assert sorted(p.name for p in brats2021.iterdir() if p.is_dir()) == ids
    for cid in ids:
        expected = {f"{cid}_{m}.nii.gz" for m in (*MOD_2021, "seg")}
        assert {p.name for p in (brats2021 / cid).iterdir()} == expected
    assert not [p for p in brats2021.rglob(".*")], "temporary files left behind"


def test_layout_and_labels_2023(brats2023):
    ids = ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert sorted(p.name for p in brats2023.iterdir() if p.is_dir()) == ids
    for cid in ids:
        assert {p.name for p in (brats2023 / cid).iterdir()} == {f"{cid}-{m}.nii.gz" for m in (*MOD_2023, "seg")}
        seg = _load(brats2023 / cid / f"{cid}-seg.nii.gz")
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}


def test_2023_is_2021_relabelled(brats2021, brats2023):
    """Both conventions draw the same phantom; only names and the ET id differ."""
    seg21 = _case_2021(brats2021, 0)["seg"]
    seg23 = _load(brats2023 / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz")
    np.testing.assert_array_equal(np.where(seg21 == 4, 3, seg21), seg23)
    t1c = _load(brats2023 / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz")
    np.testing.assert_array_equal(t1c, _case_2021(brats2021, 0)["t1ce"])


def test_headers(brats2021):
    cid = "BraTS2021_00001"
    imgs = {m: nib.load(brats2021 / cid / f"{cid}_{m}.nii.gz") for m in (*MOD_2021, "seg")}
    for m, img in imgs.items():
        assert img.shape == SIZE
        assert img.get_data_dtype() == (np.uint8 if m == "seg" else np.int16)
        np.testing.assert_allclose(img.affine, brats_affine(SIZE))
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.header.get_qform(), img.header.get_sform())
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert img.header.get_zooms() == (1.0, 1.0, 1.0)
    assert brats_affine((240, 240, 155))[1, 3] == 239


def test_labels_and_skull_stripping(brats2021):
    for i in range(CASES):
        case = _case_2021(brats2021, i)
        seg = case["seg"]
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}, f"case {i}"
        brain = case["t1"] > 0
        for m in MOD_2021:  # one brain mask for all modalities, background exactly 0
            np.testing.assert_array_equal(case[m] > 0, brain)
        assert brain.mean() > 0.05
        assert not (seg[~brain] > 0).any(), "tumour outside the brain"


def test_edema_surrounds_core(brats2021):
    for i in range(CASES):
        seg = _case_2021(brats2021, i)["seg"]
        core = (seg == 1) | (seg == 4)
        whole = seg > 0
        grown = ndimage.binary_dilation(core)  # 6-connected, one voxel
        assert core.any()
        assert not (grown & ~whole).any(), f"case {i}: tumour core touches non-tumour tissue"
        assert (seg == 2).sum() > core.sum() * 0.5


def _region_ratio(img, seg, label, normal):
    return float(img[seg == label].mean() / img[normal].mean())


def test_contrasts(brats2021):
    for i in range(CASES):
        c = _case_2021(brats2021, i)
        seg = c["seg"]
        normal = (c["t1"] > 0) & (seg == 0)
        ratio = {m: {lab: _region_ratio(c[m], seg, lab, normal) for lab in (1, 2, 4)} for m in MOD_2021}
        ed, et, ncr = 2, 4, 1
        assert ratio["flair"][ed] >= 1.4, ratio
        assert ratio["t2"][ed] >= 1.3, ratio
        assert abs(ratio["t1ce"][ed] - 1.0) <= 0.15, ratio  # faint in T1ce: the KD student's blind spot
        assert ratio["t1ce"][et] >= 1.4, ratio
        for m in ("t1", "t2", "flair"):  # enhancement is a T1ce-only feature
            assert ratio[m][et] < ratio["t1ce"][et] - 0.3, (m, ratio)
            assert ratio[m][et] < 1.4, (m, ratio)
        assert ratio["t2"][et] < ratio["t2"][ed] and ratio["flair"][et] < ratio["flair"][ed]
        assert ratio["t1"][ncr] < 0.8 and ratio["t1ce"][ncr] < 0.8, ratio


def test_csf_contrast():
    case = make_brats_case(SIZE, case_rng(3, 0))
    brain = case.images["t1"] > 0
    normal = brain & np.isin(case.tissue, Tissue.NORMAL)
    csf = case.tissue == Tissue.CSF
    assert csf.sum() > 20
    for mod, check in (("flair", lambda r: r < 0.6), ("t2", lambda r: r > 1.4), ("t1", lambda r: r < 0.6)):
        img = case.images[mod]
        r = img[csf].mean() / img[normal].mean()
        assert check(r), (mod, r)
    white, grey = case.tissue == Tissue.WHITE, case.tissue == Tissue.GREY
    assert case.images["t1"][white].mean() > case.images["t1"][grey].mean()
    assert case.images["t2"][white].mean() < case.images["t2"][grey].mean()


def test_global_gain_varies(brats2021):
    means = [float(_case_2021(brats2021, i)["flair"][_case_2021(brats2021, i)["flair"] > 0].mean()) for i in range(3)]
    assert max(means) / min(means) > 1.2, means


def test_cases_differ(brats2021):
    a, b = _case_2021(brats2021, 0)["seg"], _case_2021(brats2021, 1)["seg"]
    ca, cb = ndimage.center_of_mass(a > 0), ndimage.center_of_mass(b > 0)
    moved = np.linalg.norm(np.subtract(ca, cb)) > 2.0
    resized = abs(int((a > 0).sum()) - int((b > 0).sum())) > 0.1 * (a > 0).sum()
    assert moved or resized
    assert not np.array_equal(_case_2021(brats2021, 0)["t1"], _case_2021(brats2021, 1)["t1"])


def test_deterministic_and_prefix_stable(brats2021, tmp_path):
    # A second run with fewer cases, in parallel workers, reproduces the first cases exactly.
    generate_brats(tmp_path, cases=2, size=SIZE, seed=0, workers=2, verbose=False)
    for i in range(2):
        a, b = _case_2021(brats2021, i), _case_2021(tmp_path, i)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_seed_changes_content(brats2021, tmp_path):
    generate_brats(tmp_path, cases=1, size=SIZE, seed=1, workers=1, verbose=False)
    assert not np.array_equal(_case_2021(brats2021, 0)["t2"], _case_2021(tmp_path, 0)["t2"])


def test_manifest(brats2021):
    manifest = json.loads((brats2021 / MANIFEST_NAME).read_text())
    assert manifest["generator"] == "common.synthetic.brats"
    assert manifest["args"] == {"cases": CASES, "size": list(SIZE), "seed": 0, "convention": "2021"}
    assert manifest["cases"] == [f"BraTS2021_{i:05d}" for i in range(CASES)]
    assert isinstance(manifest["format_version"], int)
    assert len(manifest["files"]) == 5 * CASES and all((brats2021 / f).is_file() for f in manifest["files"])


def test_idempotent_then_regenerates(tmp_path, capsys):
    generate_brats(tmp_path, cases=2, size=(32, 32, 24), seed=0, workers=1)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    capsys.readouterr()
    assert generate_brats(tmp_path, cases=2, size=(32, 32, 24), seed=0, workers=1) == [
        "BraTS2021_00000", "BraTS2021_00001"]  # fmt: skip
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    # Different arguments: regenerate, and drop the case the new manifest no longer lists.
    generate_brats(tmp_path, cases=1, size=(32, 32, 24), seed=5, workers=1, verbose=False)
    assert not (tmp_path / "BraTS2021_00001").exists()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["args"]["seed"] == 5 and manifest["cases"] == ["BraTS2021_00000"]

    # A missing file makes the dataset incomplete, so the next call rebuilds it.
    victim = tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    victim.unlink()
    generate_brats(tmp_path, cases=1, size=(32, 32, 24), seed=5, workers=1, verbose=False)
    assert victim.is_file()


def test_cli(tmp_path):
    cmd = [sys.executable, "-m", "common.synthetic", "brats", "--out", str(tmp_path), "--cases", "1",
           "--size", "32", "32", "24", "--seed", "2", "--convention", "2023", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "BraTS-GLI-00000-000" in result.stdout
    assert (tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz").is_file()
    bad = subprocess.run(
        [*cmd[:6], "--seed", "-1"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0 and "non-negative" in bad.stderr
