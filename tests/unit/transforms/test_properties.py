"""Property-based tests (hypothesis) of every bundle's label conversions and transforms, and of the phantom generators.

The example-based tests in ``tests/unit/data``, ``tests/unit/synthetic`` and ``tests/unit/networks/test_refnet.py``
pin documented behaviour on hand-made inputs and fixed seeds. The properties here state the
same contracts for *any* input of a class, on tiny random arrays: what a conversion must preserve (shape, type, dtype,
label set), which round trips hold, and that bad input is reported with the module's own error. They deliberately do
not repeat the properties those files already draw at random (the BraTS ``brats2021 <-> index`` and consistent-region
round trips, the fixed-table colour conversion, and the corruptions' output label set on box phantoms).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from monai.data import MetaTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses
from PIL import Image
from scipy import ndimage

from common.data.brats import (
    LABEL_CONVENTIONS,
    BratsDataError,
    BratsLabelError,
    CheckBratsLabelsd,
    ConvertBratsLabels,
    check_brats_labels,
    convert_brats_labels,
    regions_to_brats_labels,
)
from common.data.btcv import BTCVDataError, BTCVToSynapse12d, btcv_to_synapse12
from common.data.visible_korean import (
    COLOUR_TABLE_COLUMNS,
    GROUP_LABELS,
    GROUPS,
    ColourCoding,
    ColourTableEntry,
    UnknownColoursError,
    VKDataError,
    read_colour_table,
)
from common.synthetic._fields import case_rng
from common.synthetic.brats import Tissue, make_brats_case
from common.synthetic.btcv import AIR_HU, make_btcv_case
from common.synthetic.visible_korean import LEVELS, STRUCTURES, colour_table, make_visible_korean_case
from common.transforms.overlay import SaveOverlayd, blend_overlay
from common.transforms.refinement import (
    AddNeighbouringSlicesd,
    RandDropSlicesd,
    RandLabelErosionDilationd,
    RandLabelSwapd,
)

AFFINE = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
CONTAINERS = ("numpy", "tensor", "metatensor")
SEEDS = st.integers(0, 2**31 - 1)
SMALL = {"max_examples": 40, "deadline": None}
TINY = {"max_examples": 12, "deadline": None}


def wrap(array: np.ndarray, container: str):
    """``array`` as a numpy array, a tensor or a MetaTensor with an affine and a file name."""
    if container == "numpy":
        return array
    tensor = torch.as_tensor(array.copy())
    if container == "tensor":
        return tensor
    meta = MetaTensor(tensor, affine=AFFINE)
    meta.meta["filename_or_obj"] = "case_seg.nii.gz"
    return meta


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_same_container(out, inp) -> None:
    assert type(out) is type(inp), (type(out), type(inp))
    assert tuple(out.shape) == tuple(inp.shape) and out.dtype == inp.dtype
    if isinstance(inp, MetaTensor):
        torch.testing.assert_close(out.affine, inp.affine)
        assert out.meta["filename_or_obj"] == inp.meta["filename_or_obj"]


def value_set(x) -> set[float]:
    return set(np.unique(as_numpy(x)).tolist())


# ---------------------------------------------------------------------------------------------------------------
# BraTS label conventions (common.data.brats)
# ---------------------------------------------------------------------------------------------------------------

CONVENTION_NAMES = sorted(LABEL_CONVENTIONS)  # brats2021 {0,1,2,4}, brats2023 {0,1,2,3}, index {0,1,2,3}
LABEL_DTYPES = (np.uint8, np.int16, np.float32)


def label_map(draw, values, dtype) -> np.ndarray:
    return draw(arrays(dtype, array_shapes(min_dims=1, max_dims=3, max_side=4), elements=st.sampled_from(values)))


@settings(**SMALL)
@given(
    data=st.data(),
    chain=st.tuples(*[st.sampled_from(CONVENTION_NAMES)] * 3),
    container=st.sampled_from(CONTAINERS),
    dtype=st.sampled_from(LABEL_DTYPES),
)
def test_brats_conversion_between_any_conventions_keeps_everything_but_the_et_value(data, chain, container, dtype):
    """For every (source, target): only ET voxels change value, ET maps onto ET, the container is kept, the input is
    not modified, converting back is the identity and converting in two steps equals converting in one."""
    source, target, third = chain
    label = label_map(data.draw, LABEL_CONVENTIONS[source], dtype)
    original = label.copy()
    x = wrap(label, container)
    out = convert_brats_labels(x, source, target)
    assert_same_container(out, x)
    values = as_numpy(out)
    assert value_set(values) <= set(LABEL_CONVENTIONS[target])
    src_et, dst_et = LABEL_CONVENTIONS[source][3], LABEL_CONVENTIONS[target][3]
    np.testing.assert_array_equal(values == dst_et, original == src_et)
    np.testing.assert_array_equal(values[original != src_et], original[original != src_et])
    np.testing.assert_array_equal(as_numpy(x), original)
    np.testing.assert_array_equal(as_numpy(convert_brats_labels(out, target, source)), original)
    two_steps = convert_brats_labels(out, target, third)
    np.testing.assert_array_equal(as_numpy(two_steps), as_numpy(convert_brats_labels(x, source, third)))
    np.testing.assert_array_equal(as_numpy(ConvertBratsLabels(source, target)(x)), values)


@settings(**SMALL)
@given(data=st.data(), source=st.sampled_from(CONVENTION_NAMES), checked=st.sampled_from(CONVENTION_NAMES))
def test_brats_check_accepts_exactly_the_conventions_values_and_names_the_one_that_fits(data, source, checked):
    """A label map of one convention passes the check of another iff it holds no value outside that one; otherwise
    BratsLabelError names the file and the unexpected values, and hints at the convention they fit."""
    label = label_map(data.draw, LABEL_CONVENTIONS[source], np.float32)
    found = value_set(label)
    unexpected = sorted(found - set(LABEL_CONVENTIONS[checked]))
    lab = wrap(label, "metatensor")
    if not unexpected:
        check_brats_labels(lab, checked)
        assert CheckBratsLabelsd("label", checked)({"label": lab})["label"] is lab
        return
    with pytest.raises(BratsLabelError) as info:
        check_brats_labels(lab, checked)
    message = str(info.value)
    assert "'case_seg.nii.gz'" in message
    assert f"unexpected: [{', '.join(str(int(v)) for v in unexpected)}]" in message
    assert "The values fit the brats20" in message  # the dataset convention the values do fit


@settings(**SMALL)
@given(
    data=st.data(),
    source=st.sampled_from(CONVENTION_NAMES),
    target=st.sampled_from(CONVENTION_NAMES),
    bad=st.sampled_from([-1, 5, 7, 255]) | st.sampled_from([0.5, 2.5, 3.75]),  # exact in float32
)
def test_brats_conversion_rejects_any_value_outside_the_source_convention(data, source, target, bad):
    label = label_map(data.draw, LABEL_CONVENTIONS[source], np.float32)
    where = data.draw(st.tuples(*[st.integers(0, n - 1) for n in label.shape]))
    label[where] = bad
    with pytest.raises(BratsLabelError, match=rf"'x\.nii' holds values .*unexpected: \[{bad!r}\]"):
        convert_brats_labels(label, source, target, name="x.nii")


@settings(**SMALL)
@given(
    data=st.data(),
    et_label=st.sampled_from((3, 4)),
    probabilities=st.booleans(),
    container=st.sampled_from(CONTAINERS),
)
def test_brats_regions_to_labels_for_any_regions_follows_the_painting_rule(data, et_label, probabilities, container):
    """Any TC/WT/ET stack, consistent or not, bool or probabilities: ET wins, then TC (1), then WT (2); MONAI's
    forward conversion of the result is the stack made consistent (TC |= ET, WT |= TC), and converting again gives
    the same label map."""
    spatial = data.draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    if probabilities:
        regions = data.draw(arrays(np.float32, (3, *spatial), elements=st.floats(0, 1, width=32)))
        inside = regions > 0.5
    else:
        regions = inside = data.draw(arrays(np.bool_, (3, *spatial)))
    tc, wt, et = inside
    out = regions_to_brats_labels(wrap(regions, container), et_label=et_label)
    assert type(out) is type(wrap(regions, container)) and tuple(out.shape) == (1, *spatial)
    labels = as_numpy(out)
    assert value_set(labels) <= {0, 1, 2, et_label}
    np.testing.assert_array_equal(labels[0], np.select([et, tc, wt], [et_label, 1, 2], 0))
    forward = as_numpy(ConvertToMultiChannelBasedOnBratsClasses(et_label=et_label)(labels[0]))
    np.testing.assert_array_equal(forward, np.stack([tc | et, wt | tc | et, et]))
    np.testing.assert_array_equal(as_numpy(regions_to_brats_labels(forward, et_label=et_label)), labels)


@settings(**SMALL)
@given(
    spatial=array_shapes(min_dims=1, max_dims=3, max_side=3),
    channels=st.sampled_from((1, 2, 4, 5)),
    et_label=st.sampled_from((0, 1, 2)),
    wrong=st.sampled_from(("channels", "et_label", "both")),
)
def test_brats_regions_to_labels_rejects_wrong_channels_and_et_labels(spatial, channels, et_label, wrong):
    """Anything but ``(3, *spatial)`` regions, and an ET label of background, NCR or ED, raise BratsDataError."""
    regions = np.zeros((3 if wrong == "et_label" else channels, *spatial), np.float32)
    et = 4 if wrong == "channels" else et_label
    shape_message, et_message = r"got \(\d+(, \d+)*\); apply per item", r"et_label must not be 0, 1 or 2"
    expected = {"channels": shape_message, "et_label": et_message, "both": f"{shape_message}|{et_message}"}[wrong]
    with pytest.raises(BratsDataError, match=expected):
        regions_to_brats_labels(regions, et)
    assert regions_to_brats_labels(np.zeros((3, *spatial), np.float32), 3).shape == (1, *spatial)


# ---------------------------------------------------------------------------------------------------------------
# BTCV -> Synapse 12-organ convention (common.data.btcv)
# ---------------------------------------------------------------------------------------------------------------


@settings(**SMALL)
@given(
    label=arrays(
        st.sampled_from(LABEL_DTYPES), array_shapes(min_dims=1, max_dims=4, max_side=4), elements=st.integers(0, 13)
    ),
    container=st.sampled_from(CONTAINERS),
)
def test_btcv_to_synapse12_merges_only_the_left_adrenal_and_keeps_the_container(label, container):
    """Ids 0..12 stay where they are, 13 becomes 12 (so 12 counts both adrenals), nothing else changes; type, dtype,
    shape and meta data are kept, the input is not modified, the mapping is idempotent, and the dict transform
    maps every key alike and leaves other keys alone."""
    original = label.copy()
    x = wrap(label, container)
    out = btcv_to_synapse12(x)
    assert_same_container(out, x)
    values = as_numpy(out)
    assert value_set(values) <= set(range(13))
    np.testing.assert_array_equal(values, np.where(original == 13, 12, original))
    assert (values == 12).sum() == (original == 12).sum() + (original == 13).sum()
    np.testing.assert_array_equal(as_numpy(x), original)
    np.testing.assert_array_equal(as_numpy(btcv_to_synapse12(out)), values)
    other = wrap(original[::-1].copy(), container)
    d = BTCVToSynapse12d(["label", "pred"])({"label": x, "pred": other, "image": "ct.nii.gz"})
    assert d["image"] == "ct.nii.gz"
    np.testing.assert_array_equal(as_numpy(d["label"]), values)
    np.testing.assert_array_equal(as_numpy(d["pred"]), np.where(original[::-1] == 13, 12, original[::-1]))


@settings(**SMALL)
@given(
    ids=arrays(np.int64, array_shapes(max_dims=3, max_side=4), elements=st.integers(0, 13)),
    seed=SEEDS,
    container=st.sampled_from(CONTAINERS),
)
def test_btcv_to_synapse12_maps_every_value_it_accepts_as_13(ids, seed, container):
    """Float ids within the check's tolerance (1e-3, e.g. after a float round trip) are accepted, so one that reads
    as 13 must become 12 like an exact 13; every other value passes unchanged."""
    jitter = np.random.default_rng(seed).choice(np.array([0.0, -5e-4, 5e-4], np.float32), ids.shape)
    label = np.clip(ids.astype(np.float32) + jitter, 0, 13).astype(np.float32)
    out = as_numpy(btcv_to_synapse12(wrap(label, container)))
    np.testing.assert_array_equal(out, np.where(ids == 13, np.float32(12), label))


@settings(**SMALL)
@given(
    data=st.data(),
    bad=st.integers(-300, -1) | st.integers(14, 300) | st.integers(0, 13).map(lambda v: v + 0.25),
    dtype=st.sampled_from((np.int16, np.float32)),
)
def test_btcv_to_synapse12_names_the_map_for_any_value_that_is_not_a_btcv_id(data, bad, dtype):
    if dtype == np.int16 and not float(bad).is_integer():
        dtype = np.float32
    label = data.draw(arrays(dtype, array_shapes(max_dims=3, max_side=4), elements=st.integers(0, 13)))
    label[data.draw(st.tuples(*[st.integers(0, n - 1) for n in label.shape]))] = bad
    with pytest.raises(BTCVDataError, match=r"'label0008\.nii\.gz' holds values .*integer organ ids 0\.\.13"):
        btcv_to_synapse12(label, name="label0008.nii.gz")
    with pytest.raises(BTCVDataError, match=r"data\['label'\]"):
        BTCVToSynapse12d("label")({"label": label})


# ---------------------------------------------------------------------------------------------------------------
# Visible Korean colour table and colour -> label conversion (common.data.visible_korean)
# ---------------------------------------------------------------------------------------------------------------

CHANNEL = st.integers(0, 255)
# Any printable text, Korean included; the reader strips cells, so names are drawn stripped and non-empty.
NAMES = (
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=10)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def colour_tables(draw, min_size: int = 1, max_size: int = 6) -> dict[str, ColourTableEntry]:
    """Valid tables with at least one bone and one muscle structure: unique names and colours, never black."""
    names = draw(st.lists(NAMES, min_size=max(min_size, 2), max_size=max_size, unique=True))
    colours = draw(
        st.lists(
            st.tuples(CHANNEL, CHANNEL, CHANNEL).filter(lambda c: c != (0, 0, 0)),
            min_size=len(names),
            max_size=len(names),
            unique=True,
        )
    )
    others = draw(st.lists(st.sampled_from(GROUPS), min_size=len(names) - 2, max_size=len(names) - 2))
    groups = draw(st.permutations(["bone", "muscle", *others]))
    return {name: ColourTableEntry(group, rgb) for name, group, rgb in zip(names, groups, colours, strict=True)}


def write_table(
    path: Path, rows: list[list[str]], columns: tuple[str, ...], bom: bool = False, newline: str = "\n"
) -> Path:
    """A colour-table CSV with the columns in the given order; ``rows`` are ``[structure, group, r, g, b, note]``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(columns)
    position = {c: i for i, c in enumerate((*COLOUR_TABLE_COLUMNS, "note"))}
    for row in rows:
        writer.writerow([row[position[c]] for c in columns])
    path.write_text(buffer.getvalue(), encoding="utf-8-sig" if bom else "utf-8", newline="")
    return path


