"""Synthetic multimodal brain-tumour MRI phantoms in the BraTS on-disk layout.

Layouts (``DIR`` is the output folder; ``NNNNN`` counts from ``00000``):

* ``convention="2021"`` (BraTS 2021)::

      DIR/BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz

  labels 0 background, 1 necrotic core (NCR), 2 peritumoral edema (ED), 4 enhancing tumour (ET).
* ``convention="2023"`` (BraTS 2023 adult glioma)::

      DIR/BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz

  labels 0, 1 NCR, 2 ED, 3 ET.

Every volume has shape ``size`` = (X, Y, Z) (default 240 x 240 x 155), 1 mm isotropic voxels and the affine BraTS
files carry: ``diag(-1, -1, 1)`` with translation ``(0, Y - 1, 0)`` (LPS voxel order). Images are int16 like the
real data, segmentations uint8, and qform and sform both hold the affine.

Content of a case: a skull-stripped brain (exactly 0 outside a wobbly brain-shaped ellipsoid) with white matter,
cortical and deep grey matter, ventricles and sulcal CSF; a smooth multiplicative bias field, Gaussian noise and a
per-case, per-modality gain, so intensity normalisation matters. The tumour is three nested perturbed ellipsoids:
edema around a core whose necrotic centre sits inside an enhancing rim. The contrasts follow radiology, and in
particular carry the signal the MTCM-KD bundle depends on:

* FLAIR: edema bright, CSF dark.
* T2: edema bright, CSF bright.
* T1ce: enhancing rim bright (only in T1ce); edema faint, within a few percent of the normal-brain mean, so a
  T1ce-only model has to learn the edema extent from FLAIR/T2 teachers.
* T1 and T1ce: necrosis dark.

Tumour intensities are set as ratios of the normal-brain mean of the same modality *after* the bias field, so these
relations hold for every case regardless of where the tumour sits in the bias field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from common.data.brats import BRATS_2021, BRATS_2023, BratsConvention
from common.io import atomic_write_bytes

from ._fields import axis_coords, box_around, case_rng, smooth_field
from ._output import generate_dataset, nifti_bytes

__all__ = [
    "BRATS_CONVENTIONS",
    "BratsConvention",
    "BratsPhantom",
    "Tissue",
    "brats_affine",
    "make_brats_case",
    "generate_brats",
]

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""Canonical modality keys used inside this module (BraTS 2021 names)."""


# File names and label ids are those the reader detects (one definition, in common.data.brats); the generator only
# adds how it numbers its cases.
BRATS_CONVENTIONS: dict[str, BratsConvention] = {"2021": BRATS_2021, "2023": BRATS_2023}
CASE_ID_FORMATS = {"2021": "BraTS2021_{:05d}", "2023": "BraTS-GLI-{:05d}-000"}


class Tissue:
    """Tissue codes of :attr:`BratsPhantom.tissue` (uint8)."""

    BACKGROUND = 0
    CSF = 1
    GREY = 2
    WHITE = 3
    DEEP_GREY = 4
    EDEMA = 5
    ENHANCING = 6
    NECROSIS = 7
    NORMAL = (CSF, GREY, WHITE, DEEP_GREY)


# Relative signal of the normal tissues, indexed by Tissue code 0..4 (background, CSF, GM, WM, deep GM).
_NORMAL_SIGNAL = {
    "t1": (0.0, 0.30, 0.72, 1.00, 0.82),
    "t1ce": (0.0, 0.30, 0.75, 1.00, 0.84),
    "t2": (0.0, 1.90, 0.82, 0.60, 0.72),
    "flair": (0.0, 0.22, 1.00, 0.78, 0.90),
}
# Tumour signal as a (low, high) ratio of the normal-brain mean of the same modality: (edema, enhancing, necrosis).
_TUMOUR_RATIO = {
    "t1": ((0.72, 0.82), (0.80, 0.92), (0.35, 0.50)),
    "t1ce": ((0.95, 1.05), (1.75, 2.10), (0.35, 0.50)),
    "t2": ((1.50, 1.75), (1.05, 1.25), (1.70, 2.00)),
    "flair": ((1.65, 1.95), (1.15, 1.35), (0.85, 1.05)),
}


