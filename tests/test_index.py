import json

import numpy as np
import pytest

from mmmatch.exceptions import ConfigMismatchError
from mmmatch.index import EmbeddingIndex, auto_factory


def _data(n=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), [f"item-{i}" for i in range(n)]


def _brute(x, q, metric, k):
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = q @ x.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_search_matches_numpy(metric):
    x, ids = _data()
    q = np.random.default_rng(1).normal(size=(7, 8)).astype(np.float32)
    index = EmbeddingIndex(8, metric)
    index.add(x, ids)
    scores, found = index.search(q, k=5)
    ref_scores, ref_order = _brute(x, q, metric, 5)
    assert scores.dtype == np.float32 and found.dtype == object
    assert found.tolist() == [[ids[j] for j in row] for row in ref_order]
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert index._resolved_factory == "Flat"


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ivf_with_all_lists_probed_is_exact(metric):
    x, ids = _data(n=640, d=8, seed=2)
    q = np.random.default_rng(3).normal(size=(10, 8)).astype(np.float32)
    index = EmbeddingIndex(8, metric, factory="IVF16,Flat", nprobe=16)
    index.add(x, ids)
    scores, found = index.search(q, k=6)
    ref_scores, ref_order = _brute(x, q, metric, 6)
    assert found.tolist() == [[ids[j] for j in row] for row in ref_order]
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert index._resolved_factory == "IVF16,Flat"


def test_ivf_save_load_keeps_nprobe(tmp_path):
    x, ids = _data(n=640, d=8, seed=4)
    index = EmbeddingIndex(8, "cosine", factory="IVF16,Flat", nprobe=16)
    index.add(x, ids)
    index.save(tmp_path / "ivf")
    loaded = EmbeddingIndex.load(tmp_path / "ivf")
    assert loaded.nprobe == 16
    a, b = index.search(x[:5], 4), loaded.search(x[:5], 4)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].tolist() == b[1].tolist()


def test_reconstruct_on_ivf_index():
    x, ids = _data(n=640, d=8, seed=5)
    index = EmbeddingIndex(8, "cosine", factory="IVF16,Flat", nprobe=16)
    index.add(x, ids)
    got = index.reconstruct(["item-3", "item-7"])
    np.testing.assert_allclose(got, x[[3, 7]] / np.linalg.norm(x[[3, 7]], axis=1, keepdims=True),
                               atol=1e-6)


def test_string_ids_and_bookkeeping():
    x, _ = _data(n=4, d=3)
    index = EmbeddingIndex(3, "ip")
    index.add(x, [10, 11, "a b", "ü"])
    assert len(index) == 4
    assert index.ids == ["10", "11", "a b", "ü"]
    assert 10 in index and "10" in index and "zz" not in index
    np.testing.assert_allclose(index.reconstruct(["ü", "10"]), x[[3, 0]], atol=1e-6)
    with pytest.raises(KeyError, match="zz"):
        index.reconstruct(["zz"])


def test_cosine_stores_normalised_vectors():
    index = EmbeddingIndex(2, "cosine")
    index.add([[3.0, 4.0]], ["a"])
    np.testing.assert_allclose(index.reconstruct(["a"]), [[0.6, 0.8]], atol=1e-6)
    scores, _ = index.search([[30.0, 40.0]], k=1)
    np.testing.assert_allclose(scores, [[1.0]], atol=1e-6)


def test_remove():
    x, ids = _data(n=10, d=4)
    index = EmbeddingIndex(4, "cosine")
    index.add(x, ids)
    assert index.remove(["item-0", "item-5", "unknown"]) == 2
    assert index.remove(["item-0"]) == 0
    assert len(index) == 8 and "item-5" not in index
    _, found = index.search(x, k=8)
    assert not ({"item-0", "item-5"} & set(found.ravel()))
    assert found[1, 0] == "item-1"
    index.add(x[:1], ["item-0"])  # may be added again after removal
    assert index.search(x[:1], k=1)[1][0, 0] == "item-0"


