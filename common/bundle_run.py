"""Run a bundle the way users do, ``python -m monai.bundle run``, in a subprocess, from tools written in Python.

Used by the ablation runner (:mod:`common.ablation`), which ships inside every packaged bundle, and by the
repository's own tools in ``ci/``. Settings travel as a last config file (an overlay) rather than ``--id value``
pairs, so that lists, booleans and expressions keep their JSON types.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["PACKAGE_ROOT", "bundle_env", "monai_bundle_run"]

#: The folder that holds ``common/``: the repository root, or the root of a packaged bundle.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def bundle_env(extra_pythonpath: Sequence[str | os.PathLike] = (PACKAGE_ROOT,)) -> dict[str, str]:
    """Environment for a bundle subprocess: ``common`` importable from any working directory, unbuffered output."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def monai_bundle_run(
    config_files: Sequence[str | os.PathLike],
    cwd: str | os.PathLike = PACKAGE_ROOT,
    log_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    append: bool = False,
) -> float:
    """Run ``python -m monai.bundle run`` on stacked config files and return the wall time in seconds.

    Output goes to ``log_file`` (or is inherited). A failure raises ``RuntimeError`` carrying the last 40 lines
    of the log, where MONAI's traceback and our own error messages are. ``append`` adds to an existing log
    (a resumed training keeps the log of its interrupted attempt above its own).
    """
    files = "[" + ",".join(repr(str(f)) for f in config_files) + "]"
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", files]
    env = dict(env or bundle_env())
    start = time.perf_counter()
    if log_file is None:
        proc = subprocess.run(cmd, cwd=cwd, env=env)
        tail = ""
    else:
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a" if append else "w") as log:
            log.write("$ " + " ".join(cmd) + "\n\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        tail = "\n".join(log_file.read_text().splitlines()[-40:])
    if proc.returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise RuntimeError(f"monai.bundle run {files} exited with {proc.returncode}{where}\n{tail}")
    return time.perf_counter() - start
