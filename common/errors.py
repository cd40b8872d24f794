"""One exception class for bad input data, and one clear last line when a bundle run stops on it.

Every reader, datalist builder and input check of the zoo raises a subclass of :class:`BadInputError`
(``BratsDataError``, ``BTCVDataError``, ``VKDataError``, ``RefinementDataError``, ``InputValidationError``) with a
message that names the file, what was found and what was expected.

``python -m monai.bundle run`` buries such a message: MONAI re-raises everything that goes wrong while it
instantiates or evaluates a config item as ``RuntimeError("Failed to evaluate ...")`` and everything that goes
wrong inside a transform as ``RuntimeError("applying transform ...")``, and a ``DataLoader`` worker turns the whole
chain into text. The last line a user sees is then MONAI's, not ours. :func:`install_excepthook` (called when
this module is imported, which every bundle config does through its data modules) keeps Python's traceback and
adds the bad-input message after it, so stderr ends with::

    error: <the message>

and the process exits with status 1 as before. Nothing changes for other exceptions. This module imports
nothing outside the standard library, so the MONAI-free readers (:mod:`common.data.visible_korean`) can use it.
"""

from __future__ import annotations

import re
import sys
from types import TracebackType

__all__ = ["BadInputError", "bad_input_message", "install_excepthook"]


class BadInputError(ValueError):
    """Input data (a folder, file, image or label map) are not what a bundle expects; the message says why."""


def _subclass_names(cls: type) -> set[str]:
    names = {cls.__name__}
    for sub in cls.__subclasses__():
        names |= _subclass_names(sub)
    return names


# the end of one exception in a formatted chain: the next "The above exception..." paragraph or the end
_CHAIN_SEPARATOR = re.compile(r"\n\n(?:The above exception was the direct cause|During handling of the above)")


def _message_in_text(text: str) -> str | None:
    """The message of the first bad-input exception in a formatted traceback (a DataLoader worker's)."""
    names = "|".join(sorted(map(re.escape, _subclass_names(BadInputError))))
    match = re.search(rf"^(?:[\w.]+\.)?(?:{names}): ", text, flags=re.MULTILINE)
    if match is None:
        return None
    rest = text[match.end() :]
    end = _CHAIN_SEPARATOR.search(rest)
    return (rest[: end.start()] if end else rest).strip()


def bad_input_message(error: BaseException) -> str | None:
    """The message of the bad-input error that caused ``error`` (``error`` itself included), or ``None``.

    Follows ``__cause__`` / ``__context__`` and, for exceptions re-raised from a ``DataLoader`` worker, which carry
    the worker's traceback as text, reads the message out of that text.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if "Original Traceback" in text:  # torch.utils.data re-raise: the real chain is text now
            found = _message_in_text(text)
            if found:
                return found
        elif isinstance(current, BadInputError):
            return text
        current = current.__cause__ or current.__context__
    return None


def _excepthook(
    previous: object, exc_type: type[BaseException], error: BaseException, tb: TracebackType | None
) -> None:
    previous(exc_type, error, tb)  # type: ignore[operator]
    message = bad_input_message(error)
    if message:
        print(f"\nerror: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Make an uncaught bad-input error end stderr with ``error: <message>`` (module docstring). Idempotent."""
    current = sys.excepthook
    if getattr(current, "_bad_input_hook", False):
        return

    def hook(exc_type: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        _excepthook(current, exc_type, error, tb)

    hook._bad_input_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook


install_excepthook()
