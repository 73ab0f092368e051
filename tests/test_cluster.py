import numpy as np
import pandas as pd
import pytest

import mmmatch.cluster as cluster_module
from mmmatch.cluster import cluster_pairs, mutual_edges, one_to_one, safe_clusters


def test_hand_computed_clusters():
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    pairs = pd.DataFrame({"query_id": ["c", "f", "b", "g"], "cand_id": ["b", "e", "a", "g"]})
    out = cluster_pairs(pairs, ids)
    assert out["item_id"].tolist() == ids
    # {a, b, c} first (0), d alone (1), {e, f} (2), g with itself (3)
    assert out["cluster_id"].tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert out["cluster_id"].dtype == "int64"


def test_chains_and_custom_columns():
    ids = [5, 4, 3, 2, 1]
    pairs = pd.DataFrame({"l": [1, 3, 4], "r": [2, 2, 5]})
    out = cluster_pairs(pairs, ids, left="l", right="r")
    assert out["item_id"].tolist() == ["5", "4", "3", "2", "1"]
    assert out["cluster_id"].tolist() == [0, 0, 1, 1, 1]


def test_no_pairs_every_item_alone():
    out = cluster_pairs(pd.DataFrame({"query_id": [], "cand_id": []}), ["x", "y", "z"])
    assert out["cluster_id"].tolist() == [0, 1, 2]


