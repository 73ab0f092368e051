"""A trained model end to end: Matcher.fit, the model folder, loading it, the CLI.

One small model is trained once for the module (real Lite0 + MiniLM encoders, 20 demo
products, 3 epochs); the tests read, copy and tamper with its folder.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mmmatch.cli import main
from mmmatch.compare import ScoreWeights
from mmmatch.demo import make_demo_catalogues
from mmmatch.exceptions import ConfigMismatchError
from mmmatch.metrics import pair_scores
from mmmatch.model import FORMAT_VERSION, MatchModel
from mmmatch.pipeline import Matcher
from mmmatch.search import SearchIndex

RIGHT = {"id": "sku", "title": "name"}


def _strict_json(path):
    """Parse a JSON file, refusing NaN / Infinity (not JSON, and other tools choke on it)."""
    def refuse(name):
        raise ValueError(f"{path} has {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("model")


@pytest.fixture(scope="module")
def demo20(workdir):
    return make_demo_catalogues(workdir / "demo", n_products=20, seed=0)


@pytest.fixture(scope="module")
def labelled(demo20, workdir):
    """Both demo catalogues as one catalogue, a ``product`` column saying which rows are the
    same product (a right-only product is its own), written as CSV too."""
    left = pd.read_csv(demo20.left)
    right = pd.read_csv(demo20.right).rename(columns={"sku": "id", "name": "title"})
    truth = dict(zip(demo20.truth["right_id"], demo20.truth["left_id"], strict=True))
    left["product"] = left["id"]
    right["product"] = [truth.get(i, f"r{i}") for i in right["id"]]
    cat = pd.concat([left, right], ignore_index=True)[["id", "title", "image", "product"]]
    cat["image"] = [str(demo20.folder / p) for p in cat["image"]]
    cat["id"] = [f"x{i}" for i in range(len(cat))]
    path = workdir / "catalogue.csv"
    cat.to_csv(path, index=False)
    return cat, path


@pytest.fixture(scope="module")
def cache_dir(workdir):
    return workdir / "cache"


@pytest.fixture(scope="module")
def trained(labelled, cache_dir, workdir, image_encoder, text_encoder):
    cat, _ = labelled
    folder = workdir / "trained"
    matcher = Matcher(cache_dir=cache_dir).fit(cat, label_column="product", n_views=2,
                                               epochs=3, output=folder)
    return matcher, folder


def _f1(pairs, demo):
    return pair_scores(zip(pairs["left_id"], pairs["right_id"], strict=True),
                       zip(demo.truth["left_id"], demo.truth["right_id"], strict=True))["f1"]


def test_fit_writes_a_self_describing_folder(trained, image_encoder, text_encoder):
    matcher, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "head.safetensors"]
    config = _strict_json(folder / "config.json")
    assert config["kind"] == "mmmatch.MatchModel"
    assert config["format_version"] == FORMAT_VERSION
    assert set(config["versions"]) == {"mmmatch", "torch", "numpy", "python"}
    assert config["image_encoder"]["encoder_id"] == image_encoder.encoder_id
    assert config["image_encoder"]["dim"] == 1280
    assert config["image_encoder"]["fine_tuned"] is False
    assert config["text_encoder"]["encoder_id"] == text_encoder.encoder_id
    assert config["text_encoder"]["dim"] == text_encoder.dim
    model = matcher.model_
    assert model.path == folder
    assert isinstance(config["threshold"], float)
    assert config["threshold"] == pytest.approx(model.threshold)
    assert config["score_weights"] == model.score_weights.to_dict()
    info = config["info"]
    assert info["rows"] == 40 and info["train_rows"] + info["valid_rows"] == 40
    assert info["valid_rows"] > 0 and info["n_views"] == 2 and info["mode"] == "head"
    assert info["calibration"]["threshold"] == pytest.approx(config["threshold"])
    fusion = config["fusion"]
    assert fusion["params"]["epochs"] == 3 and 1 <= len(fusion["history"]) <= 3
    assert fusion["head"]["image_dim"] == 1280 and fusion["head"]["text_dim"] == text_encoder.dim
    assert matcher.decision_threshold == pytest.approx(model.threshold)


def test_loaded_model_embeds_like_the_fitted_one(trained):
    matcher, folder = trained
    loaded = MatchModel.load(folder)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 1280)).astype(np.float32)
    text = rng.normal(size=(5, 384)).astype(np.float32)
    image_ok = np.array([True, True, False, True, False])
    text_ok = np.array([True, False, True, True, False])
    want = matcher.model_.embed(image, image_ok, text, text_ok)
    np.testing.assert_array_equal(loaded.embed(image, image_ok, text, text_ok), want)
    assert want.shape == (5, loaded.dim)
    np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1, atol=1e-5)
    # a missing modality may also be absent altogether
    np.testing.assert_allclose(loaded.embed(None, np.zeros(5, bool), text, text_ok),
                               loaded.embed(image, np.zeros(5, bool), text, text_ok), atol=1e-6)
    assert loaded.threshold == pytest.approx(matcher.model_.threshold)
    assert loaded.score_weights == matcher.model_.score_weights


def test_match_with_the_model(trained, demo20, cache_dir, workdir):
    """The demo is easy (the zero-shot matcher, and even an untrained head, also reach F1
    .97 on it): the bar checks the learned path end to end. That it is the learned
    embedding doing the work is checked by sabotaging the head: a constant embedding
    scores every pair alike and the fused-only F1 collapses."""
    _, folder = trained
    pairs = Matcher(model=folder, cache_dir=cache_dir).match(demo20.left, demo20.right,
                                                             right_columns=RIGHT)
    assert "fused_sim" in pairs.columns and len(pairs)
    assert np.isfinite(pairs["fused_sim"]).all()
    assert _f1(pairs, demo20) >= 0.8

    fused_only = ScoreWeights(image=0, text=0, lexical=0, word=0, fused=1)
    good = Matcher(model=folder, cache_dir=cache_dir, weights=fused_only).match(
        demo20.left, demo20.right, right_columns=RIGHT)
    assert _f1(good, demo20) >= 0.8

    from safetensors.torch import load_file, save_file

    broken = workdir / "constant-head"
    shutil.copytree(folder, broken, dirs_exist_ok=True)
    state = load_file(str(broken / "head.safetensors"))
    state["head.mix.weight"].zero_()  # every row now embeds to normalize(mix.bias)
    save_file(state, str(broken / "head.safetensors"))
    bad = Matcher(model=broken, cache_dir=cache_dir, weights=fused_only).match(
        demo20.left, demo20.right, right_columns=RIGHT)
    assert _f1(bad, demo20) < 0.5


def test_load_refuses_other_encoders(trained, tmp_path):
    _, folder = trained
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    config["image_encoder"]["encoder_id"] = "efficientnet-lite0@other-weights"
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match="other-weights"):
        MatchModel.load(edited)
    with pytest.raises(ConfigMismatchError):
        Matcher(model=edited).trained  # noqa: B018 - loading is what is tested


@pytest.mark.parametrize(("key", "value", "match"), [
    ("kind", "something.else", "not an mmmatch model"),
    ("format_version", FORMAT_VERSION + 1, "newer mmmatch"),
])
def test_load_refuses_foreign_or_newer_folders(trained, tmp_path, key, value, match):
    _, folder = trained
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    config[key] = value
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match=match):
        MatchModel.load(edited)


def test_load_refuses_incomplete_or_missing_folders(trained, tmp_path):
    _, folder = trained
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / "head.safetensors").unlink()
    with pytest.raises(ConfigMismatchError, match=r"head\.safetensors"):
        MatchModel.load(partial)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        MatchModel.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        MatchModel.load(tmp_path / "nowhere")


def test_search_index_travels_with_the_model(trained, labelled, cache_dir, tmp_path):
    _, folder = trained
    cat, _ = labelled
    matcher = Matcher(model=folder, cache_dir=cache_dir)
    index = SearchIndex.build(cat, matcher)
    index.save(tmp_path / "index")
    manifest = _strict_json(tmp_path / "index" / "manifest.json")
    assert manifest["model"] == "model"
    assert manifest["layout"]["learned_dim"] == matcher.trained.dim
    assert (tmp_path / "index" / "model" / "head.safetensors").exists()
    loaded = SearchIndex.load(tmp_path / "index", cache_dir=cache_dir)
    assert loaded.matcher.trained is not None
    assert loaded.matcher.trained.dim == matcher.trained.dim
    title = cat["title"].iloc[3]
    before = index.search(title=title, k=3)
    after = loaded.search(title=title, k=3)
    assert list(after["id"]) == list(before["id"])
    assert after["id"].iloc[0] == cat["id"].iloc[3]  # its own title finds the item first
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-5)
    np.testing.assert_allclose(after["fused_sim"], before["fused_sim"], atol=1e-5)


def test_cli_train_then_match(labelled, demo20, cache_dir, tmp_path, capsys):
    _, csv = labelled
    out = tmp_path / "cli-model"
    argv = ["train", str(csv), "--label-column", "product", "-o", str(out), "--epochs", "2",
            "--views", "2", "-q", "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    config = _strict_json(out / "config.json")
    assert config["fusion"]["params"]["epochs"] == 2 and config["info"]["n_views"] == 2
    pairs_csv = tmp_path / "pairs.csv"
    assert main(["match", str(demo20.left), str(demo20.right), "--model", str(out), "-o",
                 str(pairs_csv), "--right-columns", "id=sku,title=name", "-q",
                 "--cache-dir", str(cache_dir)]) == 0
    pairs = pd.read_csv(pairs_csv)
    assert "fused_sim" in pairs.columns and len(pairs)
    assert np.isfinite(pairs["fused_sim"]).all()
    assert _f1(pairs, demo20) >= 0.8


def test_cli_train_errors(labelled, cache_dir, tmp_path, capsys):
    cat, _ = labelled
    unlabelled = tmp_path / "unlabelled.csv"
    cat.drop(columns="product").to_csv(unlabelled, index=False)
    out = tmp_path / "never"
    base = ["-o", str(out), "--epochs", "1", "--views", "2", "-q", "--cache-dir",
            str(cache_dir)]
    capsys.readouterr()
    assert main(["train", str(unlabelled), "--label-column", "product", *base]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmmatch: error:") and "product" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert main(["train", str(unlabelled), "--model", str(tmp_path), *base]) == 2
    assert "--model" in capsys.readouterr().err


def test_cli_train_without_labels(labelled, cache_dir, tmp_path):
    cat, _ = labelled
    unlabelled = tmp_path / "unlabelled.csv"
    cat.drop(columns="product").to_csv(unlabelled, index=False)
    out = tmp_path / "nolabels"
    assert main(["train", str(unlabelled), "--no-labels", "-o", str(out), "--epochs", "1",
                 "--views", "2", "-q", "--cache-dir", str(cache_dir)]) == 0
    config = _strict_json(out / "config.json")
    assert config["fusion"]["loss_spec"] == "ntxent"
    assert config["info"]["supervised"] is False
    assert config["info"]["train_rows"] == len(cat)  # every row trains, nothing held out
    model = MatchModel.load(out)
    assert model.threshold is None  # nothing labelled to calibrate on


def test_finetune_none_trains_end_to_end_and_saves_the_backbone(labelled, cache_dir,
                                                                 tmp_path):
    from mmmatch.pipeline import Matcher

    cat, _ = labelled
    m = Matcher(cache_dir=cache_dir, show_progress=False).fit(
        cat, label_column="product", mode="finetune", freeze="none", n_views=2, epochs=1,
        p=4, k=2, output=tmp_path / "ft")
    config = _strict_json(tmp_path / "ft" / "config.json")
    assert config["image_encoder"]["fine_tuned"] is True
    assert config["info"]["freeze"] == "none"
    assert (tmp_path / "ft" / "image_encoder.safetensors").exists()
    loaded = MatchModel.load(tmp_path / "ft")
    image, _ = loaded.encoders()
    assert "+tuned:" in image.encoder_id  # the tuned weights are part of its identity
    assert m.model_.image_weights is not None


def test_reranker_mined_from_the_labelled_catalogue_is_saved_in_the_model(
        trained, labelled, cache_dir, tmp_path):
    cat, _ = labelled
    matcher = Matcher(cache_dir=cache_dir, model=trained[1])
    mined = matcher.mine_pairs(cat, label_column="product", k=5)
    same = mined["left_label"] == mined["right_label"]
    assert (mined["label"] == same.astype(int)).all()
    assert set(mined["label"]) == {0, 1}
    # each unordered pair once, never an item with itself
    key = {frozenset(p) for p in zip(mined["left_id"], mined["right_id"], strict=True)}
    assert len(key) == len(mined) and (mined["left_id"] != mined["right_id"]).all()
    # every product with more than one row got a positive
    sizes = cat.groupby("product")["id"].transform("size")
    multi = set(cat.loc[sizes > 1, "product"])
    assert multi <= set(mined.loc[mined["label"] == 1, "left_label"])
    # every mined pair carries the evidence score_pairs gives it (added positives too)
    again = matcher.score_pairs(cat, cat, mined[["left_id", "right_id"]])
    for col in ["score", "image_sim", "text_sim", "fused_sim"]:
        np.testing.assert_allclose(mined[col], again[col], rtol=1e-5, atol=1e-6)
    assert mined["score"].notna().all()

    out = tmp_path / "with-reranker"
    matcher.fit_reranker(cat, label_column="product", output=out, max_iter=30)
    rr = matcher.reranker_
    # whole products are held out: no trained pair touches a held-out product's rows
    held = set(mined["left_label"]) - {lab for p in rr.training_pairs_
                                        for lab in cat.set_index("id").loc[list(p), "product"]}
    assert held and rr.calibration_["pairs"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["reranker"] == "reranker" and (out / "reranker" / "booster.txt").exists()
    loaded = MatchModel.load(out)
    assert loaded.reranker is not None and loaded.reranker.threshold_ == rr.threshold_
    m2 = Matcher(cache_dir=cache_dir, model=out)
    assert m2.trained_reranker is not None and m2.decision_threshold == rr.threshold_
    _, pairs = m2.dedupe(cat, return_pairs=True)
    assert {"probability", "decisive"} <= set(pairs.columns)
    assert (pairs["probability"] >= rr.threshold_).all()
    assert pairs["decisive"].str.contains(r"\([+-]\d").all()


def test_fit_reranker_needs_pairs_or_a_label_column(trained, labelled, cache_dir):
    cat, _ = labelled
    m = Matcher(cache_dir=cache_dir, model=trained[1])
    with pytest.raises(ValueError, match="not both"):
        m.fit_reranker(cat)
    with pytest.raises(ValueError, match=r"column 'nope' \(for label\) not found"):
        m.mine_pairs(cat.drop(columns="product"), label_column="nope")


def test_cli_train_reranker_into_the_model_folder_it_reads(trained, labelled, cache_dir,
                                                           tmp_path, capsys):
    _, path = labelled
    folder = tmp_path / "model"
    shutil.copytree(trained[1], folder)
    assert main(["train-reranker", str(path), "--label-column", "product", "--model",
                 str(folder), "-o", str(folder), "--cache-dir", str(cache_dir)]) == 0
    assert "held-out pairs" in capsys.readouterr().err
    loaded = MatchModel.load(folder)  # still a whole model, now with its reranker
    assert loaded.reranker is not None and (folder / "head.safetensors").exists()
    out = tmp_path / "rows.csv"
    assert main(["dedupe", str(path), "--model", str(folder), "--cache-dir", str(cache_dir),
                 "--pairs", str(tmp_path / "pairs.csv"), "-o", str(out), "-q"]) == 0
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert {"probability", "decisive"} <= set(pairs.columns)


def test_report_of_a_dedupe_by_the_model(trained, labelled, cache_dir, tmp_path, capsys):
    _, path = labelled
    html = tmp_path / "dedupe.html"
    assert main(["report", str(trained[1]), str(path), "--cache-dir", str(cache_dir),
                 "-o", str(html), "-q"]) == 0
    rows = Matcher(cache_dir=cache_dir, model=trained[1]).dedupe(path)
    text = html.read_text()
    multi = rows.loc[rows["cluster_size"] > 1, "cluster_id"].nunique()
    assert text.count('class="cluster-strip') == min(20, multi)
    assert "best F1" in text or "held-out" in text  # how the threshold was chosen
