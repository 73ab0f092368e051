"""Hand-made pair evidence for a pair reranker: model codes, units, numbers, brand, price.

Each title is parsed once (:func:`parse_item`): model / part-number codes (``"PS-LX350H"`` ->
``"pslx350h"``), numbers with units brought to one unit per family (``"1.5tb"`` -> 1500 GB,
``"40-inch"`` -> 40 inches), bare numbers and a brand guess. :func:`pair_features` then compares
the parses of each pair: set overlaps are computed for all pairs at once as row-wise products of
sparse indicator matrices, so tens of thousands of pairs take well under a second.

Example:
    >>> f = pair_features(["sony turntable pslx350h"], ["Sony PS-LX350H Belt-Drive Turntable"])
    >>> float(f.loc[0, "code_match"]), float(f.loc[0, "brand_match"])
    (1.0, 1.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mmmatch.lexical import normalize_text

__all__ = [
    "KNOWN_BRANDS",
    "PAIR_FEATURE_COLUMNS",
    "UNIT_FAMILIES",
    "ItemParse",
    "pair_features",
    "parse_item",
    "parse_items",
]

# ----------------------------------------------------------------------------- brands


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Canonical keys of well-known electronics / software brands (normalised like
#: :func:`~mmmatch.lexical.normalize_text`, so ``"D-Link"`` is ``"dlink"``).
KNOWN_BRANDS: frozenset[str] = _words(
    """
    sony samsung lg panasonic canon nikon olympus pentax fujifilm fuji kodak casio sharp toshiba
    philips jvc pioneer onkyo denon yamaha marantz bose harmankardon jbl klipsch polk sennheiser
    audiotechnica apple microsoft intel amd nvidia hp dell lenovo acer asus ibm gateway compaq
    epson brother lexmark xerox logitech belkin linksys netgear dlink cisco tplink buffalo seagate
    wd maxtor hitachi iomega lacie sandisk kingston lexar pny verbatim memorex tdk maxell garmin
    tomtom magellan motorola nokia blackberry palm plantronics jabra uniden vtech griffin monster
    targus caselogic kensington apc tripplite cuisinart delonghi krups kitchenaid whirlpool
    frigidaire ge haier bosch dyson hoover vizio westinghouse coby rca zenith mitsubishi
    adobe intuit symantec mcafee corel autodesk nuance roxio sage kaspersky trendmicro ca
    broderbund encore vivendi activision ea ubisoft nintendo atari thq sega konami capcom
    macromedia avid steinberg cakewalk pinnacle webroot novell oracle filemaker quark vmware
    parallels smithmicro
    """
)

# multi-word spellings -> canonical key (matched on normalised tokens)
_BRAND_ALIASES: dict[str, str] = {
    "western digital": "wd", "hewlett packard": "hp", "computer associates": "ca",
    "trend micro": "trendmicro", "tripp lite": "tripplite", "case logic": "caselogic",
    "electronic arts": "ea", "harman kardon": "harmankardon", "kitchen aid": "kitchenaid",
    "general electric": "ge", "smith micro": "smithmicro", "audio technica": "audiotechnica",
    "de longhi": "delonghi", "d link": "dlink", "tp link": "tplink", "la cie": "lacie",
}
# trailing words dropped from an explicit manufacturer ("sage software inc" -> "sage")
_CORPORATE = _words(
    "inc incorporated corp corporation co company ltd llc software systems international intl "
    "technologies technology entertainment interactive media publishing electronics products "
    "group usa america labs studios"
)
_NOT_BRAND = _words("the a an new")
_BRAND_WINDOW = 3  # a known brand counts as the item's brand only among the first tokens

# ----------------------------------------------------------------------------- units

# unit spelling -> (family, factor to the family's canonical unit)
_SPACED_UNITS: dict[str, tuple[str, float]] = {
    **dict.fromkeys(["kb", "kilobyte", "kilobytes"], ("gb", 1e-6)),
    **dict.fromkeys(["mb", "megabyte", "megabytes"], ("gb", 1e-3)),
    **dict.fromkeys(["gb", "gig", "gigs", "gigabyte", "gigabytes"], ("gb", 1.0)),
    **dict.fromkeys(["tb", "terabyte", "terabytes"], ("gb", 1e3)),
    **dict.fromkeys(["inch", "inches", '"', "''", "'"], ("inch", 1.0)),
    "mm": ("mm", 1.0), "cm": ("mm", 10.0),
    **dict.fromkeys(["meter", "meters", "metre", "metres"], ("mm", 1e3)),
    **dict.fromkeys(["ft", "feet", "foot"], ("ft", 1.0)),
    "hz": ("mhz", 1e-6), "khz": ("mhz", 1e-3), "mhz": ("mhz", 1.0), "ghz": ("mhz", 1e3),
    **dict.fromkeys(["watt", "watts"], ("w", 1.0)), "kw": ("w", 1e3),
    **dict.fromkeys(["volt", "volts"], ("v", 1.0)),
    "mah": ("mah", 1.0),
    **dict.fromkeys(["mp", "megapixel", "megapixels", "mpix"], ("mp", 1.0)),
    "ml": ("ml", 1.0), "cl": ("ml", 10.0), "fl oz": ("ml", 29.5735),
    **dict.fromkeys(["liter", "liters", "litre", "litres"], ("ml", 1e3)),
    "kg": ("g", 1e3), **dict.fromkeys(["lb", "lbs", "pound", "pounds"], ("g", 453.592)),
    **dict.fromkeys(["oz", "ounce", "ounces"], ("g", 28.3495)),
    "kbps": ("mbps", 1e-3), "mbps": ("mbps", 1.0), "gbps": ("mbps", 1e3),
    **dict.fromkeys(["port", "ports"], ("port", 1.0)),
    **dict.fromkeys(["cup", "cups"], ("cup", 1.0)),
    **dict.fromkeys(["pk", "pack"], ("pack", 1.0)),
    **dict.fromkeys(["disc", "discs"], ("disc", 1.0)),
    "bit": ("bit", 1.0), "ms": ("ms", 1.0), "rpm": ("rpm", 1.0), "dpi": ("dpi", 1.0),
    "ppm": ("ppm", 1.0),
    **dict.fromkeys(["user", "users", "seat", "seats"], ("user", 1.0)),
    **dict.fromkeys(["ch", "channel", "channels"], ("ch", 1.0)),
    **dict.fromkeys(["yr", "yrs", "year", "years"], ("yr", 1.0)),
    **dict.fromkeys(["mo", "month", "months"], ("yr", 1 / 12)),
}
# single letters only count glued to the number ("13in", "12x", "1080p", "300w", "1.5l")
_ATTACHED_UNITS: dict[str, tuple[str, float]] = {
    "in": ("inch", 1.0), "m": ("mm", 1e3), "l": ("ml", 1e3), "g": ("g", 1.0),
    "x": ("zoom", 1.0), "p": ("res", 1.0), "i": ("res", 1.0), "w": ("w", 1.0), "v": ("v", 1.0),
}
#: Unit families and the unit their values are expressed in.
UNIT_FAMILIES: dict[str, str] = {
    "gb": "gigabytes (KB/MB/TB converted, 1 TB = 1000 GB)", "inch": "inches (\", ', -inch)",
    "mm": "millimetres (cm, m)", "ft": "feet", "mhz": "megahertz (Hz, kHz, GHz)",
    "w": "watts (kW)", "v": "volts", "mah": "milliamp-hours", "mp": "megapixels",
    "zoom": "optical zoom factor (12x)", "ml": "millilitres (cl, l, fl oz)",
    "g": "grams (kg, lb, oz)", "res": "video lines (720p, 1080i)",
    "mbps": "megabits per second", "port": "ports", "cup": "cups", "pack": "pack size",
    "disc": "discs", "bit": "bits", "ms": "milliseconds", "rpm": "rpm", "dpi": "dpi",
    "ppm": "pages per minute", "user": "users / seats", "ch": "audio channels",
    "yr": "years (months)",
}
_RESOLUTIONS = frozenset({240.0, 360.0, 480.0, 576.0, 720.0, 1080.0, 1440.0, 2160.0})


def _alternation(units: Iterable[str]) -> str:
    return "|".join(re.escape(u).replace(r"\ ", r"\s*") for u in sorted(units, key=len,
                                                                         reverse=True))


_NUM = r"\d+(?:\.\d+)?"
_UNIT_RE = re.compile(
    rf"(?<![a-z0-9./])(?P<num>{_NUM})"
    rf"(?:\s?-?\s?(?P<spaced>{_alternation(_SPACED_UNITS)})"
    rf"|(?P<attached>{_alternation(_ATTACHED_UNITS)}))(?![a-z0-9])"
)
# "2 x 4gb", "2x4gb": the unit value and the total
_MULTIPLIED_RE = re.compile(
    rf"(?<![a-z0-9./])(?P<mul>\d{{1,2}})\s*x\s*(?P<num>\d+)\s?-?\s?"
    rf"(?P<spaced>{_alternation(u for u in _SPACED_UNITS if u.isalpha())})(?![a-z0-9])"
)
# a normalised token that is only a measurement ("500gb", "40inch", "12x"): not a code
_UNIT_TOKEN_RE = re.compile(
    rf"(?:\d+x)?\d+(?:{_alternation(u for u in [*_SPACED_UNITS, *_ATTACHED_UNITS] if u.isalpha())})"
)
# a standalone number, not a piece of a code ("350" in "pslx350h", "10" in "f3h982-10")
_BARE_NUM_RE = re.compile(
    rf"(?<![a-z0-9.])(?<![a-z0-9][-/])({_NUM})(?![0-9]|\.\d|[a-z]*\d)"
)
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ORDINAL_RE = re.compile(r"(?<!\d)\d{1,2}(?:st|nd|rd|th)(?![a-z])")
# "1920x1080", "2line", "3shelf": a size or a count and a word, not a code
_NOT_CODE_RE = re.compile(r"\d+x\d+|\d{1,2}[a-z]{3,}")
_DIGITS_RE = re.compile(r"\d{3,}")
_LETTER_RE = re.compile(r"[a-z]")
_DIGIT_RE = re.compile(r"\d")
_RAW_DIGITS_RE = re.compile(r"[(\[#]*(\d{4,})[)\].,;:]*")
# alphanumeric tokens that are formats or standards, not product codes
_NOT_CODES = _words(
    "mp3 mp4 h264 x264 x64 x86 11a 11b 11g 11n 3gp dvd5 dvd9 usb2 usb3 ddr2 ddr3 ddr4"
)
_MIN_CONTAIN = 5  # codes this long also match when contained in a code of the other side
_MIN_BRAND_PREFIX = 4
_LOG_BUCKET = math.log(1.04)  # unit values in buckets 1 apart differ by under 8.2 %


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class ItemParse:
    """What one title says about its product.

    Attributes:
        tokens: normalised word tokens (:func:`~mmmatch.lexical.normalize_text`), in order.
        codes: model / part-number codes: tokens mixing letters and digits (at least 3
            characters, not a measurement such as ``500gb``, an ordinal or a format such as
            ``mp3``) and standalone digit runs of 4+ digits (part numbers, UPCs; not years
            1980-2039), lower-case without ``-``, ``/`` or ``.`` (``dmc-fz8k`` -> ``dmcfz8k``).
        units: ``(family, value)`` pairs, the value in the family's unit (:data:`UNIT_FAMILIES`)
            rounded to 3 significant digits; ``"2 x 4gb"`` gives both 4 and 8 GB.
        numbers: standalone numbers (with or without a unit) as strings without leading or
            trailing zeros (``"25.0"`` -> ``"25"``).
        brand: canonical brand key (:data:`KNOWN_BRANDS` spelling when known), or ``None``.
        brand_known: the brand came from an explicit brand column or is a known brand within
            the first tokens (a first-token guess is not).
        brand_mentions: every known brand named anywhere in the title.
        compact: the normalised title without spaces (to find codes split by spaces).
    """

    tokens: tuple[str, ...]
    codes: frozenset[str]
    units: frozenset[tuple[str, float]]
    numbers: frozenset[str]
    brand: str | None
    brand_known: bool
    brand_mentions: frozenset[str]
    compact: str


def _is_missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _round3(value: float) -> float:
    return float(f"{value:.3g}")


def _parse_units(low: str) -> frozenset[tuple[str, float]]:
    out: set[tuple[str, float]] = set()
    for m in _UNIT_RE.finditer(low):
        num = float(m["num"])
        if m["spaced"] is not None:
            family, factor = _SPACED_UNITS[" ".join(m["spaced"].split())]
        else:
            family, factor = _ATTACHED_UNITS[m["attached"]]
            if family == "res" and num not in _RESOLUTIONS:
                continue
            if family == "g" and num < 10 and "." not in m["num"]:
                continue  # "3g", "4g": networks, not grams
        if num > 0:
            out.add((family, _round3(num * factor)))
    for m in _MULTIPLIED_RE.finditer(low):
        family, factor = _SPACED_UNITS[" ".join(m["spaced"].split())]
        value, mul = float(m["num"]) * factor, int(m["mul"])
        if value > 0 and mul > 0:
            out.update({(family, _round3(value)), (family, _round3(value * mul))})
    return frozenset(out)


def _number_key(s: str) -> str:
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.lstrip("0") or "0"


def _is_code(token: str) -> bool:
    return (
        len(token) >= 3 and _LETTER_RE.search(token) is not None
        and _DIGIT_RE.search(_ORDINAL_RE.sub("", token)) is not None  # "4th6th": grades
        and token not in _NOT_CODES and not _UNIT_TOKEN_RE.fullmatch(token)
        and not _NOT_CODE_RE.fullmatch(token)
    )


def _parse_codes(low: str, tokens: Sequence[str]) -> frozenset[str]:
    codes = {t for t in tokens if _is_code(t)}
    if codes or _LETTER_RE.search(low):  # digit codes only in titles that have words
        for raw in low.split():
            m = _RAW_DIGITS_RE.fullmatch(raw)
            if m and not (len(m[1]) == 4 and 1980 <= int(m[1]) <= 2039):
                codes.add(m[1])
    return frozenset(codes)


def _brand_key(name: str) -> str | None:
    toks = normalize_text(name).split()
    while toks and toks[0] in _NOT_BRAND:
        toks = toks[1:]
    full = " ".join(toks)
    if full in _BRAND_ALIASES:
        return _BRAND_ALIASES[full]
    while len(toks) > 1 and toks[-1] in _CORPORATE:
        toks = toks[:-1]
    full = " ".join(toks)
    if full in _BRAND_ALIASES:
        return _BRAND_ALIASES[full]
    if len(toks) >= 2 and f"{toks[0]} {toks[1]}" in _BRAND_ALIASES:
        return _BRAND_ALIASES[f"{toks[0]} {toks[1]}"]
    return toks[0] if toks else None


def _brand_mentions(tokens: Sequence[str]) -> list[tuple[int, str]]:
    found = []
    for i, t in enumerate(tokens):
        if i + 1 < len(tokens) and f"{t} {tokens[i + 1]}" in _BRAND_ALIASES:
            found.append((i, _BRAND_ALIASES[f"{t} {tokens[i + 1]}"]))
        elif t in KNOWN_BRANDS:
            found.append((i, t))
    return found


def parse_item(text: Any, brand: Any = None) -> ItemParse:
    """Parse one title.

    Args:
        text: the title (``None`` / NaN read as empty).
        brand: an explicit brand / manufacturer (``None``, NaN or empty: guess from ``text``).

    Returns:
        The :class:`ItemParse`.

    Example:
        >>> p = parse_item("Panasonic Lumix DMC-FZ8K 7.2MP 12x zoom, 2 x 4GB")
        >>> sorted(p.codes), p.brand, sorted(p.units)[:2]
        (['dmcfz8k'], 'panasonic', [('gb', 4.0), ('gb', 8.0)])
    """
    low = "" if _is_missing(text) else _THOUSANDS_RE.sub("", str(text).lower())
    tokens = tuple(normalize_text(low).split())
    mentions = _brand_mentions(tokens)
    key = None if _is_missing(brand) or not str(brand).strip() else _brand_key(str(brand))
    known = key is not None
    if key is None:
        early = [b for i, b in mentions if i < _BRAND_WINDOW]
        if early:
            key, known = early[0], True
        else:
            key = next((t for t in tokens if t not in _NOT_BRAND and not t.isdigit()), None)
    numbers = frozenset(_number_key(m) for m in _BARE_NUM_RE.findall(low))
    return ItemParse(
        tokens=tokens, codes=_parse_codes(low, tokens), units=_parse_units(low),
        numbers=numbers, brand=key, brand_known=known,
        brand_mentions=frozenset(b for _, b in mentions), compact="".join(tokens),
    )


def parse_items(texts: Sequence[Any], brands: Sequence[Any] | None = None) -> list[ItemParse]:
    """:func:`parse_item` over ``texts`` (each distinct ``(text, brand)`` parsed once).

    Args:
        texts: (n,) titles.
        brands: (n,) explicit brands, or ``None``.

    Returns:
        (n,) list of :class:`ItemParse`, aligned with ``texts``.
    """
    if brands is not None and len(brands) != len(texts):
        raise ValueError(f"brands has {len(brands)} entries for {len(texts)} texts")
    bs = [None] * len(texts) if brands is None else [
        None if _is_missing(b) else str(b) for b in brands]
    cache: dict[tuple[str, str | None], ItemParse] = {}
    out = []
    for t, b in zip(texts, bs, strict=True):
        k = ("" if _is_missing(t) else str(t), b)
        if k not in cache:
            cache[k] = parse_item(k[0], b)
        out.append(cache[k])
    return out


# ----------------------------------------------------------------------------- pair features

#: Columns of :func:`pair_features`, in order.
PAIR_FEATURE_COLUMNS: tuple[str, ...] = (
    "code_match", "code_match_len", "code_in_text", "code_digits_match", "code_clash",
    "code_jaccard", "n_codes_left", "n_codes_right", "unit_match", "unit_clash",
    "unit_families_shared", "number_jaccard", "brand_match", "brand_clash", "price_ratio",
    "len_ratio", "token_jaccard", "first_token_match",
)


def _indicator(
    left: Sequence[Iterable[Any]], right: Sequence[Iterable[Any]],
    weight: Callable[[Any], float] | None = None,
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict[Any, int]]:
    """(n_left, V) and (n_right, V) CSR indicators of the sets over a shared vocabulary; the
    left entries are ``weight(item)`` (default 1), the right ones 1."""
    vocab: dict[Any, int] = {}
    mats = []
    for sets in (left, right):
        indptr, indices = [0], []
        for s in sets:
            indices.extend(vocab.setdefault(x, len(vocab)) for x in s)
            indptr.append(len(indices))
        mats.append((np.asarray(indptr, np.int64), np.asarray(indices, np.int64)))
    width = max(1, len(vocab))
    data = [np.ones(len(ind), np.float32) for _, ind in mats]
    if weight is not None:
        keys = list(vocab)
        w = np.array([weight(k) for k in keys], dtype=np.float32)
        data[0] = w[mats[0][1]] if len(keys) else data[0]
    a, b = (
        sp.csr_matrix((d, ind, ptr), shape=(len(ptr) - 1, width))
        for d, (ptr, ind) in zip(data, mats, strict=True)
    )
    return a, b, vocab


def _overlap(
    left: Sequence[Iterable[Any]], right: Sequence[Iterable[Any]], li: np.ndarray,
    ri: np.ndarray, weight: Callable[[Any], float] | None = None,
) -> np.ndarray:
    """|left[li[j]] & right[ri[j]]| for every pair j: (p,) float64 (sets must not repeat
    items). With ``weight``: the largest ``weight(item)`` over the common items, 0 if none."""
    a, b, _ = _indicator(left, right, weight)
    prod = a[li].multiply(b[ri]).tocsr()
    if weight is None:
        return np.asarray(prod.sum(axis=1), dtype=np.float64).ravel()
    return prod.max(axis=1).toarray().ravel().astype(np.float64)


def _jaccard(inter: np.ndarray, nl: np.ndarray, nr: np.ndarray) -> np.ndarray:
    union = nl + nr - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((nl > 0) & (nr > 0), inter / np.maximum(union, 1), np.nan)


@lru_cache(maxsize=65536)
def _code_pieces(code: str) -> frozenset[str]:
    """Substrings of ``code`` of at least :data:`_MIN_CONTAIN` characters that do not cut a
    digit run (``sd100`` is not a piece of ``sd1000``; ``dslra200`` is of ``dslra200w``)."""
    n = len(code)
    cuts = [i for i in range(n + 1)
            if i in (0, n) or not (code[i - 1].isdigit() and code[i].isdigit())]
    return frozenset(code[i:j] for i in cuts for j in cuts if j - i >= _MIN_CONTAIN)


def _contains(hay: str, needle: str) -> bool:
    """``needle`` occurs in ``hay`` without cutting a digit run of ``hay``."""
    start = hay.find(needle)
    while start >= 0:
        end = start + len(needle)
        if not (start > 0 and hay[start - 1].isdigit() and needle[0].isdigit()) and not (
            end < len(hay) and hay[end].isdigit() and needle[-1].isdigit()
        ):
            return True
        start = hay.find(needle, start + 1)
    return False


def _brand_prefixes(key: str | None) -> frozenset[str]:
    """``key`` and its prefixes of :data:`_MIN_BRAND_PREFIX`+ characters (glued manufacturer
    names: ``globalsoftwarepublishing`` starts with ``global``)."""
    if key is None:
        return frozenset()
    return frozenset({key, *(key[:k] for k in range(_MIN_BRAND_PREFIX, len(key)))})


def _unit_buckets(units: Iterable[tuple[str, float]], spread: int) -> frozenset[tuple[str, int]]:
    """``(family, log bucket)`` of each value, widened by ``spread`` buckets either side."""
    out = set()
    for fam, value in units:
        b = math.floor(math.log(value) / _LOG_BUCKET)
        out.update((fam, b + d) for d in range(-spread, spread + 1))
    return frozenset(out)


def _family_hits(
    left: Sequence[Iterable[tuple[str, Any]]], right: Sequence[Iterable[tuple[str, Any]]],
    li: np.ndarray, ri: np.ndarray, families: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair and unit family: (p, F) common key?, (p, F) left has it, (p, F) right has it."""
    a, b, vocab = _indicator(left, right)
    fam_of = np.zeros((a.shape[1], len(families)), dtype=np.float32)
    for (fam, _), col in vocab.items():
        fam_of[col, families[fam]] = 1.0
    fam_of = sp.csr_matrix(fam_of)
    common = (a[li].multiply(b[ri]) @ fam_of).toarray() > 0
    return common, (a @ fam_of).toarray()[li] > 0, (b @ fam_of).toarray()[ri] > 0


