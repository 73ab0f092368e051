"""Choose the match / no-match score threshold from held-out labelled pairs.

:class:`ThresholdCalibrator` turns pair scores (from a reranker, a fused similarity, ...) and
their 0/1 labels into one operating point ``score >= threshold_``:

* ``objective="f1"``: the threshold maximising F1 (as :func:`mmmatch.metrics.best_f1_threshold`);
* ``objective="precision_at", target=t``: the lowest threshold whose precision is at least
  ``t`` (the most recall the precision floor allows);
* ``objective="recall_at", target=t``: the highest threshold whose recall is at least ``t``
  (the most precision the recall floor allows).

The chosen cut sits midway between the chosen score and the next lower distinct score, so it
generalises instead of sitting on a fitting example; on the fitting data it decides exactly as
cutting at the chosen score would.

Calibrating on the pairs a reranker was trained on gives an optimistic threshold; pass
``pairs=`` and ``exclude=`` (the reranker, or its training pairs) to
:meth:`~ThresholdCalibrator.fit` and it refuses such pairs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from mmmatch._validation import check_is_fitted
from mmmatch.metrics import cut_below, pr_curve

__all__ = ["OBJECTIVES", "ThresholdCalibrator"]

OBJECTIVES = ("f1", "precision_at", "recall_at")
"""The objectives :class:`ThresholdCalibrator` knows."""

_CURVE_COLUMNS = ("threshold", "precision", "recall", "f1")
_STATE = ("threshold_", "precision_", "recall_", "f1_", "n_pairs_", "n_positive_", "positives_")


def _check_params(objective: Any, target: Any) -> float | None:
    """Validate ``objective`` / ``target``; returns ``target`` as a float (or ``None``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, "
                         f"got {objective!r}")
    if objective == "f1":
        if target is not None:
            raise ValueError(f"objective 'f1' takes no target (got {target!r}); a target is "
                             "for 'precision_at' / 'recall_at'")
        return None
    if target is None:
        raise ValueError(f"objective {objective!r} needs a target in (0, 1], e.g. "
                         f"ThresholdCalibrator({objective!r}, target=0.95)")
    if isinstance(target, bool) or not isinstance(target, numbers.Real):
        raise ValueError(f"target must be a number in (0, 1], got {target!r}")
    t = float(target)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {t}")
    return t


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n,) float64 finite scores and (n,) bool labels, or a ``ValueError``."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores: expected a 1-D array (n,), got shape {s.shape}")
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"scores: expected numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not len(s):
        raise ValueError("scores: expected at least one scored pair, got none")
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"scores: expected finite values, score {bad} is {s[bad]}")
    y = np.asarray(labels)
    if y.shape != s.shape:
        raise ValueError(f"labels: expected shape {s.shape} like scores, got {y.shape}")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels: expected 0/1 (or bool), got dtype {y.dtype}")
        odd = ~np.isin(y, (0, 1))
        if odd.any():
            bad = int(np.flatnonzero(odd)[0])
            raise ValueError(f"labels: expected only 0 and 1, label {bad} is {y[bad]!r}")
    y = y.astype(bool)
    if not y.any():
        raise ValueError("labels: expected at least one positive (1) pair, got none; "
                         "no threshold can be calibrated without true matches")
    return s, y


def _excluded_pairs(exclude: Any, symmetric: bool = False) -> set[tuple[str, str]]:
    """The excluded pairs as ``(str, str)`` tuples (in both orders when ``symmetric``)."""
    if hasattr(exclude, "training_pairs_"):
        check_is_fitted(exclude, "training_pairs_")
        exclude = exclude.training_pairs_
    if isinstance(exclude, str | bytes) or not isinstance(exclude, Iterable):
        raise ValueError("exclude: expected a collection of (left_id, right_id) pairs or a "
                         f"fitted reranker with 'training_pairs_', got {type(exclude).__name__}")
    out: set[tuple[str, str]] = set()
    for pair in exclude:
        if isinstance(pair, str | bytes) or not isinstance(pair, Iterable):
            raise ValueError(f"exclude: expected (left_id, right_id) pairs, got {pair!r}")
        items = tuple(pair)
        if len(items) != 2:
            raise ValueError(f"exclude: expected (left_id, right_id) pairs, got {pair!r}")
        a, b = str(items[0]), str(items[1])
        out.add((a, b))
        if symmetric:
            out.add((b, a))
    return out