def table_rows(table: dict[str, ColourTableEntry]) -> list[list[str]]:
    return [[name, group, *(str(c) for c in rgb), "비고, note"] for name, (group, rgb) in table.items()]


@settings(**SMALL)
@given(
    table=colour_tables(),
    columns=st.permutations((*COLOUR_TABLE_COLUMNS, "note")),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    data=st.data(),
)
def test_vk_colour_table_round_trip_and_group_labels(table, columns, bom, newline, data):
    """Any valid table written as CSV (any column order, an extra column, BOM, quoting of odd names) reads back as
    the same table in file order; a mask painted with its colours decodes to its structures' group labels, and a
    {0, 1, 2} label map painted with any colour of the matching group decodes back to itself."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(Path(tmp) / "colour_table.csv", table_rows(table), tuple(columns), bom, newline)
        read = read_colour_table(path)
        coding = ColourCoding.from_file(path)
    assert read == table and list(read) == list(table)

    shape = data.draw(st.tuples(st.integers(1, 6), st.integers(1, 6)))
    palette = np.array([(0, 0, 0)] + [rgb for _, rgb in table.values()], np.uint8)
    group_of = np.array([0] + [GROUP_LABELS[group] for group, _ in table.values()], np.uint8)
    index = data.draw(arrays(np.int64, shape, elements=st.integers(0, len(table))))
    labels, unknown = coding.decode(palette[index])
    assert unknown == [] and labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, group_of[index])

    target = data.draw(arrays(np.uint8, shape, elements=st.integers(0, 2)))
    choices = [np.flatnonzero(group_of == value) for value in range(3)]  # 0: black or an "other" structure
    pick = data.draw(arrays(np.int64, shape, elements=st.integers(0, 2**16)))
    painted = np.zeros(shape, np.int64)
    for value in range(3):
        where = target == value
        painted[where] = choices[value][pick[where] % choices[value].size]
    np.testing.assert_array_equal(coding(palette[painted]), target)


@settings(**SMALL)
@given(
    table=colour_tables(),
    data=st.data(),
    unknown_rgb=st.tuples(CHANNEL, CHANNEL, CHANNEL).filter(lambda c: c != (0, 0, 0)),
)
def test_vk_unknown_colour_is_reported_with_its_pixel_count(table, data, unknown_rgb):
    """A colour in no row raises UnknownColoursError naming the file, the colour and its pixel count; as background
    it becomes 0 and every other pixel keeps its group label."""
    if unknown_rgb in {rgb for _, rgb in table.values()}:
        return
    coding = ColourCoding(table)
    palette = np.array([(0, 0, 0)] + [rgb for _, rgb in table.values()], np.uint8)
    group_of = np.array([0] + [GROUP_LABELS[group] for group, _ in table.values()], np.uint8)
    shape = data.draw(st.tuples(st.integers(1, 6), st.integers(1, 6)))
    index = data.draw(arrays(np.int64, shape, elements=st.integers(0, len(table))))
    stray = data.draw(arrays(np.bool_, shape))
    stray[data.draw(st.tuples(st.integers(0, shape[0] - 1), st.integers(0, shape[1] - 1)))] = True
    segmentation = palette[index]
    segmentation[stray] = unknown_rgb
    with pytest.raises(UnknownColoursError) as info:
        coding(segmentation, name="segmentations/VK_0042.png")
    assert info.value.colours == [(unknown_rgb, int(stray.sum()))]
    assert "segmentations/VK_0042.png" in str(info.value) and f"{unknown_rgb} x {int(stray.sum())} px" in str(
        info.value
    )
    labels = coding(segmentation, unknown="background")
    np.testing.assert_array_equal(labels, np.where(stray, 0, group_of[index]))


DEFECTS = ("black", "group", "range", "empty_name", "duplicate_colour", "duplicate_name")


@settings(**SMALL)
@given(table=colour_tables(min_size=3), defect=st.sampled_from(DEFECTS), data=st.data())
def test_vk_colour_table_reports_a_bad_row_with_its_row_number(table, defect, data):
    """One defect in any row of a valid table is reported as the only problem, with the file and its row number
    (the header is row 1)."""
    rows = table_rows(table)
    row = data.draw(st.integers(1 if defect.startswith("duplicate") else 0, len(rows) - 1))
    if defect == "black":
        rows[row][2:5] = ["0", "0", "0"]
    elif defect == "group":
        rows[row][1] = "tendon"
    elif defect == "range":
        rows[row][2] = "256"
    elif defect == "empty_name":
        rows[row][0] = " "
    elif defect == "duplicate_colour":
        rows[row][2:5] = rows[data.draw(st.integers(0, row - 1))][2:5]
    else:
        rows[row][0] = rows[data.draw(st.integers(0, row - 1))][0]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(Path(tmp) / "colour_table.csv", rows, (*COLOUR_TABLE_COLUMNS, "note"))
        with pytest.raises(VKDataError) as info:
            read_colour_table(path)
    message = str(info.value)
    assert f"Colour table '{path}' has 1 bad row(s)" in message
    assert f"\n  row {row + 2} (" in message


# ---------------------------------------------------------------------------------------------------------------
# RefNet training transforms (common.transforms.refinement)
# ---------------------------------------------------------------------------------------------------------------

NUM_CLASSES = 13


@st.composite
def organ_maps(draw, max_depth: int = 4, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``(1, H, W)`` or ``(1, H, W, D)`` float32 maps of a few organ ids: a solid organ with a few holes, or any
    mix (hypothesis draws blobs of repeated values and speckle)."""
    organs = draw(st.lists(st.integers(1, num_classes - 1), min_size=1, max_size=3, unique=True))
    spatial = draw(
        st.tuples(st.integers(1, 7), st.integers(1, 7))
        | st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, max_depth))
    )
    if draw(st.booleans()):  # a solid organ with a few holes or foreign voxels: boundaries in every direction
        volume = np.full((1, *spatial), organs[0], np.float32)
        for _ in range(draw(st.integers(1, 3))):
            where = draw(st.tuples(*[st.integers(0, n - 1) for n in spatial]))
            volume[(0, *where)] = draw(st.sampled_from([0, *organs[1:]]))
        return volume
    return draw(arrays(np.float32, (1, *spatial), elements=st.sampled_from([0, *organs])))