def test_errors():
    with pytest.raises(KeyError, match="zz"):
        cluster_pairs(pd.DataFrame({"query_id": ["a"], "cand_id": ["zz"]}), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        cluster_pairs(pd.DataFrame({"query_id": [], "cand_id": []}), ["a", "a"])


# -- guards against chaining ------------------------------------------------------------------


def _chain(scores: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame({"left_id": [a for a, _ in scores], "right_id": [b for _, b in scores],
                         "score": list(scores.values())})


def _groups(out: pd.DataFrame) -> list[list[str]]:
    return [sorted(g) for g in out.groupby("cluster_id", sort=True)["item_id"].agg(list)]


def _cp(pairs: pd.DataFrame, ids: list[str], **kw: object) -> pd.DataFrame:
    return cluster_pairs(pairs, ids, "left_id", "right_id", **kw)  # type: ignore[arg-type]


def test_max_size_cuts_the_weakest_edge_of_a_chain():
    ids = ["A", "B", "C", "D"]
    pairs = _chain({("A", "B"): 0.9, ("B", "C"): 0.2, ("C", "D"): 0.8})
    assert _cp(pairs, ids)["cluster_id"].tolist() == [0, 0, 0, 0]  # default: one component
    assert _cp(pairs, ids, score="score", max_size=2)["cluster_id"].tolist() == [0, 0, 1, 1]
    assert _cp(pairs, ids, score="score", max_size=3)["cluster_id"].tolist() == [0, 0, 1, 1]
    assert _cp(pairs, ids, score="score", max_size=4)["cluster_id"].tolist() == [0, 0, 0, 0]
    # weakest edge at the end: cutting C-D leaves {A, B, C} (3 > 2), then B-C goes
    pairs = _chain({("A", "B"): 0.9, ("B", "C"): 0.8, ("C", "D"): 0.1})
    assert _cp(pairs, ids, score="score", max_size=2)["cluster_id"].tolist() == [0, 0, 1, 2]
    # a cycle needs two cuts before it falls apart; max_size=1 leaves everyone alone
    pairs = _chain({("A", "B"): 0.9, ("B", "C"): 0.3, ("C", "D"): 0.8, ("D", "A"): 0.4})
    assert _cp(pairs, ids, score="score", max_size=3)["cluster_id"].tolist() == [0, 0, 1, 1]
    assert _cp(pairs, ids, score="score", max_size=1)["cluster_id"].tolist() == [0, 1, 2, 3]


def test_max_size_ties_cut_the_later_edge_whatever_the_row_order():
    ids = ["A", "B", "C"]
    pairs = _chain({("A", "B"): 0.5, ("C", "B"): 0.5})
    for rows in (pairs, pairs.iloc[::-1]):
        assert _cp(rows, ids, score="score", max_size=2)["cluster_id"].tolist() == [0, 0, 1]
    # repeated and reversed rows are one edge with its best score; self-pairs link nothing
    pairs = _chain({("A", "B"): 0.1, ("B", "A"): 0.9, ("B", "C"): 0.5, ("C", "C"): 1.0})
    assert _cp(pairs, ids, score="score", max_size=2)["cluster_id"].tolist() == [0, 0, 1]


def _cut_weakest_brute_force(n: int, edges: list[tuple[float, int, int]], max_size: int
                             ) -> list[int]:
    """The literal rule: while a component is too big, remove its weakest edge."""
    alive = sorted(edges, key=lambda e: (-e[0], e[1], e[2]))  # strongest first
    while True:
        lab = list(range(n))  # tiny union-find by relabelling
        for _, u, v in alive:
            lu, lv = lab[u], lab[v]
            lab = [lu if x == lv else x for x in lab]
        big = {c for c in lab if lab.count(c) > max_size}
        if not big:
            return lab
        for c in big:
            weakest = max(i for i, (_, u, _) in enumerate(alive) if lab[u] == c)
            alive.pop(weakest)


def test_max_size_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(2, 9))
        ids = [f"i{j}" for j in range(n)]
        allpairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
        chosen = [p for p in allpairs if rng.random() < 0.5]
        scores = rng.choice([0.1, 0.2, 0.3, 0.5], size=len(chosen))  # ties on purpose
        edges = [(float(s), u, v) for s, (u, v) in zip(scores, chosen, strict=True)]
        # rows in random directions and order
        rows = [(ids[v], ids[u], s) if rng.random() < 0.5 else (ids[u], ids[v], s)
                for s, u, v in edges]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        pairs = pd.DataFrame(rows, columns=["left_id", "right_id", "score"])
        max_size = int(rng.integers(1, n + 1))
        got = _cp(pairs, ids, score="score", max_size=max_size)["cluster_id"].to_numpy()
        want = _cut_weakest_brute_force(n, edges, max_size)
        same = np.equal.outer(got, got) == np.equal.outer(want, want)
        assert same.all(), (trial, edges, max_size)
        assert np.bincount(got).max() <= max_size


def test_average_linkage_separates_cliques_joined_by_a_weak_edge():
    ids = ["a", "b", "c", "d", "e", "f"]
    scores = {(x, y): 0.9 for g in ("abc", "def") for x in g for y in g if x < y}
    scores[("c", "d")] = 0.5
    pairs = _chain(scores)
    assert _cp(pairs, ids, score="score")["cluster_id"].tolist() == [0] * 6
    out = _cp(pairs, ids, score="score", linkage="average", min_average=0.7)
    assert out["cluster_id"].tolist() == [0, 0, 0, 1, 1, 1]
    # missing edges count as `missing` (default: lowest score 0.5); cross mean = (0.5 * 9) / 9
    assert _cp(pairs, ids, score="score", linkage="average", min_average=0.5)[
        "cluster_id"].tolist() == [0] * 6
    # hand-computed chain A-B-C-D (0.9 each), missing 0.5: {A,B}, {C,D}, then their
    # mean (0.9 + 3 * 0.5) / 4 = 0.6
    chain = _chain({("A", "B"): 0.9, ("B", "C"): 0.9, ("C", "D"): 0.9})
    for min_average, want in ((0.8, [0, 0, 1, 1]), (0.6, [0, 0, 0, 0])):
        out = _cp(chain, ["A", "B", "C", "D"], score="score", linkage="average",
                  min_average=min_average, missing=0.5)
        assert out["cluster_id"].tolist() == want


def _naive_average(n: int, sim: np.ndarray, min_average: float) -> list[int]:
    clusters = [[i] for i in range(n)]
    while len(clusters) > 1:
        best, pair = -np.inf, (0, 0)
        for x in range(len(clusters)):
            for y in range(x + 1, len(clusters)):
                m = sim[np.ix_(clusters[x], clusters[y])].mean()
                if m > best:
                    best, pair = m, (x, y)
        if best < min_average:
            break
        x, y = pair
        clusters[x] += clusters.pop(y)
    lab = [0] * n
    for c, members in enumerate(clusters):
        for i in members:
            lab[i] = c
    return lab


def test_average_linkage_matches_naive_agglomeration():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(2, 9))
        ids = [str(j) for j in range(n)]
        sim = np.full((n, n), 0.0)
        rows = []
        for u in range(n):
            for v in range(u + 1, n):
                if rng.random() < 0.6:
                    sim[u, v] = sim[v, u] = s = float(rng.uniform(0.2, 1.0))
                    rows.append((ids[u], ids[v], s))
        pairs = pd.DataFrame(rows, columns=["left_id", "right_id", "score"])
        min_average = float(rng.uniform(0.3, 0.8))
        got = _cp(pairs, ids, score="score", linkage="average", min_average=min_average,
                  missing=0.0)["cluster_id"].to_numpy()
        want = np.array(_naive_average(n, sim, min_average))
        assert (np.equal.outer(got, got) == np.equal.outer(want, want)).all()


