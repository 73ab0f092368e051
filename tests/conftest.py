"""Shared fixtures: isolated caches, small generated data, real and fake encoders.

Nothing here touches the network or the user's home cache: Hugging Face libraries are put
in offline mode before anything imports them, ``MMMATCH_CACHE_DIR`` points at a temporary
folder for the whole session, and every test builds its own data.
"""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported anywhere: never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools
import hashlib
import http.server
import inspect
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from mmmatch.encoders.image import ImagePreprocess

# -- environment ------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: the models here are tiny batches, and on a busy 2-core machine
    OpenMP's thread hand-offs cost more than the arithmetic (seconds per forward pass).
    Set ``MMMATCH_TEST_TORCH_THREADS`` to override."""
    import torch

    torch.set_num_threads(int(os.environ.get("MMMATCH_TEST_TORCH_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the default embedding cache (used by the CLI) at a session temp folder."""
    folder = tmp_path_factory.mktemp("mmmatch-env-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMMATCH_CACHE_DIR", str(folder))
    yield folder
    mp.undo()


# -- images -----------------------------------------------------------------------------------


def draw_image(seed: int = 0, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A small RGB picture with random coloured shapes (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    w, h = size
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.rectangle((x0, y0, x1, y1), fill=color)
        else:
            d.ellipse((x0, y0, x1, y1), fill=color)
    return img


def image_bytes(seed: int = 0, size: tuple[int, int] = (96, 80), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    draw_image(seed, size).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def make_jpeg(tmp_path: Path) -> Callable[..., Path]:
    """``make_jpeg(name, seed=0, size=(96, 80), folder=tmp_path)`` writes a JPEG, returns path."""

    def make(
        name: str, seed: int = 0, size: tuple[int, int] = (96, 80), folder: Path | None = None
    ) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(seed, size))
        return path

    return make


# -- a local http server ----------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a temp folder on 127.0.0.1; yields ``(base_url, folder)``."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- fake encoders (fast, deterministic, count their calls) -----------------------------------


class HashTextEncoder:
    """A text encoder whose vector is a hash of the text; counts what it embeds."""

    modality = "text"

    def __init__(self, dim: int = 16, encoder_id: str = "hash-text") -> None:
        self.dim = dim
        self.encoder_id = encoder_id
        self.calls = 0
        self.seen: list[str] = []

    def encode(self, texts: Any) -> np.ndarray:
        self.calls += 1
        self.seen.extend(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int(hashlib.sha1(str(t).encode()).hexdigest()[:8], 16)
            out[i] = np.random.default_rng(seed).normal(size=self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def config(self) -> dict[str, Any]:
        return {"name": self.encoder_id}


class TinyImageEncoder:
    """An image encoder: the 8x8 squashed picture, flattened and normalised; counts calls."""

    modality = "image"
    batch_size = 4

    def __init__(self, encoder_id: str = "tiny-image") -> None:
        self.dim = 3 * 8 * 8
        self.encoder_id = encoder_id
        self.preprocess = ImagePreprocess(
            size=(8, 8), resize="squash", resize_to=8, mean=(0.5,) * 3, std=(0.25,) * 3,
            interpolation="bilinear",
        )
        self.pixel_calls = 0
        self.images_embedded = 0

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.pixel_calls += 1
        self.images_embedded += len(pixels)
        flat = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), -1) + 1e-3
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    def encode(self, images: Any) -> np.ndarray:
        return self.encode_pixels(np.stack([self.preprocess(im) for im in images]))

    def config(self) -> dict[str, Any]:
        return {"name": self.encoder_id}


class Counting:
    """Wraps a real encoder, counting ``encode`` / ``encode_pixels`` / ``encode_uint8`` calls
    and items."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0
        self.items = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, items: Any) -> np.ndarray:
        self.calls += 1
        self.items += len(items)
        return self._inner.encode(items)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.items += len(pixels)
        return self._inner.encode_pixels(pixels)

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.items += len(pixels)
        return self._inner.encode_uint8(pixels)


FAKE_ENCODERS = {"image": "tiny-image", "text": "hash-text"}
"""Names under which :func:`install_fake_encoders` makes ``get_encoder`` return the fakes."""


def install_fake_encoders(patch: Callable[..., Any] = setattr) -> dict[str, Any]:
    """Make ``get_encoder("tiny-image")`` / ``get_encoder("hash-text")`` return one
    :class:`TinyImageEncoder` / :class:`HashTextEncoder` each, so a ``Matcher``, a saved
    ``SearchIndex`` and a server subprocess can use them by name.

    Args:
        patch: how to replace ``mmmatch.encoders._build`` (``monkeypatch.setattr`` in a
            test; the builtin ``setattr`` in a subprocess).

    Returns:
        ``{"tiny-image": TinyImageEncoder, "hash-text": HashTextEncoder}``.
    """
    import mmmatch.encoders as encoders

    fakes: dict[str, Any] = {FAKE_ENCODERS["image"]: TinyImageEncoder(),
                             FAKE_ENCODERS["text"]: HashTextEncoder()}
    original = encoders._build

    def build(name: str, modality: Any, device: Any, kw: tuple) -> Any:
        return fakes[name] if name in fakes else original(name, modality, device, kw)

    patch(encoders, "_build", build)
    return fakes


@pytest.fixture
def fake_encoders(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The fakes of :func:`install_fake_encoders`, for this test only."""
    return install_fake_encoders(monkeypatch.setattr)


@pytest.fixture
def fake_text_encoder() -> HashTextEncoder:
    return HashTextEncoder()


@pytest.fixture
def fake_image_encoder() -> TinyImageEncoder:
    return TinyImageEncoder()


@pytest.fixture
def counting() -> type[Counting]:
    return Counting


# -- real encoders (loaded once per session from the installed packages) ----------------------


@pytest.fixture(scope="session")
def image_encoder() -> Any:
    from mmmatch.encoders import get_encoder

    return get_encoder("efficientnet-lite0", "image")  # the same call the Matcher makes


@pytest.fixture(scope="session")
def text_encoder() -> Any:
    from mmmatch.encoders import get_encoder

    return get_encoder("minilm-l6", "text")


# -- tiny Hugging Face models, built here (random weights, nothing downloaded) ----------------


@pytest.fixture(scope="session")
def hf_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ViT with its image processor, saved as a local folder."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    ))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "oat", "milk", "drink", "tea", "green",
    "sony", "turntable", "red", "blue", "1", "l", "ml", "500", "##s", "##a", "juice", "orange",
]


@pytest.fixture(scope="session")
def hf_st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT wrapped as a sentence-transformers model, saved as a folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 5.x moved the modules
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Pooling, Transformer

    root = tmp_path_factory.mktemp("hf-st")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    bert_dir = root / "tiny-bert"
    torch.manual_seed(0)
    # transformers 5 takes ``vocab=`` (and silently ignores ``vocab_file=``); 4.x the reverse
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tokenizer = BertTokenizerFast(vocab=str(vocab))
    else:  # pragma: no cover - transformers 4.x
        tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    assert len(tokenizer) == len(TINY_VOCAB), "the tiny tokenizer did not read its vocabulary"
    model = BertModel(BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
    ))
    tokenizer.save_pretrained(bert_dir)
    model.save_pretrained(bert_dir)
    st = SentenceTransformer(modules=[Transformer(str(bert_dir)), Pooling(32)], device="cpu")
    folder = root / "tiny-st"
    st.save(str(folder))
    return folder


# -- demo data and a matcher with a session-wide embedding cache ------------------------------


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mmmatch.demo import make_demo_catalogues

    return make_demo_catalogues(tmp_path_factory.mktemp("demo"), n_products=8)


@pytest.fixture(scope="session")
def embedding_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the Matcher tests, so the demo images are embedded once."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def matcher(embedding_cache_dir: Path, image_encoder: Any, text_encoder: Any) -> Any:
    from mmmatch.pipeline import Matcher

    return Matcher(cache_dir=embedding_cache_dir)


@pytest.fixture(scope="session")
def demo_frames(demo: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two demo catalogues as DataFrames with absolute image paths and id/title columns."""
    left = pd.read_csv(demo.left)
    right = pd.read_csv(demo.right).rename(columns={"sku": "id", "name": "title"})
    for df in (left, right):
        df["image"] = [str(demo.folder / p) for p in df["image"]]
    return left, right
