"""Exceptions raised by mmmatch.

Every error a user can cause derives from :class:`MmmatchError`, so a caller (and the CLI)
can tell user errors from bugs. Each also derives from the matching builtin (``ValueError``,
``FileNotFoundError``, ...) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "CatalogueError",
    "ConfigMismatchError",
    "DuplicateIdError",
    "ImageError",
    "ItemNotFoundError",
    "MmmatchError",
    "NotFittedError",
    "UnknownEncoderError",
]


class MmmatchError(Exception):
    """Base class of every error mmmatch raises on bad input or bad artifacts."""


class CatalogueError(MmmatchError, ValueError):
    """A catalogue is malformed: missing columns, bad or duplicate ids, empty rows, bad images."""


class DuplicateIdError(CatalogueError):
    """Items to add have ids that are already in the index (or repeated among them).

    Attributes:
        ids: the offending ids.
    """

    def __init__(self, message: str, ids: list[str]) -> None:
        self.ids = ids
        super().__init__(message)


class ItemNotFoundError(MmmatchError, KeyError):
    """Item ids that are not in the index.

    Attributes:
        ids: the unknown ids.
    """

    def __init__(self, message: str, ids: list[str]) -> None:
        self.ids = ids
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ImageError(MmmatchError, ValueError):
    """One image could not be read.

    Attributes:
        ref: the image reference as given (path, URL or ``"<bytes>"``).
        reason: short machine-friendly reason (``missing``, ``unreadable``, ``truncated``,
            ``too_large``, ``fetch_failed``, ``bad_reference``).
    """

    def __init__(self, ref: str, reason: str, detail: str = "") -> None:
        self.ref = ref
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {ref}" + (f" ({detail})" if detail else ""))


class ConfigMismatchError(MmmatchError, ValueError):
    """A saved artifact does not fit what it is used with (dimension, metric, encoders, version)."""


class UnknownEncoderError(MmmatchError, KeyError):
    """An encoder name is neither a registered preset nor a model id / folder."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NotFittedError(MmmatchError, ValueError, AttributeError):
    """A learned stage was used before ``fit``."""
