import json

import numpy as np
import pandas as pd
import pytest

from mmmatch.calibrate import ThresholdCalibrator
from mmmatch.exceptions import NotFittedError
from mmmatch.metrics import best_f1_threshold, pair_scores_at

# sorted cuts (score >= s), 3 positives:
#   s    tp fp  precision recall  F1
#   0.9   1  0    1       1/3    1/2
#   0.8   2  0    1       2/3    4/5
#   0.7   2  1   2/3      2/3    2/3
#   0.6   3  1   3/4       1     6/7
#   0.5   3  2   3/5       1     3/4
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
LABELS = np.array([1, 1, 0, 1, 0])


def test_f1_hand_computed():
    cal = ThresholdCalibrator().fit(SCORES, LABELS)
    assert cal.threshold_ == pytest.approx(0.55)
    assert cal.f1_ == pytest.approx(6 / 7)
    assert (cal.precision_, cal.recall_) == (pytest.approx(0.75), pytest.approx(1.0))
    assert (cal.n_pairs_, cal.n_positive_, cal.positives_) == (5, 3, 3)
    assert cal.predict(SCORES).tolist() == [True, True, True, True, False]


def test_f1_scores_given_in_any_order():
    perm = np.array([3, 0, 4, 2, 1])
    cal = ThresholdCalibrator("f1").fit(SCORES[perm], LABELS[perm])
    assert cal.threshold_ == pytest.approx(0.55)
    assert cal.f1_ == pytest.approx(6 / 7)


def test_f1_lowest_score_chosen_cuts_just_below_it():
    cal = ThresholdCalibrator().fit([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 1])
    assert cal.f1_ == pytest.approx(6 / 7)
    assert cal.threshold_ < 0.6 and cal.threshold_ == pytest.approx(0.6, abs=1e-5)


def test_f1_never_splits_ties():
    cal = ThresholdCalibrator().fit([0.9, 0.9, 0.5], [1, 0, 0])
    assert cal.threshold_ == pytest.approx(0.7)
    assert cal.f1_ == pytest.approx(2 / 3)
    assert cal.curve_["threshold"].tolist() == [0.5, 0.9]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("positives_extra", [None, 7])
def test_f1_agrees_with_best_f1_threshold(seed, positives_extra):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    labels[0] = True
    scores = np.round(rng.normal(labels * 1.0, 1.0), 2)  # rounding makes ties
    positives = None if positives_extra is None else int(labels.sum()) + positives_extra
    threshold, f1 = best_f1_threshold(scores, labels, positives=positives)
    cal = ThresholdCalibrator().fit(scores, labels, positives=positives)
    assert cal.threshold_ == pytest.approx(threshold, abs=1e-12)
    assert cal.f1_ == pytest.approx(f1)
    if positives is None:  # and the reported point is the real one at that threshold
        at = pair_scores_at(scores, labels, cal.threshold_)
        assert cal.precision_ == pytest.approx(at["precision"])
        assert cal.recall_ == pytest.approx(at["recall"])
        assert cal.f1_ == pytest.approx(at["f1"])


def test_positives_counts_unscored_true_pairs_in_recall():
    # a 4th true pair was never scored: recall at 0.6 is 3/4, F1 = 6/8
    plain = ThresholdCalibrator().fit(SCORES, LABELS)
    cal = ThresholdCalibrator().fit(SCORES, LABELS, positives=4)
    assert cal.recall_ == pytest.approx(0.75)
    assert plain.recall_ == 1.0
    assert cal.f1_ == pytest.approx(0.75)
    assert (cal.n_positive_, cal.positives_) == (3, 4)
    assert cal.curve_["recall"].max() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least the 3 positive"):
        ThresholdCalibrator().fit(SCORES, LABELS, positives=2)


def test_curve_every_distinct_score_sorted_and_recall_monotonic():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)
    labels = (rng.random(300) < scores).astype(int)
    cal = ThresholdCalibrator().fit(scores, labels)
    curve = cal.curve_
    assert list(curve.columns) == ["threshold", "precision", "recall", "f1"]
    assert curve["threshold"].tolist() == sorted(set(scores.tolist()))
    assert np.all(np.diff(curve["recall"]) <= 0)
    assert curve["recall"].iloc[0] == 1.0
    p, r = curve["precision"], curve["recall"]
    np.testing.assert_allclose(curve["f1"], 2 * p * r / (p + r))


