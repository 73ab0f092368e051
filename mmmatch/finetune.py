"""Fine-tuning the image backbone: a freeze policy, and a frozen trunk computed once.

A freeze policy says which part of the backbone trains: ``"all"`` (frozen: only the head
learns, on cached embeddings), ``"last:N"`` (the last N blocks and the final convolution
train) or ``"none"`` (everything trains). With a frozen trunk the feature maps that enter
the trainable top are the same every epoch for a given view of an image, so they are
computed once per view (:func:`trunk_views`) and training runs the top alone: on a CPU
this makes fine-tuning the last blocks cost minutes instead of hours.

Supported backbones: the EfficientNet-Lite presets (:class:`LiteTop`). The tuned weights
are saved as a full ``state_dict`` (safetensors) and loaded with
``EfficientNetLiteEncoder(variant, weights=path)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmmatch.augment import ImageAugment
from mmmatch.encode import encode_images
from mmmatch.images import ImageLimits
from mmmatch.views import AugmentedView

__all__ = [
    "LiteFull", "LiteTop", "PixelViews", "TrunkEncoder", "parse_freeze", "split_backbone",
    "trunk_views",
]


def parse_freeze(policy: str, n_blocks: int) -> int:
    """Number of trainable blocks for a freeze policy.

    Args:
        policy: ``"all"`` (0 trainable), ``"none"`` (every block) or ``"last:N"``.
        n_blocks: blocks the backbone has.

    Raises:
        ValueError: an unknown policy or N out of range.
    """
    if policy == "all":
        return 0
    if policy == "none":
        return n_blocks
    if policy.startswith("last:"):
        try:
            n = int(policy[5:])
        except ValueError:
            n = -1
        if 1 <= n <= n_blocks:
            return n
    raise ValueError(f"freeze policy {policy!r}: expected 'all', 'none' or 'last:N' with "
                     f"1 <= N <= {n_blocks}")


class LiteTop(torch.nn.Module):
    """The trainable top of an EfficientNet-Lite: its last blocks, head convolution and
    global pooling. Shares its modules with the backbone, so training it tunes the backbone.

    Args:
        model: an ``efficientnet_lite_pytorch.EfficientNet``.
        n_blocks: trainable blocks (>= 0; 0 trains only the head convolution).
    """

    def __init__(self, model: Any, n_blocks: int) -> None:
        super().__init__()
        total = len(model._blocks)
        self.offset = total - n_blocks
        self.total = total
        self.drop_connect = model._global_params.drop_connect_rate or 0.0
        self.blocks = torch.nn.ModuleList(list(model._blocks)[self.offset:])
        self.conv_head, self.bn1, self.act = model._conv_head, model._bn1, model._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) trunk feature maps -> (b, 1280) pooled features (not normalised)."""
        for j, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect * (self.offset + j) / self.total)
        return self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3))


class LiteFull(torch.nn.Module):
    """The whole EfficientNet-Lite, stem included, as a trainable module: pixels in,
    pooled 1280-d features out (what ``freeze="none"`` trains)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) normalised pixels -> (b, 1280) pooled features (not normalised)."""
        return self.model.extract_features(x).mean(dim=(2, 3))


def split_backbone(encoder: Any, policy: str) -> tuple[TrunkEncoder | None, torch.nn.Module]:
    """The frozen trunk (as an encoder of flattened feature maps) and the trainable top.

    Args:
        encoder: an :class:`~mmmatch.encoders.EfficientNetLiteEncoder` (a private copy:
            training changes its weights).
        policy: freeze policy (see :func:`parse_freeze`); ``"all"`` is rejected (nothing to
            tune: train the head on cached embeddings instead); ``"none"`` returns no trunk
            and the whole network (:class:`LiteFull`), trained on pixels
            (:class:`PixelViews`).
    """
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "_blocks"):
        raise ValueError(f"fine-tuning supports the EfficientNet-Lite presets, not "
                         f"{getattr(encoder, 'encoder_id', encoder)!r}")
    n = parse_freeze(policy, len(model._blocks))
    if n == 0:
        raise ValueError("freeze policy 'all' trains no backbone weights: train the head only")
    if policy == "none":
        for p in model.parameters():
            p.requires_grad_(True)
        return None, LiteFull(model)
    top = LiteTop(model, n)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in top.parameters():
        p.requires_grad_(True)
    return TrunkEncoder(encoder, top.offset), top


