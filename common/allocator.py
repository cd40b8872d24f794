"""Keep freed memory in the process: the one allocator setting that speeds up both CPU training and inference here.

glibc serves every allocation above a few MiB with a fresh ``mmap`` and unmaps it again on free. A 3D network's
activations are hundreds of MiB each, so every forward (and backward) pass page-faults them in again, zero-filled,
from the kernel. Telling glibc to take large blocks from its heap and never to trim it keeps that memory for the
next pass. ``make bench-full`` measures it next to everything else (its allocator ablation rows: about half the
time of an fp32 sliding window and of a COHRA-UNet training step on 2 cores; the figures, with the CPU they were
measured on, are in ``bench/results/``).

The cost: the process keeps its peak memory until it exits instead of returning it between passes, which is what a
training run or an inference server holds anyway. It is process-wide and stays on once set. The PyTorch CPU tuning
guide reaches the same end by preloading jemalloc or tcmalloc; this needs no extra library.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory"]

# glibc's <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_retained = False


def retain_freed_memory() -> bool:
    """Make the C allocator keep freed memory for reuse instead of returning it to the OS; ``True`` if it now does.

    Only glibc on Linux has the knobs; elsewhere (macOS, Windows, musl) nothing changes and ``False`` is returned.
    Forked processes (DataLoader workers) inherit the setting.
    """
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # No mmap for large blocks (they come from the heap and are reused), and keep up to 2 GiB of free heap top
    # (mallopt takes an int). musl's mallopt is a stub that returns 0, so this stays False there.
    _retained = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _retained