def _prices(prices: Sequence[Any] | np.ndarray | None, n: int, name: str) -> np.ndarray:
    if prices is None:
        return np.full(n, np.nan)
    if len(prices) != n:
        raise ValueError(f"{name} has {len(prices)} entries for {n} items")
    p = pd.to_numeric(pd.Series(list(prices), dtype=object), errors="coerce")
    p = p.to_numpy(dtype=np.float64)
    return np.where(p > 0, p, np.nan)


def _unique_parses(
    items: Sequence[Any], brands: Sequence[Any] | None, name: str
) -> tuple[list[ItemParse], np.ndarray]:
    """Distinct parses of ``items`` (titles or :class:`ItemParse`) and (n,) positions in them."""
    if brands is not None and len(brands) != len(items):
        raise ValueError(f"{name}_brands has {len(brands)} entries for {len(items)} texts")
    parsed = len(items) > 0 and all(isinstance(x, ItemParse) for x in items)
    if parsed and brands is not None:
        raise ValueError(f"{name}_brands apply to texts, not to ItemParse objects")
    bs = [None] * len(items) if brands is None else [
        None if _is_missing(b) else str(b) for b in brands]
    seen: dict[Any, int] = {}
    uniq: list[ItemParse] = []
    inverse = np.empty(len(items), dtype=np.int64)
    for j, (x, b) in enumerate(zip(items, bs, strict=True)):
        key = id(x) if parsed else ("" if _is_missing(x) else str(x), b)
        k = seen.get(key)
        if k is None:
            k = seen[key] = len(uniq)
            uniq.append(x if parsed else parse_item(key[0], b))
        inverse[j] = k
    return uniq, inverse


