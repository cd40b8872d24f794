"""The CPU kind that decides the fast path (common/cpu.py), on this machine and with its kernels restricted to AVX2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from common.cpu import describe_cpu, hardware_kind, native_bf16
from common.fast_inference import bf16_supported
from tests.helpers import REPO_ROOT

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def _describe_in(env: dict[str, str]) -> dict:
    code = "import json; from common.cpu import describe_cpu; from common.fast_inference import bf16_supported; "
    code += "print(json.dumps({**describe_cpu(), 'bf16_supported': bf16_supported('cpu')}))"
    clean = {k: v for k, v in os.environ.items() if k not in AVX2_ONLY}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={**clean, **env}, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AVX-512 BF16 + AMX"),
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX-512 BF16"),
        ({"avx2", "avx512f"}, "AVX-512"),
        ({"avx2", "fma"}, "AVX2"),
        ({"sse4_2"}, "neither AVX2 nor AVX-512"),
    ],
)
def test_hardware_kind_from_flags(flags, kind):
    assert hardware_kind(frozenset(flags)) == kind


def test_the_fast_path_takes_bf16_exactly_where_onednn_runs_it_natively():
    cpu = describe_cpu()
    assert native_bf16() == bf16_supported("cpu") == cpu["native_bf16"]
    assert cpu["fast_cpu_precision"] == ("bf16" if cpu["native_bf16"] else "float32")
    if torch.backends.mkldnn.is_available():
        assert cpu["native_bf16"] == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_kernels_restricted_to_avx2_take_the_float32_path_and_say_it_is_emulated():
    cpu = _describe_in(AVX2_ONLY)
    assert cpu["kernel_isa"] == "AVX2" and cpu["restricted_isa"] == AVX2_ONLY
    assert not cpu["native_bf16"] and not cpu["bf16_supported"] and cpu["fast_cpu_precision"] == "float32"
    assert cpu["kind"].startswith("AVX2 only")
    assert "emulated on a CPU with" in cpu["kind"] and "ONEDNN_MAX_CPU_ISA=AVX2" in cpu["kind"]
    assert cpu["flags"] == describe_cpu()["flags"], "the hardware's flags are reported as they are"


def test_an_unrestricted_run_names_no_emulation():
    cpu = _describe_in({})
    assert cpu["restricted_isa"] == {} and "emulated" not in cpu["kind"]
