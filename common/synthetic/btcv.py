"""Synthetic abdominal CT phantoms in the BTCV ``RawData`` layout.

Layout (``DIR`` is the output folder)::

    DIR/RawData/Training/img/img00NN.nii.gz      int16 CT in Hounsfield units, air -1000 outside the body
    DIR/RawData/Training/label/label00NN.nii.gz  uint8 organ labels 0..13 (common.data.btcv.BTCV_LABELS)

Case ids are the 30 labelled BTCV training ids. ``cases=N`` takes the first N ids of :data:`CASE_ORDER`, which
alternates Synapse training and test cases (train, test, train, test, ..., then the remaining training ids) so a
small N has both.

Geometry. Voxel axes are (X, Y, Z) = (patient right -> left, anterior -> posterior, inferior -> superior), i.e.
LPS voxel order; the affine maps them to RAS+ world millimetres, so world x decreases with the first index:
``affine = [[-sx, 0, 0, .], [0, -sy, 0, .], [0, 0, sz, .]]``. The default grid is 512 x 512 x 100 with in-plane
spacing 0.7-0.9 mm and slice spacing 2.5-3.0 mm drawn per case; ``size`` changes the grid and scales the spacing
so the same physical field of view (and the whole body) is covered.

Content. A body ellipse with skin, subcutaneous fat and an abdominal-wall muscle layer; a spine (vertebral bodies,
discs, canal, posterior elements), paraspinal and psoas muscles, ribs and lung bases in the upper slices, bowel
loops and mesenteric fat, and the 13 BTCV organs placed as in patient anatomy (liver on the right and superior,
spleen left posterior superior, kidneys either side of the spine with the right one lower, and so on), each a
perturbed ellipsoid or tube with a per-case position, size, orientation and contrast-phase HU value, plus noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from common.data.btcv import SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_CASES, btcv_case_paths
from common.io import atomic_write_bytes

from ._fields import axis_coords, box_around, case_rng, smooth_field
from ._output import generate_dataset, nifti_bytes

__all__ = ["CASE_ORDER", "CTPhantom", "make_btcv_case", "btcv_affine", "generate_btcv"]


def _alternate(train: tuple[str, ...], test: tuple[str, ...]) -> tuple[str, ...]:
    order: list[str] = []
    for i in range(max(len(train), len(test))):
        order += [ids[i] for ids in (train, test) if i < len(ids)]
    return tuple(order)


CASE_ORDER: tuple[str, ...] = _alternate(SYNAPSE_TRAIN_CASES, SYNAPSE_TEST_CASES)
"""All 30 case ids: Synapse train and test ids alternating, then the remaining training ids."""

DEFAULT_SIZE = (512, 512, 100)
AIR_HU = -1000

# Label ids (see common.data.btcv.BTCV_LABELS).
SPLEEN, KIDNEY_R, KIDNEY_L, GALLBLADDER, ESOPHAGUS, LIVER, STOMACH = 1, 2, 3, 4, 5, 6, 7
AORTA, IVC, PORTAL_SPLENIC, PANCREAS, ADRENAL_R, ADRENAL_L = 8, 9, 10, 11, 12, 13


@dataclass
class CTPhantom:
    """One synthetic CT case before it is written.

    Attributes:
        image: int16 ``(X, Y, Z)`` Hounsfield units.
        label: uint8 ``(X, Y, Z)`` BTCV organ labels.
        affine: 4x4 voxel-to-world (RAS+, mm).
        hu: organ label -> mean HU drawn for this case (before noise).
        subcutaneous_fat: bool ``(X, Y, Z)``, the subcutaneous fat layer (unlabelled; for checks of the HU scale).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    hu: dict[int, float]
    subcutaneous_fat: np.ndarray


class _Frame:
    """Maps anatomical millimetres (u: +left, v: +posterior, w: +superior, origin at the body centre) to voxels.

    A case's global shift and scale of the anatomy are folded into the mapping, so shapes are specified once in
    millimetres of a "standard" patient.
    """

    def __init__(self, shape: tuple[int, int, int], spacing: ArrayLike, shift: ArrayLike, scale: float):
        self.shape = tuple(shape)
        self.step = np.asarray(spacing, float) / scale  # anatomical mm per voxel
        self.origin = (np.asarray(shape, float) - 1) / 2 + np.asarray(shift, float) / np.asarray(spacing, float)

    def box(self, centre: ArrayLike, half: ArrayLike) -> tuple[slice, ...]:
        """Voxel box covering ``centre ± half`` (anatomical mm)."""
        return box_around(np.asarray(centre) / self.step + self.origin, np.asarray(half) / self.step, self.shape)

    def coords(self, box: tuple[slice, ...]) -> list[np.ndarray]:
        """Anatomical (u, v, w) of a box's voxels, broadcastable float32 arrays."""
        return axis_coords(box, self.origin, self.step)

    def voxel(self, point: ArrayLike) -> tuple[int, ...]:
        """Nearest voxel (clipped to the grid) of an anatomical point."""
        return tuple(
            int(np.clip(np.rint(c), 0, n - 1))
            for c, n in zip(np.asarray(point) / self.step + self.origin, self.shape, strict=True)
        )


