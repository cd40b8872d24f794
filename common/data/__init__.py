"""Dataset readers, datalists and split files for the real on-disk layouts.

One home per dataset, and a reader can rely on this rule:

- Each dataset is one package or module here, named after it: :mod:`.brats`, :mod:`.visible_korean` (packages)
  and :mod:`.btcv` (one module, being small). It holds the dataset's reader (file layout, datalists, split files)
  and the transforms that belong to that dataset's label convention (:class:`~.brats.ConvertBratsLabelsd`,
  :class:`~.brats.CheckBratsLabelsd`, :class:`~.brats.RegionsToBratsLabelsd`,
  :class:`~.visible_korean.ColourCoding`, :class:`~.btcv.BTCVToSynapse12d`).
- A package splits these into ``reader.py`` (imports neither MONAI nor the phantom generator) and ``transforms.py``
  (which may import the reader, never the other way round); a step that needs both has its own module
  (``visible_korean/preparation.py``), and the command line, where the dataset has one, is ``__main__.py``
  (``python -m common.data.<dataset> ...``). The package's ``__init__`` re-exports the public names, so configs and
  code say ``common.data.<dataset>.X`` whichever module ``X`` lives in.
- Datalists that the bundles write themselves have a module of their own: :mod:`.refinement`, the RefNet datalists
  of base-model predictions (written by :mod:`common.base_predictions`).
- Transforms that do not depend on a dataset's files or label values live in :mod:`common.transforms`; phantoms
  written in these layouts in :mod:`common.synthetic`.

This module itself holds what every dataset's evaluation shares: which split an evaluation scores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import BadInputError

__all__ = ["EVALUATION_SPLITS", "evaluation_cases"]

#: What ``evaluate.json`` may score: the held-out test cases (the default), the model-selection (validation) fold, or
#: the cases the model was trained on (how well it fits them: next to the test score it tells an underfitting model
#: from an overfitting one).
EVALUATION_SPLITS = ("test", "validation", "training")


def evaluation_cases(splits: Mapping[str, Sequence[Any]], split: str, source: str | os.PathLike) -> list[Any]:
    """The cases an evaluation scores: ``splits[split]``, with ``split`` one of :data:`EVALUATION_SPLITS`.

    A validation score chose the model and a training score is on cases it learnt, so both overstate how the model
    does on new cases; only ``"test"`` is an unbiased estimate. An empty test split is refused rather than silently
    scored as something else.

    Args:
        splits: ``{"test": [...], "validation": [...], "training": [...]}`` as read from the bundle's split file or
            datalist.
        split: the config's ``eval_split``.
        source: the split file or datalist, named in the message.

    Raises:
        BadInputError: ``split`` is not a known split, or it holds no cases.
    """
    if split not in EVALUATION_SPLITS:
        raise BadInputError(f"eval_split must be one of {list(EVALUATION_SPLITS)}, got {split!r}.")
    cases = list(splits.get(split) or [])
    if not cases:
        hint = (
            "remake the split file or datalist with a held-out test share (the data preparation command's "
            "--test-fraction), or score the model-selection fold with --eval_split validation (a biased score)"
            if split == "test"
            else "check the split file"
        )
        raise BadInputError(f"'{source}' holds no {split} cases: {hint}.")
    return cases
