import io
import socket

import numpy as np
import pytest
from PIL import Image

from mmmatch.exceptions import ImageError
from mmmatch.images import (
    ImageLimits,
    decode_image,
    describe_ref,
    load_image,
    read_image_bytes,
)


def _reason(ref, **kwargs):
    with pytest.raises(ImageError) as info:
        load_image(ref, **kwargs)
    return info.value


def _jpeg(size=(400, 300), seed=0, quality=90) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_valid_jpeg_path(make_jpeg):
    path = make_jpeg("ok.jpg", size=(64, 48))
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (64, 48)
    assert load_image(str(path)).size == (64, 48)


def test_relative_path_resolved_against_base_dir(make_jpeg, tmp_path):
    make_jpeg("imgs/ok.jpg", size=(30, 20))
    assert load_image("imgs/ok.jpg", base_dir=tmp_path).size == (30, 20)
    err = _reason("imgs/ok.jpg", base_dir=tmp_path / "elsewhere")
    assert err.reason == "missing"
    assert err.ref == "imgs/ok.jpg"


def test_truncated_jpeg(tmp_path):
    data = _jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    err = _reason(path)
    assert err.reason == "truncated"
    assert str(path) in str(err)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is a text file, not a photo")
    assert _reason(path).reason == "unreadable"


def test_missing_file(tmp_path):
    err = _reason(tmp_path / "nope.jpg")
    assert err.reason == "missing"
    assert "nope.jpg" in err.detail


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (3000, 3000), (10, 20, 30)).save(path)
    err = _reason(path, limits=ImageLimits(max_pixels=1_000_000))
    assert err.reason == "too_large"
    assert "3000x3000" in err.detail
    # the default limit accepts it
    assert load_image(path).size == (3000, 3000)


def test_file_over_byte_limit(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg())
    assert _reason(path, limits=ImageLimits(max_bytes=100)).reason == "too_large"


@pytest.mark.parametrize("ref", [None, 3.5, "", "   "])
def test_bad_reference(ref):
    assert _reason(ref).reason == "bad_reference"


def test_bytes_refs():
    data = _jpeg(size=(40, 30))
    for ref in (data, bytearray(data), memoryview(data)):
        assert load_image(ref).size == (40, 30)
    assert read_image_bytes(data) == data
    with pytest.raises(ImageError) as info:
        read_image_bytes(data, limits=ImageLimits(max_bytes=10))
    assert info.value.reason == "too_large"
    assert info.value.ref == f"<{len(data)} bytes>"


def test_describe_ref():
    assert describe_ref(b"12345") == "<5 bytes>"
    assert describe_ref("x/y.jpg") == "x/y.jpg"


def test_read_image_bytes_returns_file_content(make_jpeg):
    path = make_jpeg("a.jpg")
    assert read_image_bytes(path) == path.read_bytes()


def test_non_rgb_images_become_rgb():
    buf = io.BytesIO()
    Image.new("RGBA", (10, 8), (255, 0, 0, 128)).save(buf, "PNG")
    img = decode_image(buf.getvalue())
    assert img.mode == "RGB" and img.size == (10, 8)
    buf = io.BytesIO()
    Image.new("L", (10, 8), 77).save(buf, "PNG")
    img = decode_image(buf.getvalue())
    assert img.mode == "RGB"
    assert img.getpixel((3, 3)) == (77, 77, 77)


@pytest.mark.parametrize("draft_size", [100, 224, 300])
def test_draft_decoding_keeps_min_side_at_least_draft_size(draft_size):
    data = _jpeg(size=(1600, 1000))
    full = decode_image(data)
    assert full.size == (1600, 1000)
    img = decode_image(data, draft_size=draft_size)
    assert min(img.size) >= draft_size
    assert img.mode == "RGB"
    assert img.size[0] < 1600  # actually decoded at a smaller scale
    # aspect ratio kept
    assert abs(img.size[0] / img.size[1] - 1.6) < 0.02


def test_draft_size_is_ignored_for_png():
    buf = io.BytesIO()
    Image.new("RGB", (800, 600)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), draft_size=100).size == (800, 600)


def test_decode_error_reasons_name_the_image():
    with pytest.raises(ImageError) as info:
        decode_image(b"\x89PNG garbage", name="thing.png")
    assert info.value.reason == "unreadable"
    assert info.value.ref == "thing.png"


# -- URLs ----------------------------------------------------------------------------------


def test_url_fetch(http_folder):
    base, folder = http_folder
    data = _jpeg(size=(50, 40))
    (folder / "p.jpg").write_bytes(data)
    assert read_image_bytes(f"{base}/p.jpg") == data
    assert load_image(f"{base}/p.jpg").size == (50, 40)


def test_url_over_byte_limit(http_folder):
    base, folder = http_folder
    data = _jpeg(size=(200, 200))
    (folder / "big.jpg").write_bytes(data)
    err = _reason(f"{base}/big.jpg", limits=ImageLimits(max_bytes=len(data) // 4))
    assert err.reason == "too_large"


def test_url_not_found(http_folder):
    base, _ = http_folder
    assert _reason(f"{base}/missing.jpg").reason == "fetch_failed"


def test_url_unreachable_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _reason(f"http://127.0.0.1:{port}/x.jpg", limits=ImageLimits(timeout_s=2))
    assert err.reason == "fetch_failed"
    assert err.ref == f"http://127.0.0.1:{port}/x.jpg"


def test_url_serving_garbage_is_unreadable(http_folder):
    base, folder = http_folder
    (folder / "x.jpg").write_text("<html>not found page</html>")
    assert _reason(f"{base}/x.jpg").reason == "unreadable"
