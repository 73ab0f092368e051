"""Seeded image and text augmentations, and deterministic per-item views."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmmatch.augment import (
    DEFAULT_ABBREVIATIONS,
    ImageAugment,
    TextAugment,
    augment_view,
    augmented_views,
    stable_hash,
    view_rng,
)


def _photo(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A product-like picture: white background, coloured shapes with edges, some texture."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((w // 5, h // 6, w // 2, h - h // 6), fill=(200, 30, 40))
    d.ellipse((w // 2, h // 4, w - w // 8, h - h // 4), fill=(20, 90, 200))
    d.line((0, 0, w, h), fill=(10, 160, 60), width=3)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- images -----------------------------------------------------------------------------------


def test_none_is_identity_and_returns_a_new_image():
    img = _photo()
    out = ImageAugment.none()(img, _rng())
    assert out is not img
    assert out.mode == "RGB" and out.size == img.size
    np.testing.assert_array_equal(_px(out), _px(img))


@pytest.mark.parametrize("preset", ["camera", "light", "none"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_presets_keep_size_and_return_rgb(preset, mode):
    img = _photo(1).convert(mode)
    aug = getattr(ImageAugment, preset)()
    for seed in range(3):
        out = aug(img, _rng(seed))
        assert out.mode == "RGB"
        assert out.size == img.size


@pytest.mark.parametrize("preset", ["camera", "none"])
def test_output_size(preset):
    img = _photo(size=(80, 40))
    out = getattr(ImageAugment, preset)(output_size=(32, 24))(img, _rng())
    assert out.size == (32, 24) and out.mode == "RGB"


def test_none_with_output_size_centre_crops_to_the_aspect():
    # left half red, right half blue, 80x40 -> square: the centre crop shows both, unsquashed
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (40, 0, 80, 40))
    out = _px(ImageAugment.none(output_size=(20, 20))(img, _rng()))
    assert out[10, 2, 0] > 200 and out[10, 17, 2] > 200
    assert out[10, 2, 2] < 50 and out[10, 17, 0] < 50


# each single transform, with its probability (or strength) on, changes the image; the same
# settings with the probability at 0 change nothing
SINGLE = [
    ({"flip": 1.0}, {"flip": 0.0}),
    ({"jitter_p": 1.0, "brightness": 0.5}, {"jitter_p": 0.0, "brightness": 0.5}),
    ({"jitter_p": 1.0, "contrast": 0.5}, {"jitter_p": 0.0, "contrast": 0.5}),
    ({"jitter_p": 1.0, "saturation": 0.5}, {"jitter_p": 0.0, "saturation": 0.5}),
    ({"jitter_p": 1.0, "hue": 0.3}, {"jitter_p": 0.0, "hue": 0.3}),
    ({"blur_p": 1.0, "blur_radius": (1.0, 2.0)}, {"blur_p": 0.0, "blur_radius": (1.0, 2.0)}),
    ({"jpeg_p": 1.0, "jpeg_quality": (10, 30)}, {"jpeg_p": 0.0, "jpeg_quality": (10, 30)}),
    (
        {"perspective_p": 1.0, "perspective_distortion": 0.4},
        {"perspective_p": 0.0, "perspective_distortion": 0.4},
    ),
    ({"rotation": 20.0}, {"rotation": 0.0}),
    ({"crop_scale": (0.4, 0.6)}, {"crop_scale": (1.0, 1.0)}),
    ({"crop_ratio": (0.6, 0.7)}, {"crop_ratio": (1.0, 1.0)}),
]


@pytest.mark.parametrize(("on", "off"), SINGLE, ids=[next(iter(on)) for on, _ in SINGLE])
def test_each_transform_alone(on, off):
    img = _photo(2)
    for seed in range(3):
        changed = ImageAugment.none(**on)(img, _rng(seed))
        assert changed.size == img.size and changed.mode == "RGB"
        assert np.abs(_px(changed) - _px(img)).mean() > 0.5, (on, seed)
        same = ImageAugment.none(**off)(img, _rng(seed))
        np.testing.assert_array_equal(_px(same), _px(img))


def test_flip_mirrors_exactly():
    img = _photo(3)
    out = ImageAugment.none(flip=1.0)(img, _rng())
    np.testing.assert_array_equal(_px(out), _px(img)[:, ::-1])


def test_hue_shift_turns_red_away_from_red():
    img = Image.new("RGB", (8, 8), (220, 20, 20))
    out = _px(ImageAugment.none(jitter_p=1.0, hue=0.5)(img, _rng(0)))
    assert out[..., 0].mean() < 200 and max(out[..., 1].mean(), out[..., 2].mean()) > 60


def test_perspective_fills_uncovered_corners_with_the_background():
    img = _photo(4, size=(60, 60))
    out = _px(ImageAugment.none(perspective_p=1.0, perspective_distortion=0.9)(img, _rng(1)))
    # a corner moved well inwards: the uncovered area is near-white like the border
    corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
    assert max(c.mean() for c in corners) > 200
    assert out.shape == (60, 60, 3)


def test_jpeg_lowers_fidelity():
    img = _photo(5, size=(96, 72))

    def error(quality: int) -> float:
        aug = ImageAugment.none(jpeg_p=1.0, jpeg_quality=(quality, quality))
        return float(np.abs(_px(aug(img, _rng())) - _px(img)).mean())

    low, high = error(5), error(95)
    assert low > 2 * high > 0


def test_image_augment_is_deterministic_per_generator_state():
    img = _photo(6)
    aug = ImageAugment.camera()
    a, b = aug(img, _rng(7)), aug(img, _rng(7))
    np.testing.assert_array_equal(_px(a), _px(b))
    assert not np.array_equal(_px(a), _px(aug(img, _rng(8))))


def test_image_round_trip_through_json():
    aug = ImageAugment.light(output_size=(32, 32), rotation=5.0)
    again = ImageAugment.from_dict(json.loads(json.dumps(aug.to_dict())))
    assert again == aug
    assert isinstance(again.crop_scale, tuple) and isinstance(again.output_size, tuple)
    assert ImageAugment.from_dict(ImageAugment.none().to_dict()) == ImageAugment.none()
    assert ImageAugment() == ImageAugment.camera()
    with pytest.raises(ValueError, match="unknown fields"):
        ImageAugment.from_dict({"crop_scales": [0.5, 1.0]})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.9, 0.5)),
        ("crop_scale", (0.5, 1.5)),
        ("crop_ratio", (0.0, 1.0)),
        ("flip", 1.5),
        ("jitter_p", -0.1),
        ("brightness", 1.0),
        ("contrast", -0.2),
        ("saturation", 2.0),
        ("hue", 0.6),
        ("blur_p", 2),
        ("blur_radius", (-1.0, 1.0)),
        ("jpeg_quality", (0, 50)),
        ("jpeg_quality", (50, 101)),
        ("jpeg_quality", (30.5, 60)),
        ("perspective_distortion", 1.0),
        ("rotation", 200.0),
        ("output_size", (0, 10)),
        ("output_size", (10,)),
    ],
)
def test_invalid_image_fields(field, value):
    with pytest.raises(ValueError, match=field):
        ImageAugment(**{field: value})


# -- text -------------------------------------------------------------------------------------

TITLE = "Oat Milk Drink with Black Cap 1 Litre Package"


def test_text_none_and_empty():
    assert TextAugment.none()("  Oat  Milk ", _rng()) == "  Oat  Milk "
    for aug in (TextAugment.query(), TextAugment.light(), TextAugment(token_drop=1.0)):
        assert aug("", _rng()) == ""
        assert aug("   ", _rng()) == "   "


def test_token_drop_never_empties_the_text():
    aug = TextAugment.none(token_drop=1.0)
    for seed in range(20):
        out = aug(TITLE, _rng(seed))
        assert len(out.split()) == 1 and out in TITLE.split()
        assert aug("Milk", _rng(seed)) == "Milk"
    # partial drop keeps the survivors in their order
    half = TextAugment.none(token_drop=0.5)
    outs = [half(TITLE, _rng(seed)).split() for seed in range(20)]
    assert any(len(o) < len(TITLE.split()) for o in outs)
    for o in outs:
        positions = [TITLE.split().index(t) for t in o]
        assert positions == sorted(positions) and o


def test_abbreviations_applied_when_p_is_one():
    aug = TextAugment.none(abbreviate_p=1.0)
    assert aug(TITLE, _rng()) == "Oat Milk Drink w/ Blk Cap 1 L Pkg"
    assert aug("12 OUNCE pack, black", _rng()) == "12 OZ pk, blk"
    custom = TextAugment.none(abbreviate_p=1.0, abbreviations={"Drink": "drk"})
    assert custom(TITLE, _rng()) == TITLE.replace("Drink", "Drk")
    assert DEFAULT_ABBREVIATIONS["package"] == "pkg" and DEFAULT_ABBREVIATIONS["liter"] == "l"
    assert TextAugment.none(abbreviate_p=0.0)(TITLE, _rng()) == TITLE


def test_reorder_case_and_typos():
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    text = " ".join(words)
    for seed in range(10):
        out = TextAugment.none(reorder_p=1.0)(text, _rng(seed))
        assert out != text and sorted(out.split()) == sorted(words)
    cased = {TextAugment.none(case_p=1.0)("Oat milk DRINK", _rng(s)) for s in range(30)}
    assert cased == {"oat milk drink", "OAT MILK DRINK", "Oat Milk Drink"}
    for seed in range(10):
        typo = TextAugment.none(typo_p=1.0)(text, _rng(seed)).split()
        assert len(typo) == len(words) and typo != words
    assert TextAugment.none(typo_p=1.0)("1 L oat", _rng()) == "1 L oat"  # too short to typo


def test_text_round_trip_and_determinism():
    aug = TextAugment.light(abbreviations={"litre": "ltr"})
    again = TextAugment.from_dict(json.loads(json.dumps(aug.to_dict())))
    assert again == aug and again.abbreviations["litre"] == "ltr"
    assert TextAugment.from_dict(TextAugment().to_dict()) == TextAugment.query()
    q = TextAugment.query()
    outs = {q(TITLE, _rng(s)) for s in range(10)}
    assert len(outs) > 3
    assert q(TITLE, _rng(3)) == q(TITLE, _rng(3))


@pytest.mark.parametrize(
    ("field", "value"),
    [("token_drop", 1.1), ("reorder_p", -0.5), ("case_p", "x"), ("abbreviate_p", 3),
     ("typo_p", -1), ("abbreviations", {"a": 1})],
)
def test_invalid_text_fields(field, value):
    with pytest.raises(ValueError, match=field):
        TextAugment(**{field: value})


# -- deterministic views ----------------------------------------------------------------------


def test_stable_hash_is_fixed():
    assert stable_hash("sku-1") == 8302970441274774758  # the same in every process
    assert stable_hash(b"sku-1") == stable_hash("sku-1")
    assert stable_hash(5) == stable_hash("5") and stable_hash("a") != stable_hash("b")
    assert 0 <= stable_hash("x") < 2**63


def test_views_are_deterministic_and_order_independent():
    aug = ImageAugment.camera()
    items = {f"sku-{i}": _photo(i, size=(40, 32)) for i in range(3)}
    forward = {k: augmented_views(img, aug, 3, seed=1, key=k) for k, img in items.items()}
    backward = {
        k: augmented_views(items[k], aug, 3, seed=1, key=k) for k in reversed(list(items))
    }
    for k, views in forward.items():
        assert views[0] is items[k]
        for a, b in zip(views, backward[k], strict=True):
            np.testing.assert_array_equal(_px(a), _px(b))
        assert not np.array_equal(_px(views[1]), _px(views[2]))
        np.testing.assert_array_equal(_px(views[2]), _px(augment_view(items[k], aug, 1, k, 2)))
    # another seed or key gives another view
    one = _px(forward["sku-0"][1])
    assert not np.array_equal(one, _px(augment_view(items["sku-0"], aug, 2, "sku-0", 1)))
    assert not np.array_equal(one, _px(augment_view(items["sku-0"], aug, 1, "sku-9", 1)))


def test_text_views_and_argument_checks():
    aug = TextAugment.query()
    views = augmented_views(TITLE, aug, 4, seed=0, key="sku-1")
    assert views[0] == TITLE and len(views) == 4
    assert views == augmented_views(TITLE, aug, 4, seed=0, key="sku-1")
    assert augmented_views(TITLE, aug, 1, seed=0, key="k") == [TITLE]
    assert view_rng(0, "k", 1).random() == view_rng(0, "k", 1).random()
    with pytest.raises(ValueError, match="n_views"):
        augmented_views(TITLE, aug, 0, seed=0, key="k")
    with pytest.raises(ValueError, match="view"):
        augment_view(TITLE, aug, 0, "k", -1)
