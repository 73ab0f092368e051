"""One self-describing trained model folder.

::

    model/
      config.json              what was trained, on what, with which versions, and how well
      head.safetensors         the fusion head and the classifier (class centres)
      image_encoder.safetensors  fine-tuned image backbone (only when it was fine-tuned)
      text_encoder/            fine-tuned sentence-transformer (only when it was fine-tuned)

:meth:`MatchModel.load` checks the folder: its format version, that the encoders it names
produce the embeddings the head was trained on (same encoder ids and widths), and that the
weights are all there. Writes are atomic (:func:`mmmatch._io.atomic_dir`).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmmatch.compare import ScoreWeights
from mmmatch.encode import EncodedCatalogue
from mmmatch.exceptions import ConfigMismatchError
from mmmatch.fusion import EmbeddingViews

__all__ = ["FORMAT_VERSION", "MODEL_SCORE_WEIGHTS", "MODEL_SEARCH_WEIGHTS", "MatchModel"]

FORMAT_VERSION = 1

MODEL_SCORE_WEIGHTS = ScoreWeights(image=0.1, text=0.0, lexical=0.2, word=0.1, fused=0.6)
"""Default match score weights of a trained model before :meth:`mmmatch.Matcher.fit` picks
them on validation products."""

MODEL_SEARCH_WEIGHTS = ScoreWeights(image=0.0, text=0.0, lexical=0.0, word=0.0, fused=1.0)
"""Default search weights of a trained model: the learned embedding alone."""


class MatchModel:
    """A trained model: the encoders it expects, the learned fusion and its decisions.

    Args:
        fusion: a fitted :class:`~mmmatch.train.LearnedFusion`.
        image_encoder: image encoder name (preset, Hugging Face id or folder) or ``None``.
        text_encoder: text encoder name or folder, or ``None``.
        image_weights: safetensors of a fine-tuned image backbone (EfficientNet-Lite).
        score_weights: match score weights (default :data:`MODEL_SCORE_WEIGHTS`).
        search_weights: search weights (default :data:`MODEL_SEARCH_WEIGHTS`).
        threshold: decision threshold on the match score (``None``: the Matcher's).
        info: anything else worth keeping (training data summary, metrics).
        reranker: a fitted :class:`~mmmatch.rerank.PairReranker` that decides pairs with
            this model (saved in the folder's ``reranker/``; its threshold, on the
            probability, then replaces ``threshold``).
    """

    def __init__(
        self, fusion: Any, image_encoder: str | None, text_encoder: str | None,
        image_weights: str | Path | None = None, score_weights: ScoreWeights | None = None,
        search_weights: ScoreWeights | None = None, threshold: float | None = None,
        info: dict[str, Any] | None = None, reranker: Any = None,
    ) -> None:
        self.fusion = fusion
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_weights = None if image_weights is None else str(image_weights)
        self.score_weights = score_weights or MODEL_SCORE_WEIGHTS
        self.search_weights = search_weights or MODEL_SEARCH_WEIGHTS
        self.threshold = threshold
        self.info = info or {}
        self.reranker = reranker
        self.path: Path | None = None

    @property
    def dim(self) -> int:
        """Width of the learned fused embedding."""
        return int(self.fusion.head_.dim)

    def encoders(self, device: str | None = None, use_images: bool = True,
                 use_text: bool = True) -> tuple[Any, Any]:
        """The (image, text) encoders this model was trained on (``None`` where unused)."""
        from mmmatch.encoders import get_encoder

        image = text = None
        if use_images and self.image_encoder:
            extra = {"weights": self.image_weights} if self.image_weights else {}
            image = get_encoder(self.image_encoder, "image", device, **extra)
        if use_text and self.text_encoder:
            text = get_encoder(self.text_encoder, "text", device)
        return image, text

    def embed(self, image: np.ndarray | None, image_ok: np.ndarray, text: np.ndarray | None,
              text_ok: np.ndarray) -> np.ndarray:
        """Learned fused embeddings of rows from their encoder embeddings.

        Args:
            image: (n, d_i) float32 or ``None``.
            image_ok: (n,) bool.
            text: (n, d_t) float32 or ``None``.
            text_ok: (n,) bool.

        Returns:
            (n, dim) float32, L2-normalised.
        """
        # a missing modality stays None: the head gives every row its learned placeholder
        return self.fusion.transform(EmbeddingViews(
            None if image is None else image[:, None],
            np.asarray(image_ok if image is not None else np.zeros(len(text_ok)), bool)[:, None],
            None if text is None else text[:, None],
            np.asarray(text_ok if text is not None else np.zeros(len(image_ok)), bool)[:, None]))

    def embed_encoded(self, encoded: EncodedCatalogue) -> np.ndarray:
        """:meth:`embed` of an encoded catalogue, (n, dim) float32."""
        return self.embed(encoded.image, encoded.image_ok, encoded.text, encoded.text_ok)

    # -- persistence ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The ``config.json`` content."""
        import torch

        import mmmatch

        image, text = self.encoders("cpu")
        return {
            "kind": "mmmatch.MatchModel",
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {"mmmatch": mmmatch.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "image_encoder": None if image is None else {
                "name": self.image_encoder, "encoder_id": image.encoder_id, "dim": image.dim,
                "preprocess": image.preprocess.to_dict(),
                "fine_tuned": self.image_weights is not None},
            "text_encoder": None if text is None else {
                "name": self.text_encoder, "encoder_id": text.encoder_id, "dim": text.dim,
                "fine_tuned": Path(str(self.text_encoder)).is_dir()},
            "fusion": self.fusion.config(),
            "score_weights": self.score_weights.to_dict(),
            "search_weights": self.search_weights.to_dict(),
            "threshold": self.threshold,
            "reranker": None if self.reranker is None else "reranker",
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the model folder atomically; returns its path."""
        from safetensors.torch import save_file

        from mmmatch._io import atomic_dir

        path = Path(path)
        config = self.config()
        with atomic_dir(path) as tmp:
            save_file(self.fusion.state_dict(), str(tmp / "head.safetensors"))
            if self.image_weights is not None:
                shutil.copyfile(self.image_weights, tmp / "image_encoder.safetensors")
                config["image_encoder"]["weights"] = "image_encoder.safetensors"
            if config["text_encoder"] and config["text_encoder"]["fine_tuned"]:
                shutil.copytree(str(self.text_encoder), tmp / "text_encoder")
                config["text_encoder"]["name"] = "text_encoder"
            if self.reranker is not None:
                (tmp / "reranker").mkdir()
                self.reranker.save_into(tmp / "reranker")
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_jsonable))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> MatchModel:
        """Read a model folder and check it against the encoders installed here.

        Raises:
            FileNotFoundError: no model at ``path``.
            ConfigMismatchError: not a model, written by a newer mmmatch, or the encoders
                now installed give other embeddings than the ones it was trained on.
        """
        from safetensors.torch import load_file

        from mmmatch.train import LearnedFusion

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no mmmatch model at {path} (missing config.json)")
        config = json.loads((path / "config.json").read_text())
        if config.get("kind") != "mmmatch.MatchModel":
            raise ConfigMismatchError(f"{path} is not an mmmatch model (config.json kind is "
                                      f"{config.get('kind')!r})")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ConfigMismatchError(f"{path}: written by a newer mmmatch "
                                      f"(format {config['format_version']}); upgrade to read it")
        head_file = path / "head.safetensors"
        if not head_file.exists():
            raise ConfigMismatchError(f"{path}: head.safetensors is missing")
        fusion = LearnedFusion.from_state(config["fusion"], load_file(str(head_file)))
        img_cfg, txt_cfg = config["image_encoder"], config["text_encoder"]
        image_weights = None
        if img_cfg and img_cfg.get("weights"):
            image_weights = path / img_cfg["weights"]
            if not image_weights.exists():
                raise ConfigMismatchError(f"{path}: {img_cfg['weights']} is missing")
        text_name = None
        if txt_cfg:
            text_name = str(path / txt_cfg["name"]) if txt_cfg["fine_tuned"] else txt_cfg["name"]
        model = cls(
            fusion, img_cfg["name"] if img_cfg else None, text_name, image_weights,
            ScoreWeights(**config["score_weights"]), ScoreWeights(**config["search_weights"]),
            config.get("threshold"), config.get("info"))
        if config.get("reranker"):
            from mmmatch.rerank import PairReranker

            model.reranker = PairReranker.load(path / config["reranker"], device)
        model.path = path
        image, text = model.encoders(device)
        for role, saved, enc, want in (("image", img_cfg, image, fusion.head_.image_dim),
                                       ("text", txt_cfg, text, fusion.head_.text_dim)):
            if saved is None:
                continue
            same_id = saved["encoder_id"] == enc.encoder_id
            if role == "text" and saved["fine_tuned"]:
                same_id = True  # a folder's id has its path in it; the files travel with us
            if not same_id or enc.dim != saved["dim"] or enc.dim != want:
                raise ConfigMismatchError(
                    f"{path}: trained on the {role} encoder {saved['encoder_id']!r} "
                    f"({saved['dim']}-d) but {enc.encoder_id!r} ({enc.dim}-d) is what loads "
                    "now; retrain the model or install the encoder it was trained with")
        return model


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.integer | np.floating):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
