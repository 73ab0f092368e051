"""Shared checks at stage boundaries: arrays in, clear errors out."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmmatch.exceptions import NotFittedError

__all__ = ["check_embeddings", "check_is_fitted", "l2_normalize"]


def check_embeddings(x: Any, dim: int | None = None, name: str = "embeddings") -> np.ndarray:
    """Return ``x`` as a 2-D, float32, C-contiguous array, checking its width.

    Args:
        x: array-like of shape (n, d).
        dim: expected ``d``; ``None`` accepts any width.
        name: what to call the array in error messages.

    Returns:
        (n, d) float32 C-contiguous array (a view when ``x`` already is one).

    Raises:
        ValueError: wrong number of dimensions, wrong width, or non-finite values.
    """
    arr = np.asarray(x)
    if arr.ndim == 1 and dim is not None and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, d), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name}: expected (n, {dim}) float32, got (n, {arr.shape[1]}) {arr.dtype}"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{name}: row {bad} contains NaN or infinite values")
    return arr


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation; all-zero rows stay zero.

    Args:
        x: (n, d) float array.
        eps: norms below this are treated as zero.

    Returns:
        (n, d) float32 C-contiguous array.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(x, norms, out=np.zeros_like(x), where=norms > eps))


def check_is_fitted(estimator: Any, attributes: str | list[str]) -> None:
    """Raise :class:`NotFittedError` unless every attribute is set on ``estimator``."""
    attrs = [attributes] if isinstance(attributes, str) else attributes
    if not all(getattr(estimator, a, None) is not None for a in attrs):
        raise NotFittedError(
            f"This {type(estimator).__name__} is not fitted yet; call 'fit' before using it."
        )
