"""What kind of CPU this is, as far as the zoo's inference speed is concerned, and which path follows from it.

The projects' machines, and users' workstations, come in two kinds that need different paths:

* **AVX-512 BF16** (and AMX on newer Intel Xeons): oneDNN runs bf16 convolutions and matrix multiplies natively,
  about twice the float32 rate or more, so ``fast_cpu`` uses bf16 autocast.
* **AVX2 only** (most workstations, many hospital servers, older EPYCs): oneDNN emulates bf16 far slower than
  float32 (orders of magnitude for a 3D convolution), so ``fast_cpu`` stays in float32.

:func:`describe_cpu` reads both what the hardware has (``/proc/cpuinfo`` flags) and what the kernels may use, which
can be less: ``ONEDNN_MAX_CPU_ISA=AVX2`` with ``ATEN_CPU_CAPABILITY=avx2`` restricts oneDNN and PyTorch's own
kernels to AVX2, which makes an AVX-512 machine run the AVX2 path (``make bench-avx2``). Such a run emulates the
instruction set, not the other machine's clock, cache or memory bandwidth, and its report says so.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "describe_cpu", "hardware_kind", "native_bf16", "restricted_isa"]

#: The flags that decide the fast path, as ``/proc/cpuinfo`` names them.
DECIDING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
#: The environment variables that restrict the kernels' instruction set below the hardware's.
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name, or the platform's processor name where ``/proc/cpuinfo`` is missing."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def restricted_isa() -> dict[str, str]:
    """The instruction-set restrictions set in the environment (:data:`ISA_VARIABLES` that are set)."""
    return {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)}


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX, and not restricted below them): the test
    ``fast_cpu`` uses to choose bf16. oneDNN's own answer, so it follows ``ONEDNN_MAX_CPU_ISA``."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_cpu() -> dict:
    """The CPU's model, its deciding flags, the kernels' instruction set, and the precision ``fast_cpu`` takes.

    ``kind`` is the one-line name used in reports, e.g. ``"AVX-512 BF16 + AMX"`` or ``"AVX2 only (emulated: ...)"``.
    """
    import torch

    flags = cpu_flags()
    restricted = restricted_isa()
    bf16 = native_bf16()
    capability = torch.backends.cpu.get_cpu_capability()  # PyTorch's own kernels: "AVX512", "AVX2", "DEFAULT"
    if bf16:
        kind = "AVX-512 BF16 + AMX" if "amx_bf16" in flags else "AVX-512 BF16"
    elif capability == "AVX512":
        kind = "AVX-512 without BF16"
    elif capability == "AVX2":
        kind = "AVX2 only"
    else:
        kind = f"{capability} (no AVX2)"
    if restricted:
        settings = " ".join(f"{k}={v}" for k, v in sorted(restricted.items()))
        kind += f" (emulated on a CPU with {hardware_kind(flags)}: {settings})"
    return {
        "cpu_model": cpu_model(),
        "flags": {name: name in flags for name in DECIDING_FLAGS},
        "kernel_isa": capability,
        "restricted_isa": restricted,
        "native_bf16": bf16,
        "fast_cpu_precision": "bf16" if bf16 else "float32",
        "kind": kind,
    }


def hardware_kind(flags: frozenset[str] | None = None) -> str:
    """What the hardware itself offers, whatever the environment restricts: ``"AVX-512 BF16 + AMX"``,
    ``"AVX-512 BF16"``, ``"AVX-512"``, ``"AVX2"`` or ``"neither AVX2 nor AVX-512"``."""
    flags = cpu_flags() if flags is None else flags
    if "avx512_bf16" in flags:
        return "AVX-512 BF16 + AMX" if "amx_bf16" in flags else "AVX-512 BF16"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "neither AVX2 nor AVX-512"