def _check_no_overlap(pairs: Any, n: int, exclude: Any, symmetric: bool = False) -> None:
    """Raise ``ValueError`` when a fitting pair is among the excluded (training) pairs."""
    if not isinstance(pairs, pd.DataFrame):
        raise ValueError(f"pairs: expected a DataFrame with left_id, right_id, got "
                         f"{type(pairs).__name__}")
    missing = [c for c in ("left_id", "right_id") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs: expected columns left_id, right_id; missing {missing}")
    if len(pairs) != n:
        raise ValueError(f"pairs: expected one row per score ({n}), got {len(pairs)}")
    if exclude is None:
        return
    banned = _excluded_pairs(exclude, symmetric)
    fitting = zip(pairs["left_id"].astype(str), pairs["right_id"].astype(str), strict=True)
    overlap = [p for p in fitting if p in banned]
    if overlap:
        raise ValueError(
            f"{len(overlap)} of the {n} calibration pairs are among the excluded (reranker "
            f"training) pairs, e.g. {overlap[0]}; a threshold fitted on training pairs is "
            "optimistic: calibrate on held-out labelled pairs the reranker never saw"
        )


class ThresholdCalibrator:
    """Learn the score threshold of the decision ``score >= threshold_`` from labelled pairs.

    Args:
        objective: ``"f1"`` (maximise F1), ``"precision_at"`` (lowest threshold with
            precision >= ``target``: most recall under a precision floor) or ``"recall_at"``
            (highest threshold with recall >= ``target``: most precision under a recall
            floor).
        target: the floor, in (0, 1]; required for ``precision_at`` / ``recall_at``, must be
            ``None`` for ``f1``. Checked by :meth:`fit` (the constructor only stores).

    Attributes:
        threshold_: the learned threshold; pairs scoring at least this are matches. It sits
            midway between the chosen score and the next lower distinct score (just below
            the lowest score when that is chosen).
        precision_, recall_, f1_: the fitting data's precision, recall and F1 at
            ``threshold_`` (recall counts the ``positives`` never scored as missed).
        curve_: DataFrame ``threshold, precision, recall, f1``, one row per distinct score
            (the decision ``score >= threshold`` at that score), sorted by ascending
            threshold; ``None`` after :meth:`from_dict` without a stored curve.
        n_pairs_: number of fitting pairs.
        n_positive_: number of positive labels among them.
        positives_: the number of true pairs recall is measured against (``positives`` or
            ``n_positive_``).

    Example::

        cal = ThresholdCalibrator("precision_at", target=0.95).fit(scores, labels)
        matches = cal.predict(new_scores)
    """

    def __init__(
        self,
        objective: Literal["f1", "precision_at", "recall_at"] = "f1",
        target: float | None = None,
    ) -> None:
        self.objective = objective
        self.target = target

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"objective": self.objective, "target": self.target}

    # -- fitting --------------------------------------------------------------------------------

    def fit(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        pairs: pd.DataFrame | None = None,
        exclude: Any = None,
        positives: int | None = None,
        symmetric: bool = False,
    ) -> ThresholdCalibrator:
        """Choose the threshold on held-out labelled pairs.

        Args:
            scores: (n,) finite pair scores, higher means "match".
            labels: (n,) 0/1 (or bool) true labels of the same pairs; at least one 1.
            pairs: (n,) DataFrame with ``left_id, right_id``, the pairs that were scored (in
                the order of ``scores``); needed to check ``exclude``.
            exclude: pairs that must not be used for calibration: a collection of
                ``(left_id, right_id)`` tuples or an object with ``training_pairs_`` (a
                fitted reranker). Compared as ``(str, str)``.
            symmetric: the pairs are within one catalogue (deduplication), so ``(a, b)``
                and ``(b, a)`` are the same pair; between two catalogues (the default) the
                left and right ids are separate namespaces and only the order given counts.
            positives: the number of true pairs there are, when some were never scored (for
                example missed by retrieval); they count as missed in recall. Default: the
                positive labels; must not be fewer.

        Returns:
            ``self``.

        Raises:
            ValueError: bad objective / target / inputs; ``exclude`` without ``pairs``; a
                fitting pair among the excluded ones; a target no threshold reaches.
        """
        target = _check_params(self.objective, self.target)
        s, y = _check_scores_labels(scores, labels)
        n_positive = int(y.sum())
        if positives is None:
            total = n_positive
        else:
            if isinstance(positives, bool) or not isinstance(positives, numbers.Integral):
                raise ValueError(f"positives: expected an integer, got {positives!r}")
            total = int(positives)
            if total < n_positive:
                raise ValueError(f"positives: expected at least the {n_positive} positive "
                                 f"labels, got {total}")
        if exclude is not None and pairs is None:
            raise ValueError("exclude needs pairs= (left_id, right_id of each score) to check "
                             "that no calibration pair is among the excluded ones")
        if pairs is not None:
            _check_no_overlap(pairs, len(s), exclude, symmetric)

        curve = pr_curve(s, y, total)  # by ascending threshold
        down = curve.iloc[::-1]  # highest threshold first, as the choices below read it
        cut = down["threshold"].to_numpy()
        precision = down["precision"].to_numpy()
        recall = down["recall"].to_numpy()
        f1 = down["f1"].to_numpy()  # the same curve as best_f1_threshold

        if self.objective == "f1":
            best = int(np.argmax(f1))  # ties: the highest threshold, as best_f1_threshold
        elif self.objective == "precision_at":
            ok = np.flatnonzero(precision >= target)
            if not len(ok):
                raise ValueError(
                    f"no threshold reaches precision {target:g}: the best reachable on these "
                    f"{len(s)} pairs is {precision.max():.4g}; lower the target"
                )
            best = int(ok[-1])  # lowest qualifying threshold
        else:
            ok = np.flatnonzero(recall >= target)
            if not len(ok):
                raise ValueError(
                    f"no threshold reaches recall {target:g}: the best reachable is "
                    f"{recall.max():.4g} ({n_positive} of {total} true pairs were scored); "
                    "lower the target"
                )
            best = int(ok[0])  # highest qualifying threshold

        self.threshold_ = cut_below(cut, best)
        self.precision_ = float(precision[best])
        self.recall_ = float(recall[best])
        self.f1_ = float(f1[best])
        self.curve_ = curve[list(_CURVE_COLUMNS)].reset_index(drop=True)
        self.n_pairs_ = len(s)
        self.n_positive_ = n_positive
        self.positives_ = total
        return self

    # -- using ----------------------------------------------------------------------------------

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Match decisions ``scores >= threshold_``.

        Args:
            scores: (n,) pair scores (any shape works, elementwise; NaN is no match).

        Returns:
            (n,) bool array.
        """
        check_is_fitted(self, "threshold_")
        return np.asarray(scores, dtype=np.float64) >= self.threshold_

    def operating_point(self) -> dict[str, Any]:
        """``{"objective", "target", "threshold", "precision", "recall", "f1"}`` for reports."""
        check_is_fitted(self, "threshold_")
        return {
            "objective": self.objective, "target": self.target, "threshold": self.threshold_,
            "precision": self.precision_, "recall": self.recall_, "f1": self.f1_,
        }

    # -- saving ---------------------------------------------------------------------------------

    def to_dict(self, curve: bool = False) -> dict[str, Any]:
        """JSON-friendly fitted state (plain floats, ints, lists).

        Args:
            curve: also store :attr:`curve_` as ``{"threshold": [...], "precision": [...],
                ...}`` lists.

        Returns:
            ``{"objective", "target", "threshold", "precision", "recall", "f1", "n_pairs",
            "n_positive", "positives"}`` (+ ``"curve"``).
        """
        check_is_fitted(self, "threshold_")
        out: dict[str, Any] = {"objective": self.objective,
                               "target": None if self.target is None else float(self.target)}
        for name in _STATE:
            out[name[:-1]] = getattr(self, name)
        if curve and self.curve_ is not None:
            out["curve"] = {c: [float(v) for v in self.curve_[c]] for c in _CURVE_COLUMNS}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdCalibrator:
        """A fitted calibrator from :meth:`to_dict`'s output.

        Raises:
            ValueError: a key is missing or unknown, or the objective / target are invalid.
        """
        keys = {"objective", "target", *(n[:-1] for n in _STATE)}
        missing = sorted(keys - set(d))
        unknown = sorted(set(d) - keys - {"curve"})
        if missing or unknown:
            raise ValueError(f"calibrator dict: missing keys {missing}, unknown keys {unknown}")
        _check_params(d["objective"], d["target"])
        cal = cls(d["objective"], d["target"])
        for name in ("threshold_", "precision_", "recall_", "f1_"):
            setattr(cal, name, float(d[name[:-1]]))
        for name in ("n_pairs_", "n_positive_", "positives_"):
            setattr(cal, name, int(d[name[:-1]]))
        stored = d.get("curve")
        if stored is None:
            cal.curve_ = None
        else:
            lost = [c for c in _CURVE_COLUMNS if c not in stored]
            if lost:
                raise ValueError(f"calibrator dict: curve is missing columns {lost}")
            cal.curve_ = pd.DataFrame({c: np.asarray(stored[c], dtype=np.float64)
                                       for c in _CURVE_COLUMNS})
        return cal

    def __repr__(self) -> str:
        fitted = (f", threshold_={self.threshold_:.4g}"
                  if getattr(self, "threshold_", None) is not None else "")
        return f"ThresholdCalibrator(objective={self.objective!r}, target={self.target!r}{fitted})"
