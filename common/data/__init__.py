"""Dataset readers, datalists and split files for the real on-disk layouts."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import BadInputError

__all__ = ["EVALUATION_SPLITS", "evaluation_cases"]

#: What ``evaluate.json`` may score: the held-out test cases (the default) or the model-selection (validation) fold.
EVALUATION_SPLITS = ("test", "validation")


def evaluation_cases(splits: Mapping[str, Sequence[Any]], split: str, source: str | os.PathLike) -> list[Any]:
    """The cases an evaluation scores: ``splits[split]``, with ``split`` one of :data:`EVALUATION_SPLITS`.

    A validation score chose the model, so it overstates how the model does on new cases; only ``"test"`` is an
    unbiased estimate. An empty test split is refused rather than silently scored as something else.

    Args:
        splits: ``{"test": [...], "validation": [...]}`` as read from the bundle's split file or datalist.
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
