"""A bundle released with another version of ``common`` than the process imported refuses to run."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

import common
from common.settings import command_line_problems
from tests.helpers import REPO_ROOT


def _release_like(tmp_path: Path, version: str | None) -> Path:
    """A bundle folder as a release unpacks it: configs plus, unless ``version`` is None, its own common."""
    bundle = tmp_path / "fct_visible_korean"
    shutil.copytree(REPO_ROOT / "bundles" / "fct_visible_korean" / "configs", bundle / "configs")
    if version is not None:
        (bundle / "common").mkdir()
        text = (REPO_ROOT / "common" / "__init__.py").read_text()
        (bundle / "common" / "__init__.py").write_text(
            text.replace(f'__version__ = "{common.__version__}"', f'__version__ = "{version}"')
        )
    return bundle


def test_same_version_or_no_copy_passes(tmp_path: Path) -> None:
    common.check_common(_release_like(tmp_path / "a", common.__version__))
    common.check_common(_release_like(tmp_path / "b", None))
    assert common.shipped_common_version(tmp_path / "a" / "fct_visible_korean") == common.__version__


def test_another_version_is_refused_naming_both(tmp_path: Path) -> None:
    bundle = _release_like(tmp_path, "0.0.1")
    with pytest.raises(common.CommonVersionError, match=r"ships common 0\.0\.1, but this process runs common "):
        common.check_common(bundle)


def test_monai_bundle_run_stops_on_another_version(tmp_path: Path) -> None:
    bundle = _release_like(tmp_path, "0.0.1")
    problems = command_line_problems(["--config_file", str(bundle / "configs" / "inference.json")])
    assert len(problems) == 1 and "ships common 0.0.1" in problems[0]


def test_every_release_ships_the_version_it_was_built_with(tmp_path: Path) -> None:
    from ci import package_bundle

    package_bundle.main([str(REPO_ROOT / "bundles" / "fct_visible_korean"), "--out", str(tmp_path)])
    (zip_path,) = tmp_path.glob("fct_visible_korean_v*.zip")
    with zipfile.ZipFile(zip_path) as archive:
        text = archive.read("fct_visible_korean/common/__init__.py").decode()
    assert f'__version__ = "{common.__version__}"' in text
