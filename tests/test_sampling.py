"""P x K batch sampling for metric learning."""

from collections import Counter

import numpy as np
import pytest

from mmmatch.sampling import Batch, PKSampler


def _labels(n_products: int = 25, max_size: int = 9, seed: int = 0) -> np.ndarray:
    """Product sizes 1..max_size (singletons included), rows in a random order."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, n_products)
    sizes[:3] = 1
    labels = np.repeat(np.arange(n_products) * 7, sizes)  # sparse, non-dense codes
    return rng.permutation(labels)


def _check(sampler: PKSampler) -> list[Batch]:
    """The invariants every epoch must satisfy; returns the batches."""
    batches = list(sampler)
    assert len(batches) == len(sampler)
    codes = sampler.codes_
    p, k = sampler.p, sampler.k
    for b in batches:
        assert b.rows.dtype == b.views.dtype == b.labels.dtype == np.int64
        assert b.rows.shape == b.views.shape == b.labels.shape == (len(b),)
        np.testing.assert_array_equal(codes[b.rows], b.labels)
        counts = Counter(b.labels.tolist())
        assert len(counts) <= p
        assert set(counts.values()) == {k}, counts
        assert len(set(b.pairs())) == len(b) or not sampler.views  # no duplicate entries
        assert (b.views >= 0).all()
    seen = np.concatenate([b.rows for b in batches])
    assert set(seen.tolist()) == set(range(len(codes))), "a row is missing from the epoch"
    return batches


@pytest.mark.parametrize(("p", "k"), [(4, 3), (2, 2), (5, 1), (3, 4)])
def test_every_row_once_and_products_in_k_chunks(p, k):
    sampler = PKSampler(_labels(), p=p, k=k, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _check(sampler)
        assert all(b.n_products >= 2 for b in batches)
        assert all(len(b) == p * k for b in batches[:-1])  # only the tail is short


def test_singletons_get_k_distinct_views():
    sampler = PKSampler(np.arange(10), p=3, k=4)
    for b in _check(sampler):
        for code in np.unique(b.labels):
            mask = b.labels == code
            assert len(set(b.rows[mask].tolist())) == 1
            assert sorted(b.views[mask].tolist()) == [0, 1, 2, 3]


def test_short_products_top_up_with_views_of_their_rows():
    labels = ["a", "a", "b", "c", "c", "c"]
    for b in _check(PKSampler(labels, p=3, k=4)):
        a = b.labels == 0
        if a.any():
            assert sorted(b.pairs()[i] for i in np.flatnonzero(a)) == [
                (0, 0), (0, 1), (1, 0), (1, 1)
            ]


def test_views_false_repeats_rows_with_view_zero():
    sampler = PKSampler(np.arange(6), p=2, k=3, views=False)
    for b in _check(sampler):
        assert (b.views == 0).all()
        assert Counter(b.rows.tolist()) == Counter({r: 3 for r in set(b.rows.tolist())})


def test_large_product_is_spread_over_batches():
    k = 4
    labels = ["big"] * (3 * k + 1) + [f"p{i}" for i in range(20) for _ in range(2)]
    sampler = PKSampler(labels, p=4, k=k, seed=1)
    big = int(np.flatnonzero(sampler.classes_ == "big")[0])
    batches = _check(sampler)
    holding = [b for b in batches if (b.labels == big).any()]
    assert len(holding) == 4  # ceil(13 / 4) chunks, each in its own batch
    rows = np.concatenate([b.rows[b.labels == big] for b in holding])
    assert set(rows.tolist()) == set(range(3 * k + 1))
    views = np.concatenate([b.views[b.labels == big] for b in holding])
    assert Counter(views.tolist()) == {0: 13, 1: 3}  # the last chunk topped up with views


def test_dominant_product_still_gets_negatives():
    labels = ["a"] * 40 + ["b", "c", "c"]
    sampler = PKSampler(labels, p=4, k=2)
    batches = _check(sampler)
    assert all(b.n_products >= 2 for b in batches)
    assert len(batches) >= 20  # a's 20 chunks cannot share a batch


@pytest.mark.parametrize(("n", "p", "sizes"), [(9, 4, [8, 6, 4]), (3, 2, [4, 4])])
def test_last_batch_keeps_two_products(n, p, sizes):
    sampler = PKSampler(np.arange(n), p=p, k=2)
    batches = _check(sampler)
    assert [len(b) for b in batches] == sizes
    assert all(b.n_products >= 2 for b in batches)


def test_single_product_is_allowed():
    batches = _check(PKSampler(["only"] * 5, p=2, k=2))
    assert all(b.n_products == 1 for b in batches) and len(batches) == 3


def test_reproducible_per_seed_and_epoch():
    labels = _labels(seed=4)

    def plan(seed, epoch):
        sampler = PKSampler(labels, p=4, k=3, seed=seed)
        sampler.set_epoch(epoch)
        return [b.pairs() for b in sampler]

    assert plan(0, 2) == plan(0, 2)
    assert plan(0, 2) != plan(0, 3)
    assert plan(0, 2) != plan(1, 2)
    sampler = PKSampler(labels, p=4, k=3)
    first = [b.pairs() for b in sampler]
    assert first == [b.pairs() for b in sampler]  # iterating again: the same epoch
    assert [b.pairs() for b in sampler.batches(epoch=5)] == plan(0, 5)
    assert sampler.epoch == 0
    # the product order changes between epochs
    firsts = {tuple(b.labels.tolist()) for b in (sampler.batches(epoch=e)[0] for e in range(5))}
    assert len(firsts) > 1


def test_labels_of_any_hashable_type():
    codes, classes = PKSampler.encode_labels(["b", "a", "b", "c"])
    np.testing.assert_array_equal(codes, [1, 0, 1, 2])
    assert classes.tolist() == ["a", "b", "c"] and codes.dtype == np.int64
    mixed = ["x", 3, "x", (1, 2), 3]
    codes, classes = PKSampler.encode_labels(mixed)
    assert [classes[c] for c in codes] == mixed
    assert len(classes) == 3
    sampler = PKSampler(mixed, p=2, k=2)
    batches = _check(sampler)
    assert {sampler.classes_[c] for b in batches for c in b.labels.tolist()} == {"x", 3, (1, 2)}


def test_batch_arrays_are_read_only():
    batch = next(iter(PKSampler([0, 0, 1, 1], p=2, k=2)))
    assert isinstance(batch, Batch) and len(batch) == 4
    with pytest.raises(ValueError):
        batch.rows[0] = 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"labels": []}, "labels"),
        ({"p": 1}, "p"),
        ({"k": 0}, "k"),
        ({"p": 2.5}, "p"),
        ({"seed": -1}, "seed"),
        ({"views": "yes"}, "views"),
    ],
)
def test_invalid_parameters(kwargs, field):
    args = {"labels": [0, 1, 1], **kwargs}
    sampler = PKSampler(**args)  # __init__ only stores
    assert sampler.p == args.get("p", 16)
    with pytest.raises(ValueError, match=field):
        len(sampler)
    with pytest.raises(ValueError, match=field):
        list(sampler)


def test_invalid_epoch():
    sampler = PKSampler([0, 1])
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
    with pytest.raises(ValueError, match="epoch"):
        sampler.batches(epoch=1.5)