def test_padding_when_k_exceeds_size():
    x, ids = _data(n=3, d=4)
    for metric, worst in (("cosine", -np.inf), ("l2", np.inf)):
        index = EmbeddingIndex(4, metric)
        index.add(x, ids)
        scores, found = index.search(x[:2], k=5)
        assert found.shape == (2, 5)
        assert all(v is None for v in found[:, 3:].ravel())
        assert np.all(scores[:, 3:] == worst)
        assert found[0, 0] == "item-0"


def test_empty_index_search():
    index = EmbeddingIndex(4)
    scores, found = index.search(np.ones((2, 4)), k=3)
    assert found.shape == (2, 3) and all(v is None for v in found.ravel())
    assert np.all(scores == -np.inf)
    assert index.reconstruct([]).shape == (0, 4)


def test_add_errors():
    x, ids = _data(n=3, d=4)
    index = EmbeddingIndex(4)
    with pytest.raises(ValueError, match="repeated"):
        index.add(x, ["a", "b", "a"])
    with pytest.raises(ValueError, match="3 vectors but 2 ids"):
        index.add(x, ["a", "b"])
    index.add(x, ids)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(x[:1], ["item-1"])
    assert len(index) == 3
    with pytest.raises(ValueError) as info:
        index.add(np.ones((2, 5), np.float32), ["p", "q"])
    assert "4" in str(info.value) and "5" in str(info.value)
    with pytest.raises(ValueError) as info:
        index.search(np.ones((1, 7)), k=1)
    assert "4" in str(info.value) and "7" in str(info.value)
    with pytest.raises(ValueError, match="k must be"):
        index.search(x, k=0)
    with pytest.raises(ValueError, match="dim"):
        EmbeddingIndex(0)
    with pytest.raises(ValueError, match="cosine"):
        EmbeddingIndex(4, "dot")


def test_auto_factory():
    assert auto_factory(10) == ("Flat", None)
    assert auto_factory(199_999) == ("Flat", None)
    assert auto_factory(1_000_000) == ("IVF4096,Flat", 256)
    factory, nprobe = auto_factory(200_000)
    assert factory == "IVF2048,Flat" and nprobe == 128


def test_save_load_round_trip(tmp_path):
    x, ids = _data(n=30, d=6, seed=7)
    index = EmbeddingIndex(6, "cosine", metadata={"image_encoder": "enc@1"})
    index.add(x, ids)
    index.remove(["item-29"])
    path = index.save(tmp_path / "idx")
    assert sorted(p.name for p in path.iterdir()) == ["ids.parquet", "index.faiss",
                                                      "manifest.json"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["dim"] == 6 and manifest["count"] == 29 and manifest["metric"] == "cosine"
    loaded = EmbeddingIndex.load(path, dim=6, metric="cosine",
                                 metadata={"image_encoder": "enc@1"})
    assert loaded.ids == index.ids and loaded.metadata == {"image_encoder": "enc@1"}
    q = np.random.default_rng(8).normal(size=(5, 6)).astype(np.float32)
    s1, f1 = index.search(q, 7)
    s2, f2 = loaded.search(q, 7)
    np.testing.assert_array_equal(s1, s2)
    assert f1.tolist() == f2.tolist()
    # adding after loading does not reuse internal ids
    loaded.add(x[29:], ["new"])
    assert loaded.search(x[29:], 1)[1][0, 0] == "new"
    assert loaded.search(x[:1], 1)[1][0, 0] == "item-0"


def test_save_load_empty_index(tmp_path):
    EmbeddingIndex(3, "l2").save(tmp_path / "e")
    loaded = EmbeddingIndex.load(tmp_path / "e")
    assert len(loaded) == 0 and loaded.metric.value == "l2"
    loaded.add(np.eye(3), ["a", "b", "c"])
    assert loaded.search(np.eye(3)[:1], 1)[1][0, 0] == "a"


def test_load_checks_expectations(tmp_path):
    index = EmbeddingIndex(4, "cosine", metadata={"text_encoder": "minilm"})
    index.add(np.eye(4), list("abcd"))
    index.save(tmp_path / "idx")
    with pytest.raises(ConfigMismatchError, match="dim=4, expected 8"):
        EmbeddingIndex.load(tmp_path / "idx", dim=8)
    with pytest.raises(ConfigMismatchError, match="metric='cosine', expected 'l2'"):
        EmbeddingIndex.load(tmp_path / "idx", metric="l2")
    with pytest.raises(ConfigMismatchError) as info:
        EmbeddingIndex.load(tmp_path / "idx", metadata={"text_encoder": "other"})
    assert "'minilm'" in str(info.value) and "'other'" in str(info.value)
    with pytest.raises(ConfigMismatchError):
        EmbeddingIndex.load(tmp_path / "idx", metadata={"image_encoder": "x"})
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.load(tmp_path / "nothing")


def test_load_refuses_newer_format_and_inconsistent_files(tmp_path):
    index = EmbeddingIndex(4)
    index.add(np.eye(4), list("abcd"))
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ConfigMismatchError, match="newer"):
        EmbeddingIndex.load(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "dim": 5}))
    with pytest.raises(ConfigMismatchError, match=r"index\.faiss has dim 4"):
        EmbeddingIndex.load(path)


