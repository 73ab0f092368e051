import numpy as np
import pandas as pd
import pytest
import torch

from mmmatch.catalogue import load_catalogue
from mmmatch.encode import EncodedCatalogue
from mmmatch.fusion import (
    ConcatFusion,
    EmbeddingViews,
    FusionHead,
    FusionWeights,
    embed_with_head,
    fuse,
)


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_weights_validation_and_dict():
    assert FusionWeights().to_dict() == {"image": 0.5, "text": 0.5, "learned": 0.0}
    with pytest.raises(ValueError):
        FusionWeights(image=-0.1)
    with pytest.raises(ValueError):
        FusionWeights(image=0, text=0)
    FusionWeights(image=0, text=1)  # one modality alone is fine


@pytest.mark.parametrize(("wi", "wt"), [(0.5, 0.5), (0.3, 0.9), (2.0, 1.0), (0.0, 1.0)])
def test_inner_product_of_complete_rows_is_weighted_cosine_sum(wi, wt):
    image, text = _unit(6, 7, 0), _unit(6, 5, 1)
    ok = np.ones(6, bool)
    fused = fuse(image, ok, text, ok, FusionWeights(wi, wt))
    assert fused.shape == (6, 12) and fused.dtype == np.float32
    a, b = wi / (wi + wt), wt / (wi + wt)
    expected = a * image @ image.T + b * text @ text.T
    np.testing.assert_allclose(fused @ fused.T, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)


def test_rows_missing_a_modality_keep_unit_norm():
    image, text = _unit(4, 6, 2), _unit(4, 3, 3)
    image_ok = np.array([True, False, True, False])
    text_ok = np.array([True, True, False, False])
    fused = fuse(image, image_ok, text, text_ok, FusionWeights(0.7, 0.3))
    norms = np.linalg.norm(fused, axis=1)
    np.testing.assert_allclose(norms[:3], 1, atol=1e-6)
    assert norms[3] == 0  # neither modality: all zero
    # text-only row is the text vector, image-only row the image vector
    np.testing.assert_allclose(fused[1, 6:], text[1], atol=1e-6)
    np.testing.assert_array_equal(fused[1, :6], 0)
    np.testing.assert_allclose(fused[2, :6], image[2], atol=1e-6)
    np.testing.assert_array_equal(fused[2, 6:], 0)
    # a text-only query against a complete row scores sqrt(w_text) * text cosine
    np.testing.assert_allclose(fused[1] @ fused[0], np.sqrt(0.3) * text[1] @ text[0], atol=1e-6)


def test_single_modality_inputs():
    text = _unit(3, 4, 4)
    ok = np.ones(3, bool)
    np.testing.assert_allclose(fuse(None, ok, text, ok), text, atol=1e-6)
    with pytest.raises(ValueError, match="nothing to fuse"):
        fuse(None, ok, None, ok)


def test_concat_fusion_transform():
    image, text = _unit(3, 4, 5), _unit(3, 6, 6)
    image_ok, text_ok = np.array([True, True, False]), np.ones(3, bool)
    encoded = EncodedCatalogue(None, image, image_ok, text, text_ok)
    fusion = ConcatFusion()
    assert fusion.fit(encoded) is fusion
    np.testing.assert_array_equal(fusion.transform(encoded), fuse(image, image_ok, text, text_ok))
    weighted = ConcatFusion(FusionWeights(0.9, 0.1)).transform(encoded)
    np.testing.assert_allclose(
        weighted[0] @ weighted[1], 0.9 * image[0] @ image[1] + 0.1 * text[0] @ text[1], atol=1e-6
    )


# -- learned fusion: EmbeddingViews, FusionHead, embed_with_head -------------------------------


def _views_arrays(n, v, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, v, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=2, keepdims=True)


def _head(image_dim=6, text_dim=4, dim=5, seed=0):
    torch.manual_seed(seed)
    return FusionHead(image_dim, text_dim, dim=dim, hidden=8, dropout=0.0).eval()