def _ellipsoid(
    frame: _Frame,
    rng: np.random.Generator,
    centre: ArrayLike,
    semi: ArrayLike,
    angle_deg: float = 0.0,
    wobble: float = 0.08,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Box and mask of an ellipsoid rotated by ``angle_deg`` about the w axis, its surface perturbed by noise."""
    reach = 1.0 / (1.0 - 2.5 * wobble)
    r_uv = max(semi[0], semi[1]) * reach
    box = frame.box(centre, (r_uv, r_uv, semi[2] * reach))
    u, v, w = frame.coords(box)
    u, v, w = u - centre[0], v - centre[1], w - centre[2]
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    a, b = (u * c + v * s) / semi[0], (v * c - u * s) / semi[1]
    d = np.sqrt(a * a + b * b + (w / semi[2]) ** 2)
    shape = tuple(sl.stop - sl.start for sl in box)
    if wobble and min(shape) > 0:
        d = d + np.float32(wobble) * np.clip(smooth_field(rng, shape, (4, 4, 3)), -2.5, 2.5)
    return box, d < 1.0


def _tube(
    frame: _Frame, rng: np.random.Generator, points: ArrayLike, radii: ArrayLike, wobble: float = 0.06
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Box and mask of a tube along a polyline of anatomical points with radius interpolated along it (mm)."""
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radii, float), (len(pts),))
    reach = rad.max() / (1.0 - 2.5 * wobble)
    lo, hi = pts.min(0) - reach, pts.max(0) + reach
    box = frame.box((lo + hi) / 2, (hi - lo) / 2)
    u, v, w = frame.coords(box)
    shape = tuple(sl.stop - sl.start for sl in box)
    d = np.full(shape, np.inf, np.float32)
    for p0, p1, r0, r1 in zip(pts[:-1], pts[1:], rad[:-1], rad[1:], strict=True):
        seg = p1 - p0
        t = ((u - p0[0]) * seg[0] + (v - p0[1]) * seg[1] + (w - p0[2]) * seg[2]) / float(seg @ seg)
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt((u - p0[0] - t * seg[0]) ** 2 + (v - p0[1] - t * seg[1]) ** 2 + (w - p0[2] - t * seg[2]) ** 2)
        np.minimum(d, dist / (r0 + t * (r1 - r0)), out=d)
    if wobble and min(shape) > 0:
        d += np.float32(wobble) * np.clip(smooth_field(rng, shape, (4, 4, 4)), -2.5, 2.5)
    return box, d < 1.0


def _jitter(
    rng: np.random.Generator,
    centre: ArrayLike,
    semi: ArrayLike | None = None,
    angle: float | None = None,
    shift_mm: float = 4.0,
    size: tuple[float, float] = (0.88, 1.12),
    turn_deg: float = 10.0,
) -> list:
    """Per-case perturbation of a shape: ``[centre]`` plus ``semi`` and ``angle`` when given."""
    centre = np.asarray(centre, float) + np.clip(rng.normal(0, shift_mm, 3), -2 * shift_mm, 2 * shift_mm)
    out = [centre]
    if semi is not None:
        out.append(np.asarray(semi, float) * rng.uniform(*size, 3))
    if angle is not None:
        out.append(angle + rng.uniform(-turn_deg, turn_deg))
    return out


def _organ_hu(rng: np.random.Generator) -> dict[int, float]:
    """Mean HU per organ in a portal-venous-phase-like scan; ranges keep aorta > kidney > liver for every case."""
    ranges = {
        SPLEEN: (45, 58), KIDNEY_R: (135, 170), KIDNEY_L: (135, 170), GALLBLADDER: (0, 20), ESOPHAGUS: (35, 45),
        LIVER: (52, 70), STOMACH: (25, 40), AORTA: (185, 240), IVC: (100, 140), PORTAL_SPLENIC: (140, 180),
        PANCREAS: (38, 52), ADRENAL_R: (25, 35), ADRENAL_L: (25, 35),
    }  # fmt: skip
    hu = {k: float(rng.uniform(*r)) for k, r in ranges.items()}
    hu[KIDNEY_L] = hu[KIDNEY_R] + float(rng.uniform(-5, 5))  # both kidneys enhance alike
    return hu


