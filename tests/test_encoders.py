"""The encoder registry (mmmatch.encoders): names, presets, guessing, caching."""

import pytest

from mmmatch.encoders import (
    PRESETS,
    EfficientNetLiteEncoder,
    Encoder,
    SentenceTransformerEncoder,
    _guess_modality,
    get_encoder,
    list_encoders,
)
from mmmatch.exceptions import UnknownEncoderError


def test_list_encoders():
    assert list_encoders() == list(PRESETS)
    assert "efficientnet-lite0" in list_encoders("image")
    assert "minilm-l6" not in list_encoders("image")
    assert list_encoders("text") == ["minilm-l6"]


def test_unknown_encoder_lists_presets():
    with pytest.raises(UnknownEncoderError) as info:
        get_encoder("efficientnet-lite9")
    message = str(info.value)
    assert "efficientnet-lite9" in message
    assert "efficientnet-lite0" in message and "minilm-l6" in message
    assert isinstance(info.value, KeyError)


def test_preset_modality_mismatch():
    with pytest.raises(ValueError, match="image encoder, not text"):
        get_encoder("efficientnet-lite0", modality="text")


def test_folder_without_model_config_needs_a_modality(tmp_path):
    with pytest.raises(ValueError, match="modality"):
        get_encoder(str(tmp_path))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["modules.json"], "text"),
        (["sentence_bert_config.json"], "text"),
        (["config.json", "preprocessor_config.json"], "image"),
        (["config.json", "tokenizer_config.json"], "text"),
        (["tokenizer.json"], "text"),
        (["config.json"], None),
    ],
)
def test_guess_modality_from_folder(tmp_path, files, expected):
    for name in files:
        (tmp_path / name).write_text("{}")
    assert _guess_modality(str(tmp_path)) == expected


def test_guess_modality_of_non_folder(tmp_path):
    assert _guess_modality(str(tmp_path / "nope")) is None
    assert _guess_modality("org/model") is None


def test_presets_load_offline_and_are_reused(image_encoder, text_encoder):
    assert isinstance(image_encoder, EfficientNetLiteEncoder)
    assert isinstance(text_encoder, SentenceTransformerEncoder)
    assert get_encoder("efficientnet-lite0", "image") is image_encoder
    assert get_encoder("minilm-l6", "text") is text_encoder
    for enc in (image_encoder, text_encoder):
        assert isinstance(enc, Encoder)
    assert image_encoder.modality == "image" and text_encoder.modality == "text"
    assert image_encoder.config() == {"name": "efficientnet-lite0"}
    assert text_encoder.encoder_id.startswith("minilm-l6")


def test_hf_folders_are_recognised(hf_vit_dir, hf_st_dir):
    vit = get_encoder(str(hf_vit_dir))
    st = get_encoder(str(hf_st_dir))
    assert vit.modality == "image" and st.modality == "text"
    assert get_encoder(str(hf_vit_dir)) is vit
    assert (vit.dim, st.dim) == (32, 32)


def test_home_relative_folder(hf_st_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(hf_st_dir.parent))
    enc = get_encoder(f"~/{hf_st_dir.name}")
    assert enc.modality == "text"
    assert enc.encode(["oat milk"]).shape == (1, 32)