@dataclass
class BratsPhantom:
    """One synthetic case before it is written.

    Attributes:
        images: canonical modality key -> int16 array ``(X, Y, Z)``, 0 outside the brain.
        regions: uint8 ``(X, Y, Z)`` with 0 background, 1 NCR, 2 ED, 3 ET (convention-independent).
        tissue: uint8 ``(X, Y, Z)`` with :class:`Tissue` codes.
        tumour_centre: voxel coordinates of the tumour centre.
        gains: modality -> global intensity scale of this case (the "scanner gain").
    """

    images: dict[str, np.ndarray]
    regions: np.ndarray
    tissue: np.ndarray
    tumour_centre: tuple[float, float, float]
    gains: dict[str, float] = field(default_factory=dict)

    def seg(self, convention: str = "2021") -> np.ndarray:
        """Segmentation in the label ids of ``convention``, uint8."""
        lut = np.array(BRATS_CONVENTIONS[convention].label_values, dtype=np.uint8)  # background, NCR, ED, ET
        return lut[self.regions]


def brats_affine(size: tuple[int, int, int]) -> np.ndarray:
    """The 4x4 affine of BraTS files (1 mm, LPS voxel order) for a grid of ``size`` voxels."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = size[1] - 1
    return affine


def _ellipsoid_box(
    shape: tuple[int, ...],
    centre: ArrayLike,
    semi: ArrayLike,
    rng: np.random.Generator | None = None,
    wobble: float = 0.0,
    nodes: int = 4,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Mask of a (optionally perturbed) axis-aligned ellipsoid inside its bounding box.

    Returns ``(box, mask, d)`` where ``d`` is the perturbed normalised radius (``< 1`` inside).
    """
    reach = 1.0 / max(1e-3, 1.0 - 2.5 * wobble) if wobble else 1.0
    box = box_around(centre, [s * reach for s in semi], shape)
    cx, cy, cz = axis_coords(box, centre, [1.0 / s for s in semi])
    d = np.sqrt(cx * cx + cy * cy + cz * cz)
    if wobble and rng is not None:
        box_shape = tuple(sl.stop - sl.start for sl in box)
        d = d + np.float32(wobble) * np.clip(smooth_field(rng, box_shape, nodes), -2.5, 2.5)
    return box, d < 1.0, d