def btcv_affine(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel-to-RAS affine with LPS voxel order and the volume centred on the world origin."""
    sx, sy, sz = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (size[0] - 1) / 2, sy * (size[1] - 1) / 2, -sz * (size[2] - 1) / 2]
    return affine


def _body(frame: _Frame, rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint body wall, spine, muscles, ribs, lungs and bowel into ``img`` (HU).

    Returns:
        (cavity, subcutaneous fat) boolean masks.
    """
    X, Y, Z = frame.shape
    full = tuple(slice(0, n) for n in frame.shape)
    u, v, w = frame.coords(full)
    semi_u, semi_v = 150 * rng.uniform(0.9, 1.08), 110 * rng.uniform(0.9, 1.1)
    # The back is flatter than the belly, and the body outline is not a perfect ellipse.
    sv = np.where(v > 0, 0.92 * semi_v, semi_v).astype(np.float32)
    r2d = np.sqrt((u / semi_u) ** 2 + (v / sv) ** 2)[:, :, 0]
    r2d = r2d + 0.02 * smooth_field(rng, (X, Y), 5)
    z_scale = (1.0 + 0.04 * np.sin(w[0, 0] / 80.0)).astype(np.float32)
    r = r2d[:, :, None] / z_scale[None, None, :]
    depth = (1.0 - r) * np.float32((semi_u + semi_v) / 2)  # approximate distance below the skin, mm
    body = depth > 0
    fat_mm = rng.uniform(12, 35) * (1.0 - 0.5 * np.clip(v / semi_v, 0, 1))  # thinner fat over the back
    fat, muscle, bone, visceral_fat = (
        rng.uniform(-110, -88),
        rng.uniform(40, 60),
        rng.uniform(650, 950),
        rng.uniform(-105, -85),
    )
    img[body] = 30.0  # skin
    img[body & (depth > 2.5)] = fat
    img[body & (depth > 2.5 + fat_mm)] = muscle
    cavity = depth > 2.5 + fat_mm + 10.0
    img[cavity] = visceral_fat

    # Bowel loops and gas below the liver: thresholded smooth fields give loop-like blobs.
    bowel_field = smooth_field(rng, frame.shape, (max(3, X // 24), max(3, Y // 24), max(3, Z // 8)))
    gas_field = smooth_field(rng, frame.shape, (max(3, X // 24), max(3, Y // 24), max(3, Z // 8)))
    lower = cavity & (w < rng.uniform(0, 30)) & (v < 30)
    img[lower & (bowel_field > -0.2)] = rng.uniform(20, 40)
    img[lower & (bowel_field > -0.2) & (gas_field > 1.3)] = -850

    # Lungs above the diaphragm dome, which reaches lower at the back; the mediastinum stays between them.
    w_dome = (rng.uniform(65, 90) - 0.35 * v - 0.002 * u * u).astype(np.float32)
    lungs = cavity & (w > w_dome) & (np.abs(u) > 25) & (v > -0.55 * semi_v)
    img[lungs] = rng.uniform(-880, -820)
    box, heart = _ellipsoid(frame, rng, *_jitter(rng, (15, -40, 150), (60, 45, 50), 20))
    img[box][heart & cavity[box]] = rng.uniform(100, 160)

    # Ribs: a band inside the body wall, broken into blobs whose angle shifts with height (ribs slope).
    theta = np.arctan2(v, u)
    band = (depth > 2.5 + fat_mm + 2) & (depth < 2.5 + fat_mm + 12) & (w > -40 + 30 * np.abs(np.sin(theta)))
    band &= ~(((np.abs(u) < 45) & (v < 0)) | ((np.abs(u) < 50) & (v > 0)))  # no ribs over sternum and spine
    idx = np.nonzero(band)
    phase = 11.0 * theta[idx[0], idx[1], 0] + 2 * np.pi * w[0, 0, idx[2]] / 28.0 + rng.uniform(0, 2 * np.pi)
    rib = np.cos(phase) > 0.55
    img[idx[0][rib], idx[1][rib], idx[2][rib]] = bone

    _spine(frame, rng, img, body, bone)
    subcutaneous = (depth > 2.5) & (img == np.float32(fat))
    return cavity, subcutaneous


def _spine(frame: _Frame, rng: np.random.Generator, img: np.ndarray, body: np.ndarray, bone: float) -> None:
    """Vertebral bodies with discs, canal, posterior elements, paraspinal and psoas muscles (mm geometry)."""
    vb = rng.uniform(30, 40)  # v of the vertebral-body centre
    period, phase = rng.uniform(32, 38), rng.uniform(0, 38)
    muscle = rng.uniform(40, 60)
    for side in (-1, 1):
        box, m = _ellipsoid(frame, rng, (side * 32, vb + 38, 0), (24, 16, 400), side * 10, 0.05)
        img[box][m & body[box]] = muscle  # erector spinae
        box, m = _tube(
            frame,
            rng,
            [(side * 30, vb - 5, 25), (side * 42, vb - 10, -60), (side * 50, vb - 12, -200)],
            [4, 22, 28],
            0.06,
        )
        img[box][m & body[box]] = muscle  # psoas, growing caudally
    box = frame.box((0, vb + 20, 0), (40, 50, 400))
    u, v, w = frame.coords(box)
    u, v = u[..., 0:1], v[..., 0:1]  # the spine is a prism along w, modulated by the discs
    r_body = np.sqrt((u / 22) ** 2 + ((v - vb) / 17) ** 2)
    disc = ((w - phase) % period) < 7.0
    canal = np.sqrt(u**2 + (v - vb - 27) ** 2)
    posterior = ((canal < 15) & (v > vb + 20)) | ((np.abs(u) < 5) & (v > vb + 30) & (v < vb + 55))
    transverse = (np.abs(np.abs(u) - 30) < 16) & (np.abs(v - vb - 26) < 5)
    region = img[box]
    sub_body = body[box]
    region[(r_body < 1) & ~disc & sub_body] = rng.uniform(200, 320)
    region[(r_body < 1) & (r_body > 0.85) & ~disc & sub_body] = bone
    region[(r_body < 1) & disc & sub_body] = rng.uniform(70, 100)
    region[np.broadcast_to(posterior | transverse, region.shape) & sub_body] = 0.8 * bone
    region[np.broadcast_to(canal < 9, region.shape) & sub_body] = 15.0


def _organs(
    frame: _Frame,
    rng: np.random.Generator,
    hu_img: np.ndarray,
    lab: np.ndarray,
    cavity: np.ndarray,
    hu: dict[int, float],
) -> None:
    """Paint the 13 labelled organs; later organs overwrite earlier ones where they touch."""
    specs = [
        (LIVER, "e", (-55, -5, 55), (85, 80, 65), 10),
        (LIVER, "e", (15, -45, 75), (50, 30, 35), -15),  # left lobe across the midline, anterior
        (SPLEEN, "e", (88, 35, 60), (22, 50, 42), -35),
        (STOMACH, "e", (55, -45, 50), (45, 32, 50), -30),
        (GALLBLADDER, "e", (-45, -55, 10), (14, 16, 32), 30),
        (KIDNEY_R, "e", (-68, 45, -25), (26, 22, 55), 30),
        (KIDNEY_L, "e", (62, 48, -5), (26, 22, 55), -30),
        (PANCREAS, "t", [(-35, -5, -5), (0, -22, 5), (35, -12, 12), (70, 20, 22)], [15, 11, 11, 9]),
        (ADRENAL_R, "e", (-38, 28, 38), (5, 13, 17), 35),
        (ADRENAL_L, "e", (35, 30, 40), (5, 14, 18), -35),
        (ESOPHAGUS, "t", [(3, 15, 220), (8, 5, 110), (25, -12, 85), (38, -25, 70)], [8, 8, 8, 9]),
        (IVC, "t", [(-24, 10, -220), (-26, 5, 40), (-32, -5, 100), (-30, 0, 220)], [11, 11, 12, 12]),
        (PORTAL_SPLENIC, "t", [(72, 30, 25), (35, 0, 14), (2, -6, 8), (-25, -12, 28), (-45, -8, 50)], [5, 6, 7, 7, 6]),
        (AORTA, "t", [(10, 8, -220), (10, 8, 60), (28, 25, 220)], [10, 11, 12]),
    ]
    anchors: dict[int, np.ndarray] = {}
    for organ, kind, geom, size, *angle in specs:
        if kind == "e":
            centre, semi, ang = _jitter(rng, geom, size, angle[0])
            box, mask = _ellipsoid(frame, rng, centre, semi, ang, 0.08)
        else:
            shift = np.clip(rng.normal(0, 3, 3), -6, 6)
            pts = np.asarray(geom, float) + shift
            centre = pts[len(pts) // 2]
            box, mask = _tube(frame, rng, pts, np.asarray(size, float) * rng.uniform(0.9, 1.1), 0.06)
        anchors.setdefault(organ, np.asarray(centre))
        mask &= cavity[box]
        lab[box][mask] = organ
        hu_img[box][mask] = hu[organ]
        if organ == STOMACH:  # gas collects anteriorly and superiorly in a supine patient
            u, v, w = frame.coords(box)
            gas = mask & (v < centre[1] - 0.45 * semi[1]) & (w > centre[2] + 0.2 * semi[2])
            hu_img[box][gas] = -850
    # On coarse grids a small organ can fall between voxel centres; keep every label present.
    for organ, centre in anchors.items():
        if not (lab == organ).any():
            vox = frame.voxel(centre)
            lab[vox] = organ
            hu_img[vox] = hu[organ]


def make_btcv_case(
    size: tuple[int, int, int], rng: np.random.Generator, spacing: tuple[float, float, float] | None = None
) -> CTPhantom:
    """Build one abdominal CT case on a grid of ``size`` = (X, Y, Z) voxels, drawing everything from ``rng``.

    ``spacing`` (mm) defaults to a per-case draw for the 512 x 512 x 100 grid (0.7-0.9 mm in-plane, 2.5-3.0 mm
    slices) scaled by ``512 / X``, ``512 / Y`` and ``100 / Z``.
    """
    shape = tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"size must be three values >= 8, got {size}")
    in_plane, slice_mm = rng.uniform(0.7, 0.9), rng.uniform(2.5, 3.0)
    if spacing is None:
        spacing = (
            in_plane * DEFAULT_SIZE[0] / shape[0],
            in_plane * DEFAULT_SIZE[1] / shape[1],
            slice_mm * DEFAULT_SIZE[2] / shape[2],
        )
    shift = (rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-15, 15))
    frame = _Frame(shape, spacing, shift, rng.uniform(0.92, 1.08))
    hu = _organ_hu(rng)
    hu_img = np.full(shape, AIR_HU, np.float32)
    lab = np.zeros(shape, np.uint8)
    cavity, subcutaneous = _body(frame, rng, hu_img)
    _organs(frame, rng, hu_img, lab, cavity, hu)

    body = hu_img != AIR_HU
    body_idx = np.flatnonzero(body)
    noise_sd = rng.uniform(8, 14)
    texture = smooth_field(rng, shape, (max(3, shape[0] // 16), max(3, shape[1] // 16), max(3, shape[2] // 6)))
    values = hu_img.reshape(-1)[body_idx] + 4.0 * texture.reshape(-1)[body_idx]
    values += np.float32(noise_sd) * rng.standard_normal(body_idx.size, dtype=np.float32)
    image = np.full(shape, AIR_HU, np.int16)  # air outside the body is exactly -1000
    image.reshape(-1)[body_idx] = np.clip(np.rint(values), -1024, 3071).astype(np.int16)
    return CTPhantom(image=image, label=lab, affine=btcv_affine(shape, spacing), hu=hu, subcutaneous_fat=subcutaneous)


def _write_case(payload: tuple[str, str, int, tuple[int, int, int]]) -> list[str]:
    out_dir, case_id, seed, size = payload
    case = make_btcv_case(size, case_rng(seed, int(case_id)))
    raw = Path(out_dir) / "RawData"
    image_path, label_path = btcv_case_paths(raw, case_id)
    atomic_write_bytes(image_path, nifti_bytes(case.image, case.affine))
    atomic_write_bytes(label_path, nifti_bytes(case.label, case.affine))
    return [p.relative_to(out_dir).as_posix() for p in (image_path, label_path)]


def generate_btcv(
    out_dir: str | os.PathLike,
    cases: int = 30,
    size: tuple[int, int, int] = DEFAULT_SIZE,
    seed: int = 0,
    workers: int | None = None,
    verbose: bool = True,
) -> list[str]:
    """Write ``cases`` synthetic BTCV training cases under ``out_dir/RawData/Training`` (module docstring).

    The RNG of a case is derived from ``(seed, int(case_id))``, so a case's content does not depend on ``cases``.

    Returns:
        Case ids, e.g. ``["0005", "0008", ...]`` (the first ``cases`` of :data:`CASE_ORDER`).
    """
    if not 1 <= cases <= len(CASE_ORDER):
        raise ValueError(f"cases must be in 1..{len(CASE_ORDER)}, got {cases}")
    size = tuple(int(s) for s in size)
    jobs = [(cid, (str(out_dir), cid, seed, size)) for cid in CASE_ORDER[:cases]]
    args = {"cases": cases, "size": list(size), "seed": seed}
    return generate_dataset(out_dir, "common.synthetic.btcv", args, jobs, _write_case, workers, verbose=verbose)