class PixelViews:
    """Decoded, augmented and normalised pixels of ``n_views`` views of each image, made on
    demand: indexable like an (n, V, 3, H, W) float32 array by ``[rows, views]``, for
    end-to-end fine-tuning, where nothing below the trained layers can be cached.

    View ``v`` is deterministic (its RNG is seeded by ``seed``, the decoded content and
    ``v``). An unreadable image gives zeros; :meth:`check` lists them up front.

    Args:
        refs: n image references.
        preprocess: the encoder's :class:`~mmmatch.encoders.ImagePreprocess`.
        augment: augmentation of views 1.. (``None`` with one view).
        n_views: views per image.
        seed: augmentation seed.
        base_dir: folder relative paths are resolved against.
        limits: image limits.
    """

    def __init__(self, refs: Sequence[Any], preprocess: Any, augment: ImageAugment | None,
                 n_views: int, seed: int = 0, base_dir: str | Path | None = None,
                 limits: ImageLimits | None = None) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess
        self.augment = augment
        self.n_views = n_views
        self.seed = seed
        self.base_dir = base_dir
        self.limits = limits or ImageLimits()
        h, w = preprocess.size
        self.shape = (len(self.refs), n_views, 3, h, w)

    def __len__(self) -> int:
        return len(self.refs)

    def _one(self, row: int, view: int) -> np.ndarray:
        import hashlib

        from mmmatch.augment import view_rng
        from mmmatch.images import decode_image, read_image_bytes

        try:
            data = read_image_bytes(self.refs[row], self.base_dir, self.limits)
            img = decode_image(data, str(self.refs[row]), self.limits)
        except Exception:
            return np.zeros(self.shape[2:], dtype=np.float32)
        if view > 0 and self.augment is not None:
            key = hashlib.blake2b(img.tobytes(), digest_size=8).hexdigest()
            img = self.augment(img, view_rng(self.seed, key, view))
        return self.preprocess.normalize(self.preprocess.geometry(img)[None])[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, views = key
        else:  # rows only: view 0 (as the validation / reference inputs are used)
            rows, views = key, 0
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        views = np.broadcast_to(np.asarray(views), rows.shape)
        return np.stack([self._one(int(r), int(v)) for r, v in zip(rows.ravel(),
                                                                   views.ravel(),
                                                                   strict=True)]
                        ) if rows.size else np.zeros((0, *self.shape[2:]), np.float32)

    def originals(self) -> PixelViews:
        """The same images, view 0 only (indexable by rows, still made on demand)."""
        return PixelViews(self.refs, self.preprocess, None, 1, self.seed, self.base_dir,
                          self.limits)

    def check(self) -> np.ndarray:
        """(n,) bool: which images can be read and decoded."""
        from mmmatch.images import decode_image, read_image_bytes

        ok = np.ones(len(self), dtype=bool)
        for i, ref in enumerate(self.refs):
            try:
                decode_image(read_image_bytes(ref, self.base_dir, self.limits), str(ref),
                             self.limits)
            except Exception:
                ok[i] = False
        return ok


def _trunk_forward(model: Any, n_frozen: int, x: torch.Tensor) -> torch.Tensor:
    """Stem and the first ``n_frozen`` blocks of an EfficientNet-Lite (no drop-connect)."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in list(model._blocks)[:n_frozen]:
        x = block(x, drop_connect_rate=None)
    return x


class TrunkEncoder:
    """Runs the frozen part of an EfficientNet-Lite: images -> flattened feature maps.

    Quacks like an image encoder for :func:`~mmmatch.encode.encode_images` (its ``dim`` is
    ``C * h * w``); outputs are not normalised. Reshape with :attr:`shape`.
    """

    modality = "image"

    def __init__(self, encoder: Any, n_frozen: int) -> None:
        self.encoder = encoder
        self.model = encoder.model
        self.n_frozen = n_frozen
        self.preprocess = encoder.preprocess
        self.batch_size = encoder.batch_size
        self.device = encoder.device
        self._frozen: Any = None
        h, w = self.preprocess.size
        with torch.inference_mode():
            probe = self._run(torch.zeros(1, 3, h, w, device=self.device))
        self.shape = tuple(probe.shape[1:])
        self.dim = int(np.prod(self.shape))
        self.encoder_id = f"{encoder.encoder_id}|trunk{n_frozen}"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return _trunk_forward(self.model, self.n_frozen, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk of a normalised batch; on CPU a frozen channels-last graph run 8 images at
        a time (as the encoder itself does: ~3x faster than eager)."""
        self.model.eval()
        if self.device != "cpu":
            return self._run(x)
        x = x.contiguous(memory_format=torch.channels_last)
        if self._frozen is None:
            self._frozen = self._freeze(x[:8])
        return torch.cat([self._frozen(x[i:i + 8]) for i in range(0, len(x), 8)])

    def _freeze(self, example: torch.Tensor) -> Any:
        import copy
        import warnings

        trunk = self

        class _Trunk(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = copy.deepcopy(trunk.model).eval()
                self.model.to(memory_format=torch.channels_last)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return _trunk_forward(self.model, trunk.n_frozen, x)

        module = _Trunk().eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.freeze(torch.jit.trace(module, example))
        except Exception:  # pragma: no cover - eager fallback
            return module

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, C*h*w) float32 trunk features."""
        pre = self.preprocess
        mean = torch.tensor(pre.mean).mul(255.0).view(1, 3, 1, 1)
        std = torch.tensor(pre.std).mul(255.0).view(1, 3, 1, 1)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).to(self.device)
        with torch.inference_mode():
            return self._forward(x).flatten(1).float().cpu().numpy()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) normalised float32 -> (n, C*h*w)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
            return self._forward(x.to(self.device)).flatten(1).float().cpu().numpy()


def trunk_views(
    refs: Sequence[Any], trunk: TrunkEncoder, augment: ImageAugment | None, n_views: int,
    seed: int = 0, limits: ImageLimits | None = None, show_progress: bool = False,
    base_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Trunk feature maps of ``n_views`` views of each image, kept in float16.

    Returns:
        ``(features (n, V, C, h, w) float16, ok (n, V) bool)``.
    """
    out = np.zeros((len(refs), n_views, *trunk.shape), dtype=np.float16)
    ok = np.zeros((len(refs), n_views), dtype=bool)
    for v in range(n_views):
        enc = trunk if v == 0 else AugmentedView(trunk, augment, seed, v)
        x, good, _ = encode_images(refs, enc, base_dir, limits=limits,
                                   show_progress=show_progress, chunk_size=256)
        out[:, v] = x.reshape(len(refs), *trunk.shape)
        ok[:, v] = good
    ok &= ok[:, :1]
    return out, ok
