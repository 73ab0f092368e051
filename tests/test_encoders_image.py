"""Image encoders: EfficientNet-Lite presets, Hugging Face vision models, preprocessing."""

import numpy as np
import pytest
from conftest import draw_image
from PIL import Image, ImageDraw

from mmmatch.encoders import HFImageEncoder, get_encoder
from mmmatch.encoders.image import ImagePreprocess, preprocess_from_hf

# -- ImagePreprocess ---------------------------------------------------------------------------


def test_preprocess_shorter_side_then_centre_crop():
    # left third red, middle green, right third blue; 300x100 -> 672x224 -> crop the middle
    img = Image.new("RGB", (300, 100), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 100, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    pre = ImagePreprocess(mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear")
    x = pre(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 112, 112], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(x[:, :, 10:-10].mean(axis=(1, 2)), [0, 1, 0], atol=1e-3)


def test_preprocess_resize_to_larger_than_crop():
    pre = ImagePreprocess(size=(32, 48), resize="shorter", resize_to=64)
    assert pre(Image.new("RGB", (100, 200))).shape == (3, 32, 48)


def test_preprocess_squash():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    pre = ImagePreprocess(size=(20, 30), resize="squash", mean=(0.5,) * 3, std=(0.5,) * 3)
    x = pre(img)
    assert x.shape == (3, 20, 30)
    np.testing.assert_allclose(x[:, 5, 5], [1, -1, -1], atol=1e-5)


def test_preprocess_round_trip_and_draft_size():
    pre = ImagePreprocess(size=(224, 224), resize="shorter", resize_to=256)
    again = ImagePreprocess.from_dict(pre.to_dict())
    assert again == pre
    assert isinstance(again.mean, tuple)
    assert pre.draft_size == 256
    assert ImagePreprocess(size=(32, 40), resize="squash").draft_size == 40


def test_preprocess_from_hf_clip_style():
    cfg = {
        "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True, "image_mean": [0.48, 0.46, 0.41],
        "image_std": [0.27, 0.26, 0.28], "resample": 3,
    }
    pre = preprocess_from_hf(cfg)
    assert pre == ImagePreprocess(
        (224, 224), "shorter", 256, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "bicubic"
    )


def test_preprocess_from_hf_vit_style():
    cfg = {"size": {"height": 384, "width": 384}, "image_mean": [0.5, 0.5, 0.5],
           "image_std": [0.5, 0.5, 0.5], "resample": 2, "do_center_crop": False}
    pre = preprocess_from_hf(cfg)
    assert pre == ImagePreprocess(
        (384, 384), "squash", (384, 384), (0.5,) * 3, (0.5,) * 3, "bilinear"
    )


def test_preprocess_from_hf_other_layouts():
    assert preprocess_from_hf({"size": 224}).size == (224, 224)
    assert preprocess_from_hf({"size": 224}).resize == "shorter"
    convnext = preprocess_from_hf({"size": {"shortest_edge": 224}, "crop_pct": 0.875})
    assert (convnext.size, convnext.resize_to) == ((224, 224), 256)
    # crop_size only applies when do_center_crop is set
    no_crop = preprocess_from_hf({"size": {"shortest_edge": 256},
                                  "crop_size": {"height": 224, "width": 224}})
    assert no_crop.size == (256, 256)
    gray = preprocess_from_hf({"image_mean": [0.5], "image_std": [0.25]})
    assert gray.mean == (0.5,) * 3 and gray.std == (0.25,) * 3
    assert gray.size == (224, 224) and gray.resize == "squash"


# -- EfficientNet-Lite ---------------------------------------------------------------------


def _pictures(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((90 + 10 * i, 120, 3)) * 255).astype(np.uint8))
            for i in range(n)]


def test_efficientnet_lite_preprocessing_constants(image_encoder):
    pre = image_encoder.preprocess
    assert pre.size == (224, 224) and pre.resize == "shorter" and pre.resize_to == 256
    np.testing.assert_allclose(pre.mean, [127 / 255] * 3)
    np.testing.assert_allclose(pre.std, [128 / 255] * 3)


def test_efficientnet_lite_preprocessing_formula(image_encoder):
    rng = np.random.default_rng(0)
    # 256 = 224 / 0.875: no resize, so the result is the centre crop, scaled
    arr = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    x = image_encoder.preprocess(Image.fromarray(arr))
    crop = arr[16:240, 16:240]
    expected = (crop.astype(np.float32).transpose(2, 0, 1) - 127.0) / 128.0
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_efficientnet_lite_output(image_encoder):
    images = _pictures(3)
    out = image_encoder.encode(images)
    assert out.shape == (3, 1280) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out, image_encoder.encode(images))  # deterministic
    pixels = np.stack([image_encoder.preprocess(im) for im in images])
    np.testing.assert_allclose(image_encoder.encode_pixels(pixels), out, atol=1e-6)
    assert image_encoder.encoder_id.startswith("efficientnet-lite0@")
    assert image_encoder.weights_path.exists()


