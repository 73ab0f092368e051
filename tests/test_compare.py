import numpy as np
import pytest

from mmmatch.compare import EVIDENCE_COLUMNS, SIGNALS, FusedLayout, ScoreWeights, compare_pairs
from mmmatch.fusion import FusionWeights, fuse

WEIGHTS = ScoreWeights(image=0.5, text=0.3, lexical=0.2, word=0.1)


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cos(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _weighted_mean(columns: dict[str, np.ndarray], weights: ScoreWeights) -> np.ndarray:
    w = weights.to_dict()
    n = len(next(iter(columns.values())))
    vals = np.stack([columns.get(name, np.full(n, np.nan)) for name in SIGNALS],
                    axis=1).astype(np.float64)
    ws = np.array([w[name] for name in SIGNALS])
    have = ~np.isnan(vals) & (ws > 0)
    num = np.where(have, vals, 0) @ ws
    den = have @ ws
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


@pytest.fixture
def sides():
    li_img, li_txt = _unit(6, 5, 0), _unit(6, 4, 1)
    ri_img, ri_txt = _unit(7, 5, 2), _unit(7, 4, 3)
    l_img_ok = np.array([True, True, False, True, True, True])
    r_txt_ok = np.array([True, True, True, False, True, True, True])
    w = FusionWeights(0.6, 0.4)
    left = fuse(li_img, l_img_ok, li_txt, np.ones(6, bool), w)
    right = fuse(ri_img, np.ones(7, bool), ri_txt, r_txt_ok, w)
    return {"left": left, "right": right, "li_img": li_img, "li_txt": li_txt,
            "ri_img": ri_img, "ri_txt": ri_txt, "l_img_ok": l_img_ok, "r_txt_ok": r_txt_ok}


def test_layout():
    layout = FusedLayout(3, 2)
    assert layout.dim == 5
    x = np.arange(10).reshape(2, 5)
    parts = layout.parts(x)
    np.testing.assert_array_equal(parts["image"], x[:, :3])
    np.testing.assert_array_equal(parts["text"], x[:, 3:])
    assert list(FusedLayout(0, 2).parts(x[:, :2])) == ["text"]
    assert list(FusedLayout(3, 0).parts(x[:, :3])) == ["image"]


def test_score_weights():
    defaults = ScoreWeights().to_dict()
    assert list(defaults) == list(SIGNALS)
    assert all(v >= 0 for v in defaults.values()) and sum(defaults.values()) > 0
    assert [f"{name}_sim" for name in SIGNALS] == EVIDENCE_COLUMNS
    for name in SIGNALS:
        with pytest.raises(ValueError):
            ScoreWeights(**{name: -0.1})


def test_per_modality_cosines_match_numpy(sides):
    li = np.array([0, 0, 1, 2, 3, 4, 5, 5])
    ri = np.array([0, 3, 1, 2, 6, 4, 5, 0])
    lex = np.linspace(0.1, 0.8, len(li)).astype(np.float32)
    lex[1] = np.nan  # e.g. an empty text on one side
    word = np.linspace(0.0, 0.7, len(li)).astype(np.float32)
    out = compare_pairs(sides["left"], sides["right"], li, ri, FusedLayout(5, 4), WEIGHTS,
                        {"lexical": lex, "word": word})
    assert list(out.columns) == [*EVIDENCE_COLUMNS, "score"]
    img = _cos(sides["li_img"][li], sides["ri_img"][ri])
    txt = _cos(sides["li_txt"][li], sides["ri_txt"][ri])
    img[~sides["l_img_ok"][li]] = np.nan
    txt[~sides["r_txt_ok"][ri]] = np.nan
    np.testing.assert_allclose(out["image_sim"], img, atol=1e-5)
    np.testing.assert_allclose(out["text_sim"], txt, atol=1e-5)
    np.testing.assert_allclose(out["lexical_sim"], lex, atol=1e-7)
    np.testing.assert_allclose(out["word_sim"], word, atol=1e-7)
    cols = {"image": img, "text": txt, "lexical": lex, "word": word}
    np.testing.assert_allclose(out["score"], _weighted_mean(cols, WEIGHTS), atol=1e-5)
    # pair 3 has no image on the left: it is scored on its text signals alone
    assert np.isnan(out["image_sim"][3])
    expected = (0.3 * txt[3] + 0.2 * lex[3] + 0.1 * word[3]) / 0.6
    assert out["score"][3] == pytest.approx(expected, abs=1e-5)


def test_dense_only_and_in_chunks(sides):
    li = ri = np.arange(6)
    layout = FusedLayout(5, 4)
    whole = compare_pairs(sides["left"], sides["right"], li, ri, layout, WEIGHTS)
    chunked = compare_pairs(sides["left"], sides["right"], li, ri, layout, WEIGHTS,
                            chunk_size=4)
    assert whole["lexical_sim"].isna().all() and whole["word_sim"].isna().all()
    np.testing.assert_array_equal(whole.to_numpy(), chunked.to_numpy())
    ok = whole["image_sim"].notna() & whole["text_sim"].notna()
    expected = (0.5 * whole["image_sim"] + 0.3 * whole["text_sim"]) / 0.8
    np.testing.assert_allclose(whole["score"][ok], expected[ok], atol=1e-5)


def test_zero_weight_signals_do_not_count(sides):
    li = ri = np.arange(4)
    w = ScoreWeights(image=1.0, text=0.0, lexical=0.0, word=0.0)
    out = compare_pairs(sides["left"], sides["right"], li, ri, FusedLayout(5, 4), w,
                        {"lexical": np.ones(4, np.float32)})
    have = out["image_sim"].notna()
    np.testing.assert_allclose(out["score"][have], out["image_sim"][have], atol=1e-6)
    assert out["score"][~have].isna().all()
    assert out["text_sim"].notna().any()  # evidence is still reported


def test_hubness_correction_shifts_the_score_not_the_evidence(sides):
    li = np.array([0, 1, 3, 4])
    ri = np.array([0, 1, 4, 5])
    layout = FusedLayout(5, 4)
    lex = np.array([0.9, 0.2, 0.5, 0.4], np.float32)
    rng = np.random.default_rng(5)
    hub = {name: (rng.uniform(0, 0.5, 6).astype(np.float32),
                  rng.uniform(0, 0.5, 7).astype(np.float32)) for name in ("image", "lexical")}
    raw = compare_pairs(sides["left"], sides["right"], li, ri, layout, WEIGHTS, {"lexical": lex})
    out = compare_pairs(sides["left"], sides["right"], li, ri, layout, WEIGHTS, {"lexical": lex},
                        hubness=hub)
    for col in EVIDENCE_COLUMNS:
        np.testing.assert_array_equal(out[col].to_numpy(), raw[col].to_numpy())
    cols = {name: out[f"{name}_sim"].to_numpy(np.float64) for name in SIGNALS}
    for name, (r_left, r_right) in hub.items():
        cols[name] = cols[name] - (r_left[li] + r_right[ri]) / 2
    np.testing.assert_allclose(out["score"], _weighted_mean(cols, WEIGHTS), atol=1e-5)
    assert not np.allclose(out["score"], raw["score"])


def test_no_shared_signal_gives_nan_score():
    left = np.array([[1, 0, 0, 0]], np.float32)  # image only
    right = np.array([[0, 0, 1, 0]], np.float32)  # text only
    out = compare_pairs(left, right, [0], [0], FusedLayout(2, 2), WEIGHTS)
    assert out[["image_sim", "text_sim", "score"]].isna().all(axis=None)


def test_text_only_layout():
    x = _unit(3, 4, 9)
    out = compare_pairs(x, x, [0, 1], [0, 2], FusedLayout(0, 4), WEIGHTS,
                        {"lexical": np.array([1.0, 0.2], np.float32)})
    assert out["image_sim"].isna().all()
    np.testing.assert_allclose(out["text_sim"], [1.0, x[1] @ x[2]], atol=1e-5)
    np.testing.assert_allclose(out["lexical_sim"], [1.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(out["score"][0], 1.0, atol=1e-5)


def test_empty_pairs():
    x = _unit(2, 4, 0)
    out = compare_pairs(x, x, [], [], FusedLayout(2, 2))
    assert len(out) == 0 and list(out.columns) == [*EVIDENCE_COLUMNS, "score"]


def test_learned_part_is_its_own_signal():
    img, txt, learned = _unit(5, 4, 10), _unit(5, 3, 11), _unit(5, 6, 12)
    ok = np.ones(5, bool)
    w = FusionWeights(0.3, 0.3, learned=0.4)
    fused = fuse(img, ok, txt, ok, w, learned=learned)
    layout = FusedLayout(4, 3, 6)
    assert fused.shape == (5, 13) and layout.dim == 13
    li, ri = np.array([0, 1, 2]), np.array([3, 4, 0])
    out = compare_pairs(fused, fused, li, ri, layout, ScoreWeights(0, 0, 0, 0, fused=1.0))
    np.testing.assert_allclose(out["fused_sim"], _cos(learned[li], learned[ri]), atol=1e-5)
    np.testing.assert_allclose(out["score"], out["fused_sim"], atol=1e-6)
    # complete rows: the inner product of fused vectors is the weighted sum of the cosines
    expect = 0.3 * _cos(img[li], img[ri]) + 0.3 * _cos(txt[li], txt[ri]) + 0.4 * _cos(
        learned[li], learned[ri])
    np.testing.assert_allclose(np.sum(fused[li] * fused[ri], axis=1), expect, atol=1e-5)
