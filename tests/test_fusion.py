import numpy as np
import pytest

from mmmatch.encode import EncodedCatalogue
from mmmatch.fusion import ConcatFusion, FusionWeights, fuse


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_weights_validation_and_dict():
    assert FusionWeights().to_dict() == {"image": 0.5, "text": 0.5}
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
