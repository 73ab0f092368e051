import numpy as np
import pandas as pd
import pytest

from mmmatch.metrics import best_f1_threshold, pair_scores, recall_at_k


def test_pair_scores_hand_computed():
    truth = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    predicted = [("a", 1), ("b", 2), ("c", 9), ("a", 1)]
    s = pair_scores(predicted, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 2)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_pair_scores_empty_cases():
    assert pair_scores([], [("a", 1)]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                          "tp": 0, "fp": 0, "fn": 1}
    s = pair_scores([("a", 1)], [])
    assert s["precision"] == 0.0 and s["fp"] == 1


def test_best_f1_threshold_between_scores():
    scores = np.array([0.6, 0.9, 0.7, 0.8])
    labels = np.array([0, 1, 0, 1])
    threshold, f1 = best_f1_threshold(scores, labels)
    assert f1 == pytest.approx(1.0)
    assert threshold == pytest.approx(0.75)


def test_best_f1_threshold_below_lowest_score():
    # sorted: 0.9(1) 0.8(1) 0.7(0) 0.6(1): F1 = 0.5, 0.8, 0.667, 0.857 -> keep everything
    threshold, f1 = best_f1_threshold([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 1])
    assert f1 == pytest.approx(6 / 7)
    assert threshold < 0.6 and threshold == pytest.approx(0.6, abs=1e-5)


def test_best_f1_threshold_never_cuts_between_ties():
    # cutting after the first 0.9 would give F1 = 1, but the tie cannot be split
    threshold, f1 = best_f1_threshold([0.9, 0.9, 0.5], [1, 0, 0])
    assert f1 == pytest.approx(2 / 3)
    assert threshold == pytest.approx(0.7)
    assert (np.array([0.9, 0.9, 0.5]) >= threshold).tolist() == [True, True, False]


def test_recall_at_k_hand_computed():
    candidates = pd.DataFrame({
        "left_id": ["a", "a", "b", "b", "c"],
        "right_id": ["x", "y", "z", "y", "w"],
        "rank": [1, 2, 1, 2, 1],
    })
    truth = pd.DataFrame({"left_id": ["a", "b", "c", "d"], "right_id": ["y", "y", "w", "v"]})
    assert recall_at_k(candidates, truth, [1, 2, 10]) == {1: 0.25, 2: 0.75, 10: 0.75}