def corrupt(transform, labels):
    return transform({"label": labels})["label"]


def distances_to(volume: np.ndarray, value: int) -> np.ndarray:
    """Euclidean distance (voxels) of every voxel to the nearest voxel holding ``value``."""
    return ndimage.distance_transform_edt(volume != value)


@settings(**SMALL)
@given(labels=organ_maps(), container=st.sampled_from(CONTAINERS), kind=st.integers(0, 3), seed=SEEDS)
def test_refinement_corruptions_with_prob_zero_return_the_input_itself(labels, container, kind, seed):
    transform = [
        RandLabelErosionDilationd("label", prob=0.0, radius=(1, 3)),
        RandLabelSwapd("label", prob=0.0, mode="exchange", num_swaps=(1, 3)),
        RandDropSlicesd("label", prob=0.0, mode="neighbour", spatial_axis=0),
        RandDropSlicesd("label", prob=0.0),
    ][kind].set_random_state(seed)
    x = wrap(labels, container)
    out = transform({"label": x, "image": "ct"})
    assert out["label"] is x and out["image"] == "ct"


@settings(**SMALL)
@given(labels=organ_maps(), radius=st.integers(1, 3), seed=SEEDS, container=st.sampled_from(CONTAINERS))
def test_erosion_of_every_organ_clears_exactly_the_voxels_within_radius_of_another_id(labels, radius, seed, container):
    """organ_prob=1, dilation_prob=0, one radius r: a voxel of organ o becomes background iff a voxel of another id
    lies within distance r inside the volume (the field of view's border does not erode); nothing else changes."""
    x = wrap(labels, container)
    transform = RandLabelErosionDilationd("label", prob=1.0, organ_prob=1.0, dilation_prob=0.0, radius=radius)
    out = corrupt(transform.set_random_state(seed), x)
    assert_same_container(out, x)
    volume, expected = labels[0], labels[0].copy()
    for organ in np.unique(volume[volume > 0]):
        mask = volume == organ
        if not mask.all():
            expected[mask & (ndimage.distance_transform_edt(mask) <= radius)] = 0
    np.testing.assert_array_equal(as_numpy(out)[0], expected)


