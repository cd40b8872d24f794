"""The OpenVINO runtime's tests (``tests/unit/openvino_cases.py``), run by pytest in a process of their own.

OpenVINO starts a thread pool that does not survive a fork; run in this pytest process, its tests made a later test
that forks DataLoader workers crash with SIGSEGV. So they run in a child pytest, and this test reports its result.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import OPENVINO_IN_PROCESS, REPO_ROOT


def test_openvino_runtime_cases_in_their_own_process(tmp_path):
    cases = REPO_ROOT / "tests" / "unit" / "openvino_cases.py"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases), "--basetemp", str(tmp_path)]
    env = {**os.environ, OPENVINO_IN_PROCESS: "1"}
    run = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
