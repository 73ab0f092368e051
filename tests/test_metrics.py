import numpy as np
import pandas as pd
import pytest

from mmmatch.metrics import (
    best_f1_threshold,
    group_f1,
    map_at_r,
    neighbour_labels,
    pair_scores,
    pair_scores_at,
    precision_at_k,
    recall_at_k,
    recall_at_k_labels,
)


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


# -- pair_scores_at ---------------------------------------------------------------------------


def test_pair_scores_at_hand_computed_and_inclusive_threshold():
    # predicted: 0.9 (1), 0.8 (0), 0.5 (1, exactly at the threshold) -> tp 2, fp 1, fn 1 (0.3)
    s = pair_scores_at(np.array([0.9, 0.8, 0.3, 0.1, 0.5]), np.array([1, 0, 1, 0, 1]), 0.5)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)


def test_pair_scores_at_agrees_with_pair_scores():
    rng = np.random.default_rng(3)
    scores, labels = rng.random(50), rng.random(50) < 0.3
    pairs = np.arange(50)
    expected = pair_scores([(i, i) for i in pairs[scores >= 0.6]],
                           [(i, i) for i in pairs[labels]])
    assert pair_scores_at(scores, labels, 0.6) == pytest.approx(expected)


def test_pair_scores_at_nothing_predicted():
    s = pair_scores_at([0.1, 0.2], [1, 0], 0.9)
    assert (s["precision"], s["recall"], s["f1"], s["fn"]) == (0.0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="equal"):
        pair_scores_at([0.1, 0.2], [1], 0.5)


# -- neighbour_labels -------------------------------------------------------------------------


def _brute_force(q, r, labels, k, metric, exclude_self):
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
    dist = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1) if metric == "l2" else -(q @ r.T)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    return labels[np.argsort(dist, axis=1, kind="stable")[:, :k]]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_neighbour_labels_matches_brute_force(metric, exclude_self):
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(40, 6)) * rng.uniform(0.5, 3, size=(40, 1))  # unequal norms
    queries = refs if exclude_self else rng.normal(size=(15, 6))
    labels = np.array([f"r{i}" for i in range(40)])  # one label per row: labels are rows
    got = neighbour_labels(queries, refs, None, labels, 5, metric, exclude_self)
    assert got.shape == (len(queries), 5)
    np.testing.assert_array_equal(got, _brute_force(queries, refs, labels, 5, metric,
                                                    exclude_self))


def test_neighbour_labels_metric_changes_the_answer():
    # the long reference wins on inner product, the parallel short one on cosine and l2
    refs = np.array([[10.0, 1.0], [0.1, 0.0]])
    q = np.array([[1.0, 0.0]])
    labels = np.array([7, 8])
    assert neighbour_labels(q, refs, [0], labels, 1, "ip")[0, 0] == 7
    assert neighbour_labels(q, refs, [0], labels, 1, "cosine")[0, 0] == 8
    assert neighbour_labels(q, refs, [0], labels, 1, "l2")[0, 0] == 8


def test_neighbour_labels_exclude_self_with_exact_duplicates():
    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    rows = np.arange(4)
    got = neighbour_labels(x, x, rows, rows, 2, "cosine", exclude_self=True)
    for i in range(3):  # the two other copies, never the row itself
        assert sorted(got[i].tolist()) == sorted(set(range(3)) - {i})
    assert got[3, 0] != 3
    # k = 1: FAISS may return two other copies before the row itself (ties), and the own row
    # must still never come back
    got = neighbour_labels(x, x, rows, rows, 1, "l2", exclude_self=True)
    assert all(got[i, 0] in set(range(3)) - {i} for i in range(3))


def test_neighbour_labels_validates():
    x = np.zeros((3, 2), dtype=np.float32) + 1
    with pytest.raises(ValueError, match="k must be"):
        neighbour_labels(x, x, None, np.arange(3), 3, exclude_self=True)
    with pytest.raises(ValueError, match="reference labels"):
        neighbour_labels(x, x, None, np.arange(2), 1)
    with pytest.raises(ValueError, match="metric"):
        neighbour_labels(x, x, None, np.arange(3), 1, metric="dot")  # type: ignore[arg-type]


# -- precision@k, recall@k, MAP@R -------------------------------------------------------------