@settings(**SMALL)
@given(labels=organ_maps(), radius=st.integers(1, 3), seed=SEEDS)
def test_dilation_of_every_organ_only_fills_background_within_radius(labels, radius, seed):
    """organ_prob=1, dilation_prob=1: no organ voxel changes (every organ is protected), and a background voxel
    takes the id of one of the organs within distance r, or stays background when none is that close."""
    transform = RandLabelErosionDilationd("label", prob=1.0, organ_prob=1.0, dilation_prob=1.0, radius=radius)
    out = corrupt(transform.set_random_state(seed), labels)[0]
    volume = labels[0]
    np.testing.assert_array_equal(out[volume > 0], volume[volume > 0])
    organs = np.unique(volume[volume > 0])
    near = {int(o): distances_to(volume, o) <= radius for o in organs}
    background = volume == 0
    for o, close in near.items():
        assert np.all(~(background & (out == o)) | close), f"organ {o} grew beyond radius {radius}"
    reachable = np.zeros_like(background) if not near else np.any(list(near.values()), axis=0)
    np.testing.assert_array_equal(out[background] == 0, ~reachable[background])


@settings(**SMALL)
@given(
    data=st.data(),
    num_classes=st.sampled_from((3, 4, NUM_CLASSES)),  # few classes: the wrong id is often present too
    mode=st.sampled_from(("component", "organ", "exchange")),
    swaps=st.integers(1, 3),
    seed=SEEDS,
)
def test_label_swaps_keep_the_foreground_and_relabel_consistently(data, num_classes, mode, swaps, seed):
    """No swap mode moves the foreground mask or assigns background; "organ" maps every input id to one output id
    (a function of the input id), "exchange" to distinct ones (a permutation)."""
    labels = data.draw(organ_maps(num_classes=num_classes))
    transform = RandLabelSwapd("label", prob=1.0, num_classes=num_classes, mode=mode, num_swaps=swaps)
    out = corrupt(transform.set_random_state(seed), labels)
    assert out.shape == labels.shape and out.dtype == labels.dtype
    np.testing.assert_array_equal(out == 0, labels == 0)
    assert value_set(out) <= set(range(num_classes))
    if mode == "component":
        return
    image_of = {a: set(np.unique(out[labels == a]).tolist()) for a in np.unique(labels).tolist()}
    assert all(len(images) == 1 for images in image_of.values()), image_of
    if mode == "exchange":
        targets = [next(iter(images)) for images in image_of.values()]
        assert len(set(targets)) == len(targets), image_of