def test_efficientnet_lite_batching_does_not_change_results(image_encoder, monkeypatch):
    images = _pictures(3, seed=1)
    whole = image_encoder.encode(images)
    monkeypatch.setattr(image_encoder, "batch_size", 2)
    np.testing.assert_allclose(image_encoder.encode(images), whole, atol=1e-5)


def test_efficientnet_lite_classifies_sample_photos(image_encoder):
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    by_name = {p.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]: im
               for p, im in zip(photos.filenames, photos.images, strict=True)}
    pixels = np.stack([image_encoder.preprocess(Image.fromarray(by_name[n]))
                       for n in ("china.jpg", "flower.jpg")])
    logits = image_encoder.classify(pixels)
    assert logits.shape == (2, 1000)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert 698 in top5[0]  # palace
    assert top5[1, 0] == 985  # daisy


def test_efficientnet_unknown_variant():
    from mmmatch.encoders.image import EfficientNetLiteEncoder

    with pytest.raises(ValueError, match="efficientnet-lite0"):
        EfficientNetLiteEncoder("efficientnet-lite7")


# -- Hugging Face vision models ---------------------------------------------------------------


def test_hf_vit_from_folder(hf_vit_dir):
    enc = get_encoder(str(hf_vit_dir))
    assert isinstance(enc, HFImageEncoder)
    assert enc.modality == "image" and enc.dim == 32
    assert enc.preprocess == ImagePreprocess((32, 32), "squash", (32, 32), (0.5,) * 3,
                                             (0.5,) * 3, "bilinear")
    assert enc.encoder_id.startswith(f"hf-image:{hf_vit_dir}@")
    assert enc.config() == {"name": str(hf_vit_dir)}
    images = _pictures(3, seed=2)
    out = enc.encode(images)
    assert out.shape == (3, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out, enc.encode(images))
    assert not np.allclose(out[0], out[1])


def test_hf_vit_matches_transformers_reference(hf_vit_dir):
    import torch
    from transformers import AutoImageProcessor, ViTModel

    enc = get_encoder(str(hf_vit_dir))
    images = [im.resize((32, 32)) for im in _pictures(2, seed=3)]
    processor = AutoImageProcessor.from_pretrained(str(hf_vit_dir))
    model = ViTModel.from_pretrained(str(hf_vit_dir)).eval()
    with torch.inference_mode():
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        ref = torch.nn.functional.normalize(model(pixel_values=pixel_values).pooler_output, dim=1)
    np.testing.assert_allclose(enc.encode(images), ref.numpy(), atol=1e-4)


def test_hf_encoder_id_changes_with_weights(tmp_path, hf_vit_dir):
    import shutil

    copy = tmp_path / "vit-copy"
    shutil.copytree(hf_vit_dir, copy)
    enc = get_encoder(str(copy))
    assert enc.encoder_id != get_encoder(str(hf_vit_dir)).encoder_id  # another folder
    assert enc.encoder_id.split("@")[1] == get_encoder(str(hf_vit_dir)).encoder_id.split("@")[1]


def _shapes_picture(w, h):
    img = Image.new("RGB", (w, h), (250, 250, 250))
    d = ImageDraw.Draw(img)
    for i, color in enumerate([(200, 30, 30), (30, 160, 60), (40, 60, 200), (230, 200, 20)]):
        d.rectangle((i * w // 4, 0, i * w // 4 + w // 10, h - 1), fill=color)
        d.ellipse((i * w // 4 + 10, h // 3, i * w // 4 + 60, h // 3 + 50), fill=color[::-1])
    return img


def _hf_processors():
    """Image processors as their checkpoints configure them (built here, nothing downloaded)."""
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        ConvNextImageProcessor,
        DeiTImageProcessor,
        ViTImageProcessor,
    )

    return {
        "vit-224": lambda: ViTImageProcessor(),
        "vit-32": lambda: ViTImageProcessor(size={"height": 32, "width": 32}),
        "clip": lambda: CLIPImageProcessor(),
        "dinov2": lambda: BitImageProcessor(size={"shortest_edge": 256},
                                            crop_size={"height": 224, "width": 224}),
        "convnext-224": lambda: ConvNextImageProcessor(size={"shortest_edge": 224}),
        "convnext-384": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}),
        "deit": lambda: DeiTImageProcessor(),
    }


@pytest.mark.parametrize(
    "name",
    [
        "vit-224", "vit-32", "dinov2", "convnext-224",
        "clip",
        "convnext-384",
        "deit",
    ],
)
def test_preprocess_from_hf_matches_the_processor(name, tmp_path):
    from transformers import AutoImageProcessor

    # saved and reloaded the way HFImageEncoder loads it (the PIL-based processor)
    _hf_processors()[name]().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(str(tmp_path), use_fast=False)
    pre = preprocess_from_hf(processor.to_dict())
    img = _shapes_picture(320, 240)  # edges near the border, so crops show
    ours = pre(img)
    ref = np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0])
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).mean() < 1e-4