def _pair_index(
    idx: Sequence[int] | np.ndarray | None, n: int, p: int | None, name: str
) -> np.ndarray:
    out = np.arange(n if p is None else p) if idx is None else np.asarray(idx, dtype=np.int64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {out.shape}")
    if len(out) and (out.min() < 0 or out.max() >= n):
        raise IndexError(f"{name} indexes outside 0..{n - 1}")
    return out


def pair_features(
    left_texts: Sequence[Any],
    right_texts: Sequence[Any],
    left_prices: Sequence[Any] | np.ndarray | None = None,
    right_prices: Sequence[Any] | np.ndarray | None = None,
    left_brands: Sequence[Any] | None = None,
    right_brands: Sequence[Any] | None = None,
    li: Sequence[int] | np.ndarray | None = None,
    ri: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Hand-made evidence for each pair ``(left[li[j]], right[ri[j]])``.

    Flags are 0/1; ratios are NaN where they do not apply (an empty side, a missing price),
    so a gradient-boosted model can tell "no evidence" from "evidence against".

    Columns (all float32, in :data:`PAIR_FEATURE_COLUMNS` order):

    - ``code_match``: a code of one side equals a code of the other, or one of 5+ characters
      is contained in a code of the other without cutting a digit run (``dslra200`` in
      ``dslra200w``, ``lx350h`` in ``pslx350h``; not ``sd100`` in ``sd1000``).
    - ``code_match_len``: characters of the longest code behind ``code_match`` (0 if none):
      ``cs3`` is shared by a whole product line, ``dvpfx820`` by few products.
    - ``code_in_text``: a code of 5+ characters of one side appears in the other's title with
      spaces removed (catches codes split by spaces: ``ps lx350h``).
    - ``code_digits_match``: the codes of both sides share a run of 3+ digits (``25770`` in
      ``lfc25770st`` and ``lfc25770ss``: colour variants of one model).
    - ``code_clash``: both sides have codes, and neither ``code_match`` nor ``code_in_text``.
    - ``code_jaccard``: Jaccard of the exact code sets; NaN when either side has none.
    - ``n_codes_left``, ``n_codes_right``: number of codes of each side.
    - ``unit_match``: a unit family (:data:`UNIT_FAMILIES`) in which both sides give an equal
      value (after conversion: ``1.5tb`` = ``1500 GB``).
    - ``unit_clash``: a unit family that both sides mention with no values within about 4-8 %
      (``1tb`` vs ``500gb``; not ``32"`` vs ``31.5"`` or ``13.5 mp`` vs ``13 megapixels``).
      Both flags can be 1 (same capacity, different screen size).
    - ``unit_families_shared``: number of unit families mentioned by both sides.
    - ``number_jaccard``: Jaccard of the standalone numbers; NaN when either side has none.
    - ``brand_match``: one side's brand (or a 4+ character prefix of it, for glued names such
      as ``sonypicturesdigitalentertainment``) is the other's brand, one of its tokens or a
      known brand it mentions.
    - ``brand_clash``: both brands are sure (explicit column or a known brand among the first
      tokens), they differ and neither is named in the other title.
    - ``price_ratio``: min / max price; NaN when either is missing or <= 0.
    - ``len_ratio``: min / max title length in tokens; NaN when either title is empty.
    - ``token_jaccard``: Jaccard of the normalised token sets; NaN when either is empty.
    - ``first_token_match``: the first normalised tokens are equal.

    Args:
        left_texts: (n_left,) titles, or :class:`ItemParse` objects from :func:`parse_items`.
        right_texts: (n_right,) titles or :class:`ItemParse` objects.
        left_prices: (n_left,) prices (numbers, numeric strings, ``None`` / NaN), or ``None``.
        right_prices: (n_right,) prices, or ``None``.
        left_brands: (n_left,) explicit brands (missing entries: guessed from the title), or
            ``None`` to guess all.
        right_brands: (n_right,) explicit brands, or ``None``.
        li: (p,) positions into the left items; ``None``: ``0..n_left-1``.
        ri: (p,) positions into the right items; ``None``: ``0..n_right-1``. With both
            ``None`` the two lists are aligned pairs and must have the same length.

    Returns:
        (p, 18) float32 DataFrame with a default ``RangeIndex``.

    Raises:
        ValueError: ``li`` and ``ri`` (or, without them, the two lists) differ in length, or a
            price / brand list does not match its texts.
        IndexError: ``li`` / ``ri`` point outside their lists.
    """
    n_left, n_right = len(left_texts), len(right_texts)
    p = None if li is not None or ri is not None else n_left
    if p is not None and n_right != p:
        raise ValueError(f"{n_left} left and {n_right} right texts: pass li / ri")
    li = _pair_index(li, n_left, p if ri is None else len(ri), "li")
    ri = _pair_index(ri, n_right, len(li), "ri")
    if len(li) != len(ri):
        raise ValueError(f"li has {len(li)} pairs, ri {len(ri)}")
    n_pairs = len(li)
    lp = _prices(left_prices, n_left, "left_prices")[li]
    rp = _prices(right_prices, n_right, "right_prices")[ri]
    # compare distinct items: aligned pair lists repeat the same titles many times
    left, left_pos = _unique_parses(left_texts, left_brands, "left")
    right, right_pos = _unique_parses(right_texts, right_brands, "right")
    li, ri = left_pos[li], right_pos[ri]
    cols: dict[str, np.ndarray] = {}

    def sizes(items: list[ItemParse], attr: str, idx: np.ndarray) -> np.ndarray:
        return np.array([len(getattr(x, attr)) for x in items], dtype=np.float64)[idx]

    # codes
    lc = [x.codes for x in left]
    rc = [x.codes for x in right]
    nl, nr = sizes(left, "codes", li), sizes(right, "codes", ri)
    exact = _overlap(lc, rc, li, ri)
    l_long = [[c for c in s if len(c) >= _MIN_CONTAIN] for s in lc]
    r_long = [[c for c in s if len(c) >= _MIN_CONTAIN] for s in rc]
    pieces_l = [frozenset().union(*(_code_pieces(c) for c in s)) for s in lc]
    pieces_r = [frozenset().union(*(_code_pieces(c) for c in s)) for s in rc]
    contained = _overlap(l_long, pieces_r, li, ri) + _overlap(pieces_l, r_long, li, ri)
    code_match = (exact > 0) | (contained > 0)
    match_len = np.maximum.reduce([
        _overlap(lc, rc, li, ri, weight=len),
        _overlap(l_long, pieces_r, li, ri, weight=len),
        _overlap(pieces_l, r_long, li, ri, weight=len),
    ])
    in_text = np.zeros(n_pairs, dtype=bool)
    has_long_l = np.array([len(s) > 0 for s in l_long], dtype=bool)[li]
    has_long_r = np.array([len(s) > 0 for s in r_long], dtype=bool)[ri]
    for j in np.flatnonzero((has_long_l | has_long_r) & ~code_match):
        a, b = left[li[j]], right[ri[j]]
        in_text[j] = any(_contains(b.compact, c) for c in l_long[li[j]]) or any(
            _contains(a.compact, c) for c in r_long[ri[j]])
    # a shared or contained code of 5+ characters is in the other title too
    in_text |= (_overlap(l_long, rc, li, ri) > 0) | (contained > 0)
    digits_l = [frozenset(d for c in s for d in _DIGITS_RE.findall(c)) for s in lc]
    digits_r = [frozenset(d for c in s for d in _DIGITS_RE.findall(c)) for s in rc]
    cols["code_match"] = code_match
    cols["code_match_len"] = match_len
    cols["code_in_text"] = in_text
    cols["code_digits_match"] = _overlap(digits_l, digits_r, li, ri) > 0
    cols["code_clash"] = (nl > 0) & (nr > 0) & ~code_match & ~in_text
    cols["code_jaccard"] = _jaccard(exact, nl, nr)
    cols["n_codes_left"], cols["n_codes_right"] = nl, nr

    # units: per family, an equal value (match) or none within about 4-8 % (clash)
    families = {f: k for k, f in enumerate(UNIT_FAMILIES)}
    lu, ru = [x.units for x in left], [x.units for x in right]
    common, present_l, present_r = _family_hits(lu, ru, li, ri, families)
    near, _, _ = _family_hits([_unit_buckets(u, 0) for u in lu],
                              [_unit_buckets(u, 1) for u in ru], li, ri, families)
    both = present_l & present_r
    cols["unit_match"] = common.any(axis=1)
    cols["unit_clash"] = (both & ~near).any(axis=1)
    cols["unit_families_shared"] = both.sum(axis=1)

    cols["number_jaccard"] = _jaccard(
        _overlap([x.numbers for x in left], [x.numbers for x in right], li, ri),
        sizes(left, "numbers", li), sizes(right, "numbers", ri))

    # brand
    own_l = [_brand_prefixes(x.brand) for x in left]
    own_r = [_brand_prefixes(x.brand) for x in right]
    named_l = [x.brand_mentions.union(x.tokens, [x.brand] if x.brand else []) for x in left]
    named_r = [x.brand_mentions.union(x.tokens, [x.brand] if x.brand else []) for x in right]
    brand_match = (_overlap(own_l, named_r, li, ri) > 0) | (_overlap(named_l, own_r, li, ri) > 0)
    sure_l = np.array([x.brand_known for x in left], dtype=bool)[li]
    sure_r = np.array([x.brand_known for x in right], dtype=bool)[ri]
    cols["brand_match"] = brand_match
    cols["brand_clash"] = sure_l & sure_r & ~brand_match

    with np.errstate(invalid="ignore", divide="ignore"):
        cols["price_ratio"] = np.minimum(lp, rp) / np.maximum(lp, rp)  # NaN stays NaN
        tl = np.array([len(x.tokens) for x in left], dtype=np.float64)[li]
        tr = np.array([len(x.tokens) for x in right], dtype=np.float64)[ri]
        cols["len_ratio"] = np.where((tl > 0) & (tr > 0), np.minimum(tl, tr) / np.maximum(
            tl, tr), np.nan)
    cols["token_jaccard"] = _jaccard(
        _overlap([frozenset(x.tokens) for x in left], [frozenset(x.tokens) for x in right],
                 li, ri),
        np.array([len(set(x.tokens)) for x in left], dtype=np.float64)[li],
        np.array([len(set(x.tokens)) for x in right], dtype=np.float64)[ri])
    first_l = [x.tokens[:1] for x in left]
    first_r = [x.tokens[:1] for x in right]
    cols["first_token_match"] = _overlap(first_l, first_r, li, ri) > 0

    return pd.DataFrame({k: np.asarray(cols[k], dtype=np.float32) for k in PAIR_FEATURE_COLUMNS})

