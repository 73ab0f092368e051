import json

import numpy as np
import pytest
import torch

from mmmatch.exceptions import NotFittedError
from mmmatch.fusion import EmbeddingViews, FusionHead
from mmmatch.losses import ClassificationLoss, PartialFCLoss, TripletLoss
from mmmatch.train import LearnedFusion, build_objective, split_by_product

# Small and quick: every fit below takes well under a second on one thread.
FAST = {"dim": 16, "hidden": 32, "p": 4, "k": 4, "lr": 3e-3, "show_progress": False}


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n_products, per, seed, views=1):
    """Rows around product centres: an image (16-d) and a text (8-d) embedding each, the
    product in the first half of the dimensions and loud row noise in the other half (a head
    has to learn to ignore it to retrieve products it has never seen)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_products), per)
    n = len(labels)

    def side(d):
        centres = rng.normal(size=(n_products, d // 2))
        x = np.empty((n, views, d))
        x[:, :, : d // 2] = centres[labels][:, None] + 0.3 * rng.normal(size=(n, views, d // 2))
        x[:, :, d // 2:] = 2.0 * rng.normal(size=(n, views, d - d // 2))
        return _unit(x)

    image, text = side(16), side(8)
    ok = np.ones((n, views), bool)
    return EmbeddingViews(image, ok, text, ok.copy()), labels


def _map_at_r(emb, labels, n_queries=None, offset=0):
    """Brute-force MAP@R: queries are rows ``offset..offset+n_queries`` of ``emb``, retrieved
    among all the other rows."""
    n_queries = len(emb) - offset if n_queries is None else n_queries
    sims = emb @ emb.T
    scores = []
    for i in range(offset, offset + n_queries):
        s = sims[i].copy()
        s[i] = -np.inf
        order = np.argsort(-s, kind="stable")[:-1]
        r = int((labels == labels[i]).sum()) - 1
        rel = labels[order[:r]] == labels[i]
        scores.append(float((np.cumsum(rel) / np.arange(1, r + 1) * rel).sum() / r))
    return float(np.mean(scores))


def _same_records(a, b):
    """Equal lists of log records (NaN equal to NaN)."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] or (np.isnan(x[k]) and np.isnan(y[k]))
                                     for k in x) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def data():
    train, y_train = _clustered(12, 4, seed=0, views=2)
    valid, y_valid = _clustered(6, 4, seed=1)
    return train, y_train, valid, y_valid + 100  # valid products are new products


@pytest.fixture(scope="module")
def fitted(data):
    train, y_train, valid, y_valid = data
    records = []
    fusion = LearnedFusion(epochs=60, dropout=0.0, patience=100, **FAST)
    out = fusion.fit(train, y_train, valid=(valid, y_valid), on_epoch=records.append)
    return fusion, out, records


def test_fit_contract(fitted, data):
    fusion, out, records = fitted
    _, y_train, _, _ = data
    assert out is fusion
    assert isinstance(fusion.head_, FusionHead)
    assert (fusion.head_.image_dim, fusion.head_.text_dim, fusion.head_.dim) == (16, 8, 16)
    np.testing.assert_array_equal(fusion.classes_, np.unique(y_train.astype(str)))
    assert fusion.loss_spec_ == "triplet+arcface"
    assert len(fusion.history_) == 60 and records == fusion.history_
    assert [r["epoch"] for r in fusion.history_] == list(range(1, 61))
    assert all(np.isfinite(r["loss"]) and "valid.map_at_r" in r for r in fusion.history_)
    assert 1 <= fusion.best_epoch_ <= 60
    best = fusion.history_[fusion.best_epoch_ - 1]["valid.map_at_r"]
    assert fusion.valid_score_ == best == max(r["valid.map_at_r"] for r in fusion.history_)
    # training lowered the loss
    assert np.mean([r["loss"] for r in fusion.history_[-5:]]) < fusion.history_[0]["loss"]


def test_validation_score_matches_brute_force(fitted, data):
    """The kept (best-epoch) head gives the validation MAP@R recorded for that epoch: valid
    rows retrieved among the training rows (view 0) and the other valid rows."""
    fusion, _, _ = fitted
    train, y_train, valid, y_valid = data
    refs = fusion.transform(train)
    queries = fusion.transform(valid)
    labels = np.concatenate([y_train, y_valid])
    emb = np.concatenate([refs, queries])
    want = _map_at_r(emb, labels, n_queries=len(queries), offset=len(refs))
    assert fusion.valid_score_ == pytest.approx(want, abs=1e-6)


