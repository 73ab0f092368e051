import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mmmatch
from mmmatch.catalogue import ColumnMap
from mmmatch.cli import build_parser, main, parse_columns, write_table
from mmmatch.exceptions import MmmatchError

RIGHT = ["--right-columns", "id=sku,title=name"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mmmatch: error:")
    assert "Traceback" not in err
    return lines[0]


# -- helpers ---------------------------------------------------------------------------------


def test_parse_columns():
    assert parse_columns(None) is None and parse_columns("") is None
    assert parse_columns("id=sku, title = name,text=brand+description,image=photo") == ColumnMap(
        id="sku", title="name", text=("brand", "description"), image="photo")
    assert parse_columns("source=shop,label=product") == ColumnMap(source="shop",
                                                                   label="product")
    with pytest.raises(MmmatchError, match="ROLE=COLUMN"):
        parse_columns("id=sku,name")
    with pytest.raises(MmmatchError, match="colour"):
        parse_columns("colour=c")


def test_write_table(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    pd.testing.assert_frame_equal(pd.read_csv(write_table(df, tmp_path / "o.csv")), df)
    pd.testing.assert_frame_equal(pd.read_parquet(write_table(df, tmp_path / "o.parquet")), df,
                                  check_dtype=False)
    assert pd.read_csv(write_table(df, tmp_path / "o.tsv"), sep="\t")["b"].tolist() == ["x", "y"]
    with pytest.raises(MmmatchError, match="unsupported output format"):
        write_table(df, tmp_path / "o.xlsx")


# -- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "match", "dedupe", "index", "search", "embed"])
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: mmmatch {command}" in capsys.readouterr().out


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmmatch {mmmatch.__version__}"


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--n-products", "8", "--no-cache", "-q", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "precision" in stdout and "recall" in stdout
    assert f"against the {len(pd.read_csv(out / 'truth.csv'))} true pairs" in stdout
    assert (out / "retailer_a.csv").exists() and (out / "retailer_b.csv").exists()
    matches = pd.read_csv(out / "matches.csv")
    assert list(matches.columns[:3]) == ["left_id", "right_id", "score"]
    assert {"is_match", "title_left", "name_right"} <= set(matches.columns)
    truth = pd.read_csv(out / "truth.csv")
    found = set(zip(matches["left_id"], matches["right_id"], strict=True))
    assert len(found & set(zip(truth["left_id"], truth["right_id"], strict=True))) >= 5
    assert matches["is_match"].all()  # matches only; the report shows every candidate
    html = (out / "report.html").read_text()
    assert "report.html" in stdout and html.count('class="pair-card') > len(matches)


def test_match_command(demo, tmp_path, capsys):
    out = tmp_path / "pairs.csv"
    code = main(["match", str(demo.left), str(demo.right), *RIGHT, "-o", str(out), "-k", "5",
                 "--all-candidates"])
    assert code == 0
    pairs = pd.read_csv(out)
    assert len(pairs) == 8 * 5
    assert list(pairs.columns[:3]) == ["left_id", "right_id", "score"]
    assert {"image_sim", "text_sim", "lexical_sim", "rank", "is_match"} <= set(pairs.columns)
    assert pairs.groupby("left_id")["rank"].max().max() == 5
    assert set(pairs["right_id"]) <= set(pd.read_csv(demo.right)["sku"])
    assert "matched pairs written to" in capsys.readouterr().err
    assert not (tmp_path / "pairs.problems.csv").exists()
    # --threshold filters the written pairs
    strict = tmp_path / "strict.csv"
    cut = float(pairs["score"].median())
    assert main(["match", str(demo.left), str(demo.right), *RIGHT, "-o", str(strict), "-k", "5",
                 "--threshold", str(cut), "-q"]) == 0
    kept = pd.read_csv(strict)
    assert 0 < len(kept) < len(pairs)
    assert (kept["score"] >= cut - 1e-6).all() and kept["is_match"].all()


def test_match_command_left_join_parquet_and_problems(demo_frames, demo, tmp_path):
    left = demo_frames[0].copy()
    left.loc[0, "image"] = str(tmp_path / "gone.jpg")
    left_path = tmp_path / "left.parquet"
    left.to_parquet(left_path, index=False)
    out = tmp_path / "pairs.parquet"
    code = main(["match", str(left_path), str(demo.right), *RIGHT, "-o", str(out), "--how",
                 "left", "--threshold", "10", "-q"])
    assert code == 0
    pairs = pd.read_parquet(out)
    assert sorted(pairs["left_id"]) == sorted(left["id"])  # nothing matches at 10
    assert pairs["right_id"].isna().all()
    problems = pd.read_csv(tmp_path / "pairs.problems.csv")
    assert problems[["catalogue", "row", "id", "problem"]].values.tolist() == [
        ["left", 0, left.loc[0, "id"], "missing"]]


def test_dedupe_command(demo_frames, tmp_path, capsys):
    left, right = demo_frames
    both = pd.concat([left, right], ignore_index=True)
    path = tmp_path / "all.csv"
    both[["id", "title", "image"]].to_csv(path, index=False)
    code = main(["dedupe", str(path), "-o", str(tmp_path / "rows.csv"), "--threshold", "10",
                 "--pairs", str(tmp_path / "none.csv")])
    assert code == 0
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert rows["id"].tolist() == both["id"].tolist()
    assert rows["cluster_id"].tolist() == list(range(len(both)))  # nothing linked
    assert (rows["cluster_size"] == 1).all()
    assert len(pd.read_csv(tmp_path / "none.csv")) == 0
    assert f"{len(both)} clusters" in capsys.readouterr().err
    # with every candidate linked and no guard, the catalogue is one cluster
    code = main(["dedupe", str(path), "-o", str(tmp_path / "rows.parquet"), "--threshold",
                 "-10", "--pairs", str(tmp_path / "pairs.csv"), "-q", "--mutual-k", "0",
                 "--max-cluster-size", "0"])
    assert code == 0
    rows = pd.read_parquet(tmp_path / "rows.parquet")
    assert rows["cluster_id"].nunique() == 1 and (rows["cluster_size"] == len(both)).all()
    # the default guard keeps the same links from chaining everything together
    code = main(["dedupe", str(path), "-o", str(tmp_path / "guarded.csv"), "--threshold",
                 "-10", "-q", "--max-cluster-size", "6"])
    assert code == 0
    guarded = pd.read_csv(tmp_path / "guarded.csv")
    assert guarded["cluster_size"].max() <= 6 and guarded["cluster_id"].nunique() > 1
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert len(pairs) > 0 and pairs["is_match"].all()
    assert (pairs["left_id"] != pairs["right_id"]).all()


def test_index_and_search_commands(demo, hf_vit_dir, hf_st_dir, tmp_path, capsys):
    folder = tmp_path / "idx"
    encoders = ["--image-encoder", str(hf_vit_dir), "--text-encoder", str(hf_st_dir)]
    assert main(["index", str(demo.left), "-o", str(folder), *encoders, "-q"]) == 0
    assert (folder / "manifest.json").exists()
    capsys.readouterr()
    left = pd.read_csv(demo.left)
    title = left["title"].iloc[3]
    results = tmp_path / "res.csv"
    assert main(["search", str(folder), "--title", title, "-k", "3", "-o", str(results)]) == 0
    stdout = capsys.readouterr().out
    assert left["id"].iloc[3] in stdout.splitlines()[1]
    res = pd.read_csv(results)
    assert res["id"].iloc[0] == left["id"].iloc[3] and len(res) == 3
    image = str(demo.folder / left["image"].iloc[5])
    assert main(["search", str(folder), "--image", image, "-k", "1"]) == 0
    assert left["id"].iloc[5] in capsys.readouterr().out


def test_index_and_search_commands_with_default_encoders(demo, tmp_path, capsys):
    folder = tmp_path / "idx"
    assert main(["index", str(demo.left), "-o", str(folder), "-q"]) == 0
    title = pd.read_csv(demo.left)["title"].iloc[3]
    assert main(["search", str(folder), "--title", title, "-k", "3"]) == 0


def test_embed_command(demo, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(demo.left), "-o", str(out)]) == 0
    with np.load(out) as z:
        assert set(z.files) == {"ids", "fused", "image", "image_ok", "text", "text_ok"}
        assert z["ids"].tolist() == pd.read_csv(demo.left)["id"].tolist()
        assert z["fused"].shape == (8, 1280 + 384)
        np.testing.assert_allclose(np.linalg.norm(z["fused"], axis=1), 1, atol=1e-5)
        assert z["image"].shape == (8, 1280) and z["text"].shape == (8, 384)
        assert z["image_ok"].all() and z["text_ok"].all()
    assert "fused (8, 1664)" in capsys.readouterr().err


def test_embed_text_only(demo, tmp_path):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(demo.right), "--columns", "id=sku,title=name", "--no-images",
                 "-q", "-o", str(out)]) == 0
    with np.load(out) as z:
        assert "image" not in z.files
        assert z["fused"].shape == (8, 384)
        assert z["ids"][0].startswith("B-")