def _brain(
    shape: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, brain centre and semi-axes (voxels), and the tissue map without tumour."""
    X, Y, Z = shape
    centre = np.array([0.5 * X, 0.52 * Y, 0.47 * Z]) * (1 + rng.uniform(-0.02, 0.02, 3))
    semi = np.array([0.29 * X, 0.36 * Y, 0.42 * Z]) * rng.uniform(0.93, 1.05, 3)
    # Work inside the brain's bounding box (about a third of the grid); the margin covers the boundary wobble.
    box = box_around(centre, 1.15 * semi, shape)
    box_shape = tuple(sl.stop - sl.start for sl in box)
    x, y, z = axis_coords(box, centre, (1.0, 1.0, 1.0))
    # Frontal lobes (low j, anterior in LPS) are narrower and the base of the brain flatter than an ellipsoid.
    frontal = 1.0 - 0.12 * np.clip(-y / semi[1], 0.0, 1.0)
    semi_z = np.where(z < 0, 0.85 * semi[2], semi[2]).astype(np.float32)
    rho2 = (x / (semi[0] * frontal)) ** 2 + (y / semi[1]) ** 2
    rho = np.sqrt(rho2 + (z / semi_z) ** 2)
    rho += np.float32(0.04) * smooth_field(rng, box_shape, (6, 6, 5))
    inside = rho < 1.0

    folds = smooth_field(rng, box_shape, tuple(max(4, s // 18) for s in shape))
    tissue_box = np.where(inside, np.uint8(Tissue.WHITE), np.uint8(Tissue.BACKGROUND))
    tissue_box[inside & (rho > 0.84 + 0.07 * folds)] = Tissue.GREY
    tissue_box[inside & (((rho > 0.95) & (folds > 0.6)) | (rho > 0.985))] = Tissue.CSF
    brain = np.zeros(shape, bool)
    brain[box] = inside
    tissue = np.zeros(shape, np.uint8)
    tissue[box] = tissue_box

    vent = rng.uniform(0.8, 1.3)
    for side in (-1, 1):
        c = centre + semi * np.array([0.25 * side, 0.0, -0.02])
        box, mask, _ = _ellipsoid_box(shape, c, semi * np.array([0.1, 0.18, 0.12]), rng, 0.08)
        tissue[box][mask & brain[box]] = Tissue.DEEP_GREY
        c = centre + semi * np.array([0.11 * side, 0.02, 0.12])
        box, mask, _ = _ellipsoid_box(shape, c, semi * np.array([0.07, 0.33, 0.13]) * vent, rng, 0.1)
        tissue[box][mask & brain[box]] = Tissue.CSF
    return brain, centre, semi, tissue


def _tumour(
    shape: tuple[int, int, int], rng: np.random.Generator, brain: np.ndarray, centre: np.ndarray, semi: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Tumour regions (0 bg, 1 NCR, 2 ED, 3 ET) and the tumour centre, nested by construction."""
    while True:  # a uniform point in the inner half of the brain ellipsoid
        p = rng.uniform(-1, 1, 3)
        if p @ p <= 1.0:
            break
    t_centre = centre + 0.5 * p * semi
    scale = float(np.prod(semi) ** (1 / 3))
    r_ed = scale * rng.uniform(0.33, 0.45) * rng.uniform(0.85, 1.15, 3)
    r_core = r_ed * rng.uniform(0.62, 0.75)
    r_nec = r_core * rng.uniform(0.45, 0.65)
    core_centre = t_centre + rng.uniform(-0.12, 0.12, 3) * r_ed

    box, wt, _ = _ellipsoid_box(shape, t_centre, r_ed, rng, 0.22, nodes=6)
    # Eroding the brain keeps a rim of normal tissue, and eroding the whole tumour before cutting the core out of
    # it guarantees edema all around the core, as in the BraTS annotation protocol (ED surrounds TC).
    wt &= ndimage.binary_erosion(brain[box], iterations=1)
    box_shape = wt.shape
    origin = [sl.start for sl in box]
    local = [c - o for c, o in zip(core_centre, origin, strict=True)]
    cx, cy, cz = axis_coords(tuple(slice(0, n) for n in box_shape), local, 1.0 / r_core)
    d_core = np.sqrt(cx * cx + cy * cy + cz * cz) + 0.15 * np.clip(smooth_field(rng, box_shape, 5), -2.5, 2.5)
    cx, cy, cz = axis_coords(tuple(slice(0, n) for n in box_shape), local, 1.0 / r_nec)
    d_nec = np.sqrt(cx * cx + cy * cy + cz * cz) + 0.15 * np.clip(smooth_field(rng, box_shape, 4), -2.5, 2.5)
    core = (d_core < 1.0) & ndimage.binary_erosion(wt, structure=np.ones((3, 3, 3), bool), iterations=1)
    nec = (d_nec < 1.0) & core
    if not nec.any() and core.any():  # tiny grids: keep every label present
        nec.flat[np.argmin(np.where(core, d_nec, np.inf))] = True

    regions_box = np.zeros(box_shape, np.uint8)
    regions_box[wt] = 2
    regions_box[core] = 3
    regions_box[nec] = 1
    regions = np.zeros(shape, np.uint8)
    regions[box] = regions_box
    return regions, tuple(float(c) for c in t_centre)


def make_brats_case(size: tuple[int, int, int], rng: np.random.Generator) -> BratsPhantom:
    """Build one phantom case on a grid of ``size`` = (X, Y, Z) voxels (1 mm), drawing everything from ``rng``."""
    shape = tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"size must be three values >= 16, got {size}")
    brain, centre, semi, tissue = _brain(shape, rng)
    regions, t_centre = _tumour(shape, rng, brain, centre, semi)
    tumour_code = np.array([0, Tissue.NECROSIS, Tissue.EDEMA, Tissue.ENHANCING], np.uint8)
    tumour = regions > 0
    tissue[tumour] = tumour_code[regions[tumour]]

    # Intensities are only computed for brain voxels (about a sixth of the grid): the background is exactly 0.
    brain_idx = np.flatnonzero(brain)
    tissue_b = tissue.reshape(-1)[brain_idx]
    normal = np.isin(tissue_b, Tissue.NORMAL)
    texture = 1.0 + 0.03 * smooth_field(rng, shape, tuple(max(4, s // 10) for s in shape)).reshape(-1)[brain_idx]
    images: dict[str, np.ndarray] = {}
    gains: dict[str, float] = {}
    for mod in MODALITIES:
        signal = np.zeros(8, np.float32)
        signal[:5] = np.asarray(_NORMAL_SIGNAL[mod]) * rng.uniform(0.95, 1.05, 5)
        bias = np.exp(np.float32(0.06) * smooth_field(rng, shape, 3).reshape(-1)[brain_idx])
        weighted = signal[tissue_b] * bias
        normal_mean = float(weighted[normal].mean())
        for code, (lo, hi) in zip((Tissue.EDEMA, Tissue.ENHANCING, Tissue.NECROSIS), _TUMOUR_RATIO[mod], strict=True):
            region = tissue_b == code
            if region.any():
                # Divide out the bias the region actually sees, so the region/brain ratio is exactly the target.
                signal[code] = rng.uniform(lo, hi) * normal_mean / float(bias[region].mean())
                weighted[region] = signal[code] * bias[region]
        noise_sd = rng.uniform(0.025, 0.045)
        values = weighted * texture + np.float32(noise_sd) * rng.standard_normal(brain_idx.size, dtype=np.float32)
        gain = float(np.exp(rng.uniform(np.log(150.0), np.log(2500.0))))
        img = np.zeros(shape, np.int16)  # skull-stripped: background is exactly 0
        img.reshape(-1)[brain_idx] = np.clip(np.rint(values * gain), 1, np.iinfo(np.int16).max).astype(np.int16)
        images[mod] = img
        gains[mod] = gain
    return BratsPhantom(images=images, regions=regions, tissue=tissue, tumour_centre=t_centre, gains=gains)


def _write_case(payload: tuple[str, str, int, int, tuple[int, int, int], str]) -> list[str]:
    out_dir, case_id, seed, index, size, convention = payload
    conv = BRATS_CONVENTIONS[convention]
    case = make_brats_case(size, case_rng(seed, index))
    affine = brats_affine(size)
    arrays = {**case.images, "seg": case.seg(convention)}
    written = []
    for key in (*MODALITIES, "seg"):
        rel = f"{case_id}/{conv.file_name(case_id, conv.suffixes.get(key, conv.label_suffix))}"
        atomic_write_bytes(Path(out_dir) / rel, nifti_bytes(arrays[key], affine))
        written.append(rel)
    return written


def generate_brats(
    out_dir: str | os.PathLike,
    cases: int = 10,
    size: tuple[int, int, int] = (240, 240, 155),
    seed: int = 0,
    convention: str = "2021",
    workers: int | None = None,
    verbose: bool = True,
) -> list[str]:
    """Write ``cases`` synthetic BraTS cases under ``out_dir`` (see the module docstring for the layout).

    Args:
        out_dir: output folder; a ``synthetic_manifest.json`` is written last.
        cases: number of cases; case ``k`` is the same whatever ``cases`` is.
        size: (X, Y, Z) voxels, 1 mm each.
        seed: non-negative base seed.
        convention: ``"2021"`` or ``"2023"``.
        workers: processes (default ``os.cpu_count()``); does not change the content.
        verbose: print progress.

    Returns:
        Case ids, e.g. ``["BraTS2021_00000", ...]``.
    """
    if convention not in BRATS_CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(BRATS_CONVENTIONS)}, got {convention!r}")
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    size = tuple(int(s) for s in size)
    case_ids = [CASE_ID_FORMATS[convention].format(i) for i in range(cases)]
    jobs = [(case_id, (str(out_dir), case_id, seed, i, size, convention)) for i, case_id in enumerate(case_ids)]
    args = {"cases": cases, "size": list(size), "seed": seed, "convention": convention}
    return generate_dataset(out_dir, "common.synthetic.brats", args, jobs, _write_case, workers, verbose=verbose)
