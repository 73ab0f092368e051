"""Reading one image safely: local paths, http(s) URLs and raw bytes, with limits.

All image I/O goes through :func:`load_image`, so every failure has one shape
(:class:`~mmmatch.exceptions.ImageError` with a ``reason``) and every caller gets the same
limits: a fetch timeout, a byte limit and a pixel limit (decompression bombs).
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mmmatch.exceptions import ImageError

__all__ = ["ImageLimits", "decode_image", "describe_ref", "load_image", "read_image_bytes"]


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied to every image read.

    Attributes:
        max_bytes: largest encoded file accepted (local or fetched).
        max_pixels: largest width x height accepted; larger images are rejected as
            ``too_large`` before they are decoded.
        timeout_s: timeout of one URL fetch.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64_000_000
    timeout_s: float = 10.0


def describe_ref(ref: Any) -> str:
    """A short printable name for an image reference (bytes are not printed)."""
    if isinstance(ref, bytes | bytearray | memoryview):
        return f"<{len(ref)} bytes>"
    return str(ref)


def read_image_bytes(
    ref: Any, base_dir: str | Path | None = None, limits: ImageLimits | None = None
) -> bytes:
    """Read the encoded bytes of an image reference without decoding them.

    Args:
        ref: a local path (relative to ``base_dir`` when not absolute), an ``http(s)://`` URL
            or the encoded bytes.
        base_dir: folder that relative paths are resolved against.
        limits: byte and timeout limits.

    Raises:
        ImageError: ``bad_reference``, ``missing``, ``unreadable``, ``fetch_failed`` or
            ``too_large``.
    """
    limits = limits or ImageLimits()
    if isinstance(ref, bytes | bytearray | memoryview):
        data = bytes(ref)
        if len(data) > limits.max_bytes:
            raise ImageError(describe_ref(ref), "too_large", f"over {limits.max_bytes} bytes")
        return data
    if not isinstance(ref, str | Path) or not str(ref).strip():
        raise ImageError(describe_ref(ref), "bad_reference", "expected a path, URL or bytes")
    text = str(ref).strip()
    if text.startswith(("http://", "https://")):
        return _fetch(text, limits)
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None and str(base_dir):
        path = Path(base_dir) / path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(text, "missing", f"no file at {path}") from None
    except OSError as e:
        raise ImageError(text, "unreadable", str(e)) from None
    if size > limits.max_bytes:
        raise ImageError(text, "too_large", f"{size} bytes > {limits.max_bytes}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(text, "unreadable", str(e)) from None


def _fetch(url: str, limits: ImageLimits) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "mmmatch"})
    try:
        with urllib.request.urlopen(request, timeout=limits.timeout_s) as response:
            data = response.read(limits.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ImageError(url, "fetch_failed", str(getattr(e, "reason", e))) from None
    if len(data) > limits.max_bytes:
        raise ImageError(url, "too_large", f"over {limits.max_bytes} bytes")
    return data


def load_image(
    ref: Any,
    base_dir: str | Path | None = None,
    limits: ImageLimits | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Read and fully decode one image as RGB (:func:`read_image_bytes` + :func:`decode_image`).

    Args:
        ref: a local path (relative to ``base_dir`` when not absolute), an ``http(s)://`` URL
            or the encoded bytes.
        base_dir: folder that relative paths are resolved against.
        limits: byte, pixel and timeout limits; defaults to :class:`ImageLimits()`.
        draft_size: see :func:`decode_image`.

    Raises:
        ImageError: with ``reason`` one of ``bad_reference``, ``missing``, ``unreadable``,
            ``fetch_failed``, ``too_large`` or ``truncated``.
    """
    data = read_image_bytes(ref, base_dir, limits)
    return decode_image(data, describe_ref(ref), limits, draft_size)


def decode_image(
    data: bytes,
    name: str = "<bytes>",
    limits: ImageLimits | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode encoded image bytes to an RGB image, refusing decompression bombs.

    Args:
        data: the encoded image.
        name: how to name the image in errors.
        limits: the pixel limit is checked from the header, before decoding.
        draft_size: when given, JPEGs are decoded at the smallest DCT scale whose both sides
            stay >= this many pixels (several times faster; any later downscale to this size
            sees nearly the same pixels).

    Raises:
        ImageError: ``unreadable``, ``truncated`` or ``too_large``.
    """
    limits = limits or ImageLimits()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageError(name, "too_large", f"{width}x{height} > {limits.max_pixels} px")
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, "too_large", str(e)) from None
    except UnidentifiedImageError:
        raise ImageError(name, "unreadable", "not an image format PIL can read") from None
    except OSError as e:  # PIL reports truncated / corrupt data as OSError
        reason = "truncated" if "truncat" in str(e).lower() else "unreadable"
        raise ImageError(name, reason, str(e)) from None
    except (ValueError, SyntaxError) as e:
        raise ImageError(name, "unreadable", str(e)) from None
    return img if img.mode == "RGB" else img.convert("RGB")