@settings(**SMALL)
@given(
    labels=organ_maps(max_depth=6),
    mode=st.sampled_from(("background", "neighbour")),
    num_slices=st.tuples(st.integers(1, 3), st.integers(0, 2)).map(lambda t: (t[0], t[0] + t[1])),
    seed=SEEDS,
    data=st.data(),
)
def test_dropped_slices_are_few_and_become_background_or_a_neighbour(labels, mode, num_slices, seed, data):
    """At most ``num_slices[1]`` slices along the axis change; a changed slice is all background ("background") or
    a copy of the input slice before or after it ("neighbour"); every other slice is untouched."""
    spatial_axis = data.draw(st.integers(-(labels.ndim - 1), labels.ndim - 2))
    transform = RandDropSlicesd("label", prob=1.0, num_slices=num_slices, mode=mode, spatial_axis=spatial_axis)
    out = corrupt(transform.set_random_state(seed), labels)
    assert out.shape == labels.shape and out.dtype == labels.dtype
    axis = 1 + spatial_axis % (labels.ndim - 1)
    before, after = np.moveaxis(labels, axis, 0), np.moveaxis(out, axis, 0)
    changed = [d for d in range(before.shape[0]) if not np.array_equal(before[d], after[d])]
    assert len(changed) <= num_slices[1]
    for d in changed:
        if mode == "background" or before.shape[0] == 1:
            assert not after[d].any()
        else:
            neighbours = [before[n] for n in (d - 1, d + 1) if 0 <= n < before.shape[0]]
            assert any(np.array_equal(after[d], n) for n in neighbours)