def test_max_size_and_average_together_and_errors():
    ids = ["a", "b", "c", "d", "e", "f"]
    scores = {(x, y): 0.9 for g in ("abc", "def") for x in g for y in g if x < y}
    scores[("c", "d")] = 0.5
    out = _cp(_chain(scores), ids, score="score", max_size=3, linkage="average",
              min_average=0.95)  # pieces {a,b,c}, {d,e,f}; 0.9 < 0.95 splits them all
    assert out["cluster_id"].tolist() == [0, 1, 2, 3, 4, 5]
    empty = pd.DataFrame({"left_id": [], "right_id": [], "score": []})
    assert _cp(empty, ["x", "y"], score="score", max_size=1, linkage="average",
               min_average=0.5)["cluster_id"].tolist() == [0, 1]
    with pytest.raises(KeyError, match="zz"):
        _cp(_chain({("a", "zz"): 0.9}), ["a"], score="score", max_size=2)
    with pytest.raises(ValueError, match="score"):
        _cp(_chain({("a", "b"): 0.9}), ["a", "b"], max_size=2)
    with pytest.raises(ValueError, match="min_average"):
        _cp(_chain({("a", "b"): 0.9}), ["a", "b"], score="score", linkage="average")
    with pytest.raises(ValueError, match="linkage"):
        _cp(_chain({("a", "b"): 0.9}), ["a", "b"], score="score", linkage="complete")
    with pytest.raises(ValueError, match="max_size"):
        _cp(_chain({("a", "b"): 0.9}), ["a", "b"], score="score", max_size=0)
    with pytest.raises(ValueError, match="NaN"):
        _cp(_chain({("a", "b"): float("nan")}), ["a", "b"], score="score", max_size=2)


# -- mutual neighbours ------------------------------------------------------------------------


def _edges(pairs: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(p) for p in zip(pairs["left_id"], pairs["right_id"], strict=True)}


def test_mutual_edges_by_score():
    # neighbours by score: a: b .9, c .8 | b: a .9, c .7 | c: a .8, b .7, d .6 | d: c .6
    pairs = _chain({("a", "b"): 0.9, ("b", "a"): 0.9, ("a", "c"): 0.8, ("c", "b"): 0.7,
                    ("d", "c"): 0.6, ("d", "d"): 1.0})
    top1 = mutual_edges(pairs, 1)
    assert top1.index.tolist() == [0, 1]  # both rows of the reciprocal best pair a-b
    assert _edges(mutual_edges(pairs, 2)) == {frozenset("ab"), frozenset("ac"), frozenset("bc")}
    # c-d needs d within c's top 3
    assert frozenset("cd") in _edges(mutual_edges(pairs, 3))
    # ties share a rank: b and c are both a's best
    tied = _chain({("a", "b"): 0.9, ("a", "c"): 0.9})
    assert len(mutual_edges(tied, 1)) == 2
    assert len(mutual_edges(pairs.assign(rank=1), 1, rank=None)) == 2  # ranks ignored


def test_mutual_edges_by_rank():
    # lists: a: b(1) c(2) | b: a(1) c(2) | c: d(1) a(2) | d: c(1)
    pairs = pd.DataFrame({
        "left_id": ["a", "a", "b", "b", "c", "c", "d"],
        "right_id": ["b", "c", "a", "c", "d", "a", "c"],
        "score": [0.0] * 7,  # ranks win over scores
        "rank": [1, 2, 1, 2, 1, 2, 1],
    })
    assert _edges(mutual_edges(pairs, 1)) == {frozenset("ab"), frozenset("cd")}
    # b-c: c's list does not hold b, so it is no mutual edge even at k=2
    assert _edges(mutual_edges(pairs, 2)) == {frozenset("ab"), frozenset("ac"), frozenset("cd")}
    assert len(mutual_edges(pairs.iloc[:0], 1)) == 0
    with pytest.raises(ValueError, match="k"):
        mutual_edges(pairs, 0)