def test_hf_clip_uses_projected_image_features(tmp_path):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32,
                     "max_position_embeddings": 16},
        vision_config={"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32, "image_size": 32, "patch_size": 8},
        projection_dim=12,
    )
    model = CLIPModel(config).eval()
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    enc = get_encoder(str(folder))
    assert enc.dim == 12
    assert enc.preprocess.resize == "shorter" and enc.preprocess.size == (32, 32)
    images = _pictures(2, seed=4)
    out = enc.encode(images)
    assert out.shape == (2, 12)
    pixels = torch.from_numpy(np.stack([enc.preprocess(im) for im in images]))
    with torch.inference_mode():
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        ref = torch.nn.functional.normalize(model.visual_projection(pooled), dim=1)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


def test_encoder_id_changes_with_preprocessing(image_encoder, monkeypatch):
    """The id keys the embedding cache: other preprocessing must never reuse old vectors."""
    import dataclasses

    before = image_encoder.encoder_id
    monkeypatch.setattr(
        image_encoder, "preprocess", dataclasses.replace(image_encoder.preprocess, resize_to=224)
    )
    assert image_encoder.encoder_id != before
    assert image_encoder.encoder_id.split("/")[0] == before.split("/")[0]  # same weights


def test_efficientnet_lite_fast_path_equals_eager_model(image_encoder):
    """The frozen channels-last micro-batched graph must give the eager model's features."""
    import torch

    pixels = np.stack([image_encoder.preprocess(im) for im in _pictures(11, seed=3)])
    fast = image_encoder.encode_pixels(pixels)
    with torch.inference_mode():
        eager = image_encoder.model.extract_features(torch.from_numpy(pixels)).mean(dim=(2, 3))
    eager = torch.nn.functional.normalize(eager, dim=1).numpy()
    np.testing.assert_allclose(fast, eager, atol=1e-4)


def test_preprocess_halves_compose(image_encoder):
    img = _pictures(1, seed=4)[0]
    pre = image_encoder.preprocess
    np.testing.assert_array_equal(pre(img), pre.normalize(pre.geometry(img)[None])[0])


def test_encode_uint8_equals_encode_pixels(image_encoder):
    pre = image_encoder.preprocess
    crops = np.stack([pre.geometry(im) for im in _pictures(5, seed=5)])
    np.testing.assert_allclose(image_encoder.encode_uint8(crops),
                               image_encoder.encode_pixels(pre.normalize(crops)), atol=1e-5)


def test_ensemble_concatenates_members_at_their_own_sizes(image_encoder):
    from mmmatch.encoders import EnsembleImageEncoder, get_encoder

    ens = get_encoder("efficientnet-lite0+efficientnet-lite0", "image")
    assert isinstance(ens, EnsembleImageEncoder)
    assert ens.dim == 2 * image_encoder.dim
    assert ens.encoder_id == f"{image_encoder.encoder_id}+{image_encoder.encoder_id}"
    img = draw_image(3, (120, 100))
    got = ens.encode([img])
    single = image_encoder.encode([img])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # same-size members see the very pixels the single encoder sees
    np.testing.assert_allclose(got[:, :1280] * np.sqrt(2), single, atol=1e-5)
    np.testing.assert_allclose(got[:, 1280:] * np.sqrt(2), single, atol=1e-5)


def test_ensemble_resizes_for_smaller_members(image_encoder):
    from mmmatch.encoders import get_encoder

    ens = get_encoder("efficientnet-lite2+efficientnet-lite0", "image")
    assert tuple(ens.preprocess.size) == (260, 260)  # decoded once, at the largest member
    pixels = np.stack([ens.preprocess.geometry(draw_image(s, (140, 120))) for s in range(2)])
    out = ens.encode_uint8(pixels)
    assert out.shape == (2, 2560) and np.isfinite(out).all()
    lite0_part = out[:, 1280:] * np.sqrt(2)
    direct = image_encoder.encode([draw_image(s, (140, 120)) for s in range(2)])
    cos = np.sum(lite0_part * direct, axis=1)
    assert (cos > 0.8).all()  # resized crop of the larger geometry: close, not identical


def test_ensemble_needs_two_members(image_encoder):
    from mmmatch.encoders import EnsembleImageEncoder

    with pytest.raises(ValueError, match="two or more"):
        EnsembleImageEncoder([image_encoder])


def test_geometry_of_a_sliver_keeps_the_centre_without_resizing_it_all():
    import mmmatch.encoders.image as image_mod
    from mmmatch.encoders.image import ImagePreprocess

    pre = ImagePreprocess(size=(224, 224), resize="shorter", resize_to=256)
    rng = np.random.default_rng(0)
    sliver = Image.fromarray(rng.integers(0, 255, (400, 10, 3), dtype=np.uint8))
    got = pre.geometry(sliver)
    old = image_mod._MAX_STRETCH
    try:
        image_mod._MAX_STRETCH = 10**9  # the plain path: resize everything, then crop
        want = pre.geometry(sliver)
    finally:
        image_mod._MAX_STRETCH = old
    assert got.shape == want.shape == (224, 224, 3)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 8  # pixel noise: a sub-pixel rounding shift
    # a 1 x 40,000 px image (allowed by the pixel limit) stays cheap
    huge = Image.new("RGB", (1, 40_000), (200, 10, 10))
    assert pre.geometry(huge).shape == (224, 224, 3)