def test_curve_hand_computed():
    curve = ThresholdCalibrator().fit(SCORES, LABELS).curve_
    expected = pd.DataFrame({
        "threshold": [0.5, 0.6, 0.7, 0.8, 0.9],
        "precision": [3 / 5, 3 / 4, 2 / 3, 1, 1],
        "recall": [1, 1, 2 / 3, 2 / 3, 1 / 3],
        "f1": [3 / 4, 6 / 7, 2 / 3, 4 / 5, 1 / 2],
    })
    pd.testing.assert_frame_equal(curve, expected, check_dtype=False)


@pytest.mark.parametrize(("target", "threshold", "precision", "recall"), [
    (0.7, 0.55, 0.75, 1.0),  # the 0.7 cut (precision 2/3) fails, the lower 0.6 cut passes
    (0.75, 0.55, 0.75, 1.0),  # exactly at the floor counts
    (0.8, 0.75, 1.0, 2 / 3),
    (1.0, 0.75, 1.0, 2 / 3),  # lowest of the two perfect cuts (0.9 and 0.8)
    (0.5, 0.5 - 1e-6, 0.6, 1.0),  # everything qualifies: keep all
])
def test_precision_at_picks_lowest_qualifying_threshold(target, threshold, precision, recall):
    cal = ThresholdCalibrator("precision_at", target=target).fit(SCORES, LABELS)
    assert cal.threshold_ == pytest.approx(threshold)
    assert cal.precision_ == pytest.approx(precision) and cal.precision_ >= target
    assert cal.recall_ == pytest.approx(recall)


def test_precision_at_unreachable_raises_with_best_reachable():
    # cuts: 0.9 -> precision 0, 0.8 -> 1/2
    with pytest.raises(ValueError, match=r"best reachable .* is 0\.5"):
        ThresholdCalibrator("precision_at", target=0.6).fit([0.9, 0.8], [0, 1])


@pytest.mark.parametrize(("target", "threshold", "precision", "recall"), [
    (1 / 3, 0.85, 1.0, 1 / 3),
    (0.5, 0.75, 1.0, 2 / 3),  # highest cut with recall >= 0.5 is 0.8
    (2 / 3, 0.75, 1.0, 2 / 3),
    (0.9, 0.55, 0.75, 1.0),
    (1.0, 0.55, 0.75, 1.0),  # 0.6 and 0.5 both reach 1: the higher one
])
def test_recall_at_picks_highest_qualifying_threshold(target, threshold, precision, recall):
    cal = ThresholdCalibrator("recall_at", target=target).fit(SCORES, LABELS)
    assert cal.threshold_ == pytest.approx(threshold)
    assert cal.precision_ == pytest.approx(precision)
    assert cal.recall_ == pytest.approx(recall) and cal.recall_ >= target


def test_recall_at_unreachable_with_unscored_positives():
    with pytest.raises(ValueError, match=r"best reachable is 0\.75 \(3 of 4"):
        ThresholdCalibrator("recall_at", target=1.0).fit(SCORES, LABELS, positives=4)
    cal = ThresholdCalibrator("recall_at", target=0.75).fit(SCORES, LABELS, positives=4)
    assert cal.threshold_ == pytest.approx(0.55)


@pytest.mark.parametrize(("objective", "target", "message"), [
    ("accuracy", None, "objective must be one of"),
    ("f1", 0.9, "takes no target"),
    ("precision_at", None, "needs a target"),
    ("recall_at", 0.0, r"in \(0, 1\]"),
    ("recall_at", 1.5, r"in \(0, 1\]"),
    ("precision_at", True, "must be a number"),
    ("precision_at", "0.9", "must be a number"),
])
def test_bad_params_raise_in_fit_not_init(objective, target, message):
    cal = ThresholdCalibrator(objective, target=target)  # stores only
    assert (cal.objective, cal.target) == (objective, target)
    with pytest.raises(ValueError, match=message):
        cal.fit(SCORES, LABELS)


@pytest.mark.parametrize(("scores", "labels", "message"), [
    ([[0.1, 0.2]], [[0, 1]], "1-D"),
    ([0.1, np.nan], [0, 1], "finite"),
    ([0.1, np.inf], [0, 1], "finite"),
    (["a", "b"], [0, 1], "numbers"),
    ([], [], "at least one scored pair"),
    ([0.1, 0.2], [0, 1, 1], r"shape \(2,\)"),
    ([0.1, 0.2], [0, 2], "only 0 and 1"),
    ([0.1, 0.2], ["0", "1"], "0/1"),
    ([0.1, 0.2], [0, 0], "at least one positive"),
])
def test_bad_inputs_raise(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        ThresholdCalibrator().fit(scores, labels)


def test_bool_labels_accepted():
    cal = ThresholdCalibrator().fit(SCORES, LABELS.astype(bool))
    assert cal.threshold_ == pytest.approx(0.55)


# -- refusing the reranker's training pairs ---------------------------------------------------

PAIRS = pd.DataFrame({"left_id": ["a", "b", "c", "d", "e"], "right_id": [1, 2, 3, 4, 5]})


class _Reranker:
    def __init__(self, training_pairs):
        self.training_pairs_ = training_pairs


def test_disjoint_exclude_is_accepted():
    cal = ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude={("a", "2"), ("z", "1")})
    assert cal.threshold_ == pytest.approx(0.55)