@settings(**SMALL)
@given(
    image=arrays(np.float32, array_shapes(min_dims=3, max_dims=4, max_side=4), elements=st.floats(-5, 5, width=32)),
    k=st.integers(0, 2),
    container=st.sampled_from(("numpy", "metatensor")),
    data=st.data(),
)
def test_neighbouring_slices_are_the_input_shifted_with_edge_repeat(image, k, container, data):
    """``(C, *spatial) -> (C * (2k + 1), *spatial)``; block ``j`` at depth ``d`` is the input at depth
    ``clip(d + j - k)``, so the centre block is the input itself."""
    spatial_axis = data.draw(st.integers(-(image.ndim - 1), image.ndim - 2))
    out = AddNeighbouringSlicesd("image", num_neighbours=k, spatial_axis=spatial_axis)(
        {"image": wrap(image, container)}
    )
    values = as_numpy(out["image"])
    channels, axis = image.shape[0], 1 + spatial_axis % (image.ndim - 1)
    assert values.shape == (channels * (2 * k + 1), *image.shape[1:]) and values.dtype == image.dtype
    depth = image.shape[axis]
    for j in range(2 * k + 1):
        block = values[j * channels : (j + 1) * channels]
        for d in range(depth):
            source = min(max(d + j - k, 0), depth - 1)
            np.testing.assert_array_equal(np.take(block, d, axis=axis), np.take(image, source, axis=axis))