# -- user errors -----------------------------------------------------------------------------


def test_missing_file(tmp_path, capsys):
    code = main(["match", str(tmp_path / "nope.csv"), str(tmp_path / "b.csv"), "-o",
                 str(tmp_path / "o.csv"), "-q"])
    assert code == 2
    assert "nope.csv" in _one_error_line(capsys)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("spec", ["id", "id=sku,name", "colour=red"])
def test_bad_columns_spec(demo, tmp_path, capsys, spec):
    code = main(["dedupe", str(demo.left), "--columns", spec, "-o", str(tmp_path / "o.csv")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "column" in line


def test_unknown_column(demo, tmp_path, capsys):
    code = main(["embed", str(demo.left), "--columns", "title=headline", "-o",
                 str(tmp_path / "e.npz")])
    assert code == 2
    assert "'headline'" in _one_error_line(capsys)


def test_bad_weights(demo, tmp_path, capsys):
    code = main(["match", str(demo.left), str(demo.right), "--weights", "1,x", "-o",
                 str(tmp_path / "o.csv")])
    assert code == 2
    assert "--weights" in _one_error_line(capsys)


def test_search_errors(tmp_path, capsys):
    assert main(["search", str(tmp_path)]) == 2
    assert "--image, --title" in _one_error_line(capsys)
    assert main(["search", str(tmp_path / "nothing"), "--title", "tea"]) == 2
    assert "no mmmatch search index" in _one_error_line(capsys)


def test_unknown_encoder(demo, tmp_path, capsys):
    code = main(["embed", str(demo.left), "--image-encoder", "resnet-9000", "-o",
                 str(tmp_path / "e.npz")])
    assert code == 2
    assert "efficientnet-lite0" in _one_error_line(capsys)


def test_debug_env_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("MMMATCH_DEBUG", "1")
    with pytest.raises(MmmatchError, match="not found"):
        main(["embed", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "e.npz")])


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["match", "only-one.csv"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_console_script_version():
    exe = shutil.which("mmmatch") or str(Path(sys.executable).with_name("mmmatch"))
    assert Path(exe).exists(), "the mmmatch console script is not installed"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MMMATCH_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mmmatch {mmmatch.__version__}"


def test_explain_prints_the_evidence_of_one_pair(demo, capsys):
    left_id, right_id = demo.truth.iloc[0][["left_id", "right_id"]]
    argv = ["explain", str(demo.left), str(demo.right), "--right-columns", "id=sku,title=name",
            "--left-id", str(left_id), "--right-id", str(right_id), "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for col in ("image_sim", "text_sim", "lexical_sim", "word_sim", "score", "decision"):
        assert col in out
    assert f"left  {left_id}" in out and "decision     match" in out
    assert main([*argv[:-3], "--right-id", "nope", "-q"]) == 2
    assert "nope" in capsys.readouterr().err


def test_train_reranker_then_match_with_it(demo, tmp_path, capsys):
    left, right = pd.read_csv(demo.left), pd.read_csv(demo.right)
    rng = np.random.default_rng(1)
    neg = pd.DataFrame({"left_id": rng.choice(left["id"], 100),
                        "right_id": rng.choice(right["sku"], 100), "label": 0})
    truth = set(zip(demo.truth["left_id"], demo.truth["right_id"], strict=True))
    neg = neg[[p not in truth for p in zip(neg["left_id"], neg["right_id"], strict=True)]]
    pairs = pd.concat([demo.truth[["left_id", "right_id"]].assign(label=1), neg])
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "rr"
    assert main(["train-reranker", str(demo.left), str(demo.right), *RIGHT, "--pairs",
                 str(tmp_path / "pairs.csv"), "-o", str(out)]) == 0
    assert "threshold" in capsys.readouterr().err and (out / "reranker.json").exists()
    matches = tmp_path / "m.csv"
    assert main(["match", str(demo.left), str(demo.right), *RIGHT, "--reranker", str(out),
                 "--one-to-one", "-o", str(matches), "-q"]) == 0
    m = pd.read_csv(matches)
    assert "probability" in m and m["left_id"].is_unique and m["right_id"].is_unique
    assert main(["match", str(demo.left), str(demo.right), *RIGHT, "--reranker",
                 str(tmp_path), "-o", str(matches), "-q"]) == 2
    assert "reranker.json" in capsys.readouterr().err
    left_id, right_id = demo.truth.iloc[0][["left_id", "right_id"]]
    assert main(["explain", str(demo.left), str(demo.right), *RIGHT, "--left-id", left_id,
                 "--right-id", right_id, "--reranker", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "most decisive first" in text and "code_clash" in text and "probability" in text
    lines = text.split("most decisive first")[1].splitlines()[1:]
    contrib = [abs(float(line.split()[-1])) for line in lines
               if line.startswith("    ") and "(base rate)" not in line
               and line.split()[-1][0] in "+-"]
    assert len(contrib) >= 5 and contrib == sorted(contrib, reverse=True)
    assert main(["train-reranker", str(demo.left), str(demo.right), *RIGHT, "-o",
                 str(tmp_path / "x")]) == 2
    assert "--pairs" in capsys.readouterr().err


def test_train_reranker_mines_pairs_from_a_labelled_catalogue(demo, tmp_path, capsys):
    left = pd.read_csv(demo.left)
    right = pd.read_csv(demo.right).rename(columns={"sku": "id", "name": "title"})
    truth = dict(zip(demo.truth["right_id"], demo.truth["left_id"], strict=True))
    left["product"] = left["id"]
    right["product"] = [truth.get(i, f"r{i}") for i in right["id"]]
    cat = pd.concat([left, right], ignore_index=True)
    cat["image"] = [str(demo.folder / p) for p in cat["image"]]
    cat["id"] = [f"x{i}" for i in range(len(cat))]
    cat.to_csv(tmp_path / "cat.csv", index=False)
    out = tmp_path / "rr"
    assert main(["train-reranker", str(tmp_path / "cat.csv"), "--label-column", "product",
                 "-o", str(out)]) == 0
    assert "held-out pairs" in capsys.readouterr().err
    rows = tmp_path / "rows.csv"
    assert main(["dedupe", str(tmp_path / "cat.csv"), "--reranker", str(out), "--linkage",
                 "average", "--min-average", "0.6", "-o", str(rows), "-q"]) == 0
    got = pd.read_csv(rows)
    assert len(got) == len(cat) and got["cluster_id"].nunique() < len(cat)


def test_report_from_a_matches_file_and_from_a_reranker_folder(demo, tmp_path, capsys):
    matches = tmp_path / "m.csv"
    assert main(["match", str(demo.left), str(demo.right), *RIGHT, "--all-candidates",
                 "-o", str(matches), "-q"]) == 0
    demo.truth.to_csv(tmp_path / "gold.csv", index=False)
    html = tmp_path / "r.html"
    assert main(["report", str(matches), str(demo.left), str(demo.right), *RIGHT, "--gold",
                 str(tmp_path / "gold.csv"), "-o", str(html)]) == 0
    assert "report written" in capsys.readouterr().err
    text = html.read_text()
    n_cards = text.count('class="pair-card')
    assert n_cards == min(500, len(pd.read_csv(matches)))
    assert "precision" in text and "http://" not in text and "https://" not in text
    # a folder that is neither a model nor a reranker is refused with one line
    assert main(["report", str(tmp_path), str(demo.left), "-o", str(html)]) == 2
    assert "neither a model" in capsys.readouterr().err
