import numpy as np
import pytest
from conftest import HashTextEncoder, TinyImageEncoder

from mmmatch.augment import ImageAugment, TextAugment
from mmmatch.cache import EmbeddingCache
from mmmatch.encode import encode_images, encode_texts
from mmmatch.views import AugmentedView, embed_views, image_views, text_views

AUG = ImageAugment.camera()
TEXT_AUG = TextAugment.query(token_drop=0.3, case_p=0.8)  # strong: views of a title differ
TITLES = ["Nordika Oat Drink Vanilla 1 l", "Solvang Orange Juice Original 500 ml",
          "Brio Greek Yoghurt Strawberry 400 g", "", "Kelda Granola Chocolate 750 g"]


@pytest.fixture
def images(make_jpeg, tmp_path):
    """Four image references: three pictures (one twice) and a corrupt file, plus None."""
    a, b, c = (make_jpeg(f"{i}.jpg", seed=i) for i in range(3))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    return [str(a), str(b), str(bad), None, str(c), str(a)]


def test_view_zero_is_the_plain_embedding(images):
    enc = TinyImageEncoder()
    emb, ok = image_views(images, enc, AUG, n_views=3, seed=0)
    plain, plain_ok, _ = encode_images(images, TinyImageEncoder())
    assert emb.shape == (6, 3, enc.dim) and emb.dtype == np.float32 and ok.shape == (6, 3)
    np.testing.assert_array_equal(emb[:, 0], plain)
    np.testing.assert_array_equal(ok[:, 0], plain_ok)


def test_views_differ_and_are_normalised(images):
    emb, ok = image_views(images, TinyImageEncoder(), AUG, n_views=3, seed=0)
    good = [0, 1, 4, 5]
    assert ok[good].all()
    np.testing.assert_allclose(np.linalg.norm(emb[good], axis=2), 1, atol=1e-5)
    for i in good:
        for u, v in ((0, 1), (0, 2), (1, 2)):
            assert np.abs(emb[i, u] - emb[i, v]).max() > 1e-3
    # a view is a function of the content: the same picture twice has the same views
    np.testing.assert_array_equal(emb[0], emb[5])
    # another seed, other views (view 0 unchanged)
    other, _ = image_views(images, TinyImageEncoder(), AUG, n_views=3, seed=1)
    np.testing.assert_array_equal(other[:, 0], emb[:, 0])
    assert np.abs(other[good, 1:] - emb[good, 1:]).max() > 1e-3


def test_views_are_deterministic_and_independent_of_row_order(images):
    emb, ok = image_views(images, TinyImageEncoder(), AUG, n_views=3, seed=7)
    again, ok2 = image_views(images, TinyImageEncoder(), AUG, n_views=3, seed=7)
    np.testing.assert_array_equal(emb, again)
    np.testing.assert_array_equal(ok, ok2)
    order = np.array([4, 2, 0, 3, 1])
    shuffled, ok3 = image_views([images[i] for i in order], TinyImageEncoder(), AUG, 3, 7)
    np.testing.assert_array_equal(shuffled, emb[order])
    np.testing.assert_array_equal(ok3, ok[order])


def test_bad_and_missing_images_are_not_ok_in_any_view(images):
    emb, ok = image_views(images, TinyImageEncoder(), AUG, n_views=3, seed=0)
    assert not ok[2].any() and not ok[3].any()
    np.testing.assert_array_equal(emb[[2, 3]], 0)