# ---------------------------------------------------------------------------------------------------------------
# overlays (common.transforms.overlay)
# ---------------------------------------------------------------------------------------------------------------


@settings(**SMALL)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    colours=st.dictionaries(st.integers(1, 3), st.tuples(CHANNEL, CHANNEL, CHANNEL), max_size=3),
    alpha=st.sampled_from([0.0, 1.0]) | st.floats(0, 1),
)
def test_blend_overlay_blends_only_coloured_labels(data, shape, colours, alpha):
    """Output ``(H, W, 3)`` uint8; pixels whose label has no colour are the photograph's; a coloured pixel is the
    alpha blend rounded (alpha 0: the photograph, alpha 1: the class colour); the photograph is not modified."""
    photo = data.draw(arrays(np.uint8, (*shape, 3)))
    labels = data.draw(arrays(np.int64, shape, elements=st.integers(0, 3)))
    original = photo.copy()
    out = blend_overlay(photo, labels, colours, alpha)
    assert out.shape == (*shape, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(photo, original)
    uncoloured = ~np.isin(labels, list(colours))
    np.testing.assert_array_equal(out[uncoloured], photo[uncoloured])
    for value, colour in colours.items():
        mask = labels == value
        expected = (1 - alpha) * photo[mask].astype(np.float64) + alpha * np.asarray(colour, np.float64)
        assert np.all(np.abs(out[mask] - expected) <= 0.5 + 1e-3)
    bad = data.draw(st.sampled_from(["shape", "alpha"]))
    with pytest.raises(ValueError, match="blend_overlay"):
        if bad == "shape":
            blend_overlay(photo, labels[:, :0], colours, alpha)
        else:
            blend_overlay(photo, labels, colours, alpha + 1.01)


@settings(**TINY)
@given(data=st.data(), shape=st.tuples(st.integers(1, 5), st.integers(1, 5)), reverse=st.booleans())
def test_save_overlay_writes_the_photographs_size_in_either_orientation(data, shape, reverse):
    """SaveOverlayd writes ``<name>_overlay.png`` of the photograph's ``H x W``, equal to :func:`blend_overlay` of the
    label map in the photograph's orientation, and rejects a label map of another size naming the photograph."""
    photo = data.draw(arrays(np.uint8, (*shape, 3)))
    labels = data.draw(arrays(np.float32, shape, elements=st.integers(0, 2)))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "VK_0001.png"
        Image.fromarray(photo).save(source)
        image = MetaTensor(torch.zeros(3, 2, 2), meta={"filename_or_obj": str(source)})
        pred = torch.as_tensor((labels.T if reverse else labels).copy())[None]
        writer = SaveOverlayd("pred", output_dir=Path(tmp) / "out", reverse_indexing=reverse)
        out = writer({"image": image, "pred": pred})
        assert out["pred"] is pred
        with Image.open(Path(tmp) / "out" / "VK_0001_overlay.png") as im:
            written = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(written, blend_overlay(photo, labels.astype(np.int64), writer.colours, 0.5))
        wrong = torch.zeros(1, shape[0] + 1, shape[1])
        with pytest.raises(ValueError, match="VK_0001.png"):
            writer({"image": image, "pred": wrong})


# ---------------------------------------------------------------------------------------------------------------
# synthetic phantoms (common.synthetic): tiny sizes, any seed
# ---------------------------------------------------------------------------------------------------------------


def different_seed(seed: int) -> int:
    return seed + 1 if seed < 2**31 - 1 else seed - 1


@settings(**TINY)
@given(
    size=st.tuples(st.integers(16, 22), st.integers(16, 22), st.integers(16, 20)), seed=SEEDS, case=st.integers(0, 9)
)
def test_brats_phantom_shapes_labels_and_determinism(size, seed, case):
    """Every modality is int16 of ``size``, non-zero exactly on the brain; the tumour lies inside the brain; the
    segmentation of either convention holds only that convention's labels and the two differ only in ET; the same
    (seed, case) gives identical arrays, another seed other images."""
    phantom = make_brats_case(size, case_rng(seed, case))
    brain = phantom.tissue != Tissue.BACKGROUND
    for modality, image in phantom.images.items():
        assert image.shape == size and image.dtype == np.int16, modality
        np.testing.assert_array_equal(image > 0, brain)
    assert phantom.regions.shape == size and value_set(phantom.regions) <= {0, 1, 2, 3}
    assert np.all(brain[phantom.regions > 0])
    seg2021, seg2023 = phantom.seg("2021"), phantom.seg("2023")
    check_brats_labels(seg2021, "brats2021")
    check_brats_labels(seg2023, "brats2023")
    np.testing.assert_array_equal(convert_brats_labels(seg2021, "brats2021", "brats2023"), seg2023)
    again = make_brats_case(size, case_rng(seed, case))
    for name in ("regions", "tissue"):
        np.testing.assert_array_equal(getattr(again, name), getattr(phantom, name))
    for modality in phantom.images:
        np.testing.assert_array_equal(again.images[modality], phantom.images[modality])
    other = make_brats_case(size, case_rng(different_seed(seed), case))
    assert any(not np.array_equal(other.images[m], phantom.images[m]) for m in phantom.images)


@settings(**TINY)
@given(size=st.tuples(st.integers(8, 20), st.integers(8, 20), st.integers(8, 12)), seed=SEEDS, case=st.integers(1, 40))
def test_btcv_phantom_shapes_labels_and_determinism(size, seed, case):
    """CT int16 and labels uint8 of ``size``, labels BTCV ids 0..13 that map to the 12-organ convention, organs inside
    the body (never air), the LPS-order affine; same (seed, case) gives identical arrays, another seed another CT."""
    phantom = make_btcv_case(size, case_rng(seed, case))
    assert phantom.image.shape == phantom.label.shape == size
    assert phantom.image.dtype == np.int16 and phantom.label.dtype == np.uint8
    assert value_set(phantom.label) <= set(range(14))
    assert value_set(btcv_to_synapse12(phantom.label)) <= set(range(13))
    assert np.all(phantom.image[phantom.label > 0] != AIR_HU)
    assert (
        phantom.affine.shape == (4, 4) and phantom.affine[0, 0] < 0 < phantom.affine[2, 2] and phantom.affine[1, 1] < 0
    )
    again = make_btcv_case(size, case_rng(seed, case))
    np.testing.assert_array_equal(again.image, phantom.image)
    np.testing.assert_array_equal(again.label, phantom.label)
    np.testing.assert_array_equal(again.affine, phantom.affine)
    assert not np.array_equal(make_btcv_case(size, case_rng(different_seed(seed), case)).image, phantom.image)


SYNTHETIC_TABLE = colour_table()
SYNTHETIC_CODING = ColourCoding({s.name: (s.group, SYNTHETIC_TABLE[s.name]) for s in STRUCTURES})
SYNTHETIC_PALETTE = np.array([(0, 0, 0)] + [SYNTHETIC_TABLE[s.name] for s in STRUCTURES], np.uint8)
SYNTHETIC_GROUP_OF = np.array([0] + [GROUP_LABELS[s.group] for s in STRUCTURES], np.uint8)


@settings(**TINY)
@given(
    size=st.tuples(st.integers(32, 40), st.integers(32, 56)),
    seed=SEEDS,
    case=st.integers(0, 9),
    level=st.sampled_from(LEVELS),
)
def test_visible_korean_phantom_shapes_colours_and_determinism(size, seed, case, level):
    """Photograph and segmentation ``(H, W, 3)`` uint8; the segmentation is exactly the table colour of every
    pixel's structure (black where unlabelled), so the reader decodes it without unknown colours into the
    structures' group labels; same (seed, case) gives identical arrays, another seed another photograph."""
    phantom = make_visible_korean_case(size, case_rng(seed, case), level)
    assert phantom.photo.shape == phantom.segmentation.shape == (*size, 3)
    assert phantom.photo.dtype == phantom.segmentation.dtype == np.uint8
    assert phantom.label.shape == size and value_set(phantom.label) <= set(range(len(STRUCTURES) + 1))
    np.testing.assert_array_equal(phantom.segmentation, SYNTHETIC_PALETTE[phantom.label])
    labels, unknown = SYNTHETIC_CODING.decode(phantom.segmentation)
    assert unknown == []
    np.testing.assert_array_equal(labels, SYNTHETIC_GROUP_OF[phantom.label])
    again = make_visible_korean_case(size, case_rng(seed, case), level)
    np.testing.assert_array_equal(again.photo, phantom.photo)
    np.testing.assert_array_equal(again.label, phantom.label)
    other = make_visible_korean_case(size, case_rng(different_seed(seed), case), level)
    assert not np.array_equal(other.photo, phantom.photo)


@settings(**SMALL)
@given(which=st.sampled_from(("brats", "btcv", "vk")), small=st.integers(1, 7), seed=SEEDS)
def test_phantom_generators_reject_sizes_below_their_minimum(which, small, seed):
    make, size = {
        "brats": (make_brats_case, (small + 8, 16, 16)),  # minimum 16
        "btcv": (make_btcv_case, (8, small, 8)),  # minimum 8
        "vk": (lambda s, rng: make_visible_korean_case(s, rng, "thigh"), (32, small + 24)),  # minimum 32
    }[which]
    with pytest.raises(ValueError, match="size must be"):
        make(size, case_rng(seed, 0))
