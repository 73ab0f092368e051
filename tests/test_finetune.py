import numpy as np
import pytest
import torch
from conftest import TinyImageEncoder

from mmmatch.augment import ImageAugment
from mmmatch.finetune import LiteTop, TrunkEncoder, parse_freeze, split_backbone, trunk_views


@pytest.mark.parametrize(("policy", "want"), [("all", 0), ("none", 16), ("last:1", 1),
                                              ("last:5", 5), ("last:16", 16)])
def test_parse_freeze(policy, want):
    assert parse_freeze(policy, 16) == want


@pytest.mark.parametrize("policy", ["last:0", "last:17", "last:-1", "last:x", "last:", "some",
                                    "", "ALL", "first:2"])
def test_parse_freeze_errors(policy):
    with pytest.raises(ValueError, match="freeze policy"):
        parse_freeze(policy, 16)


@pytest.fixture(scope="module")
def lite():
    """A private EfficientNet-Lite0 (split_backbone changes its parameters' flags)."""
    from mmmatch.encoders.image import EfficientNetLiteEncoder

    return EfficientNetLiteEncoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def split(lite):
    return split_backbone(lite, "last:2")


def test_split_backbone_freezes_all_but_the_top(lite, split):
    trunk, top = split
    assert isinstance(trunk, TrunkEncoder) and isinstance(top, LiteTop)
    n_blocks = len(lite.model._blocks)
    assert top.offset == trunk.n_frozen == n_blocks - 2 and len(top.blocks) == 2
    trainable = {id(p) for p in lite.model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in top.parameters()}
    assert trainable  # the top has weights
    assert not any(p.requires_grad for p in lite.model._conv_stem.parameters())
    # the top shares its modules with the backbone
    assert top.conv_head is lite.model._conv_head and top.blocks[-1] is lite.model._blocks[-1]
    assert trunk.dim == int(np.prod(trunk.shape)) and len(trunk.shape) == 3
    assert trunk.encoder_id.endswith(f"|trunk{n_blocks - 2}")


def test_top_of_trunk_is_the_encoder_embedding(lite, split):
    trunk, top = split
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    want = lite.encode_uint8(pixels)
    feats = trunk.encode_uint8(pixels)
    assert feats.shape == (2, trunk.dim)
    top.eval()
    with torch.no_grad():
        got = top(torch.from_numpy(feats).view(2, *trunk.shape)).numpy()
    assert got.shape == (2, 1280)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the float path agrees with the uint8 path
    normalised = lite.preprocess.normalize(pixels)
    np.testing.assert_allclose(trunk.encode_pixels(normalised), feats, rtol=1e-4, atol=1e-4)


def test_training_the_top_tunes_the_backbone(lite, split):
    trunk, top = split
    saved = {k: v.clone() for k, v in lite.model.state_dict().items()}
    before = saved["_conv_head.weight"]
    stem = saved["_conv_stem.weight"]
    x = torch.from_numpy(trunk.encode_uint8(
        np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)))
    opt = torch.optim.SGD(top.parameters(), lr=0.1)
    try:
        top.train()
        loss = top(x.view(2, *trunk.shape)).pow(2).mean()
        loss.backward()
        opt.step()
        assert not torch.equal(lite.model._conv_head.weight, before)
        assert torch.equal(lite.model._conv_stem.weight, stem)
    finally:  # the fixture is shared: put the weights and batch-norm statistics back
        lite.model.load_state_dict(saved)
        top.eval()


def test_trunk_views(lite, split, make_jpeg, tmp_path):
    trunk, _ = split
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    refs = [str(make_jpeg("a.jpg", seed=1)), str(bad), None]
    feats, ok = trunk_views(refs, trunk, ImageAugment.camera(), n_views=2, seed=0)
    assert feats.shape == (3, 2, *trunk.shape) and feats.dtype == np.float16
    np.testing.assert_array_equal(ok, [[True, True], [False, False], [False, False]])
    assert np.abs(feats[0, 0].astype(np.float32) - feats[0, 1]).max() > 1e-2  # views differ
    np.testing.assert_array_equal(feats[1:], 0)
    plain, _ = trunk_views(refs[:1], trunk, None, n_views=1)
    np.testing.assert_array_equal(plain[0, 0], feats[0, 0])


def test_split_backbone_refusals(lite):
    with pytest.raises(ValueError, match="trains no backbone"):
        split_backbone(lite, "all")
    with pytest.raises(ValueError, match="freeze policy"):
        split_backbone(lite, "last:99")
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        split_backbone(TinyImageEncoder(), "last:2")

    class NotLite:
        encoder_id = "some-vit"
        model = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="some-vit"):
        split_backbone(NotLite(), "last:1")


def test_freeze_none_trains_the_whole_network_on_pixels(tmp_path):
    from conftest import draw_image

    from mmmatch.encoders.image import EfficientNetLiteEncoder
    from mmmatch.finetune import LiteFull, PixelViews

    enc = EfficientNetLiteEncoder("efficientnet-lite0")  # private: made trainable below
    trunk, full = split_backbone(enc, "none")
    assert trunk is None and isinstance(full, LiteFull)
    assert all(p.requires_grad for p in enc.model.parameters())  # the stem too

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        draw_image(i, (90, 70)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    views = PixelViews([*paths, tmp_path / "bad.jpg"], enc.preprocess, ImageAugment.camera(),
                       3, seed=1)
    assert views.shape == (4, 3, 3, 224, 224) and len(views) == 4
    np.testing.assert_array_equal(views.check(), [True, True, True, False])
    batch = views[np.array([0, 0, 1, 3]), np.array([0, 1, 0, 2])]
    assert batch.shape == (4, 3, 224, 224) and batch.dtype == np.float32
    assert not np.allclose(batch[0], batch[1])  # view 1 is augmented
    np.testing.assert_array_equal(batch[1], views[np.array([0]), np.array([1])][0])  # seeded
    assert not batch[3].any()  # unreadable: zeros, listed by check()
    originals = views.originals()
    np.testing.assert_array_equal(originals[0:2], batch[[0, 2]])
    # view 0 through the whole network is the encoder's own embedding
    full.eval()
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(full(torch.from_numpy(originals[0:2])), dim=1)
    from PIL import Image

    want = enc.encode([Image.open(p).convert("RGB") for p in paths[:2]])
    np.testing.assert_allclose(emb.numpy(), want, atol=1e-4)