def test_short_fit_beats_untrained_head_and_random_projection(fitted, data):
    fusion, _, _ = fitted
    train, y_train, valid, y_valid = data
    untrained = LearnedFusion(epochs=0, dropout=0.0, **FAST).fit(train, y_train)
    assert untrained.history_ == []
    trained_score = _map_at_r(fusion.transform(valid), y_valid)
    untrained_score = _map_at_r(untrained.transform(valid), y_valid)
    x = np.concatenate([valid.image[:, 0], valid.text[:, 0]], axis=1)
    random_score = _map_at_r(_unit(x @ np.random.default_rng(0).normal(size=(24, 16))), y_valid)
    assert trained_score > untrained_score + 0.2
    assert trained_score > random_score + 0.15


def test_transform_and_predict(fitted, data):
    fusion, _, _ = fitted
    train, y_train, _, _ = data
    fused = fusion.transform(train)
    assert fused.shape == (48, 16) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)
    proba = fusion.predict_proba(fused)
    assert proba.shape == (48, 12)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    pred = fusion.predict(fused)
    assert set(pred) <= set(fusion.classes_)
    assert np.mean(pred == y_train.astype(str)) > 0.8  # the classifier learned the products
    with pytest.raises(ValueError, match="16-d but the head was trained on 8-d"):
        fusion.transform(EmbeddingViews(None, np.ones((3, 1), bool),
                                        np.zeros((3, 1, 16), np.float32), np.ones((3, 1), bool)))


def test_unfitted_raises_not_fitted():
    fusion = LearnedFusion()
    view, _ = _clustered(2, 2, seed=0)
    for call in (lambda: fusion.transform(view), lambda: fusion.state_dict(),
                 lambda: fusion.config(), lambda: fusion.predict(np.zeros((1, 256), "f4"))):
        with pytest.raises(NotFittedError):
            call()


def test_early_stopping_when_validation_cannot_improve(data):
    """Valid rows that come in identical pairs are perfectly retrieved by any head (MAP@R 1
    from epoch 1 on), so nothing improves and training stops after ``patience`` epochs."""
    train, y_train, _, _ = data
    twins, _ = _clustered(2, 1, seed=5)
    valid = EmbeddingViews(np.repeat(twins.image, 2, axis=0), np.ones((4, 1), bool),
                           np.repeat(twins.text, 2, axis=0), np.ones((4, 1), bool))
    fusion = LearnedFusion(epochs=20, patience=2, **FAST).fit(
        train, y_train, valid=(valid, np.array(["a", "a", "b", "b"])))
    assert len(fusion.history_) == 3
    assert fusion.best_epoch_ == 1
    assert [r["valid.map_at_r"] for r in fusion.history_] == pytest.approx([1.0] * 3)


def test_without_labels(data):
    train, _, _, _ = data
    one_view = train.subset(np.arange(len(train)))
    one_view = EmbeddingViews(one_view.image[:, :1], one_view.image_ok[:, :1],
                              one_view.text[:, :1], one_view.text_ok[:, :1])
    with pytest.raises(ValueError, match="two or more views"):
        LearnedFusion(epochs=1, **FAST).fit(one_view)
    fusion = LearnedFusion(epochs=3, **FAST).fit(train)
    assert fusion.loss_spec_ == "ntxent"
    assert len(fusion.classes_) == len(train)
    assert len(fusion.history_) == 3
    assert all(np.isfinite(r["loss"]) for r in fusion.history_)
    assert set(fusion.history_[0]) >= {"loss.ntxent"}
    with pytest.raises(ValueError, match="no classification term"):
        fusion.predict(fusion.transform(train))


