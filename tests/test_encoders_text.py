"""Text encoders: the packaged MiniLM and any sentence-transformers folder."""

import numpy as np

from mmmatch.encoders import SentenceTransformerEncoder, get_encoder
from mmmatch.encoders.text import minilm_path


def test_minilm_path_is_a_local_model():
    path = minilm_path()
    assert path.is_dir()
    assert any((path / f).exists() for f in ("modules.json", "config.json"))


def test_minilm_output(text_encoder):
    texts = ["Oat milk 1 l", "Sony turntable PS-LX350H", ""]
    out = text_encoder.encode(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32
    assert text_encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out, text_encoder.encode(texts))
    assert text_encoder.encode([]).shape == (0, 384)


def test_minilm_single_vs_batch(text_encoder):
    texts = ["green tea 20 bags", "oat drink vanilla 1 litre"]
    batch = text_encoder.encode(texts)
    np.testing.assert_allclose(text_encoder.encode(texts[1:])[0], batch[1], atol=1e-5)


def test_minilm_is_semantic(text_encoder):
    a, b, c = text_encoder.encode(["oat milk 1 l", "oatly oat drink 1 litre", "sony turntable"])
    assert a @ b > a @ c + 0.2


def test_minilm_identity_and_config(text_encoder):
    assert text_encoder.encoder_id == f"minilm-l6/len{text_encoder.max_seq_length}"
    cfg = text_encoder.config()
    assert cfg["max_seq_length"] == text_encoder.max_seq_length
    assert cfg["name"] == "minilm-l6"  # the preset name, so saved artifacts rebuild it
    assert text_encoder.name_or_path == str(minilm_path())


def test_tiny_sentence_transformer_from_folder(hf_st_dir):
    enc = get_encoder(str(hf_st_dir))
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.modality == "text" and enc.dim == 32
    assert enc.encoder_id.startswith(f"st:{hf_st_dir}@")
    texts = ["oat milk", "green tea", "sony turntable", "oat milk"]
    out = enc.encode(texts)
    assert out.shape == (4, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(out[0], out[3], atol=1e-6)
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out, enc.encode(texts))


def test_max_seq_length_is_part_of_the_identity(hf_st_dir):
    enc = get_encoder(str(hf_st_dir), max_seq_length=8)
    assert enc.max_seq_length == 8
    assert enc.encoder_id.endswith("/len8")
    assert enc.encoder_id != get_encoder(str(hf_st_dir)).encoder_id
    assert enc.config() == {"name": str(hf_st_dir), "max_seq_length": 8}


def test_preset_config_rebuilds_the_same_encoder(text_encoder):
    rebuilt = get_encoder(modality="text", **text_encoder.config())
    assert rebuilt.encoder_id == text_encoder.encoder_id
