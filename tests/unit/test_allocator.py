"""common.allocator.retain_freed_memory: freed memory stays in the process, and every training config sets it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

# Allocates and frees a 256 MiB tensor, then prints how much of it is still resident (MiB).
_PROBE = """
import sys, torch
from common.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss_mib()
x = torch.ones(64 * 2**20)  # 256 MiB, every page touched
del x
print(rss_mib() - before)
"""


def _kept_after_free(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_kept_only_when_asked():
    assert _kept_after_free("default") < 64  # glibc unmaps a block this large on free
    assert _kept_after_free("retain") > 200  # kept in the heap for the next pass


@pytest.mark.parametrize("bundle", ["cohra_unet_brats", "fct_visible_korean", "mtcm_kd_t1ce_student", "refnet_synapse"])
def test_every_training_config_retains_freed_memory(bundle):
    from monai.bundle import ConfigParser

    configs = REPO_ROOT / "bundles" / bundle / "configs"
    names = [p.name for p in configs.glob("train*.json")] + ["multi_gpu_train.json"]
    for name in names:
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / name)])
        init = json.dumps(parser["initialize"])
        assert parser["retain_freed_memory"] is True, name
        assert "common.allocator.retain_freed_memory() if common.settings.flag(@retain_freed_memory)" in init, name
