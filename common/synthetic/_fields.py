"""Random-number and smooth-field helpers shared by the phantom generators.

Everything here is vectorised numpy. Smooth random fields are built from a handful of random node values and
interpolated to full resolution with separable Gaussian radial-basis weights, i.e. one small contraction per axis,
instead of filtering white noise at full resolution (which would cost orders of magnitude more).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["case_rng", "smooth_field", "box_around", "axis_coords"]


def case_rng(seed: int, case_index: int) -> np.random.Generator:
    """Independent generator for one case.

    Deriving it from ``(seed, case_index)`` rather than drawing from one shared stream makes case ``k`` identical
    whatever the number of cases requested and whichever worker process builds it.
    """
    if seed < 0 or case_index < 0:
        raise ValueError(f"seed and case index must be non-negative, got seed={seed}, case_index={case_index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(case_index)]))


def _rbf_weights(length: int, nodes: int) -> np.ndarray:
    """Row-normalised Gaussian interpolation weights, shape ``(length, nodes)``, float32.

    Node centres extend half a node spacing past both ends so that the field has no visible edge effect.
    """
    if nodes < 2:
        return np.ones((length, 1), dtype=np.float32)
    pos = np.arange(length, dtype=np.float64) / max(length - 1, 1)
    margin = 0.5 / (nodes - 1)
    centres = np.linspace(-margin, 1.0 + margin, nodes)
    sigma = 0.6 * (centres[1] - centres[0])
    w = np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / sigma) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


# OpenBLAS runs a GEMM with at most this many multiply-adds on the calling thread only (SMP_THRESHOLD_MIN times
# GEMM_MULTITHREAD_THRESHOLD). Larger calls wake its thread pool, whose spinning threads starve the other worker
# processes; slicing the product into calls below the threshold keeps BLAS speed without that contention.
_SINGLE_THREAD_GEMM = 65536 * 4


def _contract_leading(array: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``einsum("a...,la->...l")``: contract ``array``'s first axis with ``weights`` ``(L, n)``, append ``L``."""
    n, rest, length = array.shape[0], array.shape[1:], weights.shape[0]
    rows = np.ascontiguousarray(array.reshape(n, -1).T)
    out = np.empty((rows.shape[0], length), dtype=np.float32)
    w_t = np.ascontiguousarray(weights.T)
    step = max(1, _SINGLE_THREAD_GEMM // (n * length))
    for start in range(0, rows.shape[0], step):
        np.matmul(rows[start : start + step], w_t, out=out[start : start + step])
    return out.reshape(*rest, length)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], nodes: Sequence[int] | int) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation.

    Args:
        rng: generator; exactly ``prod(nodes)`` normal draws are consumed, independent of ``shape``.
        shape: output shape (any number of dimensions).
        nodes: number of random nodes per axis (an int applies to every axis); the correlation length is about
            ``shape[d] / nodes[d]`` voxels.

    Returns:
        float32 array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    nodes = (int(nodes),) * len(shape) if isinstance(nodes, (int, np.integer)) else tuple(int(n) for n in nodes)
    if len(nodes) != len(shape):
        raise ValueError(f"nodes {nodes} and shape {shape} differ in length")
    out = rng.standard_normal(nodes).astype(np.float32)
    # Contracting the leading axis each time appends the interpolated axis at the end, so after one pass per
    # axis the axes are back in order.
    for length, n in zip(shape, nodes, strict=True):
        out = _contract_leading(out, _rbf_weights(length, n))
    # A strided subsample estimates the moments well enough and avoids two more full passes over big volumes.
    step = tuple(slice(None, None, max(1, s // 32)) for s in shape)
    sample = out[step]
    std = float(sample.std())
    out -= np.float32(sample.mean())
    if std > 1e-12:
        out *= np.float32(1.0 / std)
    return np.ascontiguousarray(out, dtype=np.float32)


def box_around(centre: Sequence[float], half_extent: Sequence[float], shape: Sequence[int]) -> tuple[slice, ...]:
    """Index box (clipped to ``shape``) that covers ``centre ± half_extent`` (all in voxels)."""
    box = []
    for c, h, n in zip(centre, half_extent, shape, strict=True):
        lo = int(np.clip(np.floor(c - h), 0, n))
        hi = int(np.clip(np.ceil(c + h) + 1, lo, n))
        box.append(slice(lo, hi))
    return tuple(box)


def axis_coords(box: Sequence[slice], origin: Sequence[float], spacing: Sequence[float]) -> list[np.ndarray]:
    """Physical coordinates of a box's voxels, one broadcastable float32 array per axis.

    Coordinate ``d`` of voxel index ``i`` is ``(i - origin[d]) * spacing[d]``; the array for axis ``d`` has the
    box's length on axis ``d`` and length 1 elsewhere, so arithmetic between them broadcasts to the box shape.
    """
    ndim = len(box)
    coords = []
    for d, (sl, o, s) in enumerate(zip(box, origin, spacing, strict=True)):
        c = ((np.arange(sl.start, sl.stop, dtype=np.float32) - np.float32(o)) * np.float32(s)).astype(np.float32)
        view = [1] * ndim
        view[d] = c.size
        coords.append(c.reshape(view))
    return coords