def test_atomic_save_keeps_previous_index_when_writing_fails(tmp_path, monkeypatch):
    import faiss

    x, ids = _data(n=5, d=4)
    index = EmbeddingIndex(4)
    index.add(x, ids)
    path = index.save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    index.add(x[:1] + 1, ["extra"])

    def broken_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        index.save(path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp folders left
    assert len(EmbeddingIndex.load(path)) == 5


def test_auto_search_factory_goes_approximate_only_for_large_vector_tables():
    from mmmatch.index import auto_factory

    assert auto_factory(100_000, 300, search=True) == ("Flat", None)  # 30M floats
    assert auto_factory(100_000, 1664, search=True) == ("IVF1024,SQfp16", 64)  # 666 MB
    assert auto_factory(500, 100_000, search=True) == ("Flat", None)  # too few to cluster
    assert auto_factory(100_000, 1664) == ("Flat", None)  # matching keeps exact search
    assert auto_factory(1_000_000)[0] == "IVF4096,Flat"


def test_half_precision_ivf_adds_removes_reconstructs_and_round_trips(tmp_path):
    from mmmatch.index import EmbeddingIndex

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(len(x))]
    index = EmbeddingIndex(32, "cosine", factory="IVF16,SQfp16", nprobe=16)
    index.add(x, ids)
    _, got = index.search(x[:50], 1)
    assert got[:, 0].tolist() == ids[:50]  # every list searched: exact up to fp16
    np.testing.assert_allclose(index.reconstruct(ids[:5]), x[:5], atol=2e-3)
    assert index.remove(["v0", "v1"]) == 2 and "v0" not in index
    index.save(tmp_path / "ivf")
    again = EmbeddingIndex.load(tmp_path / "ivf")
    _, got2 = again.search(x[2:10], 1)
    assert got2[:, 0].tolist() == ids[2:10] and len(again) == 1998


def test_shortlist_factory_pairs_with_the_half_precision_ivf_only():
    from mmmatch.index import shortlist_factory

    assert shortlist_factory("IVF1024,SQfp16", 1664) == ("IVF1024,PQ416x4fs", 128)
    assert shortlist_factory("IVF4096,SQfp16", 1664) == ("IVF4096,PQ416x4fs", 512)
    assert shortlist_factory("IVF1024,SQfp16", 1660) is None  # 4-dim codes cannot pair up
    assert shortlist_factory("Flat", 1664) is None
    assert shortlist_factory("IVF1024,Flat", 1664) is None


