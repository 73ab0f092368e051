import json
import random
from pathlib import Path

import numpy as np
import pytest

from mmmatch.encoders import get_encoder
from mmmatch.encoders.text import SentenceTransformerEncoder, minilm_path
from mmmatch.tune_text import TRAINING_LOG, _batches, fine_tune_text, resolve_text_model

# Anchor i and positive i share only the word WORDS[i]; each positive repeats the filler word
# of the *next* anchor, so under mean pooling of the random model positive i sits closer to
# anchor i - 1 than to its own anchor. Training has to learn that the shared word matters.
WORDS = ["oat", "tea", "sony", "juice", "orange", "milk"]
FILLER = ["red", "blue", "green", "drink", "turntable", "ml"]
N = len(WORDS)
ANCHORS = [f"{WORDS[i]} {FILLER[i]} {FILLER[i]} {FILLER[i]}" for i in range(N)]
POSITIVES = [f"{WORDS[i]} {' '.join([FILLER[(i + 1) % N]] * 3)}" for i in range(N)]
# hard negative: another product with the anchor's filler
NEGATIVES = [f"{WORDS[(i + 2) % N]} {FILLER[i]} {FILLER[i]}" for i in range(N)]

FAST = {"batch_size": 6, "lr": 3e-3, "show_progress": False, "device": "cpu"}


def _ranks_and_margin(path: Path) -> tuple[np.ndarray, float]:
    """Rank of each anchor's positive among all positives, and the mean cosine margin."""
    enc = SentenceTransformerEncoder(str(path), device="cpu")
    sims = enc.encode(ANCHORS) @ enc.encode(POSITIVES).T
    own = np.diag(sims)
    ranks = (sims > own[:, None]).sum(axis=1) + 1
    best_other = np.where(np.eye(N, dtype=bool), -np.inf, sims).max(axis=1)
    return ranks, float(np.mean(own - best_other))


def _log(folder: Path) -> dict:
    return json.loads((folder / TRAINING_LOG).read_text())


def test_fine_tuning_ranks_positives_higher_and_saves_a_loadable_model(hf_st_dir, tmp_path):
    ranks_before, margin_before = _ranks_and_margin(hf_st_dir)
    assert ranks_before.mean() > 1.5  # the toy task is not solved by the random model

    out = fine_tune_text(str(hf_st_dir), anchors=ANCHORS, positives=POSITIVES,
                         output_dir=tmp_path / "tuned", epochs=20, **FAST)
    assert out == tmp_path / "tuned"
    ranks_after, margin_after = _ranks_and_margin(out)
    assert ranks_after.mean() < ranks_before.mean()
    assert margin_after > margin_before + 0.05

    log = _log(out)
    assert log["pairs"] == N and log["steps"] == 20 == len(log["loss"])
    assert np.mean(log["loss"][-3:]) < np.mean(log["loss"][:3])
    enc = get_encoder(str(out), modality="text", device="cpu")  # the Matcher's loader
    emb = enc.encode(["oat milk", "sony"])
    assert emb.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert not list(tmp_path.glob(".tuned.*"))  # no temporary folder left behind


def test_hard_negatives_add_the_triplet_term(hf_st_dir, tmp_path):
    common = {"anchors": ANCHORS, "positives": POSITIVES, "negatives": NEGATIVES, "epochs": 1}
    with_t = fine_tune_text(str(hf_st_dir), output_dir=tmp_path / "t", **common, **FAST)
    without = fine_tune_text(str(hf_st_dir), output_dir=tmp_path / "n", triplet_weight=0.0,
                             **common, **FAST)
    a, b = _log(with_t), _log(without)
    assert a["hard_negatives"] and a["triplet_weight"] == 1.0 and b["triplet_weight"] == 0.0
    # same seed, same batch, same dropout: the first loss differs by the triplet term (> 0:
    # the random model puts the hard negatives, which share the anchor's filler, close)
    assert a["loss"][0] > b["loss"][0]
    assert np.isfinite(a["loss"]).all()


def test_output_folder_is_replaced_atomically(hf_st_dir, tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("previous model")

    from sentence_transformers import SentenceTransformer

    def broken_save(self, path, *args, **kwargs):
        (Path(path) / "partial.bin").write_bytes(b"x")
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(SentenceTransformer, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            fine_tune_text(str(hf_st_dir), anchors=ANCHORS, positives=POSITIVES,
                           output_dir=target, **FAST)
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    fine_tune_text(str(hf_st_dir), anchors=ANCHORS, positives=POSITIVES, output_dir=target,
                   **FAST)
    assert not (target / "old.txt").exists()
    assert (target / "modules.json").exists() and (target / TRAINING_LOG).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"anchors": ["a", "b"], "positives": ["a"]}, "positives has 1 rows"),
        ({"anchors": ["a", "b", "c"], "positives": ["x", "y", "  "]}, r"positives\[2\]"),
        ({"anchors": ["a", None], "positives": ["x", "y"]}, r"anchors\[1\]"),
        ({"anchors": ["a", "b"], "positives": ["x", "y"], "negatives": ["n", ""]},
         r"negatives\[1\]"),
        ({"anchors": ["a"], "positives": ["x"], "negatives": ["n", "m"]}, "negatives has 2"),
        ({"anchors": "abc", "positives": ["x", "y", "z"]}, "not one string"),
        ({"anchors": [], "positives": []}, "empty"),
        ({"anchors": ["a"], "positives": ["x"], "epochs": 0}, "epochs"),
    ],
)
def test_invalid_inputs_name_the_problem(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fine_tune_text("does-not-matter", output_dir=tmp_path / "m", show_progress=False,
                       **kwargs)
    assert not (tmp_path / "m").exists()


def test_resolve_text_model():
    assert resolve_text_model("minilm-l6") == str(minilm_path())
    assert resolve_text_model("org/some-model") == "org/some-model"
    assert resolve_text_model("~/models/x") == str(Path("~/models/x").expanduser())
    with pytest.raises(ValueError, match="image encoder"):
        resolve_text_model("efficientnet-lite0")


def test_batches_cover_every_row_once_without_repeated_texts():
    anchors = ["a", "a", "b", "c", "d", "e", "f"]  # rows 0 and 1 share an anchor
    positives = ["p", "q", "p2", "q", "r", "s", "t"]  # rows 1 and 3 share a positive
    batches = list(_batches([anchors, positives], 3, random.Random(0)))
    rows = [i for b in batches for i in b]
    assert sorted(rows) == list(range(7))
    assert all(1 <= len(b) <= 3 for b in batches)
    for b in batches:
        texts = [anchors[i] for i in b] + [positives[i] for i in b]
        assert len(texts) == len(set(texts))
