"""Check a downloaded release zip against the zoo's catalogue before using it, from a checkout of the repository.

    python -m common.release verify <name>_v<version>.zip --catalogue model_info.json

The check itself lives in :mod:`common.verify_release`, which imports only the standard library because
``ci/package_bundle.py`` publishes it verbatim as ``verify_release.py`` next to ``model_info.json``: users who have
only the downloads run ``python verify_release.py <zip> --catalogue model_info.json``, the same code as this command.
Exit status 0 only when the zip passes. Weights listed in a bundle's ``large_files.yml`` need no such step:
``download_large_files`` checks their sha256.
"""

from __future__ import annotations

import argparse
import sys

from common.verify_release import add_arguments, check, unsafe_members, verify_release_zip

__all__ = ["unsafe_members", "verify_release_zip"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("verify", help="compare a release zip with its model_info.json entry"))
    args = parser.parse_args(argv)
    return check(args.zip, args.catalogue)


if __name__ == "__main__":
    sys.exit(main())