def test_head_output_is_normalised_b_by_dim():
    head = _head()
    image, text = _unit(7, 6, 10), _unit(7, 4, 11)
    ok = np.ones(7, bool)
    out = embed_with_head(head, image, ok, text, ok, batch_size=3)  # several batches
    assert out.shape == (7, 5) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # batching does not change the result, and the head is back in its previous mode
    whole = embed_with_head(head, image, ok, text, ok)
    np.testing.assert_allclose(out, whole, atol=1e-6)
    assert not head.training
    head.train()
    embed_with_head(head, image, ok, text, ok)
    assert head.training
    # the same as calling the module directly
    with torch.no_grad():
        direct = head.eval()(torch.from_numpy(image), torch.from_numpy(ok),
                             torch.from_numpy(text), torch.from_numpy(ok)).numpy()
    np.testing.assert_allclose(out, direct, atol=1e-6)


def test_missing_image_uses_the_learned_placeholder():
    head = _head()
    text = _unit(4, 4, 12)
    text_ok = np.ones(4, bool)
    image_ok = np.array([True, False, True, False])
    a = embed_with_head(head, _unit(4, 6, 13), image_ok, text, text_ok)
    b = embed_with_head(head, _unit(4, 6, 14) * 5, image_ok, text, text_ok)
    # rows without an image do not depend on the image values passed
    np.testing.assert_allclose(a[~image_ok], b[~image_ok], atol=1e-6)
    # rows with one do
    assert np.abs(a[image_ok] - b[image_ok]).max() > 1e-3
    # the placeholder is not the projection of a zero image
    zero = embed_with_head(head, np.zeros((4, 6), np.float32), np.ones(4, bool), text, text_ok)
    assert np.abs(a[~image_ok] - zero[~image_ok]).max() > 1e-3
    # and it is exactly the learned parameter going through the mix
    with torch.no_grad():
        pt = head.text(torch.from_numpy(text))
        pi = head.image_missing.expand(4, -1)
        want = torch.nn.functional.normalize(head.mix(torch.cat([pi, pt], 1)), dim=1).numpy()
    np.testing.assert_allclose(a[~image_ok], want[~image_ok], atol=1e-6)


def test_missing_text_uses_the_learned_placeholder():
    head = _head()
    image = _unit(3, 6, 15)
    ok = np.ones(3, bool)
    no_text = np.zeros(3, bool)
    a = embed_with_head(head, image, ok, _unit(3, 4, 16), no_text)
    b = embed_with_head(head, image, ok, None, no_text)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = embed_with_head(head, image, ok, np.zeros((3, 4), np.float32), ok)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize(("image_dim", "text_dim"), [(6, 0), (0, 4)])