def test_image_views_are_cached(images, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    enc = TinyImageEncoder()
    first, ok = image_views(images, enc, AUG, n_views=3, seed=0, cache=cache)
    embedded = enc.images_embedded
    assert embedded == 3 * 3  # 3 distinct readable pictures x 3 views
    second, ok2 = image_views(images, enc, AUG, n_views=3, seed=0, cache=cache)
    assert enc.images_embedded == embedded  # nothing embedded again
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(ok, ok2)
    # another seed is another cache entry for views 1.. only (view 0 is shared)
    image_views(images, enc, AUG, n_views=3, seed=1, cache=cache)
    assert enc.images_embedded == embedded + 3 * 2
    cache.close()


def test_augmented_view_encoder_id():
    enc = TinyImageEncoder()
    ids = {AugmentedView(enc, AUG, s, v).encoder_id for s in (0, 1) for v in (1, 2)}
    assert len(ids) == 4 and all(i.startswith("tiny-image|") for i in ids)
    assert AugmentedView(enc, AUG, 0, 1).encoder_id != AugmentedView(
        enc, ImageAugment.light(), 0, 1).encoder_id
    assert AugmentedView(enc, AUG, 0, 1).encoder_id == AugmentedView(
        TinyImageEncoder(), ImageAugment.camera(), 0, 1).encoder_id


def test_text_views():
    enc = HashTextEncoder()
    emb, ok = text_views([*TITLES, None], enc, TEXT_AUG, n_views=3, seed=0)
    assert emb.shape == (6, 3, enc.dim) and ok.shape == (6, 3)
    np.testing.assert_array_equal(emb[:, 0], encode_texts([*TITLES, ""], HashTextEncoder())
                                  * np.array([1, 1, 1, 0, 1, 0])[:, None])
    assert ok[[0, 1, 2, 4]].all()
    assert not ok[3].any() and not ok[5].any()  # empty text, no text
    np.testing.assert_array_equal(emb[[3, 5]], 0)
    # views of a title differ (from the title and from each other, for most rows)
    differ = [np.abs(emb[i, u] - emb[i, v]).max() > 1e-3
              for i in (0, 1, 2, 4) for u, v in ((0, 1), (0, 2), (1, 2))]
    assert sum(differ) >= 10
    again, _ = text_views(list(reversed(TITLES)), HashTextEncoder(), TEXT_AUG, 3, seed=0)
    np.testing.assert_array_equal(again[::-1], emb[:5])


def test_text_views_are_cached(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    enc = HashTextEncoder()
    first, _ = text_views(TITLES, enc, TEXT_AUG, 3, seed=0, cache=cache)
    seen = len(enc.seen)
    assert seen >= 4  # at least the four titles
    second, _ = text_views(TITLES, enc, TEXT_AUG, 3, seed=0, cache=cache)
    assert len(enc.seen) == seen
    np.testing.assert_array_equal(first, second)
    cache.close()


def test_view_count_checks(images):
    with pytest.raises(ValueError, match="n_views"):
        image_views(images, TinyImageEncoder(), None, n_views=2)
    with pytest.raises(ValueError, match="n_views"):
        image_views(images, TinyImageEncoder(), AUG, n_views=0)
    with pytest.raises(ValueError, match="n_views"):
        text_views(TITLES, HashTextEncoder(), None, n_views=2)
    emb, _ = image_views(images, TinyImageEncoder(), None, n_views=1)  # no augment needed
    assert emb.shape[1] == 1


def test_embed_views(images):
    titles = [*TITLES, "Tovi Peanut Butter 400 g"]
    views = embed_views(images, titles, TinyImageEncoder(), HashTextEncoder(), AUG, TEXT_AUG,
                        n_views=3, text_views_n=2, seed=0)
    assert len(views) == 6
    assert views.image.shape == (6, 3, 192) and views.text.shape == (6, 2, 16)
    np.testing.assert_array_equal(views.image_ok[:, 0], [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(views.text_ok[:, 0], [1, 1, 1, 0, 1, 1])
    img, _ = image_views(images, TinyImageEncoder(), AUG, 3, seed=0)
    np.testing.assert_array_equal(views.image, img)
    text_only = embed_views(None, titles, None, HashTextEncoder(), text_augment=TEXT_AUG,
                            n_views=2)
    assert text_only.image is None and text_only.image_ok.shape == (6, 1)
    assert not text_only.image_ok.any() and text_only.text.shape == (6, 2, 16)
    # texts as a numpy array, no images (how the fine-tuning path asks for the text side)
    as_array = embed_views(None, np.array(titles, dtype=object), None, HashTextEncoder(),
                           text_augment=TEXT_AUG, n_views=2)
    np.testing.assert_array_equal(as_array.text, text_only.text)
    image_only = embed_views(images, None, TinyImageEncoder(), None, AUG, n_views=2)
    assert image_only.text is None and len(image_only) == 6
