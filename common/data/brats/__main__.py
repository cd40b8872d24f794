"""Command line of :mod:`common.data.brats`: ``make-split`` writes a k-fold split file of a BraTS dataset folder.

::

    python -m common.data.brats make-split --dataset-dir /data/BraTS2021 --out /data/brats_folds.json --folds 5

Bad input ends with one ``error: <message>`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .reader import DEFAULT_MODALITIES, DEFAULT_TEST_FRACTION, BratsDataError, write_split_file

_DESCRIPTION = "BraTS on-disk layouts: naming conventions, datalists, k-fold split files and label conventions."


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m common.data.brats make-split --dataset-dir D --out F [--folds 5] [--seed 0] [--test-fraction F]``."""
    parser = argparse.ArgumentParser(prog="python -m common.data.brats", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    ms = sub.add_parser("make-split", help="write a k-fold cross-validation split file of a BraTS dataset folder")
    ms.add_argument("--dataset-dir", required=True, help="folder holding one sub-folder per BraTS case")
    ms.add_argument("--out", required=True, help="JSON file to write (atomically)")
    ms.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    ms.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    ms.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help=f"share of the cases held out as test cases, never trained on (default {DEFAULT_TEST_FRACTION}; 0: none)",
    )
    ms.add_argument(
        "--modalities",
        nargs="+",
        default=list(DEFAULT_MODALITIES),
        help="channel order, 2021 names (default: t1 t1ce t2 flair)",
    )
    ms.add_argument("--no-label", action="store_true", help="do not require or list the seg files")
    args = parser.parse_args(argv)

    try:
        split = write_split_file(
            args.dataset_dir,
            args.out,
            folds=args.folds,
            seed=args.seed,
            modalities=args.modalities,
            with_label=not args.no_label,
            test_fraction=args.test_fraction,
        )
    except BratsDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = [sum(1 for e in split["training"] if e["fold"] == k) for k in range(split["num_folds"])]
    print(
        f"wrote {args.out}: {len(split['testing'])} held-out test and {len(split['training'])} cross-validation "
        f"cases ({split['convention']}), {split['num_folds']} folds of sizes {sizes}, seed {split['seed']}, "
        f"modalities {split['modalities']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
