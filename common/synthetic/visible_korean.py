"""Synthetic Visible Korean sectioned-body slices with colour-coded segmentations.

The real Visible Korean data are colour photographs of serially sectioned frozen cadavers (24-bit RGB) plus
segmentation images in which each outlined structure is filled with one flat colour (over 900 structures), and a
per-structure colour table. No public reader exists, so this module *defines* the layout the bundle reads::

    DIR/colour_table.csv            header "structure,group,red,green,blue", one row per structure;
                                    group is one of bone, muscle, other; colours are unique and never (0, 0, 0)
    DIR/images/VK_NNNN.png          RGB (8 bit per channel) photograph of slice NNNN, shape (H, W, 3)
    DIR/segmentations/VK_NNNN.png   RGB colour-coded segmentation, same size; (0, 0, 0) = unlabelled
    DIR/synthetic_manifest.json     written last by the generator (not part of the real data)

``NNNN`` counts from ``0000``. A pixel belongs to structure ``s`` when its segmentation colour equals the row of
``s`` in the table; a bone/muscle/background map is the union per group. Images are (H, W) = (1216, 2048) by default.

Orientation: rows run anterior (top) to posterior (bottom), columns from the patient's right (left edge) to the
patient's left (right edge), i.e. the slice is seen from the feet. Structure names end in ``_right``/``_left`` for
paired structures.

Content: slices at four anatomical levels (lumbar abdomen at L4, pelvis at the iliac wings, hip joints, mid-thigh),
cycled over the slice index. Each has skin and subcutaneous fat (labelled, group ``other``), bones (vertebra,
sacrum, coccyx, ilium, ischium, pubis, femur), named muscles (abdominal wall, psoas, quadratus lumborum, erector
spinae, gluteal, iliacus, hip and thigh muscles) and other structures (intestine, colon, vessels, nerves, bladder).
Thin gaps between muscles stay unlabelled like the intermuscular fat of the real outlines. The photograph has
tissue-like colours with shading and noise: red-brown muscle, yellowish fat, whitish cortical bone with darker
marrow, on a bluish frozen-block background. Pose (rotation, scale, shift), fat thickness, muscle and bone shapes
and the colour cast vary per slice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from common.data.visible_korean import read_colour_table
from common.io import atomic_write_bytes

from ._fields import case_rng, smooth_field
from ._output import generate_dataset, png_bytes

__all__ = [
    "Structure",
    "STRUCTURES",
    "LEVELS",
    "colour_table",
    "write_colour_table",
    "read_colour_table",
    "VKSlice",
    "make_visible_korean_case",
    "generate_visible_korean",
]

DEFAULT_SIZE = (1216, 2048)
COLOUR_TABLE = "colour_table.csv"
GROUPS = ("bone", "muscle", "other")


class Structure(NamedTuple):
    """One row of the colour table (``kind`` only drives the photograph's colour and is not written)."""

    name: str
    group: str
    kind: str


def _paired(names: str, group: str, kind: str) -> list[Structure]:
    return [Structure(f"{n}_{side}", group, kind) for n in names.split() for side in ("right", "left")]


STRUCTURES: tuple[Structure, ...] = tuple(
    [Structure("lumbar_vertebra_L4", "bone", "bone"), Structure("sacrum", "bone", "bone"),
     Structure("coccyx", "bone", "bone")]
    + _paired("ilium ischium pubis femur", "bone", "bone")
    + _paired(
        "rectus_abdominis external_oblique internal_oblique transversus_abdominis psoas_major quadratus_lumborum "
        "erector_spinae iliacus gluteus_maximus gluteus_medius gluteus_minimus obturator_internus iliopsoas "
        "tensor_fasciae_latae pectineus sartorius rectus_femoris vastus_lateralis vastus_medialis vastus_intermedius "
        "gracilis adductor_longus adductor_magnus biceps_femoris semitendinosus semimembranosus",
        "muscle",
        "muscle",
    )
    + [Structure("skin", "other", "skin"), Structure("subcutaneous_fat", "other", "fat"),
       Structure("small_intestine", "other", "intestine"), Structure("ascending_colon", "other", "colon"),
       Structure("descending_colon", "other", "colon"), Structure("sigmoid_colon", "other", "colon"),
       Structure("rectum", "other", "colon"), Structure("urinary_bladder", "other", "bladder"),
       Structure("abdominal_aorta", "other", "artery"), Structure("inferior_vena_cava", "other", "vein"),
       Structure("cauda_equina", "other", "nerve")]
    + _paired("external_iliac_artery femoral_artery", "other", "artery")
    + _paired("external_iliac_vein femoral_vein great_saphenous_vein", "other", "vein")
    + _paired("sciatic_nerve", "other", "nerve")
)  # fmt: skip
"""Every structure of the colour table, in table order."""

LEVELS = ("abdomen", "pelvis", "hip", "thigh")
"""Anatomical level of slice ``k`` is ``LEVELS[k % 4]``."""

_INDEX = {s.name: i + 1 for i, s in enumerate(STRUCTURES)}  # label-map value of each structure (0 = unlabelled)

# Mean photograph colours (RGB) per kind; "gap" is unlabelled tissue inside the body (intermuscular fat).
_KIND_RGB = {
    "background": (58, 84, 104), "gap": (214, 182, 118), "marrow": (186, 128, 90), "bone": (236, 230, 214),
    "muscle": (150, 58, 48), "skin": (196, 148, 124), "fat": (226, 196, 128), "intestine": (196, 140, 128),
    "colon": (172, 118, 92), "bladder": (212, 176, 150), "artery": (150, 40, 42), "vein": (84, 34, 46),
    "nerve": (236, 224, 188),
}  # fmt: skip
# Relative amplitude of the mid-frequency texture per kind (lobulated fat, fibrous muscle, mottled gut).
_KIND_TEXTURE = {"background": 0.04, "gap": 0.06, "marrow": 0.08, "bone": 0.03, "muscle": 0.09, "skin": 0.05,
                 "fat": 0.06, "intestine": 0.12, "colon": 0.12, "bladder": 0.04, "artery": 0.05, "vein": 0.05,
                 "nerve": 0.04}  # fmt: skip


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def colour_table() -> dict[str, tuple[int, int, int]]:
    """Segmentation colour of every structure: fixed (independent of seed and size), unique, never black.

    Colours come from a hash of the name, re-hashed until they are at least 24 apart (L1) from the colours already
    taken, so adding a structure never changes existing colours.
    """
    table: dict[str, tuple[int, int, int]] = {}
    for s in STRUCTURES:
        attempt = 0
        while True:
            d = _digest(f"{s.name}#{attempt}")
            rgb = (32 + d[0] % 224, 32 + d[1] % 224, 32 + d[2] % 224)
            if all(sum(abs(a - b) for a, b in zip(rgb, other, strict=True)) >= 24 for other in table.values()):
                break
            attempt += 1
        table[s.name] = rgb
    return table


def write_colour_table(out_dir: str | os.PathLike) -> str:
    """Write ``colour_table.csv`` into ``out_dir`` atomically; returns its name relative to ``out_dir``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["structure", "group", "red", "green", "blue"])
    colours = colour_table()
    for s in STRUCTURES:
        writer.writerow([s.name, s.group, *colours[s.name]])
    atomic_write_bytes(Path(out_dir) / COLOUR_TABLE, buf.getvalue().encode("utf-8"))
    return COLOUR_TABLE


@dataclass
class VKSlice:
    """One synthetic slice before it is written.

    Attributes:
        photo: uint8 ``(H, W, 3)`` sectioned-body photograph.
        segmentation: uint8 ``(H, W, 3)`` colour-coded structures, black = unlabelled.
        label: int16 ``(H, W)`` structure index into :data:`STRUCTURES` plus one (0 = unlabelled).
        level: anatomical level (one of :data:`LEVELS`).
    """

    photo: np.ndarray
    segmentation: np.ndarray
    label: np.ndarray
    level: str


Box = tuple[slice, slice]
Region = tuple[Box, np.ndarray]  # a pixel box and a boolean mask of the box's shape


class _Canvas:
    """Label map plus a posed template frame in which the anatomy is drawn.

    Template units: the image height is 1; x grows to the image right (patient left), y downwards (posterior);
    the origin is the image centre. A pixel's template position is ``R(-angle) (q - shift) / scale`` where ``q`` is
    its image position in the same units.
    """

    def __init__(
        self, height: int, width: int, rng: np.random.Generator, angle: float, scale: float, shift: tuple[float, float]
    ):
        self.height, self.width, self.rng = height, width, rng
        self.cos, self.sin, self.scale, self.shift = np.cos(angle), np.sin(angle), scale, np.asarray(shift)
        qy = ((np.arange(height) + 0.5 - height / 2) / height - shift[1]).astype(np.float32)[:, None]
        qx = ((np.arange(width) + 0.5 - width / 2) / height - shift[0]).astype(np.float32)[None, :]
        self.x = ((self.cos * qx + self.sin * qy) / scale).astype(np.float32)
        self.y = ((-self.sin * qx + self.cos * qy) / scale).astype(np.float32)
        self.label = np.zeros((height, width), np.int16)
        self.body = np.zeros((height, width), bool)

    def box(self, centre: ArrayLike, radius: float) -> Box:
        """Pixel box (clipped) that contains the template disc ``centre ± radius``."""
        cx, cy = centre
        qx = self.scale * (self.cos * cx - self.sin * cy) + self.shift[0]
        qy = self.scale * (self.sin * cx + self.cos * cy) + self.shift[1]
        col, row = qx * self.height + self.width / 2, qy * self.height + self.height / 2
        r = radius * self.scale * self.height + 2
        rows = slice(int(np.clip(row - r, 0, self.height)), int(np.clip(row + r + 1, 0, self.height)))
        cols = slice(int(np.clip(col - r, 0, self.width)), int(np.clip(col + r + 1, 0, self.width)))
        return rows, cols

    def ellipse(
        self,
        centre: ArrayLike,
        semi: ArrayLike,
        angle_deg: float = 0.0,
        wobble: list[tuple[int, float, float]] | None = None,
        jitter: bool = True,
    ) -> Region:
        """``(box, mask)`` of a rotated ellipse; ``wobble`` lists Fourier terms ``(k, amp, phase)`` of its outline."""
        centre, semi = np.asarray(centre, float), np.asarray(semi, float)
        if jitter:
            centre = centre + self.rng.normal(0, 0.004, 2)
            semi = semi * self.rng.uniform(0.93, 1.07, 2)
            angle_deg = angle_deg + self.rng.uniform(-5, 5)
        bulge = 1.0 + (sum(abs(a) for _, a, _ in wobble) if wobble else 0.0)
        box = self.box(centre, semi.max() * bulge)
        dx, dy = self.x[box] - np.float32(centre[0]), self.y[box] - np.float32(centre[1])
        ca, sa = np.float32(np.cos(np.deg2rad(angle_deg))), np.float32(np.sin(np.deg2rad(angle_deg)))
        a, b = (dx * ca + dy * sa) / np.float32(semi[0]), (dy * ca - dx * sa) / np.float32(semi[1])
        rho = np.sqrt(a * a + b * b)
        if wobble:
            phi = np.arctan2(b, a)
            limit = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in wobble)
            return box, rho < limit
        return box, rho < 1.0

    def capsules(self, points: ArrayLike, half_widths: ArrayLike, jitter: bool = True) -> Region:
        """``(box, mask)`` of a chain of capsules along ``points`` with linearly varying half-width."""
        pts = np.asarray(points, float)
        hw = np.broadcast_to(np.asarray(half_widths, float), (len(pts),)).copy()
        if jitter:
            pts = pts + self.rng.normal(0, 0.004, pts.shape)
            hw = hw * self.rng.uniform(0.9, 1.1)
        lo, hi = pts.min(0) - hw.max(), pts.max(0) + hw.max()
        box = self.box((lo + hi) / 2, float(np.hypot(*(hi - lo))) / 2)
        x, y = self.x[box], self.y[box]
        inside = np.zeros(x.shape, bool)
        for p0, p1, h0, h1 in zip(pts[:-1], pts[1:], hw[:-1], hw[1:], strict=True):
            seg = p1 - p0
            t = np.clip(((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1]) / float(seg @ seg), 0, 1)
            dist = np.hypot(x - p0[0] - t * seg[0], y - p0[1] - t * seg[1])
            inside |= dist < h0 + t * (h1 - h0)
        return box, inside

    def paint(self, name: str, region: Region, within: np.ndarray | None = None, unlabelled_only: bool = False) -> None:
        """Label ``region`` as structure ``name``, clipped to ``within`` (default: the body)."""
        box, mask = region
        target = self.label[box]
        mask = mask & self.body[box] if within is None else mask & within[box]
        if unlabelled_only:
            mask &= target == 0
        target[mask] = _INDEX[name]

    def full(self, region: Region) -> np.ndarray:
        """Region as a full-size boolean mask."""
        box, mask = region
        out = np.zeros(self.label.shape, bool)
        out[box] = mask
        return out

    def body_part(
        self, centre: ArrayLike, semi: ArrayLike, fat: float, angle_deg: float = 0.0
    ) -> Callable[[float], np.ndarray]:
        """Paint skin and subcutaneous fat around a body (or leg) outline.

        Returns a function ``inside(depth)`` giving the full-size mask of the outline shrunk by ``depth`` template
        units below the fat (``inside(0)`` is everything deep to the subcutaneous fat), so inner layers such as
        the abdominal wall follow the same wobbly outline.
        """
        rng = self.rng
        centre = np.asarray(centre, float) + rng.normal(0, 0.005, 2)
        semi = np.asarray(semi, float) * rng.uniform(0.95, 1.05, 2)
        wobble = [(k, rng.uniform(0.005, 0.03) / k, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]
        skin = 0.006
        # The outline's angular profile is evaluated once; shrunk copies only rescale the two axes.
        box = self.box(centre, semi.max() * (1.0 + sum(a for _, a, _ in wobble)))
        dx, dy = self.x[box] - np.float32(centre[0]), self.y[box] - np.float32(centre[1])
        ca, sa = np.float32(np.cos(np.deg2rad(angle_deg))), np.float32(np.sin(np.deg2rad(angle_deg)))
        a, b = dx * ca + dy * sa, dy * ca - dx * sa
        phi = np.arctan2(b / np.float32(semi[1]), a / np.float32(semi[0]))
        limit2 = (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in wobble)) ** 2

        def inside(depth: float) -> np.ndarray:
            sx, sy = np.float32(max(semi[0] - depth, 1e-3)), np.float32(max(semi[1] - depth, 1e-3))
            return self.full((box, (a / sx) ** 2 + (b / sy) ** 2 < limit2))

        outer = inside(0.0)
        self.body |= outer
        self.label[outer] = _INDEX["skin"]
        self.label[inside(skin)] = _INDEX["subcutaneous_fat"]
        self.label[inside(skin + fat)] = 0
        return lambda depth: inside(skin + fat + depth)


def _sides() -> tuple[tuple[str, float], ...]:
    """(name suffix, sign of x) of the patient's right (image left) and left sides."""
    return (("right", -1.0), ("left", 1.0))


def _offset_polyline(points: ArrayLike, distance: float, towards: ArrayLike) -> np.ndarray:
    """Polyline shifted sideways by ``distance`` (template units), on the side facing point ``towards``."""
    pts = np.asarray(points, float)
    out = []
    for i, p in enumerate(pts):
        a, b = pts[max(i - 1, 0)], pts[min(i + 1, len(pts) - 1)]
        t = (b - a) / np.linalg.norm(b - a)
        n = np.array([-t[1], t[0]])
        if n @ (np.asarray(towards) - p) < 0:
            n = -n
        out.append(p + distance * n)
    return np.array(out)


def _small_intestine(cv: _Canvas, cavity: np.ndarray) -> None:
    """Loops of gut in the free part of a cavity: a thresholded smooth field, the rest is mesenteric fat."""
    loops = smooth_field(cv.rng, cv.label.shape, (max(3, cv.height // 24), max(3, cv.width // 24))) > -0.6
    cv.paint("small_intestine", ((slice(None), slice(None)), loops & cavity), unlabelled_only=True)


def _abdomen(cv: _Canvas) -> None:
    """Lumbar level (L4): abdominal wall, vertebra, psoas, quadratus lumborum, erector spinae, gut and great vessels."""
    rng = cv.rng
    inside = cv.body_part((0.0, 0.0), (0.6, 0.36), rng.uniform(0.03, 0.07))
    # Three wall layers with thin fascial gaps between them, as nested copies of the body outline.
    layers = [inside(d) for d in (0.0, 0.012, 0.014, 0.026, 0.028, 0.04)]
    deep = layers[0]
    y, x = cv.y, cv.x
    front = y < -0.1
    for name, side in _sides():
        half = (x * side) > 0
        wall = layers[0] & ~layers[5] & half
        cv.paint(
            f"rectus_abdominis_{name}",
            ((slice(None), slice(None)), wall & front & (np.abs(x) > 0.008) & (np.abs(x) < 0.13)),
            within=deep,
        )
        lateral = half & (np.abs(x) > 0.15) & (y < 0.12)
        for layer, (outer, inner) in zip(
            ("external_oblique", "internal_oblique", "transversus_abdominis"), ((0, 1), (2, 3), (4, 5)), strict=True
        ):
            cv.paint(
                f"{layer}_{name}", ((slice(None), slice(None)), layers[outer] & ~layers[inner] & lateral), within=deep
            )
    cavity = layers[5]

    v = "lumbar_vertebra_L4"
    cv.paint(v, cv.ellipse((0, 0.17), (0.065, 0.05)), within=deep)
    for _, s in _sides():
        cv.paint(v, cv.ellipse((s * 0.04, 0.225), (0.014, 0.028)), within=deep)  # pedicle
        cv.paint(v, cv.capsules([(s * 0.04, 0.25), (0, 0.275)], 0.012), within=deep)  # lamina
        cv.paint(v, cv.capsules([(s * 0.045, 0.215), (s * 0.11, 0.22)], 0.01), within=deep)  # transverse process
    cv.paint(v, cv.capsules([(0, 0.27), (0, 0.33)], 0.01), within=deep)  # spinous process
    cv.paint("cauda_equina", cv.ellipse((0, 0.232), (0.024, 0.018)), within=deep)
    for name, s in _sides():
        cv.paint(
            f"psoas_major_{name}", cv.ellipse((s * 0.1, 0.15), (0.06, 0.05), s * 20), within=deep, unlabelled_only=True
        )
        cv.paint(
            f"quadratus_lumborum_{name}",
            cv.ellipse((s * 0.18, 0.22), (0.06, 0.03), s * 25),
            within=deep,
            unlabelled_only=True,
        )
        cv.paint(
            f"erector_spinae_{name}", cv.ellipse((s * 0.09, 0.285), (0.09, 0.06)), within=deep, unlabelled_only=True
        )
        cv.paint(f"ilium_{name}", cv.ellipse((s * 0.33, 0.16), (0.05, 0.018), -s * 30), within=deep)
    cv.paint("abdominal_aorta", cv.ellipse((0.03, 0.09), (0.022, 0.022)), within=deep)
    cv.paint("inferior_vena_cava", cv.ellipse((-0.045, 0.095), (0.03, 0.02)), within=deep)
    cv.paint("ascending_colon", cv.ellipse((-0.33, 0.02), (0.06, 0.05)), within=cavity)
    cv.paint("descending_colon", cv.ellipse((0.36, 0.06), (0.045, 0.04)), within=cavity)
    _small_intestine(cv, cavity & (y < 0.1))


def _ilium_line(s: float) -> list[tuple[float, float]]:
    """Axial outline of an iliac wing, from the sacroiliac joint forward and outward."""
    return [(s * 0.21, 0.23), (s * 0.33, 0.12), (s * 0.43, -0.02)]


def _pelvis(cv: _Canvas) -> None:
    """Iliac wings and sacrum: gluteal muscles outside the ilium, iliacus inside it, psoas, gut, iliac vessels."""
    rng = cv.rng
    inside = cv.body_part((0.0, 0.0), (0.63, 0.35), rng.uniform(0.03, 0.07))
    deep, inner = inside(0.0), inside(0.03)
    for name, s in _sides():
        ilium = _ilium_line(s)
        cv.paint(f"gluteus_maximus_{name}", cv.ellipse((s * 0.33, 0.25), (0.2, 0.08), -s * 25), within=deep)
        cv.paint(
            f"gluteus_medius_{name}",
            cv.capsules(_offset_polyline(ilium, 0.1, (s, 0.6)), [0.05, 0.045, 0.03]),
            within=deep,
        )
        cv.paint(
            f"gluteus_minimus_{name}",
            cv.capsules(_offset_polyline(ilium, 0.04, (s, 0.6)), [0.025, 0.025, 0.015]),
            within=deep,
        )
        cv.paint(
            f"iliacus_{name}", cv.capsules(_offset_polyline(ilium[1:], 0.055, (0, -0.1)), [0.04, 0.03]), within=deep
        )
        cv.paint(f"psoas_major_{name}", cv.ellipse((s * 0.16, 0.06), (0.05, 0.045)), within=deep)
        cv.paint(f"erector_spinae_{name}", cv.ellipse((s * 0.065, 0.285), (0.06, 0.045)), within=deep)
        cv.paint(f"rectus_abdominis_{name}", cv.ellipse((s * 0.06, -0.295), (0.05, 0.014)), within=deep)
        cv.paint(f"ilium_{name}", cv.capsules(ilium, [0.03, 0.016, 0.01]), within=deep)
        cv.paint("sacrum", cv.ellipse((s * 0.12, 0.19), (0.075, 0.04), s * 12), within=deep)
        cv.paint(f"external_iliac_artery_{name}", cv.ellipse((s * 0.2, -0.02), (0.012, 0.012)), within=deep)
        cv.paint(f"external_iliac_vein_{name}", cv.ellipse((s * 0.17, 0.005), (0.016, 0.012)), within=deep)
    cv.paint("sacrum", cv.ellipse((0, 0.2), (0.1, 0.055)), within=deep)
    cv.paint("cauda_equina", cv.ellipse((0, 0.22), (0.025, 0.012)), within=deep)
    cv.paint("sigmoid_colon", cv.ellipse((0.12, -0.06), (0.06, 0.04)), within=inner, unlabelled_only=True)
    _small_intestine(cv, inner & (cv.y < 0.1))


def _hip(cv: _Canvas) -> None:
    """Hip joints: femoral heads in the acetabulum (ischium, pubis), gluteal and hip muscles, bladder, rectum."""
    rng = cv.rng
    deep = cv.body_part((0.0, 0.0), (0.66, 0.33), rng.uniform(0.03, 0.07))(0.0)
    for name, s in _sides():
        cv.paint(f"gluteus_maximus_{name}", cv.ellipse((s * 0.28, 0.21), (0.24, 0.09), -s * 20), within=deep)
        cv.paint(f"gluteus_medius_{name}", cv.ellipse((s * 0.49, 0.1), (0.05, 0.06)), within=deep)
        cv.paint(f"obturator_internus_{name}", cv.capsules([(s * 0.15, -0.02), (s * 0.13, 0.12)], 0.022), within=deep)
        cv.paint(f"iliopsoas_{name}", cv.ellipse((s * 0.22, -0.11), (0.06, 0.045)), within=deep)
        cv.paint(f"rectus_femoris_{name}", cv.ellipse((s * 0.33, -0.14), (0.04, 0.03)), within=deep)
        cv.paint(f"sartorius_{name}", cv.ellipse((s * 0.42, -0.13), (0.035, 0.022), s * 30), within=deep)
        cv.paint(f"tensor_fasciae_latae_{name}", cv.ellipse((s * 0.52, -0.03), (0.035, 0.055), s * 20), within=deep)
        cv.paint(f"pectineus_{name}", cv.ellipse((s * 0.12, -0.13), (0.045, 0.025), -s * 15), within=deep)
        cv.paint(f"femur_{name}", cv.ellipse((s * 0.27, 0.02), (0.055, 0.055)), within=deep)  # head
        cv.paint(f"femur_{name}", cv.capsules([(s * 0.27, 0.02), (s * 0.38, 0.05)], 0.03), within=deep)  # neck
        cv.paint(f"femur_{name}", cv.ellipse((s * 0.42, 0.06), (0.045, 0.05)), within=deep)  # greater trochanter
        cv.paint(
            f"ischium_{name}", cv.capsules([(s * 0.2, 0.07), (s * 0.24, 0.11), (s * 0.18, 0.17)], 0.022), within=deep
        )
        cv.paint(f"pubis_{name}", cv.capsules([(s * 0.21, -0.045), (s * 0.03, -0.1)], 0.02), within=deep)
        cv.paint(f"femoral_artery_{name}", cv.ellipse((s * 0.2, -0.17), (0.011, 0.011)), within=deep)
        cv.paint(f"femoral_vein_{name}", cv.ellipse((s * 0.16, -0.16), (0.014, 0.012)), within=deep)
        cv.paint(f"sciatic_nerve_{name}", cv.ellipse((s * 0.2, 0.2), (0.016, 0.01)), within=deep)
    cv.paint("coccyx", cv.ellipse((0, 0.24), (0.025, 0.018)), within=deep)
    cv.paint("urinary_bladder", cv.ellipse((0, -0.05), (0.1, 0.07)), within=deep, unlabelled_only=True)
    cv.paint("rectum", cv.ellipse((0, 0.16), (0.035, 0.03)), within=deep, unlabelled_only=True)


# Mid-thigh muscles as power-diagram seeds in leg-normalised coordinates (lateral, posterior), with a weight that
# enlarges the cell; the quadriceps sit in front, the adductors medially and the hamstrings behind.
_THIGH_SEEDS = {
    "rectus_femoris": (0.0, -0.72, 0.0), "vastus_intermedius": (0.05, -0.3, -0.02),
    "vastus_lateralis": (0.62, -0.2, 0.08), "vastus_medialis": (-0.48, -0.45, 0.03),
    "sartorius": (-0.75, -0.08, -0.05), "gracilis": (-0.85, 0.35, -0.06), "adductor_longus": (-0.45, 0.05, 0.0),
    "adductor_magnus": (-0.3, 0.45, 0.06), "semimembranosus": (-0.2, 0.78, 0.0), "semitendinosus": (0.08, 0.85, -0.02),
    "biceps_femoris": (0.45, 0.62, 0.03),
}  # fmt: skip


def _thigh(cv: _Canvas) -> None:
    """Both mid-thighs: femur surrounded by the quadriceps, adductor and hamstring groups, femoral vessels."""
    rng = cv.rng
    spread = rng.uniform(0.3, 0.36)
    names = list(_THIGH_SEEDS)
    for name, s in _sides():
        centre = np.array([s * spread, rng.uniform(-0.02, 0.02)])
        semi = np.array([0.25, 0.29]) * rng.uniform(0.9, 1.05)
        fat = rng.uniform(0.025, 0.055)
        deep = cv.body_part(centre, semi, fat)(0.0)
        inner = semi - 0.006 - fat
        femur_c = centre + np.array([s * 0.02, 0.02]) * rng.uniform(0.5, 1.5)  # slightly lateral of the centre
        femur_r = 0.045 * rng.uniform(0.9, 1.1)
        rows, cols = np.nonzero(deep)
        lat = (cv.x[rows, cols] - centre[0]) * s / inner[0]  # lateral (away from the midline) is positive
        post = (cv.y[rows, cols] - centre[1]) / inner[1]
        seeds = np.array([_THIGH_SEEDS[n][:2] for n in names]) + rng.normal(0, 0.04, (len(names), 2))
        weights = np.array([_THIGH_SEEDS[n][2] for n in names]) + rng.normal(0, 0.01, len(names))
        power = (lat[None] - seeds[:, 0:1]) ** 2 + (post[None] - seeds[:, 1:2]) ** 2 - weights[:, None]
        nearest = np.partition(power, 1, axis=0)
        owner = np.argmin(power, axis=0)
        # Pixels almost equidistant from two seeds are the fascial planes between muscles: leave them unlabelled.
        muscle = (nearest[1] - nearest[0]) > 0.02
        femur_d = np.hypot(cv.x[rows, cols] - femur_c[0], cv.y[rows, cols] - femur_c[1])
        muscle &= femur_d > femur_r + 0.008
        for k, n in enumerate(names):
            sel = muscle & (owner == k)
            cv.label[rows[sel], cols[sel]] = _INDEX[f"{n}_{name}"]
        cv.paint(f"femur_{name}", cv.ellipse(femur_c, (femur_r, femur_r)), within=deep)
        medial = centre + np.array([-s * 0.45, -0.15]) * inner
        cv.paint(f"femoral_artery_{name}", cv.ellipse(medial, (0.011, 0.011)), within=deep)
        cv.paint(f"femoral_vein_{name}", cv.ellipse(medial + (0, 0.022), (0.013, 0.012)), within=deep)
        cv.paint(
            f"sciatic_nerve_{name}", cv.ellipse(centre + np.array([s * 0.05, 0.5]) * inner, (0.018, 0.012)), within=deep
        )
        saphenous = centre + np.array([-s * (inner[0] + 0.5 * fat), 0.1 * inner[1]])
        cv.paint(f"great_saphenous_vein_{name}", cv.ellipse(saphenous, (0.008, 0.008)))


_LEVEL_PAINTERS = {"abdomen": _abdomen, "pelvis": _pelvis, "hip": _hip, "thigh": _thigh}


def _photo(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Render the sectioned-body photograph of a painted canvas, uint8 ``(H, W, 3)``."""
    # Colour slots: 0 background, 1 gap (unlabelled body), 2 marrow, 3 + structure index.
    slot_kind = ["background", "gap", "marrow"] + [s.kind for s in STRUCTURES]
    rgb = np.array([_KIND_RGB[k] for k in slot_kind], np.float32)
    for i, s in enumerate(STRUCTURES):  # muscles differ slightly in hue, as in the real sections
        if s.kind == "muscle":
            d = _digest(s.name.rsplit("_", 1)[0])
            rgb[3 + i] += (np.frombuffer(d[:3], np.uint8).astype(np.float32) / 255 - 0.5) * 28
    texture = np.array([_KIND_TEXTURE[k] for k in slot_kind], np.float32)

    slot = np.where(cv.body, 1, 0).astype(np.int16)
    labelled = cv.label > 0
    slot[labelled] = cv.label[labelled] + 2
    bone_ids = np.array([_INDEX[s.name] for s in STRUCTURES if s.group == "bone"])
    bone = np.isin(cv.label, bone_ids)
    if bone.any():
        # Marrow is bone deeper than a cortical shell of fixed thickness (about 2 mm at the default size); the
        # distance transform only needs the bones' bounding box plus a one-pixel margin of non-bone.
        rows, cols = np.nonzero(bone.any(axis=1))[0], np.nonzero(bone.any(axis=0))[0]
        box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
        depth = ndimage.distance_transform_edt(bone[box])
        cortex = max(1.0, 0.006 * cv.height * cv.scale)
        slot[box][bone[box] & (depth > cortex)] = 2

    H, W = cv.label.shape
    img = rgb[slot] * rng.uniform(0.92, 1.08, 3).astype(np.float32)  # lighting / colour cast of this section
    blur = max(1, round(H / 400))
    if blur > 1:
        img = ndimage.uniform_filter(img, size=(blur, blur, 1))
    shade = 1.0 + 0.05 * smooth_field(rng, (H, W), (3, 4))
    shade += texture[slot] * smooth_field(rng, (H, W), (max(3, H // 24), max(3, W // 24)))
    img *= shade[..., None]
    img += np.float32(4.0) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_visible_korean_case(size: tuple[int, int], rng: np.random.Generator, level: str) -> VKSlice:
    """Build one slice of ``size`` = (H, W) pixels at anatomical ``level``, drawing everything from ``rng``."""
    height, width = (int(s) for s in size)
    if height < 32 or width < 32:
        raise ValueError(f"size must be at least 32 x 32, got {size}")
    if level not in _LEVEL_PAINTERS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    angle = np.deg2rad(rng.uniform(-6, 6))
    scale = rng.uniform(0.9, 1.06)
    shift = (rng.uniform(-0.05, 0.05), rng.uniform(-0.03, 0.03))
    cv = _Canvas(height, width, rng, angle, scale, shift)
    _LEVEL_PAINTERS[level](cv)
    photo = _photo(cv, rng)
    lut = np.zeros((len(STRUCTURES) + 1, 3), np.uint8)
    colours = colour_table()
    for s in STRUCTURES:
        lut[_INDEX[s.name]] = colours[s.name]
    return VKSlice(photo=photo, segmentation=lut[cv.label], label=cv.label, level=level)


def _write_case(payload: tuple[str, str, int, int, tuple[int, int]]) -> list[str]:
    out_dir, case_id, seed, index, size = payload
    case = make_visible_korean_case(size, case_rng(seed, index), LEVELS[index % len(LEVELS)])
    written = []
    for folder, rgb in (("images", case.photo), ("segmentations", case.segmentation)):
        rel = f"{folder}/{case_id}.png"
        atomic_write_bytes(Path(out_dir) / rel, png_bytes(rgb))
        written.append(rel)
    return written


def generate_visible_korean(
    out_dir: str | os.PathLike,
    cases: int = 10,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    workers: int | None = None,
    verbose: bool = True,
) -> list[str]:
    """Write ``cases`` synthetic slices plus ``colour_table.csv`` under ``out_dir`` (module docstring).

    Args:
        size: (H, W) pixels of every image.

    Returns:
        Case ids ``["VK_0000", ...]``.
    """
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    size = tuple(int(s) for s in size)
    jobs = [(f"VK_{i:04d}", (str(out_dir), f"VK_{i:04d}", seed, i, size)) for i in range(cases)]
    args = {"cases": cases, "size": list(size), "seed": seed}
    return generate_dataset(
        out_dir,
        "common.synthetic.visible_korean",
        args,
        jobs,
        _write_case,
        workers,
        shared_files=lambda out: [write_colour_table(out)],
        verbose=verbose,
    )
