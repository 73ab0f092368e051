"""Seeded augmentations: a catalogue photo made to look like a shopper's shot, a title like a query.

Everything here is a pure function of its input and a :class:`numpy.random.Generator`, so an
augmented view can be rebuilt exactly from ``(seed, key, view)``; see :func:`view_rng`,
:func:`augment_view` and :func:`augmented_views`. Images use PIL and numpy only.

Example:
    >>> aug = ImageAugment.camera()
    >>> shot = augment_view(img, aug, seed=0, key="sku-123", view=1)  # doctest: +SKIP
    >>> query = TextAugment.query()("Oat Milk Drink 1 Litre", np.random.default_rng(0))
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = [
    "DEFAULT_ABBREVIATIONS",
    "ImageAugment",
    "TextAugment",
    "augment_view",
    "augmented_views",
    "stable_hash",
    "view_rng",
]

T = TypeVar("T")

# -- shared checks ------------------------------------------------------------------------------


def _check_prob(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")


def _check_range(
    name: str, value: Any, lo: float, hi: float, lo_open: bool = False, what: str = ""
) -> tuple[float, float]:
    """``value`` must be a pair ``(a, b)`` with ``lo <= a <= b <= hi`` (``lo < a`` if open)."""
    bracket = "(" if lo_open else "["
    expected = f"a pair (lo, hi) with {bracket}{lo}, {hi}] containing lo <= hi{what}"
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {expected}, got {value!r}") from None
    low_ok = (a > lo) if lo_open else (a >= lo)
    if not (low_ok and a <= b <= hi):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return a, b


def _check_scalar(
    name: str, value: Any, lo: float, hi: float, hi_open: bool = False
) -> None:
    ok = isinstance(value, int | float) and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}{bracket}, got {value!r}")


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | np.ndarray) else value


# -- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAugment:
    """A random catalogue-image -> camera-shot transformation (PIL + numpy, seeded).

    Steps, in order (each skipped when its strength or probability is 0):

    1. geometry, resampled once: a slight perspective tilt (``perspective_p``), a rotation
       (``rotation``) and a random resized crop (``crop_scale``, ``crop_ratio``), then a
       resize to ``output_size``; areas uncovered by the tilt or rotation take the mean
       colour of the image border (the background of most catalogue photos);
    2. a horizontal flip (``flip``);
    3. colour jitter (``jitter_p``): brightness, contrast, saturation and hue in random order;
    4. a Gaussian blur (``blur_p``, out of focus / motion);
    5. a JPEG recompression (``jpeg_p``, messaging-app quality).

    The default values are those of :meth:`camera`. Flips are off there: a shopper's photo
    is never mirrored and mirrored text and logos look like other products.

    Attributes:
        crop_scale: (lo, hi) range of the crop's area as a fraction of the image,
            in (0, 1]; ``(1, 1)`` with ``crop_ratio=(1, 1)`` keeps the whole frame.
        crop_ratio: (lo, hi) range, sampled log-uniformly, of the crop's aspect ratio
            relative to the output's; the crop is resized to the output, so values != 1
            stretch the content. A crop that does not fit is shrunk to fit.
        flip: probability of a horizontal flip.
        jitter_p: probability that colour jitter is applied at all.
        brightness: brightness factor drawn from [1 - b, 1 + b]; b in [0, 1).
        contrast: contrast factor drawn from [1 - c, 1 + c]; c in [0, 1).
        saturation: saturation factor drawn from [1 - s, 1 + s]; s in [0, 1] (0: grey).
        hue: hue shift drawn from [-h, h] turns of the colour wheel; h in [0, 0.5].
        blur_p: probability of a Gaussian blur.
        blur_radius: (lo, hi) range of the blur radius in output pixels, >= 0.
        jpeg_p: probability of a JPEG recompression.
        jpeg_quality: (lo, hi) integer range of the JPEG quality, within [1, 100].
        perspective_p: probability of a perspective tilt.
        perspective_distortion: how far each corner may move inwards, as a fraction of
            half the width / height, in [0, 1).
        rotation: rotation drawn from [-r, r] degrees, r in [0, 180]; 0 disables it.
        output_size: (width, height) of the output, PIL order; ``None`` keeps the input's.
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (0.8, 1.25)
    flip: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.3
    hue: float = 0.03
    blur_p: float = 0.3
    blur_radius: tuple[float, float] = (0.2, 2.0)
    jpeg_p: float = 0.7
    jpeg_quality: tuple[int, int] = (25, 85)
    perspective_p: float = 0.5
    perspective_distortion: float = 0.25
    rotation: float = 10.0
    output_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _as_tuple(getattr(self, f.name)))
        _check_range("crop_scale", self.crop_scale, 0.0, 1.0, lo_open=True)
        _check_range("crop_ratio", self.crop_ratio, 0.0, math.inf, lo_open=True)
        for name in ("flip", "jitter_p", "blur_p", "jpeg_p", "perspective_p"):
            _check_prob(name, getattr(self, name))
        _check_scalar("brightness", self.brightness, 0.0, 1.0, hi_open=True)
        _check_scalar("contrast", self.contrast, 0.0, 1.0, hi_open=True)
        _check_scalar("saturation", self.saturation, 0.0, 1.0)
        _check_scalar("hue", self.hue, 0.0, 0.5)
        _check_range("blur_radius", self.blur_radius, 0.0, math.inf)
        q = _check_range("jpeg_quality", self.jpeg_quality, 1, 100, what=", integers")
        if any(int(v) != v for v in q):
            raise ValueError(f"jpeg_quality: expected integers in [1, 100], got {q!r}")
        object.__setattr__(self, "jpeg_quality", (int(q[0]), int(q[1])))
        _check_scalar("perspective_distortion", self.perspective_distortion, 0.0, 1.0, True)
        _check_scalar("rotation", self.rotation, 0.0, 180.0)
        if self.output_size is not None:
            size = self.output_size
            if not (
                isinstance(size, tuple)
                and len(size) == 2
                and all(isinstance(v, int | np.integer) and v >= 1 for v in size)
            ):
                raise ValueError(
                    f"output_size: expected None or (width, height) positive ints, got {size!r}"
                )
            object.__setattr__(self, "output_size", (int(size[0]), int(size[1])))

    # -- presets --------------------------------------------------------------------------------

    @classmethod
    def camera(cls, **overrides: Any) -> ImageAugment:
        """Strong: a shop photo of the product (tilt, framing, light, blur, JPEG)."""
        return cls(**overrides)

    @classmethod
    def light(cls, **overrides: Any) -> ImageAugment:
        """Mild: small crops, slight colour changes, occasional blur and recompression."""
        params: dict[str, Any] = dict(
            crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), flip=0.0, jitter_p=0.5,
            brightness=0.15, contrast=0.15, saturation=0.1, hue=0.0, blur_p=0.1,
            blur_radius=(0.1, 0.8), jpeg_p=0.3, jpeg_quality=(60, 95), perspective_p=0.1,
            perspective_distortion=0.1, rotation=3.0,
        )
        return cls(**{**params, **overrides})

    @classmethod
    def none(cls, **overrides: Any) -> ImageAugment:
        """Identity (only ``output_size`` still resizes, centre-cropping to its aspect)."""
        params: dict[str, Any] = dict(
            crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, jitter_p=0.0,
            brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur_p=0.0, jpeg_p=0.0,
            perspective_p=0.0, perspective_distortion=0.0, rotation=0.0,
        )
        return cls(**{**params, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuples become lists)."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageAugment:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, d)

    # -- applying -------------------------------------------------------------------------------

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Augment one image.

        Args:
            img: an RGB PIL image (other modes are converted); never modified.
            rng: the source of randomness; the result is a function of ``img`` and its state.

        Returns:
            A new RGB image of size ``output_size`` (or ``img.size``).
        """
        if img.mode != "RGB":
            img = img.convert("RGB")
        out = self._geometry(img, rng)
        if self.flip > 0 and rng.random() < self.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.jitter_p > 0 and rng.random() < self.jitter_p:
            out = self._jitter(out, rng)
        if self.blur_p > 0 and rng.random() < self.blur_p:
            radius = float(rng.uniform(*self.blur_radius))
            if radius > 0:
                out = out.filter(ImageFilter.GaussianBlur(radius))
        if self.jpeg_p > 0 and rng.random() < self.jpeg_p:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=quality)
            out = Image.open(io.BytesIO(buf.getvalue()))
            out.load()
            out = out.convert("RGB")
        return out if out is not img else img.copy()

    def _geometry(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Perspective, rotation, crop and resize as one projective resampling."""
        w, h = img.size
        ow, oh = self.output_size or (w, h)
        matrix = np.eye(3)  # maps points of the current frame to the source image
        if self.perspective_p > 0 and rng.random() < self.perspective_p:
            matrix = matrix @ _perspective_matrix(w, h, self.perspective_distortion, rng)
        if self.rotation > 0:
            angle = math.radians(float(rng.uniform(-self.rotation, self.rotation)))
            cos, sin = math.cos(angle), math.sin(angle)
            cx, cy = w / 2.0, h / 2.0
            rot = np.array([
                [cos, -sin, cx - cos * cx + sin * cy],
                [sin, cos, cy - sin * cx - cos * cy],
                [0.0, 0.0, 1.0],
            ])
            matrix = matrix @ rot
        x0, y0, cw, ch = self._crop_box(w, h, ow / oh, rng)
        warped = not np.allclose(matrix, np.eye(3))
        full = abs(x0) < 1e-9 and abs(y0) < 1e-9 and abs(cw - w) < 1e-9 and abs(ch - h) < 1e-9
        if not warped and full:
            return img if (ow, oh) == (w, h) else img.resize((ow, oh), Image.Resampling.BICUBIC)
        # render at the crop's own resolution when shrinking, so the final resize antialiases
        rw, rh = (ow, oh) if ow * oh >= cw * ch else (max(1, round(cw)), max(1, round(ch)))
        crop = np.array([[cw / rw, 0.0, x0], [0.0, ch / rh, y0], [0.0, 0.0, 1.0]])
        total = matrix @ crop
        total = total / total[2, 2]
        out = img.transform(
            (rw, rh), Image.Transform.PERSPECTIVE, tuple(total.ravel()[:8].tolist()),
            resample=Image.Resampling.BILINEAR, fillcolor=_border_colour(img) if warped else None,
        )
        if (rw, rh) != (ow, oh):
            out = out.resize((ow, oh), Image.Resampling.BICUBIC)
        return out

    def _crop_box(
        self, w: int, h: int, out_aspect: float, rng: np.random.Generator
    ) -> tuple[float, float, float, float]:
        """(x0, y0, width, height) of the crop in input pixels."""
        scale = float(rng.uniform(*self.crop_scale)) if _spread(self.crop_scale) else 1.0
        lo, hi = self.crop_ratio
        ratio = math.exp(rng.uniform(math.log(lo), math.log(hi))) if _spread((lo, hi)) else lo
        aspect = out_aspect * ratio
        area = scale * w * h
        cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
        shrink = min(1.0, w / cw, h / ch)  # keep the aspect, give up area
        cw, ch = min(float(w), cw * shrink), min(float(h), ch * shrink)
        x0 = float(rng.uniform(0.0, w - cw)) if w - cw > 1e-9 else 0.0
        y0 = float(rng.uniform(0.0, h - ch)) if h - ch > 1e-9 else 0.0
        return x0, y0, cw, ch

    def _jitter(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        steps: list[Callable[[Image.Image, float], Image.Image]] = []
        amounts: list[float] = []
        for enhancer, strength in (
            (ImageEnhance.Brightness, self.brightness),
            (ImageEnhance.Contrast, self.contrast),
            (ImageEnhance.Color, self.saturation),
        ):
            if strength > 0:
                steps.append(lambda im, f, e=enhancer: e(im).enhance(f))
                amounts.append(strength)
        if self.hue > 0:
            steps.append(_shift_hue)
            amounts.append(self.hue)
        for i in rng.permutation(len(steps)):
            a = amounts[i]
            factor = float(rng.uniform(-a, a)) if steps[i] is _shift_hue else float(
                rng.uniform(max(0.0, 1.0 - a), 1.0 + a)
            )
            img = steps[i](img, factor)
        return img


def _spread(pair: tuple[float, float]) -> bool:
    return pair[1] - pair[0] > 1e-12


def _perspective_matrix(
    w: int, h: int, distortion: float, rng: np.random.Generator
) -> np.ndarray:
    """Homography taking output points to source points: each output corner is the source
    corner moved inwards by up to ``distortion`` x half the side (as torchvision does)."""
    dx, dy = distortion * w / 2.0, distortion * h / 2.0
    src = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    sign = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float)
    move = rng.uniform(0.0, 1.0, size=(4, 2)) * np.array([dx, dy])
    dst = src + sign * move
    return _homography(dst, src)


def _homography(frm: np.ndarray, to: np.ndarray) -> np.ndarray:
    """3x3 projective map sending the four points ``frm`` (4, 2) onto ``to`` (4, 2)."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(frm, to, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -x * u, -y * u]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -x * v, -y * v]
        b[2 * i], b[2 * i + 1] = u, v
    coef = np.linalg.solve(a, b)
    return np.append(coef, 1.0).reshape(3, 3)


def _border_colour(img: Image.Image) -> tuple[int, int, int]:
    arr = np.asarray(img)
    edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    r, g, b = (round(float(v)) for v in edge.reshape(-1, 3).mean(axis=0))
    return r, g, b


def _shift_hue(img: Image.Image, turns: float) -> Image.Image:
    """Rotate the hue by ``turns`` of the colour wheel (PIL's HSV, hue in 0..255)."""
    shift = round(turns * 256) % 256
    if shift == 0:
        return img
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


# -- text ---------------------------------------------------------------------------------------

DEFAULT_ABBREVIATIONS: Mapping[str, str] = MappingProxyType({
    "package": "pkg", "packages": "pkgs", "pack": "pk", "packs": "pks",
    "ounce": "oz", "ounces": "oz", "fluid": "fl", "pound": "lb", "pounds": "lbs",
    "litre": "l", "litres": "l", "liter": "l", "liters": "l",
    "millilitre": "ml", "millilitres": "ml", "milliliter": "ml", "milliliters": "ml",
    "gram": "g", "grams": "g", "kilogram": "kg", "kilograms": "kg",
    "gallon": "gal", "gallons": "gal", "quart": "qt", "quarts": "qt",
    "inch": "in", "inches": "in", "centimetre": "cm", "centimeter": "cm",
    "centimetres": "cm", "centimeters": "cm", "millimetre": "mm", "millimeter": "mm",
    "with": "w/", "without": "w/o", "and": "&",
    "black": "blk", "white": "wht", "silver": "slv", "grey": "gry", "gray": "gry",
    "blue": "blu", "green": "grn", "brown": "brn", "yellow": "ylw",
    "large": "lg", "medium": "med", "small": "sm", "extra": "xtra",
    "count": "ct", "piece": "pc", "pieces": "pcs", "dozen": "doz", "assorted": "asst",
    "double": "dbl", "original": "orig", "regular": "reg", "professional": "pro",
    "edition": "ed", "version": "ver", "number": "no", "refurbished": "refurb",
    "size": "sz", "stainless": "ss",
})

_TOKEN_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class TextAugment:
    """A random title -> typed-query transformation (seeded).

    Tokens are whitespace-separated words; the steps, in order: abbreviate, typos, drop,
    reorder, re-join with single spaces, change case. Text with no tokens is returned as is;
    so is any text when every probability is 0 (:meth:`none`). The defaults are
    :meth:`query`.

    Attributes:
        token_drop: probability that each token is dropped; at least one always survives.
        reorder_p: probability of shuffling one span of 2-3 adjacent tokens (the order
            always changes when the tokens differ).
        case_p: probability of rewriting the whole text in lower, UPPER or Title case.
        abbreviate_p: probability that each token found in ``abbreviations`` (case-blind,
            leading / trailing punctuation kept) is replaced; UPPER / Title case is kept.
        abbreviations: lower-case word -> abbreviation.
        typo_p: probability of one typo (swap, drop, double or replace a letter) in each
            alphabetic token of 4+ letters.
    """

    token_drop: float = 0.15
    reorder_p: float = 0.2
    case_p: float = 0.3
    abbreviate_p: float = 0.5
    abbreviations: Mapping[str, str] = field(
        default_factory=lambda: DEFAULT_ABBREVIATIONS, hash=False
    )
    typo_p: float = 0.03

    def __post_init__(self) -> None:
        for name in ("token_drop", "reorder_p", "case_p", "abbreviate_p", "typo_p"):
            _check_prob(name, getattr(self, name))
        abbr = self.abbreviations
        if not isinstance(abbr, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in abbr.items()
        ):
            raise ValueError("abbreviations: expected a mapping of str -> str")
        if abbr is not DEFAULT_ABBREVIATIONS:
            abbr = MappingProxyType({k.lower(): v for k, v in abbr.items()})
        object.__setattr__(self, "abbreviations", abbr)

    @classmethod
    def query(cls, **overrides: Any) -> TextAugment:
        """What a shopper types: dropped words, abbreviations, casing, the odd typo."""
        return cls(**overrides)

    @classmethod
    def light(cls, **overrides: Any) -> TextAugment:
        """Mild: the odd dropped word, abbreviation or case change; no typos."""
        params: dict[str, Any] = dict(
            token_drop=0.05, reorder_p=0.1, case_p=0.2, abbreviate_p=0.2, typo_p=0.0
        )
        return cls(**{**params, **overrides})

    @classmethod
    def none(cls, **overrides: Any) -> TextAugment:
        """Identity."""
        params: dict[str, Any] = dict(
            token_drop=0.0, reorder_p=0.0, case_p=0.0, abbreviate_p=0.0, typo_p=0.0
        )
        return cls(**{**params, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the abbreviations as a plain dict)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["abbreviations"] = dict(self.abbreviations)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextAugment:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, d)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        """Augment one title.

        Args:
            text: the title.
            rng: the source of randomness.

        Returns:
            The augmented text; never empty when ``text`` has a token.
        """
        tokens = text.split()
        probs = (self.token_drop, self.reorder_p, self.case_p, self.abbreviate_p, self.typo_p)
        if not tokens or not any(probs):
            return text
        if self.abbreviate_p > 0:
            tokens = [self._abbreviate(t, rng) for t in tokens]
        if self.typo_p > 0:
            tokens = [_typo(t, rng) if rng.random() < self.typo_p else t for t in tokens]
        if self.token_drop > 0:
            keep = rng.random(len(tokens)) >= self.token_drop
            if not keep.any():
                keep[rng.integers(len(tokens))] = True
            tokens = [t for t, k in zip(tokens, keep, strict=True) if k]
        if self.reorder_p > 0 and len(tokens) >= 2 and rng.random() < self.reorder_p:
            tokens = _reorder_span(tokens, rng)
        out = " ".join(tokens)
        if self.case_p > 0 and rng.random() < self.case_p:
            out = (str.lower, str.upper, str.title)[int(rng.integers(3))](out)
        return out

    def _abbreviate(self, token: str, rng: np.random.Generator) -> str:
        match = _TOKEN_CORE.match(token)
        assert match is not None  # the pattern matches every string
        lead, core, trail = match.groups()
        short = self.abbreviations.get(core.lower())
        if short is None or rng.random() >= self.abbreviate_p:
            return token
        if core.isupper() and len(core) > 1:
            short = short.upper()
        elif core[:1].isupper():
            short = short[:1].upper() + short[1:]
        return lead + short + trail


def _typo(token: str, rng: np.random.Generator) -> str:
    if len(token) < 4 or not token.isalpha():
        return token
    i = int(rng.integers(len(token) - 1))
    kind = int(rng.integers(4))
    if kind == 0:  # swap two neighbours
        return token[:i] + token[i + 1] + token[i] + token[i + 2 :]
    if kind == 1:  # drop a letter
        return token[:i] + token[i + 1 :]
    if kind == 2:  # double a letter
        return token[: i + 1] + token[i] + token[i + 1 :]
    letter = _LETTERS[int(rng.integers(26))]
    letter = letter.upper() if token[i].isupper() else letter
    return token[:i] + letter + token[i + 1 :]


def _reorder_span(tokens: list[str], rng: np.random.Generator) -> list[str]:
    length = int(rng.integers(2, min(3, len(tokens)) + 1))
    start = int(rng.integers(len(tokens) - length + 1))
    span = tokens[start : start + length]
    order = rng.permutation(length)
    if (order == np.arange(length)).all():
        order = np.roll(order, 1)
    return tokens[:start] + [span[j] for j in order] + tokens[start + length :]


def _from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; expected {sorted(names)}")
    return cls(**{k: _as_tuple(v) for k, v in d.items()})


# -- deterministic views ------------------------------------------------------------------------


def stable_hash(key: Any) -> int:
    """A 63-bit hash of ``key`` that is the same in every process (unlike ``hash()``).

    Bytes are hashed as they are, anything else as ``str(key)`` (so the ids ``5`` and
    ``"5"`` hash alike).
    """
    data = bytes(key) if isinstance(key, bytes | bytearray | memoryview) else str(key).encode()
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def view_rng(seed: int, key: Any, view: int) -> np.random.Generator:
    """The generator of view ``view`` of the item ``key``: ``default_rng([seed,
    stable_hash(key), view])``, independent of the order items are processed in."""
    if int(seed) < 0 or int(view) < 0:
        raise ValueError(f"seed and view must be >= 0, got seed={seed}, view={view}")
    return np.random.default_rng([int(seed), stable_hash(key), int(view)])


def augment_view(
    item: T, augment: Callable[[T, np.random.Generator], T], seed: int, key: Any, view: int
) -> T:
    """View ``view`` of one item: the item itself for 0, else ``augment(item, view_rng(...))``.

    Args:
        item: a PIL image or a title (anything ``augment`` takes).
        augment: an :class:`ImageAugment`, :class:`TextAugment` or compatible callable.
        seed: the run's seed, >= 0.
        key: the item's stable identity (its id, or a hash of its content).
        view: 0 for the original, >= 1 for an augmented view (e.g. ``Batch.views``).
    """
    if int(view) < 0:
        raise ValueError(f"view: expected >= 0, got {view}")
    if view == 0:
        return item
    return augment(item, view_rng(seed, key, view))


def augmented_views(
    item: T,
    augment: Callable[[T, np.random.Generator], T],
    n_views: int,
    seed: int,
    key: Any,
) -> list[T]:
    """``n_views`` deterministic views of one item: ``[item, aug_1, ..., aug_{n-1}]``.

    View ``v`` is :func:`augment_view` ``(item, augment, seed, key, v)``: the same whichever
    order items are processed in and whichever ``n_views`` is asked for.

    Args:
        item: a PIL image or a title.
        augment: an :class:`ImageAugment`, :class:`TextAugment` or compatible callable.
        n_views: number of views, >= 1 (view 0 is ``item`` itself, not a copy).
        seed: the run's seed, >= 0.
        key: the item's stable identity (its id, or a hash of its content).

    Returns:
        List of ``n_views`` items.
    """
    if not isinstance(n_views, int | np.integer) or n_views < 1:
        raise ValueError(f"n_views: expected an int >= 1, got {n_views!r}")
    return [augment_view(item, augment, seed, key, v) for v in range(int(n_views))]