def _clustered(n, d, seed):
    """Vectors around 40 centres (as embeddings are), L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    x = centres[rng.integers(40, size=n)] + 0.4 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_auto_search_shortlist_rescores_exactly_and_keeps_changes(tmp_path, monkeypatch, metric):
    import mmmatch.index as index_module

    monkeypatch.setattr(index_module, "SEARCH_FLAT_FLOATS", 1000)  # go approximate early
    x = _clustered(3000, 32, seed=5)
    q = _clustered(40, 32, seed=6)
    ids = [f"v{i}" for i in range(len(x))]
    _, ref_order = _brute(x, q, metric, 10)
    truth = [{ids[j] for j in row} for row in ref_order]
    recalls = []
    for k_factor in (1, 32):  # 1: the 4-bit codes' own ranking; 32: 320 re-scored
        index = EmbeddingIndex(32, metric, factory="auto-search", k_factor=k_factor)
        index.add(x, ids)
        scores, found = index.search(q, k=10)
        recalls.append(np.mean([len(set(r) & t) / 10 for r, t in zip(found, truth, strict=True)]))
    assert index._resolved_factory == "IVF256,SQfp16"
    assert index._shortlist_factory == "IVF256,PQ8x4fs"
    assert recalls[1] > 0.9 and recalls[1] > recalls[0] + 0.3
    # the scores are the stored vectors' exact ones (fp16), best first, not the 4-bit codes'
    pos = np.array([[int(i[1:]) for i in row] for row in found])
    xs = x[pos]
    exact = (((q[:, None] - xs) ** 2).sum(-1) if metric == "l2"
             else np.einsum("qd,qkd->qk", q, xs))
    np.testing.assert_allclose(scores, exact, atol=3e-3)
    assert (np.diff(scores, axis=1) >= -1e-6 if metric == "l2"
            else np.diff(scores, axis=1) <= 1e-6).all()
    # removed ids leave both structures; the shortlist travels with the saved index
    gone = [found[0, 0], found[1, 0]]
    assert index.remove(gone) == 2
    _, after = index.search(q[:2], k=10)
    assert not set(gone) & set(after.ravel())
    index.save(tmp_path / "idx")
    again = EmbeddingIndex.load(tmp_path / "idx")
    assert again._shortlist is not None and again._shortlist.ntotal == len(x) - 2
    _, f2 = again.search(q, k=10)
    _, f1 = index.search(q, k=10)
    assert f2.tolist() == f1.tolist()


def test_shortlist_pads_when_k_exceeds_the_candidates(monkeypatch):
    import mmmatch.index as index_module

    monkeypatch.setattr(index_module, "SEARCH_FLAT_FLOATS", 1000)
    x = _clustered(1100, 16, seed=7)
    index = EmbeddingIndex(16, "cosine", factory="auto-search", k_factor=1)
    index.add(x, [f"v{i}" for i in range(len(x))])
    index.remove([f"v{i}" for i in range(1, 1100)])  # one vector left
    scores, found = index.search(x[:2], k=3)
    assert found[:, 0].tolist() == ["v0", "v0"]
    assert (found[:, 1:] == None).all() and np.isneginf(scores[:, 1:]).all()  # noqa: E711


def test_load_refuses_a_manifest_whose_shortlist_file_is_missing(tmp_path, monkeypatch):
    import mmmatch.index as index_module

    monkeypatch.setattr(index_module, "SEARCH_FLAT_FLOATS", 1000)
    x = _clustered(1100, 16, seed=8)
    index = EmbeddingIndex(16, "cosine", factory="auto-search")
    index.add(x, [f"v{i}" for i in range(len(x))])
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "shortlist.faiss").unlink()
    with pytest.raises(ConfigMismatchError, match=r"shortlist\.faiss is missing"):
        EmbeddingIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("approximate", [False, True])
def test_search_with_vectors_gives_the_stored_vectors_of_the_hits(monkeypatch, approximate):
    import mmmatch.index as index_module

    if approximate:
        monkeypatch.setattr(index_module, "SEARCH_FLAT_FLOATS", 1000)
    x = _clustered(1100, 16, seed=9)
    ids = [f"v{i}" for i in range(len(x))]
    index = EmbeddingIndex(16, "cosine", factory="auto-search")
    index.add(x, ids)
    assert (index._shortlist is not None) == approximate
    scores, found, vecs = index.search_with_vectors(x[:5], k=4)
    plain_scores, plain_found = index.search(x[:5], k=4)
    assert found.tolist() == plain_found.tolist()
    np.testing.assert_array_equal(scores, plain_scores)
    assert vecs.shape == (5, 4, 16) and vecs.dtype == np.float32
    for row in range(5):
        np.testing.assert_array_equal(vecs[row], index.reconstruct(found[row].tolist()))
    index.remove(ids[2:])  # two left: padding rows are zero
    _, found, vecs = index.search_with_vectors(x[:1], k=4)
    assert (found[0, 2:] == None).all() and not vecs[0, 2:].any()  # noqa: E711
    np.testing.assert_array_equal(vecs[0, :2], index.reconstruct(found[0, :2].tolist()))
