"""Command line of :mod:`common.data.visible_korean`: ``prepare`` writes the label maps and the datalist of a
Visible Korean dataset folder (:mod:`.preparation`).

::

    python -m common.data.visible_korean prepare --dataset-dir DIR --out OUT \\
        [--test-fraction 0.2] [--val-fraction 0.2] [--quality-check 4] [--block-size 50] [--seed 0]
        [--unknown-colours error]

Bad input ends with one ``error: <message>`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .preparation import prepare
from .reader import DEFAULT_BLOCK_SIZE, DEFAULT_QUALITY_CHECK, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, VKDataError
from .transforms import UNKNOWN_COLOUR_POLICIES

_DESCRIPTION = (
    "Visible Korean (VK) body slices: colour table, colour-coded segmentations to bone/muscle label maps, the 8:2 "
    "split with a quality-check list."
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m common.data.visible_korean prepare --dataset-dir DIR --out OUT [options]``."""
    parser = argparse.ArgumentParser(prog="python -m common.data.visible_korean", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write bone/muscle label maps and the datalist of a Visible Korean folder")
    p.add_argument("--dataset-dir", required=True, help="folder with colour_table.csv, images/ and segmentations/")
    p.add_argument("--out", required=True, help="output folder for labels/ and datalist.json (created if missing)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help=f"validation fraction of the non-quality-check slices (default {DEFAULT_VAL_FRACTION})",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help=f"share of the slices held out as test slices, never trained on (default {DEFAULT_TEST_FRACTION})",
    )
    p.add_argument(
        "--quality-check",
        type=int,
        default=DEFAULT_QUALITY_CHECK,
        help=f"held-out slices for visual checks, in neither split (default {DEFAULT_QUALITY_CHECK})",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        help=f"consecutive slices kept on one side of the split (default {DEFAULT_BLOCK_SIZE}; 1 = per-slice)",
    )
    p.add_argument("--seed", type=int, default=0, help="order of the blocks (default 0)")
    p.add_argument(
        "--unknown-colours",
        choices=UNKNOWN_COLOUR_POLICIES,
        default="error",
        help="colours in no row of the colour table: stop (default) or treat as background with a warning",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        prepare(
            args.dataset_dir,
            args.out,
            val_fraction=args.val_fraction,
            quality_check=args.quality_check,
            seed=args.seed,
            block_size=args.block_size,
            unknown=args.unknown_colours,
            verbose=True,
            test_fraction=args.test_fraction,
        )
    except VKDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