def test_single_modality_heads(image_dim, text_dim):
    head = _head(image_dim, text_dim)
    assert (head.image is None) == (image_dim == 0)
    assert (head.text is None) == (text_dim == 0)
    n = 5
    image = _unit(n, 6, 17) if image_dim else None
    text = _unit(n, 4, 18) if text_dim else None
    ok = np.ones(n, bool)
    out = embed_with_head(head, image, ok if image_dim else np.zeros(n, bool), text,
                          ok if text_dim else np.zeros(n, bool))
    assert out.shape == (n, 5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-3  # rows still differ by the modality they have
    assert head.config() == {"image_dim": image_dim, "text_dim": text_dim, "dim": 5,
                             "hidden": 8, "dropout": 0.0}


def test_head_validation():
    with pytest.raises(ValueError, match="image_dim > 0 or text_dim > 0"):
        FusionHead(0, 0)
    with pytest.raises(ValueError, match="dropout"):
        FusionHead(3, 3, dropout=1.0)
    with pytest.raises(ValueError):
        FusionHead(3, 3, dim=0)


def test_embedding_views_validation():
    image, text = _views_arrays(4, 2, 3, 0), _views_arrays(4, 3, 5, 1)
    EmbeddingViews(image, np.ones((4, 2), bool), text, np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="needs image or text"):
        EmbeddingViews(None, np.ones((4, 1), bool), None, np.ones((4, 1), bool))
    with pytest.raises(ValueError, match="image: expected"):
        EmbeddingViews(image[:, 0], np.ones((4, 2), bool), text, np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="text: expected"):
        EmbeddingViews(image, np.ones((4, 2), bool), text, np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="rows"):
        EmbeddingViews(None, np.ones((3, 1), bool), text, np.ones((4, 3), bool))
    # the ok of an absent modality is still (n, V): pick() indexes its views
    with pytest.raises(ValueError, match=r"image_ok: expected \(n, V\)"):
        EmbeddingViews(None, np.ones(4, bool), text, np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="text_ok"):
        EmbeddingViews(image, np.ones((4, 2), bool), None, np.ones((4, 0), bool))


def test_embedding_views_pick_is_modulo_the_view_counts():
    image, text = _views_arrays(4, 2, 3, 2), _views_arrays(4, 3, 5, 3)
    image_ok = np.array([[True, True], [True, False], [False, False], [True, True]])
    text_ok = np.ones((4, 3), bool)
    text_ok[3, 2] = False
    views = EmbeddingViews(image, image_ok, text, text_ok)
    assert len(views) == 4
    rows = np.array([0, 1, 3, 3, 2])
    vs = np.array([0, 1, 2, 5, 3])
    img, iok, txt, tok = views.pick(rows, vs)
    for j, (r, v) in enumerate(zip(rows, vs, strict=True)):
        np.testing.assert_array_equal(img[j], image[r, v % 2])
        assert iok[j] == image_ok[r, v % 2]
        np.testing.assert_array_equal(txt[j], text[r, v % 3])
        assert tok[j] == text_ok[r, v % 3]
    img0, iok0, txt0, tok0 = views.originals()
    np.testing.assert_array_equal(img0, image[:, 0])
    np.testing.assert_array_equal(txt0, text[:, 0])
    np.testing.assert_array_equal(iok0, image_ok[:, 0])
    np.testing.assert_array_equal(tok0, text_ok[:, 0])


def test_embedding_views_concat_and_subset():
    a = EmbeddingViews(_views_arrays(3, 2, 3, 4), np.ones((3, 2), bool), None,
                       np.zeros((3, 1), bool))
    b = EmbeddingViews(_views_arrays(2, 2, 3, 5), np.array([[1, 0], [0, 0]], bool), None,
                       np.zeros((2, 1), bool))
    c = EmbeddingViews.concat([a, b])
    assert len(c) == 5 and c.text is None
    np.testing.assert_array_equal(c.image, np.concatenate([a.image, b.image]))
    np.testing.assert_array_equal(c.image_ok[3:], b.image_ok)
    s = c.subset(np.array([4, 0]))
    assert len(s) == 2 and s.text is None
    np.testing.assert_array_equal(s.image[0], b.image[1])
    np.testing.assert_array_equal(s.image[1], a.image[0])
    np.testing.assert_array_equal(s.image_ok, [[False, False], [True, True]])


def test_embedding_views_from_encoded():
    image, text = _unit(3, 4, 6), _unit(3, 2, 7)
    image_ok, text_ok = np.array([True, False, True]), np.array([True, True, False])
    cat = load_catalogue(pd.DataFrame({"id": ["a", "b", "c"], "title": ["x", "y", "z"]}))
    views = EmbeddingViews.from_encoded(EncodedCatalogue(cat, image, image_ok, text, text_ok))
    assert views.image.shape == (3, 1, 4) and views.text.shape == (3, 1, 2)
    np.testing.assert_array_equal(views.image[:, 0], image)
    np.testing.assert_array_equal(views.text_ok[:, 0], text_ok)
    text_only = EmbeddingViews.from_encoded(EncodedCatalogue(cat, None, np.zeros(3, bool),
                                                             text, text_ok))
    assert text_only.image is None and text_only.image_ok.shape == (3, 1)
    assert not text_only.image_ok.any()
