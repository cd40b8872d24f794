"""Synthetic BTCV CT phantoms and the BTCV / Synapse dataset constants."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.btcv import (
    BTCV_LABELS,
    BTCV_TRAINING_CASES,
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
    btcv_case_paths,
    normalize_case_id,
)
from common.synthetic import generate_btcv
from common.synthetic._fields import case_rng
from common.synthetic._output import MANIFEST_NAME
from common.synthetic.btcv import CASE_ORDER, make_btcv_case

SIZE = (64, 64, 24)
CASES = 4
AORTA, KIDNEY_R, KIDNEY_L, LIVER, SPLEEN, IVC = 8, 2, 3, 6, 1, 9


@pytest.fixture(scope="module")
def btcv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("btcv")
    generate_btcv(out, cases=CASES, size=SIZE, seed=0, workers=1, verbose=False)
    return out


@pytest.fixture(scope="module")
def phantoms() -> list:
    """Two cases at a size where every organ, adrenals included, is resolved."""
    return [make_btcv_case((96, 96, 32), case_rng(7, k)) for k in (1, 22)]


def _pair(root: Path, cid: str):
    img_path, lab_path = btcv_case_paths(root / "RawData", cid)
    return nib.load(img_path), nib.load(lab_path)


def test_constants():
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[6] == "liver" and BTCV_LABELS[13] == "left adrenal gland"
    assert sorted(BTCV_LABELS) == list(range(14))
    assert len(BTCV_TRAINING_CASES) == 30 and BTCV_TRAINING_CASES[9] == "0010" and BTCV_TRAINING_CASES[10] == "0021"
    assert len(SYNAPSE_TRAIN_CASES) == 18 and len(SYNAPSE_TEST_CASES) == 12
    assert not set(SYNAPSE_TRAIN_CASES) & set(SYNAPSE_TEST_CASES)
    assert sorted(SYNAPSE_TRAIN_CASES + SYNAPSE_TEST_CASES) == list(BTCV_TRAINING_CASES)
    assert SYNAPSE_TEST_CASES[:3] == ("0008", "0022", "0038")  # published order, not sorted


def test_case_paths_and_ids(tmp_path):
    paths = btcv_case_paths(tmp_path / "RawData", 8)
    assert paths.image == tmp_path / "RawData" / "Training" / "img" / "img0008.nii.gz"
    assert paths.label == tmp_path / "RawData" / "Training" / "label" / "label0008.nii.gz"
    assert normalize_case_id("case0022") == normalize_case_id("img0022") == normalize_case_id("22") == "0022"
    for bad in ("0011", "abc", "0041", ""):
        with pytest.raises(ValueError):
            normalize_case_id(bad)


def test_case_order_alternates():
    assert sorted(CASE_ORDER) == list(BTCV_TRAINING_CASES)
    for k in range(0, 24, 2):  # (train, test) pairs while test ids last
        assert CASE_ORDER[k] in SYNAPSE_TRAIN_CASES and CASE_ORDER[k + 1] in SYNAPSE_TEST_CASES
    assert set(CASE_ORDER[24:]) <= set(SYNAPSE_TRAIN_CASES)
    assert list(CASE_ORDER[1::2][:12]) == list(SYNAPSE_TEST_CASES)


def test_layout(btcv):
    ids = json.loads((btcv / MANIFEST_NAME).read_text())["cases"]
    assert ids == list(CASE_ORDER[:CASES])
    assert {ids[0], ids[1]} & set(SYNAPSE_TRAIN_CASES) and {ids[0], ids[1]} & set(SYNAPSE_TEST_CASES)
    training = btcv / "RawData" / "Training"
    assert sorted(p.name for p in (training / "img").iterdir()) == sorted(f"img{c}.nii.gz" for c in ids)
    assert sorted(p.name for p in (training / "label").iterdir()) == sorted(f"label{c}.nii.gz" for c in ids)
    assert set(ids) <= set(BTCV_TRAINING_CASES)


def test_headers_and_spacing(btcv):
    in_plane = []
    for cid in CASE_ORDER[:CASES]:
        img, lab = _pair(btcv, cid)
        assert img.shape == lab.shape == SIZE
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, lab.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        sx, sy, sz = img.header.get_zooms()
        assert sx == pytest.approx(sy)
        assert sz > 1.5 * sx, "slices should be thicker than the in-plane spacing"
        # --size rescales the spacing so the field of view is that of a 512 x 512 x 100 scan.
        assert 0.7 * 512 <= sx * SIZE[0] <= 0.9 * 512 + 1e-3
        assert 2.5 * 100 <= sz * SIZE[2] <= 3.0 * 100 + 1e-3
        in_plane.append(sx)
    assert max(in_plane) - min(in_plane) > 1e-3, "spacing should vary by case"


def test_labels_and_air(btcv):
    for cid in CASE_ORDER[:CASES]:
        img, lab = (np.asanyarray(x.dataobj) for x in _pair(btcv, cid))
        assert set(np.unique(lab).tolist()) <= set(range(14))
        assert len(np.unique(lab)) >= 10
        for corner in (img[0, 0, 0], img[-1, -1, -1], img[0, -1, 0]):
            assert corner == -1000
        assert (lab[img == -1000] == 0).all()


def test_all_organs_present(phantoms):
    for case in phantoms:
        assert set(np.unique(case.label).tolist()) == set(range(14))


def test_hu_ordering(phantoms):
    for case in phantoms:
        mean = {k: float(case.image[case.label == k].mean()) for k in (AORTA, KIDNEY_R, KIDNEY_L, LIVER)}
        fat = float(case.image[case.subcutaneous_fat].mean())
        assert mean[AORTA] > max(mean[KIDNEY_R], mean[KIDNEY_L]) > mean[LIVER] > fat
        assert -150 < fat < -50 and 30 < mean[LIVER] < 90
        assert case.image.max() > 500, "bone should be present"


def _world_centroid(case, label):
    ijk = np.argwhere(case.label == label).mean(axis=0)
    return case.affine @ np.append(ijk, 1.0)


def test_anatomical_sides(phantoms):
    """RAS+ world: +x is the patient's left-to-right axis pointing right, +z superior."""
    for case in phantoms:
        liver, spleen = _world_centroid(case, LIVER), _world_centroid(case, SPLEEN)
        kid_r, kid_l = _world_centroid(case, KIDNEY_R), _world_centroid(case, KIDNEY_L)
        assert liver[0] > spleen[0], "liver must be on the patient's right of the spleen"
        assert kid_r[0] > 0 > kid_l[0]
        assert kid_r[2] < kid_l[2], "right kidney sits lower"
        assert _world_centroid(case, IVC)[0] > _world_centroid(case, AORTA)[0], "IVC right of the aorta"
        assert spleen[1] < liver[1], "spleen is posterior (RAS: smaller y)"
        assert _world_centroid(case, 7)[1] > spleen[1], "stomach is anterior to the spleen"


def test_deterministic_and_prefix_stable(btcv, tmp_path):
    generate_btcv(tmp_path, cases=2, size=SIZE, seed=0, workers=1, verbose=False)
    for cid in CASE_ORDER[:2]:
        for a, b in zip(_pair(btcv, cid), _pair(tmp_path, cid), strict=True):
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
            np.testing.assert_allclose(a.affine, b.affine)


def test_cases_differ(btcv):
    a, b = (np.asanyarray(_pair(btcv, cid)[1].dataobj) for cid in CASE_ORDER[:2])
    assert abs(int((a == LIVER).sum()) - int((b == LIVER).sum())) > 0.02 * (a == LIVER).sum()