def test_bad_inputs(data):
    train, y_train, _, _ = data
    with pytest.raises(ValueError, match="bogus"):
        LearnedFusion(loss="triplet+bogus", epochs=1, **FAST).fit(train, y_train)
    with pytest.raises(ValueError, match="bad loss spec"):
        build_objective("+", 8, 4)
    with pytest.raises(ValueError, match="expected 48 labels"):
        LearnedFusion(epochs=1, **FAST).fit(train, y_train[:-1])
    labels = y_train.astype(object)
    labels[3] = None
    with pytest.raises(ValueError, match="row 3 has no label"):
        LearnedFusion(epochs=1, **FAST).fit(train, labels)
    with pytest.raises(ValueError, match="go together"):
        LearnedFusion(epochs=1, **FAST).fit(train, y_train, image_model=torch.nn.Linear(5, 16))


def test_build_objective_terms_and_weights():
    obj = build_objective("triplet + arcface", 8, 5, weights={"arcface": 0.5})
    assert isinstance(obj.terms["triplet"], TripletLoss)
    assert isinstance(obj.terms["arcface"], ClassificationLoss)
    assert obj.weights == {"triplet": 1.0, "arcface": 0.5}
    # Partial FC only when asked for a sample smaller than the class count
    assert isinstance(build_objective("arcface", 8, 12, partial_fc=3).terms["arcface"],
                      PartialFCLoss)
    assert isinstance(build_objective("arcface", 8, 12, partial_fc=12).terms["arcface"],
                      ClassificationLoss)
    assert isinstance(build_objective("arcface", 8, 12).terms["arcface"], ClassificationLoss)
    for bad in (0, -1, True, "many", 2.5):
        with pytest.raises(ValueError, match="partial_fc"):
            build_objective("arcface", 8, 12, partial_fc=bad)


def test_partial_fc_trains(data):
    train, y_train, _, _ = data
    fusion = LearnedFusion(epochs=3, partial_fc=3, **FAST).fit(train, y_train)
    term = fusion.objective_.terms["arcface"]
    assert isinstance(term, PartialFCLoss) and term.num_sampled == 3
    assert term.weight.shape == (12, 16)
    assert all(np.isfinite(r["loss.arcface"]) for r in fusion.history_)
    assert fusion.predict_proba(fusion.transform(train)).shape == (48, 12)


