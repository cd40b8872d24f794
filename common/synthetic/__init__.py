"""Deterministic synthetic phantoms written in the real on-disk layouts of the zoo's datasets.

* :func:`generate_brats` - multimodal brain-tumour MRI in the BraTS 2021 or 2023 case-folder layout.
* :func:`generate_btcv` - abdominal CT with 13 organ labels in the BTCV ``RawData/Training/{img,label}`` layout.
* :func:`generate_visible_korean` - sectioned-body photographs with colour-coded segmentations and a colour table.

All generators are deterministic by seed (case ``k`` draws from its own generator seeded by ``(seed, k)``),
write every file atomically and write ``synthetic_manifest.json`` last; a second call with the same arguments
is a no-op. Command line: ``python -m common.synthetic {brats,btcv,visible_korean} --out DIR ...``.
"""

from .brats import generate_brats, make_brats_case
from .btcv import generate_btcv, make_btcv_case
from .visible_korean import generate_visible_korean, make_visible_korean_case

__all__ = [
    "generate_brats",
    "generate_btcv",
    "generate_visible_korean",
    "make_brats_case",
    "make_btcv_case",
    "make_visible_korean_case",
]