def test_precision_and_recall_at_k_hand_computed():
    q = np.array(["a", "b"])
    ranked = np.array([["a", "b", "a"], ["a", "a", "b"]])
    assert precision_at_k(q, ranked, 1) == pytest.approx(0.5)  # (1 + 0) / 2
    assert precision_at_k(q, ranked, 2) == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert precision_at_k(q, ranked, 3) == pytest.approx(0.5)  # (2/3 + 1/3) / 2
    assert recall_at_k_labels(q, ranked, 1) == pytest.approx(0.5)
    assert recall_at_k_labels(q, ranked, 2) == pytest.approx(0.5)
    assert recall_at_k_labels(q, ranked, 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(q, ranked, 4)


def test_map_at_r_rewards_order_where_r_precision_does_not():
    # R = 10 and 5 relevant results in the top 10 for both queries: R-precision is 0.5 for
    # both; MAP@R is (1+1+1+1+1)/10 = 0.5 with the hits first and
    # (1/6 + 2/7 + 3/8 + 4/9 + 5/10)/10 with the hits last.
    first = [1] * 5 + [0] * 5
    last = [0] * 5 + [1] * 5
    counts = {1: 10}
    assert map_at_r([1], [first], counts) == pytest.approx(0.5)
    expected_last = (1 / 6 + 2 / 7 + 3 / 8 + 4 / 9 + 5 / 10) / 10
    assert map_at_r([1], [last], counts) == pytest.approx(expected_last)
    assert map_at_r([1, 1], [first, last], counts) == pytest.approx((0.5 + expected_last) / 2)


def test_map_at_r_ignores_results_past_r_and_counts_per_query():
    # R = 3: hits at 1 and 3 -> (1/1 + 2/3) / 3 = 5/9; the hit at rank 4 is past R
    ranked = np.array([["x", "y", "x", "x"], ["y", "y", "z", "z"]])
    assert map_at_r(["x"], ranked[:1], np.array([3])) == pytest.approx(5 / 9)
    # second query: label y, R = 2, hits at 1, 2 -> 1; mean (5/9 + 1) / 2
    assert map_at_r(["x", "y"], ranked, {"x": 3, "y": 2}) == pytest.approx((5 / 9 + 1) / 2)


def test_map_at_r_exclude_self_and_empty_classes():
    # counts include the query itself: R = 3 - 1 = 2, hits at 1 and 2 -> 1.0
    assert map_at_r(["x"], [["x", "x", "y"]], {"x": 3}, exclude_self=True) == pytest.approx(1.0)
    # without exclude_self R = 3: (1 + 1 + 0) / 3
    assert map_at_r(["x"], [["x", "x", "y"]], {"x": 3}) == pytest.approx(2 / 3)
    # a query alone in its class (R = 0) is left out of the mean
    assert map_at_r(["x", "s"], [["x", "y"], ["x", "y"]], {"x": 2, "s": 1},
                    exclude_self=True) == pytest.approx(1.0)
    assert np.isnan(map_at_r(["s"], [["x"]], {"s": 1}, exclude_self=True))
    with pytest.raises(ValueError, match="columns"):
        map_at_r(["x"], [["x", "x"]], {"x": 3})


def test_map_at_r_end_to_end_with_neighbour_labels():
    # two tight, well separated clusters: every neighbour within R is right -> 1.0
    rng = np.random.default_rng(1)
    centres = np.array([[5.0, 0, 0]] * 4 + [[0, 5.0, 0]] * 3)
    x = centres + rng.normal(0, 0.01, (7, 3))
    labels = np.array([0] * 4 + [1] * 3)
    counts = pd.Series(labels).value_counts()
    ranked = neighbour_labels(x, x, labels, labels, 3, "l2", exclude_self=True)
    assert map_at_r(labels, ranked, counts, exclude_self=True) == pytest.approx(1.0)
    assert precision_at_k(labels, ranked, 2) == pytest.approx(1.0)


# -- group_f1 ---------------------------------------------------------------------------------


def test_group_f1_hand_computed():
    # item 1, 2: T={1,2}, P={1,2,3} -> 4/5; item 3: T={3,4}, P={1,2,3} -> 2/5;
    # item 4: T={3,4}, P={4} -> 2/3. Mean = (4/5 + 4/5 + 2/5 + 2/3) / 4 = 2/3
    true = {1: "A", 2: "A", 3: "B", 4: "B"}
    pred = pd.Series({4: "y", 3: "x", 2: "x", 1: "x"})  # order does not matter
    assert group_f1(true, pred) == pytest.approx(2 / 3)


def test_group_f1_perfect_and_singletons():
    true = {"a": 1, "b": 1, "c": 2}
    assert group_f1(true, {"a": "z", "b": "z", "c": "w"}) == pytest.approx(1.0)  # ids renamed
    # every item alone: items a, b get 2*1/(2+1), c gets 1
    assert group_f1(true, {"a": 1, "b": 2, "c": 3}) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_group_f1_rejects_different_items():
    with pytest.raises(ValueError, match="different items"):
        group_f1({"a": 1, "b": 1}, {"a": 1})
    with pytest.raises(ValueError, match="no group"):
        group_f1({"a": 1, "b": None}, {"a": 1, "b": 1})
