"""Command line: ``python -m common.synthetic {brats,btcv,visible_korean} --out DIR [options]``.

Examples::

    python -m common.synthetic brats --out data/brats --cases 10 --convention 2021
    python -m common.synthetic btcv --out data/btcv --cases 4 --size 128 128 48
    python -m common.synthetic visible_korean --out data/vk --cases 10 --size 1216 2048

Progress: a bar over the cases on a terminal (none under ``CI=true``, :mod:`common.progress`), one line per case
otherwise; ``--quiet`` prints neither.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .brats import BRATS_CONVENTIONS, generate_brats
from .btcv import CASE_ORDER, generate_btcv
from .btcv import DEFAULT_SIZE as BTCV_SIZE
from .visible_korean import DEFAULT_SIZE as VK_SIZE
from .visible_korean import generate_visible_korean


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m common.synthetic",
        description="Write deterministic synthetic phantoms in a dataset's real on-disk layout.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True)

    def common(p: argparse.ArgumentParser, cases: int, size: Sequence[int], size_help: str) -> None:
        p.add_argument("--out", required=True, help="output folder (created if missing)")
        p.add_argument("--cases", type=_positive, default=cases, help=f"number of cases (default {cases})")
        p.add_argument(
            "--size",
            type=_positive,
            nargs=len(size),
            default=list(size),
            metavar="N",
            help=f"array shape on disk: {size_help} (default {' '.join(map(str, size))})",
        )
        p.add_argument("--seed", type=_non_negative, default=0, help="base seed (default 0)")
        p.add_argument("--workers", type=_positive, default=None, help="processes (default: all CPUs)")
        p.add_argument("--quiet", action="store_true", help="no progress bar, no per-case lines")

    p = sub.add_parser("brats", help="BraTS multimodal MRI case folders")
    common(p, 10, (240, 240, 155), "X Y Z, 1 mm voxels")
    p.add_argument(
        "--convention",
        choices=sorted(BRATS_CONVENTIONS),
        default="2021",
        help="file naming and labels: 2021 (t1/t1ce/t2/flair, ET=4) or 2023 (t1n/t1c/t2w/t2f, ET=3)",
    )
    p = sub.add_parser("btcv", help="BTCV RawData/Training img/label CT volumes")
    common(p, len(CASE_ORDER), BTCV_SIZE, "X Y Z; spacing is scaled so the body still fits")
    p = sub.add_parser("visible_korean", help="Visible Korean slice photographs, colour-coded masks, colour table")
    common(p, 10, VK_SIZE, "HEIGHT WIDTH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = dict(
        cases=args.cases, size=tuple(args.size), seed=args.seed, workers=args.workers, verbose=not args.quiet
    )
    if args.dataset == "brats":
        generate_brats(args.out, convention=args.convention, **options)
    elif args.dataset == "btcv":
        if args.cases > len(CASE_ORDER):
            build_parser().error(f"btcv has {len(CASE_ORDER)} cases, got --cases {args.cases}")
        generate_btcv(args.out, **options)
    else:
        generate_visible_korean(args.out, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
