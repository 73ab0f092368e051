import numpy as np
import pandas as pd
import pytest

from mmmatch.catalogue import load_catalogue
from mmmatch.encode import EncodedCatalogue, encode_catalogue, encode_images, encode_texts
from mmmatch.exceptions import CatalogueError
from mmmatch.images import ImageLimits, load_image


@pytest.fixture
def catalogue(tmp_path, make_jpeg):
    """Four rows: good image, missing image, bad file, no image; row 3 has no title."""
    make_jpeg("a.jpg", seed=1)
    make_jpeg("d.jpg", seed=4)
    (tmp_path / "bad.jpg").write_text("not an image")
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e"],
        "title": ["red kettle", "blue kettle", "green kettle", "", "plain text row"],
        "image": ["a.jpg", "missing.jpg", "bad.jpg", "d.jpg", None],
    })
    return load_catalogue(df, base_dir=tmp_path)


def test_encode_texts_shape_dtype_and_empty(fake_text_encoder):
    out = encode_texts(["x", "y"], fake_text_encoder)
    assert out.shape == (2, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    empty = encode_texts([], fake_text_encoder)
    assert empty.shape == (0, 16)
    assert fake_text_encoder.calls == 1


def test_encode_texts_chunks(fake_text_encoder):
    texts = [f"t{i}" for i in range(10)]
    out = encode_texts(texts, fake_text_encoder, chunk_size=3)
    assert fake_text_encoder.calls == 4
    np.testing.assert_array_equal(out, fake_text_encoder.encode(texts))


def test_encode_images_matches_direct_encoding(tmp_path, make_jpeg, image_encoder):
    a = make_jpeg("a.jpg", seed=1, size=(120, 90))
    b = make_jpeg("b.jpg", seed=2, size=(90, 120))
    out, ok, errors = encode_images([a, None, b], image_encoder, num_workers=2)
    assert errors == {}
    np.testing.assert_array_equal(ok, [True, False, True])
    assert out.shape == (3, 1280) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], np.zeros(1280))
    direct = image_encoder.encode([load_image(a), load_image(b)])
    np.testing.assert_allclose(out[[0, 2]], direct, atol=1e-5)


def test_encode_images_reports_each_bad_image(tmp_path, make_jpeg, fake_image_encoder):
    good = make_jpeg("good.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    big = make_jpeg("big.jpg", size=(400, 400))
    refs = [str(good), str(tmp_path / "none.jpg"), str(tmp_path / "text.jpg"), str(big), 7]
    out, ok, errors = encode_images(
        refs, fake_image_encoder, limits=ImageLimits(max_pixels=50_000), chunk_size=2
    )
    np.testing.assert_array_equal(ok, [True, False, False, False, False])
    assert {i: e.reason for i, e in errors.items()} == {
        1: "missing", 2: "unreadable", 3: "too_large", 4: "bad_reference"
    }
    assert np.all(out[~ok] == 0)
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1, rtol=1e-5)


def test_encode_catalogue_text_only(catalogue, fake_image_encoder, fake_text_encoder):
    enc = encode_catalogue(catalogue, fake_image_encoder, fake_text_encoder)
    assert isinstance(enc, EncodedCatalogue)
    # row d has a good image but no text; every row is kept
    assert list(enc.ids) == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(enc.image_ok, [True, False, False, True, False])
    np.testing.assert_array_equal(enc.text_ok, [True, True, True, False, True])
    assert np.all(enc.image[~enc.image_ok] == 0)
    assert np.all(enc.text[~enc.text_ok] == 0)
    probs = catalogue.problems
    assert list(probs["id"]) == ["b", "c"]
    assert list(probs["row"]) == [1, 2]
    assert list(probs["problem"]) == ["missing", "unreadable"]
    assert list(probs["action"]) == ["text_only", "text_only"]
    assert set(probs["field"]) == {"image"}
    assert "missing.jpg" in probs["detail"].iloc[0]