def test_safe_clusters_breaks_a_chain_of_non_mutual_links():
    # a hub h is everybody's best neighbour, but only x is h's
    ids = ["x", "y", "z", "h"]
    pairs = _chain({("x", "h"): 0.9, ("h", "x"): 0.9, ("y", "h"): 0.8, ("h", "y"): 0.8,
                    ("z", "h"): 0.7, ("h", "z"): 0.7})
    assert cluster_pairs(pairs, ids, "left_id", "right_id")["cluster_id"].nunique() == 1
    assert safe_clusters(pairs, ids, k=1)["cluster_id"].tolist() == [0, 1, 2, 0]
    assert safe_clusters(pairs, ids, k=None, max_size=2)["cluster_id"].tolist() == [0, 1, 2, 0]
    assert safe_clusters(pairs, ids)["cluster_id"].tolist() == [0, 0, 0, 0]  # 4 <= defaults
    out = safe_clusters(pairs, ids, k=None, linkage="average", min_average=0.85, missing=0.0)
    assert out["cluster_id"].tolist() == [0, 1, 2, 0]
    assert safe_clusters(pairs.iloc[:0], ids)["cluster_id"].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="zz"):  # raised even though k drops the pair
        safe_clusters(_chain({("x", "zz"): 0.1, ("x", "y"): 0.9, ("y", "x"): 0.9}), ids, k=1)


# -- one-to-one -------------------------------------------------------------------------------


def test_one_to_one_greedy_versus_hungarian():
    pairs = _chain({("a1", "b1"): 0.9, ("a1", "b2"): 0.8, ("a2", "b1"): 0.85})
    greedy = one_to_one(pairs, "greedy")
    assert list(zip(greedy["left_id"], greedy["right_id"], strict=True)) == [("a1", "b1")]
    hungarian = one_to_one(pairs, "hungarian")
    assert hungarian.index.tolist() == [1, 2]  # a1-b2 + a2-b1
    assert hungarian["score"].sum() == pytest.approx(1.65)
    # left and right are separate catalogues: the same id on both sides is no conflict
    same = _chain({("x", "x"): 0.5, ("x", "y"): 0.4, ("y", "x"): 0.3})
    assert one_to_one(same)[["left_id", "right_id"]].values.tolist() == [["x", "x"]]
    assert one_to_one(same, "hungarian")["score"].sum() == pytest.approx(0.7)


def test_one_to_one_ties_repeats_and_baseline():
    tied = _chain({("b", "y"): 0.5, ("a", "y"): 0.5, ("a", "x"): 0.5})
    assert one_to_one(tied).index.tolist() == [0, 2]  # a-x first (ids), then b-y
    repeated = pd.DataFrame({"left_id": ["a", "a", "a"], "right_id": ["x", "x", "y"],
                             "score": [0.2, 0.6, 0.1]})
    assert one_to_one(repeated, "hungarian").index.tolist() == [1]
    # negative scores (hubness-corrected) are still worth taking by default ...
    neg = _chain({("a", "x"): -0.01, ("b", "y"): -0.2, ("b", "x"): -0.1})
    assert one_to_one(neg, "hungarian").index.tolist() == [0, 1]
    # ... unless a baseline says otherwise: only a-x scores above -0.05
    assert one_to_one(neg, "hungarian", baseline=-0.05).index.tolist() == [0]
    empty = pd.DataFrame({"left_id": [], "right_id": [], "score": []})
    for method in ("greedy", "hungarian"):
        assert len(one_to_one(empty, method)) == 0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        one_to_one(tied, "best")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="score"):
        one_to_one(tied.drop(columns="score"))


def _best_matching(edges: dict[tuple[int, int], float]) -> float:
    """Maximum total score over all matchings (unmatched allowed), by enumeration."""
    lefts = sorted({u for u, _ in edges})

    def best(i: int, used: frozenset[int]) -> float:
        if i == len(lefts):
            return 0.0
        out = best(i + 1, used)  # leave lefts[i] unmatched
        for (u, v), s in edges.items():
            if u == lefts[i] and v not in used:
                out = max(out, s + best(i + 1, used | {v}))
        return out

    return best(0, frozenset())


@pytest.mark.parametrize("dense_cells", [1 << 22, 0])  # dense assignment, or sparse LAPJVsp
def test_hungarian_matches_brute_force_and_never_repeats_an_id(
    dense_cells: int, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(cluster_module, "_DENSE_CELLS", dense_cells)
    rng = np.random.default_rng(2)
    for _ in range(80):
        nl, nr = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        edges = {(u, v): float(rng.uniform(0.01, 1.0)) for u in range(nl) for v in range(nr)
                 if rng.random() < 0.5}
        pairs = pd.DataFrame({"l": [f"L{u}" for u, _ in edges], "r": [f"R{v}" for _, v in edges],
                              "s": list(edges.values())})
        for method in ("greedy", "hungarian"):
            got = one_to_one(pairs, method, left="l", right="r", score="s")  # type: ignore[arg-type]
            assert got["l"].is_unique and got["r"].is_unique
            assert set(got.index) <= set(pairs.index)
        best = one_to_one(pairs, "hungarian", left="l", right="r", score="s")["s"].sum()
        assert best == pytest.approx(_best_matching(edges))