def test_checkpoint_resume(tmp_path, data):
    train, y_train, valid, y_valid = data
    ckpt = tmp_path / "ckpt"
    first = LearnedFusion(epochs=2, checkpoint_dir=ckpt, **FAST).fit(
        train, y_train, valid=(valid, y_valid))
    assert (ckpt / "state.json").exists() and (ckpt / "checkpoint.safetensors").exists()
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 2
    first_history = [dict(r) for r in first.history_]

    seen = []
    resumed = LearnedFusion(epochs=4, checkpoint_dir=ckpt, **FAST).fit(
        train, y_train, valid=(valid, y_valid), on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [3, 4]  # it did not start over
    assert len(resumed.history_) == 4
    assert _same_records(resumed.history_[:2], first_history)
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 4

    with pytest.raises(ValueError, match="checkpoint"):
        LearnedFusion(epochs=4, loss="triplet", checkpoint_dir=ckpt, **FAST).fit(
            train, y_train)
    with pytest.raises(ValueError, match="checkpoint"):
        LearnedFusion(epochs=4, checkpoint_dir=ckpt, **FAST).fit(
            train, y_train % 6)  # 6 classes, not 12


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_interrupted_fit_resumes_exactly(tmp_path, data, dropout):
    """A fit killed after epoch 2 and rerun gives the unbroken run's losses and weights
    (learning-rate schedule, optimizer state and the per-epoch randomness all restored)."""
    train, y_train, valid, y_valid = data
    params = {**FAST, "epochs": 4, "dropout": dropout, "modality_dropout": dropout}

    def interrupt(record):
        if record["epoch"] == 3:  # the checkpoint of epoch 3 is not written yet
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LearnedFusion(checkpoint_dir=tmp_path, **params).fit(
            train, y_train, valid=(valid, y_valid), on_epoch=interrupt)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
    resumed = LearnedFusion(checkpoint_dir=tmp_path, **params).fit(
        train, y_train, valid=(valid, y_valid))
    straight = LearnedFusion(**params).fit(train, y_train, valid=(valid, y_valid))
    for a, b in zip(straight.history_, resumed.history_, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["valid.map_at_r"] == pytest.approx(b["valid.map_at_r"], abs=1e-6)
    assert resumed.best_epoch_ == straight.best_epoch_
    np.testing.assert_allclose(resumed.transform(valid), straight.transform(valid), atol=1e-5)


def test_from_state_keeps_a_zero_valid_score(fitted):
    fusion, _, _ = fitted
    config = fusion.config()
    config["valid_score"] = 0.0
    assert LearnedFusion.from_state(config, fusion.state_dict()).valid_score_ == 0.0


def test_from_state_round_trip(fitted, data):
    fusion, _, _ = fitted
    train, _, valid, _ = data
    config = json.loads(json.dumps(fusion.config(), allow_nan=False))  # plain JSON
    state = fusion.state_dict()
    assert all(k.startswith(("head.", "objective.")) for k in state)
    again = LearnedFusion.from_state(config, state)
    np.testing.assert_array_equal(again.transform(valid), fusion.transform(valid))
    fused = fusion.transform(train)
    np.testing.assert_array_equal(again.predict(fused), fusion.predict(fused))
    assert list(again.classes_) == list(fusion.classes_)
    assert again.best_epoch_ == fusion.best_epoch_
    assert again.valid_score_ == pytest.approx(fusion.valid_score_)
    assert again.history_ == config["history"]
    assert len(again.history_) == len(fusion.history_)
    # the valid products are not training classes: no accuracy (NaN, stored as null)
    assert all(r["valid.accuracy"] is None for r in config["history"])
    assert again.get_params() == fusion.get_params()


def test_split_by_product():
    labels = np.array(["a"] * 3 + ["b"] * 2 + ["c"] + ["d"] * 4 + ["e"] + ["f"] * 2
                      + ["g"] * 2 + ["h"] * 3 + ["i"] + ["j"] * 2)
    singletons = {"c", "e", "i"}
    seen_valid = set()
    for seed in range(20):
        tr, va = split_by_product(labels, 0.4, seed=seed)
        assert tr.dtype == np.int64 and va.dtype == np.int64
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
        assert not set(labels[tr]) & set(labels[va])  # products are never split
        assert not set(labels[va]) & singletons
        # round(0.4 * 10 products) = 4, at most half the 7 products with 2+ rows
        assert len(set(labels[va])) == 3
        seen_valid |= set(labels[va])
        _, va2 = split_by_product(labels, 0.4, seed=seed)
        np.testing.assert_array_equal(va, va2)
    assert len(seen_valid) > 4  # the seed matters
    for labs, frac in ((None, 0.5), (labels, 0.0), (np.array(["a", "a", "b", "c"]), 0.9),
                       (labels, 0.1)):  # no labels, no share, < 2 multi-row products, < 2
        tr, va = split_by_product(labs, frac)
        assert len(va) == 0 and len(tr) == (0 if labs is None else len(labs))


def test_image_model_fine_tuning(data):
    """The image side through a trainable module on cached inputs: its weights change and
    transform uses it."""
    _, y_train, _, _ = data
    train, _ = _clustered(12, 4, seed=0, views=2)
    rng = np.random.default_rng(3)
    n = len(y_train)
    centres = rng.normal(size=(12, 5))
    inputs = (centres[y_train][:, None] + 0.2 * rng.normal(size=(n, 2, 5))).astype(np.float32)
    views = EmbeddingViews(np.zeros((n, 2, 16), np.float32), np.ones((n, 2), bool),
                           train.text, train.text_ok)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 16)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    valid_rows = np.arange(0, n, 2)
    valid = (views.subset(valid_rows), y_train[valid_rows])
    fusion = LearnedFusion(epochs=3, **FAST).fit(
        views, y_train, valid=valid, image_model=model, image_inputs=inputs,
        valid_image_inputs=inputs[valid_rows, 0], reference_image_inputs=inputs[:, 0])
    assert fusion.image_model_ is model
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert "valid.map_at_r" in fusion.history_[-1]
    with_model = fusion.transform(views, image_inputs=inputs[:, 0])
    without = fusion.transform(views)  # the (zero) cached image embeddings instead
    assert with_model.shape == (n, 16)
    assert np.abs(with_model - without).max() > 1e-3
    # a fine-tuned head validated without the inputs it needs is refused
    with pytest.raises(ValueError, match="view-0 image inputs"):
        LearnedFusion(epochs=1, **FAST).fit(views, y_train, valid=valid,
                                            image_model=torch.nn.Linear(5, 16),
                                            image_inputs=inputs)
