"""Shared components of the bundle zoo.

Bundle configs reference these as ``common.<module>.<Name>``. In the repository ``common`` is importable
from the repository root; a packaged bundle carries a copy of it at its own root, so it runs outside the repo.

A process imports one ``common``, the first on ``sys.path``, however many bundles it loads (MONAI Label and MONAI
Deploy load several). :func:`check_common` makes a bundle whose own copy is another version refuse to run, instead
of running silently on code it was not released with.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.errors import BadInputError

__all__ = ["CommonVersionError", "__version__", "check_common", "shipped_common_version"]

#: Raised with every change of ``common`` that a released bundle could notice; releases carry it in their copy.
__version__ = "1.6.0"

_VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', flags=re.MULTILINE)


class CommonVersionError(BadInputError):
    """A bundle shipped with another version of ``common`` than the one this process imported."""


def shipped_common_version(bundle_dir: str | os.PathLike) -> str | None:
    """The version of the ``common`` copy at the root of a packaged bundle, or ``None`` when it carries none.

    Read from the file's text, not imported: the point is to compare it with the ``common`` already imported.
    """
    init = Path(bundle_dir) / "common" / "__init__.py"
    if not init.is_file():
        return None
    match = _VERSION_LINE.search(init.read_text(encoding="utf-8", errors="replace"))
    return match.group(1) if match else "unversioned"


def check_common(bundle_dir: str | os.PathLike) -> None:
    """Refuse a bundle whose own ``common`` is not the version this process runs (a bundle without a copy, as in
    the repository, uses the imported one and passes).

    Raises:
        CommonVersionError: naming both versions and where each comes from.
    """
    shipped = shipped_common_version(bundle_dir)
    if shipped is None or shipped == __version__:
        return
    raise CommonVersionError(
        f"{Path(bundle_dir)}: the bundle ships common {shipped}, but this process runs common {__version__} from "
        f"'{Path(__file__).parent}' (the first common on sys.path); serve bundles of one zoo release together, or "
        "run this bundle in a process of its own."
    )
