"""A self-contained HTML report of a match or dedupe run, for the people who check it.

One file, readable offline by anyone with a browser: thumbnails are embedded as JPEG data URIs,
plots as PNG data URIs drawn by matplotlib (on its Agg canvas, without pyplot), the little
filtering script is inline and the page works without it. Sections:

* **summary**: catalogue sizes, candidates, matches, clusters, the threshold and how it was
  chosen; with labels (gold pairs or a ``label`` column) precision / recall / F1 and the
  precision-recall curve with the operating point;
* **scores**: histograms of the decision column for matched and unmatched pairs (and for
  true and false pairs when labels are known), with the threshold;
* **pairs**: both photos, both titles and the evidence of each pair, the uncertain ones
  (closest to the threshold) first, with filters and a search box;
* **clusters**: the largest clusters as image strips (``cluster_id`` of a dedupe, or the
  connected components of the matched pairs);
* **unmatched**: the left rows (in a dedupe: the rows) without any match, with their best
  candidate;
* **problems**: the rows whose image could not be used (``pairs.attrs["problems"]``).

The data behind it comes from small pure functions (:func:`summarize`,
:func:`uncertain_first`, :func:`pair_labels`, :func:`~mmmatch.metrics.pr_curve`,
:func:`pair_clusters`) that can be checked, or used, on their own.

Needs the ``report`` extra (matplotlib, jinja2): ``pip install "mmmatch[report]"``.

Example:
    >>> pairs = mmmatch.match(left_df, right_df, all_candidates=True)  # doctest: +SKIP
    >>> report(pairs, left_df, right_df, output="report.html", gold=truth)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmmatch._io import atomic_file
from mmmatch.catalogue import PROBLEM_COLUMNS, Catalogue, ColumnMap, load_catalogue, read_table
from mmmatch.exceptions import ImageError, MmmatchError
from mmmatch.images import ImageLimits, decode_image, read_image_bytes
from mmmatch.metrics import pr_curve

__all__ = [
    "EVIDENCE_DISPLAY",
    "pair_clusters",
    "pair_labels",
    "pr_curve",
    "render_report",
    "report",
    "summarize",
    "uncertain_first",
]

EVIDENCE_DISPLAY = ["score", "image_sim", "text_sim", "lexical_sim", "word_sim", "fused_sim",
                    "probability"]
"""Evidence columns shown on each pair card, in this order, when the pairs have them."""

_INSTALL = 'the HTML report needs matplotlib and jinja2: pip install "mmmatch[report]"'


# -- the pure parts ----------------------------------------------------------------------------


def _decision_column(pairs: pd.DataFrame) -> str:
    """The column decisions are made on: ``probability`` when a reranker scored the pairs,
    else ``score`` (as :class:`~mmmatch.pipeline.Matcher` decides)."""
    return "probability" if "probability" in pairs.columns else "score"


def _keys(left: pd.Series, right: pd.Series, symmetric: bool) -> pd.Series:
    """One hashable key per pair; ``(a, b)`` and ``(b, a)`` share it when ``symmetric``."""
    a = left.astype(str).to_numpy()
    b = right.astype(str).to_numpy()
    if symmetric:
        a, b = np.minimum(a, b), np.maximum(a, b)
    return pd.Series(list(zip(a, b, strict=True)), index=left.index, dtype=object)


def _decisions(pairs: pd.DataFrame, threshold: float, column: str) -> np.ndarray:
    """(n,) bool: ``is_match`` when the pairs carry it (it may be one-to-one), else
    ``pairs[column] >= threshold`` (NaN is no match)."""
    if "is_match" in pairs.columns:
        return pairs["is_match"].fillna(False).to_numpy(dtype=bool)
    values = pd.to_numeric(pairs[column], errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        return values >= threshold


def _unique_pairs(pairs: pd.DataFrame, column: str, symmetric: bool) -> pd.DataFrame:
    """Candidate rows with a right id, one per pair (per unordered pair when ``symmetric``):
    the row with the highest ``column`` is kept, its ``is_match`` true when any duplicate's
    was."""
    out = pairs[pairs["left_id"].notna() & pairs["right_id"].notna()]
    if not symmetric or out.empty:
        return out
    key = _keys(out["left_id"], out["right_id"], True)
    out = out.assign(_key=key)
    if "is_match" in out.columns:
        out = out.assign(is_match=out.groupby("_key")["is_match"].transform("any"))
    order = pd.to_numeric(out[column], errors="coerce").fillna(-np.inf)
    out = out.iloc[np.argsort(-order.to_numpy(), kind="stable")]
    out = out[~out["_key"].duplicated()].sort_index()
    return out.drop(columns="_key")


def _gold_keys(gold: pd.DataFrame, symmetric: bool) -> set[tuple[str, str]]:
    """The true pairs of ``gold`` (``left_id, right_id``, rows with ``label`` 0 dropped)."""
    missing = [c for c in ("left_id", "right_id") if c not in gold.columns]
    if missing:
        raise ValueError(f"gold: expected columns left_id, right_id (and optionally label); "
                         f"missing {missing}, got {list(map(str, gold.columns))}")
    if "label" in gold.columns:
        gold = gold[pd.to_numeric(gold["label"], errors="coerce") == 1]
    return set(_keys(gold["left_id"], gold["right_id"], symmetric))


def pair_labels(
    pairs: pd.DataFrame, gold: pd.DataFrame | None = None, symmetric: bool = False
) -> np.ndarray | None:
    """The true label of each pair.

    Args:
        pairs: ``left_id, right_id`` (and optionally ``label``).
        gold: the true pairs, ``left_id, right_id`` (rows with a ``label`` of 0 are not true
            pairs); takes precedence over a ``label`` column.
        symmetric: the pairs are within one catalogue, so ``(a, b)`` is ``(b, a)``.

    Returns:
        (n,) float64: 1.0 for a true pair, 0.0 for a false one, NaN where unknown (a missing
        ``label``); ``None`` without ``gold`` or a ``label`` column.
    """
    if gold is not None:
        truth = _gold_keys(gold, symmetric)
        keys = _keys(pairs["left_id"], pairs["right_id"], symmetric)
        return np.fromiter((k in truth for k in keys), dtype=np.float64, count=len(keys))
    if "label" in pairs.columns:
        labels = pd.to_numeric(pairs["label"], errors="coerce").to_numpy(np.float64)
        bad = ~np.isnan(labels) & ~np.isin(labels, (0.0, 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"pairs: label must be 0 or 1, row {row} has "
                             f"{pairs['label'].iloc[row]!r}")
        return labels
    return None


def uncertain_first(pairs: pd.DataFrame, threshold: float, column: str = "score"
                    ) -> pd.DataFrame:
    """Pairs ordered by how close their decision value is to the threshold.

    Args:
        pairs: a table with the decision ``column``.
        threshold: the decision threshold.
        column: the decision column (``score``, or ``probability`` after a reranker).

    Returns:
        ``pairs`` sorted by ``|pairs[column] - threshold|`` ascending (stable: ties keep
        their order), rows without a value last; the index is kept.
    """
    if column not in pairs.columns:
        raise KeyError(f"pairs have no {column!r} column; columns: {list(pairs.columns)}")
    gap = (pd.to_numeric(pairs[column], errors="coerce") - threshold).abs()
    order = np.argsort(gap.fillna(np.inf).to_numpy(), kind="stable")
    return pairs.iloc[order]


def pair_clusters(pairs: pd.DataFrame, symmetric: bool = False) -> pd.DataFrame:
    """The connected components of matched pairs.

    Args:
        pairs: matched pairs, ``left_id, right_id`` (filter on ``is_match`` first).
        symmetric: both ids are from one catalogue (a dedupe); otherwise left and right ids
            are separate namespaces and a component can hold rows of both sides.

    Returns:
        DataFrame ``side, id, cluster_id, cluster_size``, one row per id in a pair, clusters
        of two or more rows only. ``side`` is ``"left"`` / ``"right"`` (``""`` when
        ``symmetric``). Clusters are numbered 0.. from the largest (ties: by their smallest
        member), members sorted by side and id.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    columns = ["side", "id", "cluster_id", "cluster_size"]
    pairs = pairs[pairs["left_id"].notna() & pairs["right_id"].notna()]
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    left = pairs["left_id"].astype(str).to_numpy()
    right = pairs["right_id"].astype(str).to_numpy()
    if symmetric:
        nodes = pd.Index(np.unique(np.concatenate([left, right])))
        sides = np.full(len(nodes), "", dtype=object)
        names = nodes.to_numpy(dtype=object)
        a, b = nodes.get_indexer(left), nodes.get_indexer(right)
    else:
        lnodes, rnodes = np.unique(left), np.unique(right)
        sides = np.array(["left"] * len(lnodes) + ["right"] * len(rnodes), dtype=object)
        names = np.concatenate([lnodes, rnodes]).astype(object)
        a = np.searchsorted(lnodes, left)
        b = len(lnodes) + np.searchsorted(rnodes, right)
    n = len(names)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    out = pd.DataFrame({"side": sides, "id": names, "component": labels})
    out["cluster_size"] = out.groupby("component")["id"].transform("size")
    out = out[out["cluster_size"] >= 2]
    first = out.groupby("component")["id"].transform("min")
    out = out.assign(_first=first).sort_values(
        ["cluster_size", "_first", "component", "side", "id"],
        ascending=[False, True, True, True, True], kind="stable")
    out["cluster_id"] = pd.factorize(out["component"])[0]
    return out[columns].reset_index(drop=True)