def test_overlap_refused_compared_as_strings():
    # right ids are ints in the frame, strings in the exclude set
    with pytest.raises(ValueError, match=r"2 of the 5 .* e\.g\. \('b', '2'\).*held-out"):
        ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude=[("b", "2"), ("d", 4)])


def test_overlap_in_reverse_order_only_within_one_catalogue():
    # between two catalogues left "3" / right "c" is another pair than left "c" / right "3"
    ok = ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude={("3", "c")})
    assert ok.threshold_ == pytest.approx(0.55)
    with pytest.raises(ValueError, match=r"1 of the 5 .*\('c', '3'\)"):
        ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude={("3", "c")},
                                  symmetric=True)


def test_overlap_refused_via_reranker_training_pairs():
    reranker = _Reranker({("e", "5"), ("x", "y")})
    with pytest.raises(ValueError, match=r"1 of the 5 .*\('e', '5'\)"):
        ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude=reranker)
    ok = ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude=_Reranker({("x", "y")}))
    assert ok.threshold_ == pytest.approx(0.55)


def test_unfitted_reranker_as_exclude_raises_not_fitted():
    with pytest.raises(NotFittedError):
        ThresholdCalibrator().fit(SCORES, LABELS, pairs=PAIRS, exclude=_Reranker(None))


def test_exclude_without_pairs_raises():
    with pytest.raises(ValueError, match="exclude needs pairs="):
        ThresholdCalibrator().fit(SCORES, LABELS, exclude={("a", "1")})


@pytest.mark.parametrize(("pairs", "exclude", "message"), [
    (PAIRS.iloc[:4], set(), "one row per score"),
    (PAIRS[["left_id"]], set(), "missing"),
    (PAIRS, "ab", "collection of"),
    (PAIRS, object(), "collection of"),
    (PAIRS, [("a", "1", "x")], r"\(left_id, right_id\) pairs"),
])
def test_bad_pairs_or_exclude_raise(pairs, exclude, message):
    with pytest.raises(ValueError, match=message):
        ThresholdCalibrator().fit(SCORES, LABELS, pairs=pairs, exclude=exclude)


# -- using and saving -------------------------------------------------------------------------


def test_unfitted_use_raises_not_fitted():
    cal = ThresholdCalibrator()
    for call in (lambda: cal.predict(SCORES), cal.operating_point, cal.to_dict):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()


def test_operating_point():
    cal = ThresholdCalibrator("precision_at", target=0.8).fit(SCORES, LABELS)
    point = cal.operating_point()
    assert point == {"objective": "precision_at", "target": 0.8,
                     "threshold": pytest.approx(0.75), "precision": 1.0,
                     "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8)}


@pytest.mark.parametrize("with_curve", [False, True])
def test_to_dict_round_trip_through_json(with_curve):
    cal = ThresholdCalibrator("recall_at", target=0.9).fit(SCORES, LABELS, positives=3)
    d = json.loads(json.dumps(cal.to_dict(curve=with_curve)))
    back = ThresholdCalibrator.from_dict(d)
    assert back.operating_point() == cal.operating_point()
    assert (back.n_pairs_, back.n_positive_, back.positives_) == (5, 3, 3)
    assert back.predict([0.56, 0.55, 0.54]).tolist() == [True, True, False]
    if with_curve:
        pd.testing.assert_frame_equal(back.curve_, cal.curve_)
    else:
        assert "curve" not in d and back.curve_ is None


def test_from_dict_rejects_bad_dicts():
    d = ThresholdCalibrator().fit(SCORES, LABELS).to_dict()
    with pytest.raises(ValueError, match="missing keys"):
        ThresholdCalibrator.from_dict({k: v for k, v in d.items() if k != "threshold"})
    with pytest.raises(ValueError, match="unknown keys"):
        ThresholdCalibrator.from_dict({**d, "margin": 1})
    with pytest.raises(ValueError, match="takes no target"):
        ThresholdCalibrator.from_dict({**d, "target": 0.5})