def test_encode_catalogue_skip(catalogue, fake_image_encoder, fake_text_encoder):
    enc = encode_catalogue(catalogue, fake_image_encoder, fake_text_encoder, on_bad_image="skip")
    assert list(enc.ids) == ["a", "d", "e"]
    np.testing.assert_array_equal(enc.catalogue.rows, [0, 3, 4])
    assert enc.image.shape[0] == enc.text.shape[0] == len(enc) == 3
    probs = catalogue.problems
    assert list(probs["id"]) == ["b", "c"]
    assert list(probs["action"]) == ["skipped", "skipped"]
    assert enc.catalogue.problems is catalogue.problems


def test_encode_catalogue_raise_names_row_and_id(
    catalogue, fake_image_encoder, fake_text_encoder
):
    with pytest.raises(CatalogueError) as info:
        encode_catalogue(catalogue, fake_image_encoder, fake_text_encoder, on_bad_image="raise")
    message = str(info.value)
    assert "row 1" in message and "'b'" in message
    assert "missing" in message and "'image'" in message
    assert "2 bad image(s)" in message


def test_raise_uses_original_row_numbers(tmp_path, make_jpeg, fake_image_encoder):
    make_jpeg("ok.jpg")
    df = pd.DataFrame({
        "id": ["empty", "ok", "broken"], "title": ["", "x", "y"],
        "image": [None, "ok.jpg", "gone.jpg"],
    })
    cat = load_catalogue(df, base_dir=tmp_path, on_empty_row="skip", name="shop.csv")
    with pytest.raises(CatalogueError, match=r"shop\.csv row 2 \(id 'broken'\)"):
        encode_catalogue(cat, fake_image_encoder, None, on_bad_image="raise")


def test_bad_image_without_text_is_skipped_even_with_text_only(
    tmp_path, fake_image_encoder, fake_text_encoder
):
    df = pd.DataFrame({"id": ["a", "b"], "title": ["", "tea"], "image": ["gone.jpg", None]})
    cat = load_catalogue(df, base_dir=tmp_path)
    enc = encode_catalogue(cat, fake_image_encoder, fake_text_encoder)
    assert list(enc.ids) == ["b"]
    assert cat.problems[["id", "problem", "action"]].values.tolist() == [
        ["a", "missing", "skipped"]
    ]


def test_rows_with_nothing_for_the_encoders(tmp_path, make_jpeg, fake_text_encoder):
    make_jpeg("a.jpg")
    df = pd.DataFrame({"id": ["a", "b"], "title": ["", "tea"], "image": ["a.jpg", None]})
    cat = load_catalogue(df, base_dir=tmp_path)
    enc = encode_catalogue(cat, None, fake_text_encoder)
    assert enc.image is None
    assert list(enc.ids) == ["b"]
    assert cat.problems["problem"].tolist() == ["nothing_to_encode"]
    assert cat.problems["action"].tolist() == ["skipped"]


def test_on_bad_image_must_be_valid(catalogue, fake_text_encoder):
    with pytest.raises(ValueError, match="on_bad_image"):
        encode_catalogue(catalogue, None, fake_text_encoder, on_bad_image="ignore")


def test_encoded_subset(catalogue, fake_image_encoder, fake_text_encoder):
    enc = encode_catalogue(catalogue, fake_image_encoder, fake_text_encoder)
    sub = enc.subset(np.array([3, 0]))
    assert list(sub.ids) == ["d", "a"]
    np.testing.assert_array_equal(sub.image, enc.image[[3, 0]])
    np.testing.assert_array_equal(sub.text_ok, enc.text_ok[[3, 0]])


def test_encode_catalogue_with_real_encoders(catalogue, image_encoder, text_encoder):
    enc = encode_catalogue(catalogue, image_encoder, text_encoder)
    assert enc.image.shape == (5, 1280) and enc.text.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(enc.image[enc.image_ok], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(enc.text[enc.text_ok], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(enc.text[0], text_encoder.encode(["red kettle"])[0], atol=1e-5)
