import hashlib

import numpy as np
import pytest

from mmmatch.cache import EmbeddingCache, content_key, default_cache_dir
from mmmatch.encode import encode_images, encode_texts


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MMMATCH_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MMMATCH_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "mmmatch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mmmatch"


def test_session_never_uses_the_home_cache(tmp_path_factory):
    # conftest points the default cache at a temporary folder for the whole session
    assert tmp_path_factory.getbasetemp() in default_cache_dir().parents


def test_content_key():
    assert content_key("abc") == hashlib.sha1(b"abc").hexdigest()
    assert content_key(b"abc") == content_key("abc")
    assert content_key("é") == hashlib.sha1("é".encode()).hexdigest()
    assert content_key("a") != content_key("b")


def test_put_get_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    assert cache.path == tmp_path / "c" / "embeddings.sqlite"
    vecs = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    cache.put("enc", ["k1", "k2", "k3"], vecs)
    assert len(cache) == 3
    out, found = cache.get("enc", ["k3", "missing", "k1", "k3"], dim=5)
    assert out.dtype == np.float32 and out.shape == (4, 5)
    np.testing.assert_array_equal(found, [True, False, True, True])
    np.testing.assert_array_equal(out[0], vecs[2])
    np.testing.assert_array_equal(out[1], np.zeros(5))
    np.testing.assert_array_equal(out[2], vecs[0])
    np.testing.assert_array_equal(out[3], vecs[2])
    cache.close()


def test_entries_are_per_encoder_and_width(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put("enc-a", ["k"], np.ones((1, 4), np.float32))
    assert not cache.get("enc-b", ["k"], dim=4)[1][0]
    assert not cache.get("enc-a", ["k"], dim=3)[1][0]  # stale width: a miss
    assert cache.get("enc-a", ["k"], dim=4)[1][0]


def test_put_replaces_and_persists(tmp_path):
    path = tmp_path / "emb.sqlite"
    cache = EmbeddingCache(path)
    cache.put("e", ["k"], np.zeros((1, 2), np.float32))
    cache.put("e", ["k"], np.full((1, 2), 7, np.float32))
    cache.close()
    again = EmbeddingCache(path)
    assert again.path == path
    assert len(again) == 1
    np.testing.assert_array_equal(again.get("e", ["k"], 2)[0], [[7, 7]])
    again.close()


def test_get_more_keys_than_sqlite_parameter_limit(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [f"k{i}" for i in range(2000)]
    vecs = np.arange(4000, dtype=np.float32).reshape(2000, 2)
    cache.put("e", keys, vecs)
    out, found = cache.get("e", keys[::-1], 2)
    assert found.all()
    np.testing.assert_array_equal(out, vecs[::-1])


def test_put_length_mismatch_raises(tmp_path):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError):
        cache.put("e", ["a", "b"], np.ones((3, 2), np.float32))
    assert len(cache) == 0


def test_encode_texts_reuses_cache(tmp_path, text_encoder, counting):
    cache = EmbeddingCache(tmp_path)
    enc = counting(text_encoder)
    texts = ["oat milk 1 l", "green tea", "oat milk 1 l", "sony turntable"]
    first = encode_texts(texts, enc, cache)
    assert enc.calls == 1
    assert enc.items == 3  # the repeated text is embedded once
    np.testing.assert_array_equal(first[0], first[2])
    assert len(cache) == 3
    second = encode_texts(texts, enc, cache)
    assert enc.calls == 1 and enc.items == 3  # nothing embedded again
    np.testing.assert_array_equal(first, second)
    # a new text alone is embedded on the next call
    encode_texts(["green tea", "rooibos"], enc, cache)
    assert enc.calls == 2 and enc.items == 4


def test_encode_texts_without_cache_embeds_unique_texts_once(fake_text_encoder):
    out = encode_texts(["a", "b", "a", "a"], fake_text_encoder)
    assert fake_text_encoder.seen == ["a", "b"]
    np.testing.assert_array_equal(out[0], out[3])


def test_encode_images_reuses_cache(tmp_path, make_jpeg, image_encoder, counting):
    cache = EmbeddingCache(tmp_path / "cache")
    a = make_jpeg("a.jpg", seed=1)
    b = make_jpeg("b.jpg", seed=2)
    a_copy = make_jpeg("copy/a.jpg", seed=1)  # same bytes under another name
    enc = counting(image_encoder)
    refs = [str(a), str(b), str(a_copy), None]
    first, ok, errors = encode_images(refs, enc, cache=cache, num_workers=2)
    assert errors == {}
    np.testing.assert_array_equal(ok, [True, True, True, False])
    assert enc.items == 2  # identical bytes embedded once
    np.testing.assert_array_equal(first[0], first[2])
    assert len(cache) == 2
    calls = enc.calls
    second, ok2, _ = encode_images(refs, enc, cache=cache, num_workers=2)
    assert enc.calls == calls and enc.items == 2
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(ok, ok2)


def test_cache_hit_matches_fresh_embedding(tmp_path, make_jpeg, fake_image_encoder):
    cache = EmbeddingCache(tmp_path / "cache")
    path = make_jpeg("a.jpg", seed=3)
    cached, _, _ = encode_images([path], fake_image_encoder, cache=cache)
    fresh, _, _ = encode_images([path], fake_image_encoder)
    hit, _, _ = encode_images([path], fake_image_encoder, cache=cache)
    np.testing.assert_array_equal(cached, fresh)
    np.testing.assert_array_equal(hit, fresh)
    assert fake_image_encoder.images_embedded == 2  # the third call was a cache hit