def summarize(
    pairs: pd.DataFrame,
    threshold: float,
    decision_column: str = "score",
    gold: pd.DataFrame | None = None,
    left_ids: Sequence[Any] | None = None,
    right_ids: Sequence[Any] | None = None,
    symmetric: bool = False,
) -> dict[str, Any]:
    """The figures of the report's summary.

    Args:
        pairs: candidate pairs ``left_id, right_id``, the decision column, optionally
            ``is_match`` (else ``decision >= threshold``) and ``label``; rows without a
            ``right_id`` (unmatched rows of a left join) only count as left rows.
        threshold: the decision threshold.
        decision_column: the column compared with the threshold.
        gold: the true pairs (``left_id, right_id``); else a ``label`` column is used.
        left_ids: every left id (the catalogue); default: the left ids in ``pairs``.
        right_ids: every right id; default: the right ids in ``pairs``.
        symmetric: one catalogue (a dedupe): ``(a, b)`` is ``(b, a)``, counted once, and
            ``left_ids`` are all the rows.

    Returns:
        ``n_left, n_right, n_candidates, n_matches, n_left_matched, n_left_unmatched,
        n_right_matched, n_clusters`` (two rows or more), ``largest_cluster, threshold,
        decision_column, labelled``; with labels also ``n_true, tp, fp, fn, precision,
        recall, f1`` of the matched pairs against the true pairs (with ``gold`` every true
        pair counts, found among the candidates or not; with a ``label`` column the labelled
        candidates).
    """
    unique = _unique_pairs(pairs, decision_column, symmetric)
    matched = unique[_decisions(unique, threshold, decision_column)]
    lid = pairs["left_id"].dropna().astype(str)
    if left_ids is None:
        left_all = set(lid)
        if symmetric:
            left_all |= set(pairs["right_id"].dropna().astype(str))
    else:
        left_all = {str(i) for i in left_ids}
    if symmetric:
        right_all = left_all
    elif right_ids is None:
        right_all = set(pairs["right_id"].dropna().astype(str))
    else:
        right_all = {str(i) for i in right_ids}
    m_left = set(matched["left_id"].astype(str))
    m_right = set(matched["right_id"].astype(str))
    if symmetric:
        m_left = m_right = m_left | m_right
    clusters = pair_clusters(matched, symmetric)
    sizes = clusters.groupby("cluster_id").size() if len(clusters) else pd.Series(dtype=int)
    out: dict[str, Any] = {
        "n_left": len(left_all),
        "n_right": len(right_all),
        "n_candidates": len(unique),
        "n_matches": len(matched),
        "n_left_matched": len(m_left & left_all),
        "n_left_unmatched": len(left_all - m_left),
        "n_right_matched": len(m_right & right_all),
        "n_clusters": len(sizes),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "threshold": float(threshold),
        "decision_column": decision_column,
        "labelled": False,
    }
    predicted = set(_keys(matched["left_id"], matched["right_id"], symmetric))
    if gold is not None:
        truth = _gold_keys(gold, symmetric)
    elif (labels := pair_labels(unique)) is not None:
        known = ~np.isnan(labels)
        keys = _keys(unique["left_id"], unique["right_id"], symmetric)
        truth = set(keys[known & (labels == 1)])
        predicted &= set(keys[known])
    else:
        return out
    tp = len(predicted & truth)
    precision = tp / len(predicted) if predicted else 0.0
    recall = tp / len(truth) if truth else 0.0
    out.update({
        "labelled": True, "n_true": len(truth), "tp": tp, "fp": len(predicted) - tp,
        "fn": len(truth) - tp, "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    })
    return out


# -- inputs ------------------------------------------------------------------------------------


@dataclass
class _Side:
    """What the report knows of one catalogue: titles and images by id."""

    name: str
    ids: np.ndarray | None = None  # every id, when the catalogue is known
    titles: dict[str, str] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None
    problems: pd.DataFrame | None = None


def _side_from_catalogue(cat: Catalogue, name: str) -> _Side:
    ids = cat.ids.astype(str)
    return _Side(name, ids, dict(zip(ids, cat.titles, strict=True)),
                 dict(zip(ids, cat.images, strict=True)), cat.base_dir, cat.problems)


def _side_from_pairs(pairs: pd.DataFrame, side: str, suffix: str,
                     columns: ColumnMap | dict | None) -> _Side:
    """Titles and images of one side from the suffixed catalogue columns of the pairs."""
    id_col = f"{side}_id"
    rows = pairs[pairs[id_col].notna()] if id_col in pairs.columns else pairs.iloc[:0]
    own = [c for c in rows.columns if isinstance(c, str) and c.endswith(suffix) and c != id_col]
    if not own or rows.empty:
        return _Side(side)
    data = rows[own].rename(columns=lambda c: c[: -len(suffix)])
    data = data.assign(_mmmatch_id=rows[id_col].astype(str).to_numpy())
    data = data[~data["_mmmatch_id"].duplicated()].reset_index(drop=True)
    cmap = columns if isinstance(columns, ColumnMap) else ColumnMap.from_dict(columns)
    cmap = ColumnMap(id="_mmmatch_id", title=cmap.title, image=cmap.image)
    try:
        cat = load_catalogue(data, cmap, on_empty_row="skip", name=side)
    except MmmatchError:  # no title or image column among them
        return _Side(side)
    out = _side_from_catalogue(cat, side)
    out.ids, out.problems = None, None  # only the rows in pairs: not the whole catalogue
    return out


def _as_records(problems: Any) -> pd.DataFrame:
    """Problem records (a DataFrame or a list of dicts) as a DataFrame."""
    if problems is None:
        return pd.DataFrame(columns=PROBLEM_COLUMNS)
    return problems if isinstance(problems, pd.DataFrame) else pd.DataFrame(list(problems))


def _problems(given: Any, pairs: pd.DataFrame | None, clusters: pd.DataFrame | None,
              sides: list[_Side]) -> pd.DataFrame:
    """One table of the problems given, attached to the inputs, and of loaded catalogues."""
    frames = [_as_records(given)]
    for table in (pairs, clusters):
        if table is not None and table.attrs.get("problems"):
            frames.append(_as_records(table.attrs["problems"]))
    for side in sides:
        if side.problems is not None and len(side.problems):
            frames.append(side.problems.assign(catalogue=side.name))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["catalogue", *PROBLEM_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    if "catalogue" not in out.columns:
        out.insert(0, "catalogue", "")
    for col in PROBLEM_COLUMNS:
        if col not in out.columns:
            out[col] = ""
    out = out[["catalogue", *PROBLEM_COLUMNS]].astype(object).where(out.notna(), "")
    key = out.astype(str)
    return out[~key.duplicated()].reset_index(drop=True)


def _calibration_dict(calibration: Any) -> dict[str, Any] | str | None:
    """A calibration as a dict (or free text): dicts and strings as given, a fitted
    :class:`~mmmatch.calibrate.ThresholdCalibrator` (with its curve) or reranker."""
    if calibration is None or isinstance(calibration, str | Mapping):
        return calibration if not isinstance(calibration, Mapping) else dict(calibration)
    if hasattr(calibration, "to_dict") and hasattr(calibration, "operating_point"):
        return calibration.to_dict(curve=getattr(calibration, "curve_", None) is not None)
    if getattr(calibration, "calibration_", None) is not None:
        return dict(calibration.calibration_)
    raise TypeError("calibration: expected a dict, a string, a fitted ThresholdCalibrator or "
                    f"a calibrated reranker, got {type(calibration).__name__}")


def _resolve_threshold(
    pairs: pd.DataFrame, column: str, threshold: float | None, calibration: Any
) -> tuple[float, str]:
    """The threshold and a sentence on where it came from."""
    if threshold is not None:
        return float(threshold), "given"
    if isinstance(calibration, Mapping) and isinstance(calibration.get("threshold"),
                                                       numbers.Real):
        return float(calibration["threshold"]), "from the calibration"
    if "is_match" in pairs.columns and len(pairs):
        values = pd.to_numeric(pairs.loc[pairs["is_match"].fillna(False).astype(bool), column],
                               errors="coerce").dropna()
        if len(values):
            return float(values.min()), f"inferred: the lowest {column} among the matches"
    if column == "probability":
        return 0.5, "default for a probability"
    from mmmatch.pipeline import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD, "the default of mmmatch.Matcher"


# -- rendering helpers -------------------------------------------------------------------------


def _require() -> tuple[Any, Any]:
    try:
        import jinja2
        import matplotlib
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from None
    return jinja2, matplotlib


class _Thumbs:
    """Downscaled JPEG thumbnails, each image read once; failures become reasons.

    Each distinct thumbnail is one CSS class (``sheet``: data URI -> class name) whose
    background is the picture, so an image shown on many cards is embedded once.
    """

    def __init__(self, size: int, limits: ImageLimits) -> None:
        self.size = size
        self.limits = limits
        self.sheet: dict[str, str] = {}
        self._cache: dict[tuple[str, str], dict[str, str | None]] = {}

    def get(self, side: _Side, item_id: str) -> dict[str, str | None]:
        key = (side.name, item_id)
        if key not in self._cache:
            self._cache[key] = self._make(side.images.get(item_id), side.base_dir)
        return self._cache[key]

    def _make(self, ref: Any, base_dir: Path | None) -> dict[str, str | None]:
        if ref is None or (isinstance(ref, float) and math.isnan(ref)):
            return {"image": None, "reason": "none", "text": "no photo"}
        try:
            data = read_image_bytes(ref, base_dir, self.limits)
            img = decode_image(data, "thumbnail", self.limits, draft_size=self.size)
            img.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=75, optimize=True)
        except ImageError as e:
            return {"image": None, "reason": e.reason,
                    "text": f"{e.reason.replace('_', ' ')} image"}
        except Exception as e:  # a report never stops on one picture
            return {"image": None, "reason": "unreadable",
                    "text": f"unreadable image ({type(e).__name__})"}
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return {"image": self.sheet.setdefault(uri, f"im{len(self.sheet)}"), "reason": None,
                "text": None}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas (pyplot and the global backend untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


_COLOURS = {"match": "#2b8a3e", "other": "#adb5bd", "true": "#1c7ed6", "false": "#e8590c",
            "threshold": "#c92a2a"}


def _histogram_plot(values: np.ndarray, matched: np.ndarray, labels: np.ndarray | None,
                    threshold: float, column: str) -> str | None:
    ok = np.isfinite(values)
    if not ok.any():
        return None
    v, m = values[ok], matched[ok]
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(min(lo, threshold), max(hi, threshold), 41)
    panels = [("matched", v[m], "match"), ("not matched", v[~m], "other")]
    groups = [panels]
    if labels is not None and np.isfinite(labels[ok]).any():
        lab = labels[ok]
        groups.append([("true pairs", v[lab == 1], "true"), ("false pairs", v[lab == 0],
                                                             "false")])
    fig = _figure(6.2 * len(groups), 3.2)
    for i, group in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for name, data, colour in group:
            ax.hist(data, bins=bins, alpha=0.75, color=_COLOURS[colour],
                    label=f"{name} ({len(data)})")
        ax.axvline(threshold, color=_COLOURS["threshold"], linestyle="--", linewidth=1.5,
                   label=f"threshold {threshold:.4g}")
        ax.set_xlabel(column)
        ax.set_ylabel("pairs")
        ax.set_title("by decision" if i == 0 else "by true label", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _pr_plot(curve: pd.DataFrame | None, point: tuple[float, float] | None,
             calibration: dict[str, Any] | None) -> str | None:
    cal_curve = None
    if isinstance(calibration, dict) and isinstance(calibration.get("curve"), Mapping):
        stored = calibration["curve"]
        if {"precision", "recall"} <= set(stored):
            cal_curve = (np.asarray(stored["recall"], float), np.asarray(stored["precision"],
                                                                         float))
    if (curve is None or curve.empty) and cal_curve is None:
        return None
    fig = _figure(4.8, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if curve is not None and not curve.empty:
        ax.plot(curve["recall"], curve["precision"], color=_COLOURS["true"],
                drawstyle="steps-post", label="these pairs")
    if cal_curve is not None:
        ax.plot(*cal_curve, color=_COLOURS["other"], linestyle=":",
                label="calibration pairs (held out)")
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color=_COLOURS["threshold"], markersize=8,
                label=f"operating point (P {point[1]:.3f}, R {point[0]:.3f})")
    if isinstance(calibration, dict) and all(isinstance(calibration.get(k), numbers.Real)
                                             for k in ("precision", "recall")):
        ax.plot([calibration["recall"]], [calibration["precision"]], "s", fillstyle="none",
                color="#495057", markersize=8, label="calibrated operating point")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        return "—" if math.isnan(v) else f"{v:.{digits}f}"
    return str(value)


def _calibration_sentence(cal: dict[str, Any]) -> str:
    objective, target = cal.get("objective"), cal.get("target")
    n = cal.get("pairs", cal.get("n_pairs"))
    on = f" on {_fmt(n)} held-out labelled pairs" if isinstance(n, numbers.Real) else ""
    rows = cal.get("valid_rows")
    if not on and isinstance(rows, numbers.Real):  # a trained model's own calibration
        on = f" on {_fmt(rows)} rows of products held out of training"
    what = {
        "f1": "for the best F1",
        "precision_at": f"for the most recall with precision at least {_fmt(target, 2)}",
        "recall_at": f"for the most precision with recall at least {_fmt(target, 2)}",
    }.get(str(objective), f"by {objective}" if objective else "")
    if not (on or what):
        return ""
    figures = ", ".join(f"{k} {_fmt(cal[k])}" for k in ("precision", "recall", "f1")
                        if isinstance(cal.get(k), numbers.Real))
    return f"Chosen{on} {what}".rstrip() + (f": {figures}." if figures else ".")


def _number(value: Any) -> float | None:
    """A float for display (``None`` for missing or non-numeric values)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _rank(value: Any) -> int | None:
    v = _number(value)
    return None if v is None else int(v)


def _short(text: Any, limit: int = 160) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STRIP_LENGTH = 12
"""Thumbnails shown per cluster strip."""


def _check_pairs(pairs: pd.DataFrame | None) -> pd.DataFrame:
    """A copy of the pairs with ``left_id`` / ``right_id`` as strings (missing kept), the
    numbers as numbers and ``is_match`` as booleans (a CSV read as text works)."""
    if pairs is None:
        return pd.DataFrame(columns=["left_id", "right_id", "score"])
    if not isinstance(pairs, pd.DataFrame):
        raise TypeError(f"pairs: expected a DataFrame or a file, got {type(pairs).__name__}")
    missing = [c for c in ("left_id", "right_id") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs: expected the columns of Matcher.match (left_id, right_id, "
                         f"score, ...); missing {missing}, got {list(map(str, pairs.columns))}")
    pairs = pairs.copy()
    for c in ("left_id", "right_id"):
        pairs[c] = pairs[c].astype(object).where(pairs[c].isna(), pairs[c].astype(str))
    for c in [*EVIDENCE_DISPLAY, "rank", "label"]:
        if c in pairs.columns and not pd.api.types.is_numeric_dtype(pairs[c]):
            pairs[c] = pd.to_numeric(pairs[c], errors="coerce")
    if "is_match" in pairs.columns and not pd.api.types.is_bool_dtype(pairs["is_match"]):
        text = pairs["is_match"].astype(str).str.strip().str.lower()
        pairs["is_match"] = text.isin(["true", "1", "1.0", "yes"])
    return pairs


def _sides(
    pairs: pd.DataFrame,
    left: Any,
    right: Any,
    clusters: pd.DataFrame | None,
    symmetric: bool,
    columns: tuple[ColumnMap | dict | None, ColumnMap | dict | None],
    suffixes: tuple[str, str],
) -> tuple[_Side, _Side, pd.DataFrame | None]:
    """Both sides (the same object when ``symmetric``), and the dedupe rows ``id,
    cluster_id`` when ``clusters`` are given."""
    rows = None
    cluster_cat = None
    if clusters is not None:
        cluster_cat = load_catalogue(clusters, columns[0], on_empty_row="skip",
                                     name="catalogue")
        if "cluster_id" not in cluster_cat.data.columns:
            raise ValueError("clusters: expected the rows of Matcher.dedupe, with cluster_id")
        rows = pd.DataFrame({"id": cluster_cat.ids.astype(str),
                             "cluster_id": cluster_cat.data["cluster_id"].to_numpy()})
    if left is not None:
        lcat = load_catalogue(left, columns[0], on_empty_row="skip", name="left")
        lside = _side_from_catalogue(lcat, "left")
    elif cluster_cat is not None:
        lside = _side_from_catalogue(cluster_cat, "left")
    else:
        lside = _side_from_pairs(pairs, "left", suffixes[0], columns[0])
    if symmetric:
        rside = lside
    elif right is not None:
        rcat = load_catalogue(right, columns[1], on_empty_row="skip", name="right")
        rside = _side_from_catalogue(rcat, "right")
    else:
        rside = _side_from_pairs(pairs, "right", suffixes[1], columns[1])
    for i, side in enumerate((lside, rside)):  # what the catalogues lack, from the pairs
        extra = _side_from_pairs(pairs, side.name, suffixes[i], columns[i])
        for key, value in extra.titles.items():
            side.titles.setdefault(key, value)
        for key, value in extra.images.items():
            side.images.setdefault(key, value)
    return lside, rside, rows


def _margin(values: np.ndarray, given: float | None) -> float:
    """The uncertainty band: ``given``, else a tenth of the 5-95th percentile spread."""
    if given is not None:
        return float(given)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0.0
    return max(0.1 * float(np.subtract(*np.percentile(finite, [95, 5]))), 0.0)


def _members_and_singles(
    pairs: pd.DataFrame,
    unique: pd.DataFrame,
    matched: np.ndarray,
    rows: pd.DataFrame | None,
    left_ids: Any,
    symmetric: bool,
    summary: dict[str, Any],
) -> tuple[pd.DataFrame, list[str]]:
    """Cluster members (``side, id, cluster_id, cluster_size``, largest cluster first) and
    the left rows without a match (in a dedupe with ``rows``: in no cluster); updates the
    summary's cluster figures from ``rows``."""
    if rows is not None:
        rows = rows.assign(side="", cluster_size=rows.groupby("cluster_id")["id"]
                           .transform("size"))
        members = rows[rows["cluster_size"] >= 2]
        members = members.assign(_first=members.groupby("cluster_id")["id"].transform("min"))
        members = members.sort_values(["cluster_size", "_first", "cluster_id", "id"],
                                      ascending=[False, True, True, True], kind="stable")
        sizes = members.groupby("cluster_id", sort=False).size()
        singles = rows.loc[rows["cluster_size"] < 2, "id"].tolist()
        summary.update(n_clusters=len(sizes), largest_cluster=int(sizes.max()) if len(sizes)
                       else 0, n_left=len(rows), n_right=len(rows),
                       n_left_unmatched=len(singles), n_left_matched=len(rows) - len(singles))
        return members.drop(columns="_first"), singles
    members = pair_clusters(unique[matched], symmetric)
    found = set(unique.loc[matched, "left_id"])
    if symmetric:
        found |= set(unique.loc[matched, "right_id"])
    if left_ids is not None:
        pool = [str(i) for i in left_ids]
    else:
        ends = ["left_id", "right_id"] if symmetric else ["left_id"]
        pool = list(dict.fromkeys(pairs[ends].to_numpy().ravel("F")))
        pool = [i for i in pool if isinstance(i, str)]
    return members, [i for i in pool if i not in found]


class _View:
    """Turns ids into what a template shows of them (title, thumbnail)."""

    def __init__(self, thumbs: _Thumbs, symmetric: bool) -> None:
        self.thumbs = thumbs
        self.symmetric = symmetric

    def item(self, side: _Side, item_id: str) -> dict[str, Any]:
        full = str(side.titles.get(item_id, "") or "")
        return {"id": item_id, "title": _short(full), "full_title": full,
                "side": "" if self.symmetric else side.name,
                **self.thumbs.get(side, item_id)}


def _cards(
    view: _View,
    lside: _Side,
    rside: _Side,
    unique: pd.DataFrame,
    values: np.ndarray,
    matched: np.ndarray,
    labels: np.ndarray | None,
    uncertain: np.ndarray,
    threshold: float,
    column: str,
    max_pairs: int,
) -> list[dict[str, Any]]:
    """The pair cards, the most uncertain first."""
    evidence = [c for c in EVIDENCE_DISPLAY if c in unique.columns
                and pd.to_numeric(unique[c], errors="coerce").notna().any()]
    if column not in evidence:
        evidence.append(column)
    order = uncertain_first(unique.assign(_pos=np.arange(len(unique))), threshold, column)
    table = {c: unique[c].to_numpy() for c in {"left_id", "right_id", "rank", *evidence}
             if c in unique.columns}
    cards = []
    for pos in order["_pos"].to_numpy()[:max_pairs]:
        label = None if labels is None or np.isnan(labels[pos]) else bool(labels[pos])
        is_match = bool(matched[pos])
        verdict = None if label is None else (
            "correct match" if label and is_match else "missed match" if label
            else "false match" if is_match else "correct non-match")
        lft = view.item(lside, table["left_id"][pos])
        rgt = view.item(rside, table["right_id"][pos])
        cards.append({
            "left": lft, "right": rgt, "match": is_match, "uncertain": bool(uncertain[pos]),
            "correct": None if label is None else label == is_match, "verdict": verdict,
            "gap": values[pos] - threshold,
            "rank": _rank(table["rank"][pos]) if "rank" in table else None,
            "evidence": [(c, _number(table[c][pos]), c == column) for c in evidence],
            "search": " ".join([lft["id"], lft["full_title"], rgt["id"],
                                rgt["full_title"]]).lower(),
        })
    return cards


def _best_candidates(unique: pd.DataFrame, column: str, symmetric: bool
                     ) -> dict[str, tuple[str, float]]:
    """Each left id's best candidate and its decision value."""
    if unique.empty:
        return {}
    both = [unique[["left_id", "right_id", column]]]
    if symmetric:
        both.append(unique[["right_id", "left_id", column]].set_axis(
            ["left_id", "right_id", column], axis=1))
    cand = pd.concat(both, ignore_index=True)
    cand = cand.assign(_v=pd.to_numeric(cand[column], errors="coerce")).dropna(subset=["_v"])
    cand = cand.sort_values("_v", ascending=False, kind="stable")
    cand = cand[~cand["left_id"].duplicated()]
    return {a: (b, float(v)) for a, b, v in zip(cand["left_id"], cand["right_id"], cand["_v"],
                                                strict=True)}


# -- the report --------------------------------------------------------------------------------


def render_report(
    pairs: pd.DataFrame | str | Path | None = None,
    left: Any = None,
    right: Any = None,
    *,
    clusters: pd.DataFrame | None = None,
    gold: pd.DataFrame | str | Path | None = None,
    threshold: float | None = None,
    decision_column: str | None = None,
    calibration: Any = None,
    title: str = "mmmatch match report",
    left_columns: ColumnMap | dict | None = None,
    right_columns: ColumnMap | dict | None = None,
    suffixes: tuple[str, str] = ("_left", "_right"),
    problems: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
    max_pairs: int = 500,
    max_clusters: int = 20,
    max_rows: int = 500,
    thumb_size: int = 128,
    uncertain_margin: float | None = None,
    image_limits: ImageLimits | None = None,
) -> str:
    """The HTML of the report (see :func:`report`, which writes it to a file)."""
    jinja2, _ = _require()
    for name, value in (("max_pairs", max_pairs), ("max_clusters", max_clusters),
                        ("max_rows", max_rows), ("thumb_size", thumb_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if isinstance(pairs, str | Path):
        sibling = Path(pairs).with_name(Path(pairs).stem + ".problems.csv")
        if problems is None and sibling.exists():  # written beside it by `mmmatch match`
            problems = read_table(sibling)
        pairs = read_table(pairs)
    if isinstance(gold, str | Path):
        gold = read_table(gold)
    if pairs is not None and "cluster_id" in pairs.columns and "left_id" not in pairs.columns:
        pairs, clusters = None, pairs  # the rows of a dedupe, given first
    symmetric = clusters is not None or (right is left and left is not None)
    pairs = _check_pairs(pairs)
    column = decision_column or _decision_column(pairs)
    if column not in pairs.columns:
        raise ValueError(f"pairs have no decision column {column!r}; columns: "
                         f"{list(map(str, pairs.columns))}")
    lside, rside, rows = _sides(pairs, left, right, clusters, symmetric,
                                (left_columns, right_columns), suffixes)

    cal = _calibration_dict(calibration)
    t, t_source = _resolve_threshold(pairs, column, threshold, cal)
    unique = _unique_pairs(pairs, column, symmetric)
    left_ids = lside.ids if lside.ids is not None else (
        None if rows is None else rows["id"].to_numpy())
    summary = summarize(pairs, t, column, gold, left_ids, None if symmetric else rside.ids,
                        symmetric)
    values = pd.to_numeric(unique[column], errors="coerce").to_numpy(np.float64)
    matched = _decisions(unique, t, column)
    labels = pair_labels(unique, gold, symmetric)
    margin = _margin(values, uncertain_margin)
    with np.errstate(invalid="ignore"):
        uncertain = np.abs(values - t) <= margin
    summary.update(n_uncertain=int(uncertain.sum()), uncertain_margin=margin)
    members, singles = _members_and_singles(pairs, unique, matched, rows, left_ids, symmetric,
                                            summary)

    view = _View(_Thumbs(thumb_size, image_limits or ImageLimits(timeout_s=5.0)), symmetric)
    cards = _cards(view, lside, rside, unique, values, matched, labels, uncertain, t, column,
                   max_pairs)
    strips = []
    for cid, group in members.groupby("cluster_id", sort=False):
        if len(strips) >= max_clusters:
            break
        shown = group.head(_STRIP_LENGTH)
        strips.append({
            "id": cid, "size": len(group), "more": len(group) - len(shown),
            "members": [view.item(rside if s == "right" else lside, i)
                        for s, i in zip(shown["side"], shown["id"], strict=True)],
        })
    best = _best_candidates(unique, column, symmetric)
    unmatched = [{"item": view.item(lside, i),
                  "best": None if i not in best else view.item(rside, best[i][0]),
                  "value": best.get(i, (None, None))[1]} for i in singles[:max_rows]]
    table = _problems(problems, pairs, clusters, [lside] + ([] if symmetric else [rside]))
    summary["n_problems"] = len(table)
    problem_rows = []
    for rec in table.head(max_rows).to_dict("records"):
        side, pid = (rside if rec["catalogue"] == "right" else lside), str(rec["id"])
        known = pid in side.images or pid in side.titles
        problem_rows.append({**rec, "item": view.item(side, pid) if known else None})

    hist = _histogram_plot(values, matched, labels, t, column)
    curve = point = None
    if labels is not None and summary["labelled"]:
        known = np.isfinite(labels) & np.isfinite(values)
        curve = pr_curve(values[known], labels[known] == 1,
                         summary["n_true"] if gold is not None else None)
        point = (summary["recall"], summary["precision"])
    pr = _pr_plot(curve, point, cal if isinstance(cal, dict) else None)
    cal_rows = [] if not isinstance(cal, dict) else [
        (k, _fmt(v, 4)) for k, v in cal.items() if not isinstance(v, Mapping | list)]

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    from mmmatch import __version__

    return env.from_string(_TEMPLATE).render(
        title=title, s=summary, t_source=t_source, column=column, symmetric=symmetric,
        cal_text=cal if isinstance(cal, str) else None,
        cal_sentence=_calibration_sentence(cal) if isinstance(cal, dict) else "",
        cal_rows=cal_rows, cards=cards, n_cards_total=len(unique), strips=strips,
        n_strips_total=summary["n_clusters"], unmatched=unmatched, n_unmatched=len(singles),
        problems=problem_rows, n_problems=len(table), hist=hist, pr=pr,
        labelled=labels is not None, version=__version__, script=_SCRIPT,
        sheet=list(view.thumbs.sheet.items()),
        left_name="row" if symmetric else "left row",
    )


def report(
    pairs: pd.DataFrame | str | Path | None = None,
    left: Any = None,
    right: Any = None,
    *,
    output: str | Path,
    clusters: pd.DataFrame | None = None,
    gold: pd.DataFrame | str | Path | None = None,
    threshold: float | None = None,
    decision_column: str | None = None,
    calibration: Any = None,
    title: str = "mmmatch match report",
    left_columns: ColumnMap | dict | None = None,
    right_columns: ColumnMap | dict | None = None,
    suffixes: tuple[str, str] = ("_left", "_right"),
    problems: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
    max_pairs: int = 500,
    max_clusters: int = 20,
    max_rows: int = 500,
    thumb_size: int = 128,
    uncertain_margin: float | None = None,
    image_limits: ImageLimits | None = None,
) -> Path:
    """Write a self-contained HTML report of matched (or deduplicated) catalogues.

    The file needs no network and no other file: thumbnails and plots are embedded. It
    shows a summary (sizes, candidates, matches, clusters, the threshold and how it was
    chosen; with labels precision / recall / F1 and the precision-recall curve), the score
    histograms, the pairs side by side with their evidence (the ones nearest the threshold
    first, at most ``max_pairs``, with filters), the largest clusters, the rows without a
    match and the rows with bad images.

    Args:
        pairs: the output of :meth:`Matcher.match <mmmatch.pipeline.Matcher.match>`, best with
            ``all_candidates=True`` (so unmatched candidates are shown too), or the pairs of
            a dedupe (``return_pairs=True``): ``left_id, right_id``, the decision column, and
            optionally the evidence, ``rank``, ``is_match``, ``probability``, ``label`` and the
            suffixed catalogue columns. A DataFrame or a file (CSV, Parquet, ...; its
            ``NAME.problems.csv`` beside it, as ``mmmatch match`` writes, is read too). The
            rows of a dedupe (with ``cluster_id``, no ``left_id``) given here are taken as
            ``clusters``.
        left: the left catalogue (DataFrame, file or
            :class:`~mmmatch.catalogue.Catalogue`), for its size, titles and images;
            default: the ``*_left`` columns of ``pairs``.
        right: the right catalogue; ``right is left`` for duplicates within one catalogue.
        output: the HTML file to write (atomically).
        clusters: the rows of :meth:`Matcher.dedupe <mmmatch.pipeline.Matcher.dedupe>` (with
            ``cluster_id``): the report is then of one catalogue, these rows unless ``left``
            is given.
        gold: the true pairs ``left_id, right_id`` (rows with ``label`` 0 are not), a
            DataFrame or a file; else a ``label`` column of ``pairs`` is used, if any.
        threshold: the decision threshold; default: the calibration's, else the lowest
            decision value among the matches, else the matcher's default.
        decision_column: the column decisions are made on (default ``probability`` when
            present, else ``score``).
        calibration: how the threshold was chosen: a dict such as a reranker's
            ``calibration_`` (``objective, target, threshold, precision, recall, f1, pairs``),
            a fitted :class:`~mmmatch.calibrate.ThresholdCalibrator` (its curve is plotted),
            a calibrated reranker, or free text.
        title: the page title.
        left_columns: column mapping of ``left`` (or of the ``*_left`` columns).
        right_columns: column mapping of ``right``.
        suffixes: the suffixes of the catalogue columns in ``pairs``.
        problems: rows that could not be used (columns
            :data:`~mmmatch.catalogue.PROBLEM_COLUMNS`, optionally ``catalogue``), besides
            ``pairs.attrs["problems"]``.
        max_pairs: most pair cards shown.
        max_clusters: most cluster strips shown (12 thumbnails each).
        max_rows: most rows shown in the unmatched and problem tables.
        thumb_size: longest side of the thumbnails, in pixels.
        uncertain_margin: a pair is "uncertain" when its decision value is within this of
            the threshold; default a tenth of the spread (5th to 95th percentile) of the
            decision values.
        image_limits: limits of reading the images (default: a 5 s timeout for URLs).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib or jinja2 is missing (the ``report`` extra).
        ValueError: ``pairs`` or ``gold`` lack their columns, or a limit is negative.

    Example:
        >>> pairs = Matcher().match(a, b, all_candidates=True)  # doctest: +SKIP
        >>> report(pairs, a, b, output="report.html")  # doctest: +SKIP
    """
    text = render_report(
        pairs, left, right, clusters=clusters, gold=gold, threshold=threshold,
        decision_column=decision_column, calibration=calibration, title=title,
        left_columns=left_columns, right_columns=right_columns, suffixes=suffixes,
        problems=problems, max_pairs=max_pairs, max_clusters=max_clusters, max_rows=max_rows,
        thumb_size=thumb_size, uncertain_margin=uncertain_margin, image_limits=image_limits,
    )
    return atomic_file(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# -- the page ----------------------------------------------------------------------------------

_SCRIPT = r"""
(function () {
  var bar = document.getElementById("filters");
  if (!bar) { return; }
  bar.hidden = false;
  var cards = Array.prototype.slice.call(document.querySelectorAll(".pair-card"));
  var count = document.getElementById("filter-count");
  var box = document.getElementById("filter-search");
  var mode = "all";
  function keep(c) {
    var d = c.dataset;
    if (mode === "matched") { return d.match === "1"; }
    if (mode === "unmatched") { return d.match === "0"; }
    if (mode === "uncertain") { return d.uncertain === "1"; }
    if (mode === "correct") { return d.correct === "1"; }
    if (mode === "wrong") { return d.correct === "0"; }
    return true;
  }
  function apply() {
    var q = box.value.trim().toLowerCase(), n = 0;
    cards.forEach(function (c) {
      var show = keep(c) && (!q || c.dataset.search.indexOf(q) >= 0);
      c.hidden = !show;
      if (show) { n += 1; }
    });
    count.textContent = n + " of " + cards.length + " pairs shown";
  }
  Array.prototype.forEach.call(bar.querySelectorAll("button[data-filter]"), function (b) {
    b.addEventListener("click", function () {
      mode = b.getAttribute("data-filter");
      Array.prototype.forEach.call(bar.querySelectorAll("button"), function (o) {
        o.setAttribute("aria-pressed", o === b ? "true" : "false");
      });
      apply();
    });
  });
  box.addEventListener("input", apply);
  var wanted = /^#filter=(\w+)$/.exec(window.location.hash);
  var start = wanted && bar.querySelector('button[data-filter="' + wanted[1] + '"]');
  if (start) { start.click(); } else { apply(); }
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="generator" content="mmmatch {{ version }}">
<title>{{ title }}</title>
<style>
:root { --ok: #2b8a3e; --no: #868e96; --bad: #c92a2a; --warn: #e67700; --line: #dee2e6; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #212529; margin: 0; background: #f8f9fa; }
header { background: #212529; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; }
header nav a { color: #ced4da; margin-right: 14px; font-size: 13px; text-decoration: none; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 14px 18px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
.muted { color: #6c757d; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 8px; }
.stat { border: 1px solid var(--line); border-radius: 4px; padding: 6px 10px; }
.stat b { display: block; font-size: 20px; }
.stat span { color: #6c757d; font-size: 12px; }
.summary-grid { display: grid; grid-template-columns: minmax(0, 1fr) auto; gap: 18px; }
#pr-curve { width: 440px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
img.plot { max-width: 100%; height: auto; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
  vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; }
.thumb { width: 96px; height: 96px; background: #f1f3f5 center / contain no-repeat;
  border: 1px solid var(--line); border-radius: 3px; flex: none; }
.placeholder { display: flex; align-items: center; justify-content: center; text-align: center;
  font-size: 11px; color: #868e96; background: repeating-linear-gradient(45deg, #f1f3f5,
  #f1f3f5 6px, #e9ecef 6px, #e9ecef 12px); }
.placeholder[data-reason]:not([data-reason="none"]) { color: var(--bad); }
#filters { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 10px; }
#filters button { border: 1px solid #adb5bd; background: #fff; border-radius: 14px;
  padding: 3px 12px; cursor: pointer; font: inherit; }
#filters button[aria-pressed="true"] { background: #212529; color: #fff; }
#filters input { padding: 4px 8px; border: 1px solid #adb5bd; border-radius: 4px;
  min-width: 220px; font: inherit; }
.pair-card { display: grid; grid-template-columns: 1fr 250px 1fr; gap: 12px;
  border: 1px solid var(--line); border-left: 5px solid var(--no); border-radius: 4px;
  padding: 8px; margin: 8px 0; }
.pair-card.is-match { border-left-color: var(--ok); }
.pair-card.is-wrong { background: #fff5f5; }
.side { display: flex; gap: 10px; min-width: 0; }
.side .text { min-width: 0; overflow-wrap: anywhere; }
.side .id { font-size: 12px; color: #6c757d; }
.evidence table { width: 100%; font-size: 12px; }
.evidence td { padding: 1px 4px; border: 0; }
.evidence tr.decision td { font-weight: 700; }
.bar { display: inline-block; height: 7px; background: #74c0fc; vertical-align: middle; }
.badges { margin-bottom: 4px; }
.badge { display: inline-block; font-size: 11px; padding: 0 7px; border-radius: 9px;
  color: #fff; background: var(--no); margin-right: 3px; }
.badge.match { background: var(--ok); }
.badge.uncertain { background: var(--warn); }
.badge.correct { background: #1c7ed6; }
.badge.wrong { background: var(--bad); }
.cluster-strip { border-top: 1px solid var(--line); padding: 8px 0; }
.cluster-strip .members { display: flex; flex-wrap: wrap; gap: 8px; padding-top: 4px; }
.member { width: 104px; flex: none; font-size: 11px; overflow-wrap: anywhere; }
.member .thumb { width: 100px; height: 100px; }
.tag { font-size: 10px; text-transform: uppercase; color: #6c757d; }
.row-item { display: flex; gap: 8px; align-items: flex-start; }
.row-item .thumb { width: 64px; height: 64px; }
@media (max-width: 900px) { .pair-card, .summary-grid { grid-template-columns: 1fr; } }
</style>
<style id="thumbnails">
{% for uri, cls in sheet %}.{{ cls }} { background-image: url({{ uri }}); }
{% endfor %}</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<nav><a href="#summary">Summary</a><a href="#scores">Scores</a><a href="#pairs">Pairs</a>
<a href="#clusters">Clusters</a><a href="#unmatched">No match</a>
<a href="#problems">Bad images</a></nav>
</header>
<main>
{%- macro thumb(it, cls="thumb") -%}
{%- if it.image -%}
<div class="{{ cls }} {{ it.image }}" role="img" aria-label="{{ it.title or it.id }}"></div>
{%- else -%}
<div class="{{ cls }} placeholder" data-reason="{{ it.reason }}">{{ it.text }}</div>
{%- endif -%}
{%- endmacro -%}
{%- macro side(it) -%}
<div class="side">{{ thumb(it) }}<div class="text">
<div class="title" title="{{ it.full_title }}">{{ it.title or "(no title)" }}</div>
<div class="id">{% if it.side %}{{ it.side }} {% endif %}id {{ it.id }}</div></div></div>
{%- endmacro %}
<section id="summary">
<h2>Summary</h2>
<div class="summary-grid"><div>
<div class="stats">
{% if symmetric %}
<div class="stat"><b>{{ s.n_left|fmt }}</b><span>rows</span></div>
{% else %}
<div class="stat"><b>{{ s.n_left|fmt }}</b><span>left rows</span></div>
<div class="stat"><b>{{ s.n_right|fmt }}</b><span>right rows</span></div>
{% endif %}
<div class="stat"><b>{{ s.n_candidates|fmt }}</b><span>candidate pairs</span></div>
<div class="stat"><b>{{ s.n_matches|fmt }}</b><span>matched pairs</span></div>
<div class="stat"><b>{{ s.n_left_matched|fmt }}</b>
<span>{{ left_name }}s with a {{ "duplicate" if symmetric else "match" }}</span></div>
<div class="stat"><b>{{ s.n_left_unmatched|fmt }}</b><span>{{ left_name }}s without</span></div>
<div class="stat"><b>{{ s.n_clusters|fmt }}</b>
<span>clusters (largest {{ s.largest_cluster|fmt }})</span></div>
<div class="stat"><b>{{ s.n_uncertain|fmt }}</b>
<span>uncertain pairs (±{{ s.uncertain_margin|fmt }})</span></div>
<div class="stat"><b>{{ s.n_problems|fmt }}</b><span>rows with problems</span></div>
{% if s.labelled %}
<div class="stat" id="precision"><b>{{ s.precision|fmt }}</b><span>precision</span></div>
<div class="stat" id="recall"><b>{{ s.recall|fmt }}</b><span>recall</span></div>
<div class="stat" id="f1"><b>{{ s.f1|fmt }}</b><span>F1</span></div>
<div class="stat"><b>{{ s.tp|fmt }} / {{ s.n_true|fmt }}</b>
<span>true pairs found ({{ s.fp|fmt }} false matches, {{ s.fn|fmt }} missed)</span></div>
{% endif %}
</div>
<p id="threshold">A pair is a match when <code>{{ column }}</code> &ge;
<b>{{ s.threshold|fmt(4) }}</b> ({{ t_source }}).
{% if cal_sentence %}{{ cal_sentence }}{% endif %}
{% if cal_text %}{{ cal_text }}{% endif %}</p>
{% if cal_rows %}
<details><summary>Calibration</summary><table class="calibration">
{% for k, v in cal_rows %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table></details>
{% endif %}
{% if not labelled %}<p class="muted">No labels were given: pass gold pairs (or a
<code>label</code> column) for precision, recall and the precision-recall curve.</p>{% endif %}
</div>
{% if pr %}<img class="plot" id="pr-curve" src="{{ pr }}" alt="precision-recall curve">{% endif %}
</div>
</section>
<section id="scores">
<h2>Score distributions</h2>
<div class="plots">
{% if hist %}<img class="plot" id="histogram" src="{{ hist }}" alt="histogram of {{ column }}">
{% else %}<p class="muted">No scored pairs.</p>{% endif %}
</div>
</section>
<section id="pairs">
<h2>Pairs, the most uncertain first</h2>
<p class="muted">{{ cards|length|fmt }} of {{ n_cards_total|fmt }} candidate pairs, ordered by
how close <code>{{ column }}</code> is to the threshold.</p>
<div id="filters" hidden>
<button type="button" data-filter="all" aria-pressed="true">all</button>
<button type="button" data-filter="matched" aria-pressed="false">matched</button>
<button type="button" data-filter="unmatched" aria-pressed="false">not matched</button>
<button type="button" data-filter="uncertain" aria-pressed="false">uncertain</button>
{% if labelled %}
<button type="button" data-filter="correct" aria-pressed="false">correct</button>
<button type="button" data-filter="wrong" aria-pressed="false">wrong</button>
{% endif %}
<input id="filter-search" type="search" placeholder="search ids and titles" aria-label="search">
<span id="filter-count" class="muted"></span>
</div>
{% for c in cards %}
<div class="pair-card{% if c.match %} is-match{% endif %}
{%- if c.correct == false %} is-wrong{% endif %}"
 data-match="{{ 1 if c.match else 0 }}" data-uncertain="{{ 1 if c.uncertain else 0 }}"
 data-correct="{{ '' if c.correct is none else (1 if c.correct else 0) }}"
 data-left="{{ c.left.id }}" data-right="{{ c.right.id }}" data-search="{{ c.search }}">
{{ side(c.left) }}
<div class="evidence">
<div class="badges">{% if c.match %}<span class="badge match">match</span>
{%- else %}<span class="badge">no match</span>{% endif %}
{% if c.uncertain %}<span class="badge uncertain">uncertain</span>{% endif %}
{% if c.verdict -%}
<span class="badge {{ 'correct' if c.correct else 'wrong' }}">{{ c.verdict }}</span>
{%- endif %}</div>
<table>
{% for name, v, is_decision in c.evidence %}
<tr{% if is_decision %} class="decision"{% endif %}><td>{{ name }}</td><td>{{ v|fmt }}</td>
<td>{% if v is not none and v > 0 -%}
<span class="bar" style="width: {{ ([v, 1]|min * 60)|round|int }}px"></span>
{%- endif %}</td></tr>
{% endfor %}
<tr><td>vs threshold</td><td>{{ "%+.4f"|format(c.gap) if c.gap == c.gap else "—" }}</td>
<td>{% if c.rank is not none %}rank {{ c.rank|fmt }}{% endif %}</td></tr>
</table>
</div>
{{ side(c.right) }}
</div>
{% endfor %}
</section>
<section id="clusters">
<h2>Largest clusters</h2>
<p class="muted">{{ strips|length|fmt }} of {{ n_strips_total|fmt }} clusters of two rows or
more.</p>
{% for st in strips %}
<div class="cluster-strip" data-size="{{ st.size }}">
<div><b>cluster {{ st.id }}</b> <span class="muted">{{ st.size }} rows
{%- if st.more %}, first {{ st.members|length }} shown{% endif %}</span></div>
<div class="members">
{% for it in st.members %}<div class="member">{{ thumb(it) }}
<div>{% if it.side %}<span class="tag">{{ it.side }}</span> {% endif %}{{ it.title or it.id }}
</div></div>{% endfor %}
{% if st.more %}<div class="member muted">+{{ st.more }} more</div>{% endif %}
</div></div>
{% endfor %}
</section>
<section id="unmatched">
<h2>{{ left_name|capitalize }}s without a {{ "duplicate" if symmetric else "match" }}</h2>
<p class="muted">{{ unmatched|length|fmt }} of {{ n_unmatched|fmt }} shown.</p>
{% if unmatched %}
<table id="unmatched-table">
<tr><th>{{ left_name }}</th><th>best candidate</th><th>{{ column }}</th></tr>
{% for u in unmatched %}
<tr class="unmatched-row"><td><div class="row-item">{{ thumb(u.item) }}
<div>{{ u.item.title or "(no title)" }}
<div class="muted">id {{ u.item.id }}</div></div></div></td>
<td>{% if u.best %}<div class="row-item">{{ thumb(u.best) }}<div>{{ u.best.title or "(no title)" }}
<div class="muted">id {{ u.best.id }}</div></div></div>
{%- else %}<span class="muted">no candidate</span>{% endif %}</td>
<td>{{ u.value|fmt }}</td></tr>
{% endfor %}
</table>
{% endif %}
</section>
<section id="problems">
<h2>Rows with bad images or other problems</h2>
<p class="muted">{{ problems|length|fmt }} of {{ n_problems|fmt }} shown.</p>
{% if problems %}
<table id="problems-table"><tr><th>image</th><th>catalogue</th><th>row</th><th>id</th>
<th>field</th><th>problem</th><th>detail</th><th>action</th></tr>
{% for p in problems %}
<tr class="problem-row"><td>{% if p.item %}{{ thumb(p.item) }}{% endif %}</td>
<td>{{ p.catalogue }}</td><td>{{ p.row }}</td><td>{{ p.id }}</td><td>{{ p.field }}</td>
<td>{{ p.problem }}</td><td>{{ p.detail }}</td><td>{{ p.action }}</td></tr>
{% endfor %}
</table>
{% endif %}
</section>
<p class="muted">Made by mmmatch {{ version }}.</p>
</main>
<script>{{ script|safe }}</script>
</body>
</html>
"""
