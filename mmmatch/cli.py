"""The ``mmmatch`` command line: a thin argparse layer over the library.

User errors (bad files, columns, images, settings) print one line to stderr and exit with
status 2; set ``MMMATCH_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmmatch import __version__
from mmmatch._io import atomic_file
from mmmatch.catalogue import ColumnMap
from mmmatch.compare import EVIDENCE_COLUMNS
from mmmatch.exceptions import MmmatchError

__all__ = ["main"]


def parse_columns(spec: str | None) -> ColumnMap | None:
    """Parse ``"id=sku,title=name,text=brand+description,image=photo"`` into a ColumnMap."""
    if not spec:
        return None
    values: dict[str, Any] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise MmmatchError(f"bad column mapping {part!r}: expected ROLE=COLUMN, e.g. id=sku")
        role, column = (s.strip() for s in part.split("=", 1))
        values[role] = tuple(c for c in column.split("+") if c) if role == "text" else column
    try:
        return ColumnMap.from_dict(values)
    except MmmatchError:
        raise
    except TypeError as e:
        raise MmmatchError(f"bad column mapping {spec!r}: {e}") from None


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet (by extension) atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq", ".tsv"):
        raise MmmatchError(f"unsupported output format {path.suffix!r}: use .csv or .parquet")

    def write(tmp: Path) -> None:
        if suffix in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")

    return atomic_file(path, write)


def _report_problems(problems: pd.DataFrame, out: Path | None, quiet: bool) -> None:
    if problems.empty:
        return
    where = ""
    if out is not None:
        path = out.with_name(out.stem + ".problems.csv")
        write_table(problems, path)
        where = f"; listed in {path}"
    if not quiet:
        counts = problems.groupby(["problem", "action"]).size()
        summary = ", ".join(f"{n} {p} ({a})" for (p, a), n in counts.items())
        print(f"mmmatch: {len(problems)} row(s) with problems: {summary}{where}", file=sys.stderr)


def _matcher(args: argparse.Namespace) -> Any:
    from mmmatch.compare import ScoreWeights
    from mmmatch.pipeline import Matcher

    weights = None
    if getattr(args, "weights", None):
        try:
            w = [float(x) for x in args.weights.split(",")]
            weights = ScoreWeights(*w)
        except (ValueError, TypeError):
            raise MmmatchError(
                f"--weights expects IMAGE,TEXT,LEXICAL,WORD[,FUSED] numbers, got {args.weights!r}"
            ) from None
    return Matcher(
        image_encoder=None if args.no_images else args.image_encoder,
        text_encoder=args.text_encoder,
        weights=weights,
        lexical=not args.no_lexical,
        k=args.k,
        threshold=args.threshold,
        cache_dir=False if args.no_cache else args.cache_dir,
        device=args.device,
        on_bad_image=args.on_bad_image,
        show_progress=not args.quiet,
        model=getattr(args, "model", None),
        reranker=getattr(args, "reranker", None),
    )


_COLUMN_HELP = ("column roles, e.g. id=sku,title=name,text=brand+description,image=photo,"
                "source=shop (default: auto-detect id/title/image)")


def _add_pair_column_options(p: argparse.ArgumentParser) -> None:
    """``--columns`` for both catalogues, or ``--left-columns`` / ``--right-columns``."""
    p.add_argument("--columns", help=_COLUMN_HELP + " (both sides)")
    p.add_argument("--left-columns", help="column roles of the left catalogue")
    p.add_argument("--right-columns", help="column roles of the right catalogue")


def _add_matcher_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("matching")
    g.add_argument("--image-encoder", default="efficientnet-lite0",
                   help="preset, Hugging Face id or folder (default: %(default)s)")
    g.add_argument("--text-encoder", default="minilm-l6",
                   help="preset, sentence-transformers id or folder (default: %(default)s)")
    g.add_argument("--model", help="a trained model folder (mmmatch train); its encoders "
                   "replace --image-encoder / --text-encoder")
    g.add_argument("--reranker", help="a reranker folder (mmmatch train-reranker): decisions "
                   "use its probability and calibrated threshold")
    g.add_argument("--no-images", action="store_true", help="ignore images, match on text")
    g.add_argument("--no-lexical", action="store_true", help="no TF-IDF character n-grams")
    g.add_argument("--weights", help="score weights IMAGE,TEXT,LEXICAL,WORD "
                   "(default 0.5,0.05,0.3,0.15)")
    g.add_argument("-k", type=int, default=10, help="candidates per item (default: %(default)s)")
    g.add_argument("--threshold", type=float, help="match when score >= this")
    g.add_argument("--on-bad-image", choices=["text_only", "skip", "raise"], default="text_only",
                   help="what to do with unreadable images (default: %(default)s)")
    g.add_argument("--cache-dir", help="embedding cache folder (default ~/.cache/mmmatch)")
    g.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    g.add_argument("--device", help="torch device (default: cuda when available)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")


def cmd_demo(args: argparse.Namespace) -> int:
    from mmmatch.demo import make_demo_catalogues
    from mmmatch.metrics import pair_scores

    start = time.perf_counter()
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mmmatch-demo-"))
    data = make_demo_catalogues(folder, n_products=args.n_products, seed=args.seed)
    print(f"Generated two catalogues of {args.n_products} products in {folder}")
    print(f"  retailer A: {data.left.name} (id, title, brand, image)")
    print(f"  retailer B: {data.right.name} (sku, name, image), titles written its own way\n")
    matcher = _matcher(args)
    right_columns = {"id": "sku", "title": "name"}
    candidates = matcher.match(data.left, data.right, right_columns=right_columns,
                               all_candidates=True)
    pairs = candidates[candidates["is_match"]]
    write_table(pairs, folder / "matches.csv")
    shown = pairs.sort_values("score", ascending=False).head(args.show)
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        print(shown[["title_left", "name_right", "score", "image_sim", "text_sim",
                     "lexical_sim", "word_sim"]].round(3).to_string(index=False))
    truth = set(map(tuple, data.truth[["left_id", "right_id"]].to_numpy()))
    s = pair_scores(set(zip(pairs["left_id"], pairs["right_id"], strict=True)), truth)
    print(f"\n{len(pairs)} matches at threshold {matcher.decision_threshold}: "
          f"precision {s['precision']:.3f}, "
          f"recall {s['recall']:.3f}, F1 {s['f1']:.3f} against the {len(truth)} true pairs")
    print(f"All pairs with their evidence: {folder / 'matches.csv'}")
    try:
        from mmmatch.reporting import report

        html = report(candidates, data.left, data.right, right_columns=right_columns,
                      gold=data.truth, threshold=matcher.decision_threshold,
                      output=folder / "report.html", title="mmmatch demo: retailer A vs B")
        print(f"A report to open in a browser: {html}")
    except ImportError as exc:  # the [report] extra is not installed
        print(f"(no HTML report: {exc})")
    print(f"Same from the shell: mmmatch match {data.left} {data.right} "
          f"--right-columns id=sku,title=name -o matches.csv")
    print(f"Done in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    matcher = _matcher(args)
    pairs = matcher.match(
        args.left, args.right, how=args.how,
        left_columns=parse_columns(args.left_columns or args.columns),
        right_columns=parse_columns(args.right_columns or args.columns),
        all_candidates=args.all_candidates,
        one_to_one=args.one_to_one or False,
    )
    out = write_table(pairs, args.output)
    _report_problems(pd.DataFrame(pairs.attrs.get("problems", [])), out, args.quiet)
    if not args.quiet:
        n = int(pairs["is_match"].fillna(False).astype(bool).sum())
        print(f"mmmatch: {n} matched pairs written to {out}", file=sys.stderr)
    return 0


def cmd_dedupe(args: argparse.Namespace) -> int:
    matcher = _matcher(args)
    rows, pairs = matcher.dedupe(
        args.catalogue, columns=parse_columns(args.columns),
        cross_source=args.cross_source, return_pairs=True,
        mutual_k=args.mutual_k or None, max_cluster_size=args.max_cluster_size or None,
        linkage=args.linkage, min_average=args.min_average,
    )
    out = write_table(rows, args.output)
    if args.pairs:
        write_table(pairs, args.pairs)
    _report_problems(pd.DataFrame(rows.attrs.get("problems", [])), out, args.quiet)
    if not args.quiet:
        n_multi = int((rows["cluster_size"] > 1).sum())
        print(f"mmmatch: {rows['cluster_id'].nunique()} clusters; {n_multi} rows have "
              f"duplicates; written to {out}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from mmmatch.search import SearchIndex

    index = SearchIndex.build(args.catalogue, _matcher(args), parse_columns(args.columns),
                              factory=args.index_factory, nprobe=args.nprobe)
    index.save(args.output)
    _report_problems(index.problems, Path(args.output) / "items.csv", args.quiet)
    if not args.quiet:
        print(f"mmmatch: indexed {len(index)} items into {args.output}", file=sys.stderr)
    return 0


def cmd_train_reranker(args: argparse.Namespace) -> int:
    from mmmatch.catalogue import read_table

    matcher = _matcher(args)
    if (args.pairs is None) == (args.label_column is None):
        raise MmmatchError("give --pairs (labelled pairs) or --label-column (mine pairs from "
                           "a labelled catalogue), not both")
    pairs = read_table(args.pairs) if args.pairs else None
    valid = read_table(args.valid) if args.valid else None
    matcher.fit_reranker(
        args.left, args.right, pairs, valid, label_column=args.label_column,
        valid_fraction=args.valid_fraction,
        left_columns=parse_columns(args.left_columns or args.columns),
        right_columns=parse_columns(args.right_columns or args.columns),
        cross_encoder=args.cross_encoder, objective=args.objective, target=args.target,
        output=args.output, seed=args.seed)
    if not args.quiet:
        cal = matcher.reranker_.calibration_
        print(f"mmmatch: reranker trained on {len(matcher.reranker_.training_pairs_)} pairs in "
              f"{matcher.reranker_.fit_seconds_:.1f} s; threshold {cal['threshold']:.4f} "
              f"({cal['objective']}: precision {cal['precision']:.3f}, recall "
              f"{cal['recall']:.3f}, F1 {cal['f1']:.3f} on {cal['pairs']} held-out pairs); "
              f"written to {args.output}", file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    matcher = _matcher(args)
    pair = pd.DataFrame({"left_id": [str(args.left_id)], "right_id": [str(args.right_id)]})
    left_cat = matcher.load(args.left, parse_columns(args.left_columns or args.columns))
    right_cat = matcher.load(args.right or args.left,
                             parse_columns(args.right_columns or args.columns))
    scored = matcher.score_pairs(left_cat, right_cat, pair)  # catalogues read once
    row = scored.iloc[0]
    threshold = matcher.decision_threshold
    print(f"left  {args.left_id}: {_describe(left_cat, args.left_id)}")
    print(f"right {args.right_id}: {_describe(right_cat, args.right_id)}")
    for col in ["image_sim", "text_sim", "lexical_sim", "word_sim", "fused_sim"]:
        value = row[col]
        print(f"  {col:<12} {'n/a' if pd.isna(value) else f'{value:.4f}'}")
    weights = matcher.score_weights.to_dict()
    used = ", ".join(f"{k} {v:g}" for k, v in weights.items() if v > 0)
    verdict = "match" if row["score"] >= threshold else "no match"
    print(f"  {'score':<12} {row['score']:.4f}  (weights: {used}; hubness-corrected: "
          f"{matcher.hubness})")
    reranker = matcher.trained_reranker
    if reranker is not None:
        from mmmatch.rerank import with_texts

        frame = with_texts(scored, left_cat, right_cat)
        features = reranker.explain(frame).iloc[0]
        contrib = reranker.contributions(frame).iloc[0]  # one pair: cheap to read twice
        print("  reranker features, most decisive first (contribution to the log-odds; "
              "+ towards match):")
        order = contrib.drop("bias").abs().sort_values(ascending=False, kind="stable").index
        for name in order:
            value = features[name]
            print(f"    {name:<22} {'n/a' if pd.isna(value) else f'{value:.4f}':>10}  "
                  f"{contrib[name]:+.3f}")
        print(f"    {'(base rate)':<22} {'':>10}  {contrib['bias']:+.3f}")
        verdict = "match" if features["probability"] >= threshold else "no match"
        print(f"  {'probability':<12} {features['probability']:.4f}")
    print(f"  decision     {verdict} at threshold {threshold:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mmmatch.catalogue import read_table
    from mmmatch.reporting import report

    source = Path(args.matches_or_model)
    left_cols = parse_columns(args.left_columns or args.columns)
    right_cols = parse_columns(args.right_columns or args.columns)
    gold = read_table(args.gold) if args.gold else None
    calibration: Any = None
    if args.calibration:
        calibration = json.loads(Path(args.calibration).read_text())
    common = {"gold": gold, "threshold": args.threshold, "title": args.title,
              "max_pairs": args.max_pairs, "max_clusters": args.max_clusters,
              "left_columns": left_cols, "right_columns": right_cols}
    if source.is_dir():  # a model or reranker folder: match (or dedupe) first
        if not args.left:
            raise MmmatchError(f"{source} is a folder: give the catalogue(s) to match with it "
                               "(mmmatch report MODEL LEFT [RIGHT] -o report.html)")
        is_reranker = (source / "reranker.json").exists()
        if not is_reranker and not (source / "config.json").exists():
            raise MmmatchError(f"{source} is neither a model (config.json) nor a reranker "
                               "(reranker.json) folder")
        if is_reranker:
            args.reranker = str(source)
        else:
            args.model = str(source)
        matcher = _matcher(args)
        reranker = matcher.trained_reranker
        calibration = calibration or (reranker.calibration_ if reranker is not None else
                                      (matcher.trained.info.get("calibration")
                                       if matcher.trained is not None else None))
        threshold = args.threshold if args.threshold is not None else matcher.decision_threshold
        common["threshold"] = threshold
        if args.right:
            pairs = matcher.match(args.left, args.right, left_columns=left_cols,
                                  right_columns=right_cols, all_candidates=True,
                                  one_to_one=args.one_to_one or False)
            out = report(pairs, args.left, args.right, output=args.output,
                         calibration=calibration, **common)
        else:
            rows, pairs = matcher.dedupe(args.left, columns=left_cols, return_pairs=True)
            out = report(pairs, args.left, args.left, output=args.output, clusters=rows,
                         calibration=calibration, problems=rows.attrs.get("problems"),
                         **common)
    else:
        out = report(source, args.left, args.right or None, output=args.output,
                     calibration=calibration, **common)
    if not args.quiet:
        print(f"mmmatch: report written to {out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mmmatch.serve import ServeLimits, serve
    except ImportError as exc:  # the [serve] extra is not installed
        raise MmmatchError(str(exc)) from None
    limits = ServeLimits(max_request_bytes=int(args.max_upload_mb * 2**20), max_k=args.max_k)
    serve(args.paths, host=args.host, port=args.port, api_key=args.api_key,
          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits,
          compact_every=args.compact_every, device=args.device, log_level=args.log_level)
    return 0


def _describe(catalogue: Any, item_id: str) -> str:
    hits = np.flatnonzero(catalogue.ids == str(item_id))
    if not len(hits):
        raise MmmatchError(f"id {item_id!r} is not in {catalogue.name or 'the catalogue'}")
    i = int(hits[0])
    image = catalogue.images[i]
    return f"{catalogue.titles[i]!r}" + (f" (image {image})" if image is not None else "")


def cmd_search(args: argparse.Namespace) -> int:
    from mmmatch.search import SearchIndex

    if args.image is None and not args.title:
        raise MmmatchError("give --image, --title or both")
    index = SearchIndex.load(args.index, device=args.device)
    results = index.search(image=args.image, title=args.title, k=args.k)
    if args.output:
        write_table(results, args.output)
    cols = [c for c in ("rank", "id", "title", "score", *EVIDENCE_COLUMNS)
            if c in results.columns]
    with pd.option_context("display.width", 200, "display.max_colwidth", 50):
        print(results[cols].round(3).to_string(index=False))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from mmmatch.catalogue import load_catalogue

    matcher = _matcher(args)
    cat = load_catalogue(args.catalogue, parse_columns(args.columns))
    enc = matcher.encode(cat)
    arrays = {"ids": np.asarray(enc.ids, dtype=str), "fused": matcher._fuse(enc)}
    if enc.image is not None:
        arrays |= {"image": enc.image, "image_ok": enc.image_ok}
    if enc.text is not None:
        arrays |= {"text": enc.text, "text_ok": enc.text_ok}
    out = Path(args.output)
    if out.suffix != ".npz":
        raise MmmatchError(f"embed writes .npz files, got {out.name!r}")
    atomic_file(out, lambda tmp: np.savez(open(tmp, "wb"), **arrays))  # noqa: SIM115
    _report_problems(cat.problems, out, args.quiet)
    if not args.quiet:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if v.ndim == 2)
        print(f"mmmatch: wrote {shapes} to {out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.model:
        raise MmmatchError("train makes a model; --model is for match / dedupe / index")
    matcher = _matcher(args)
    label = None if args.no_labels else args.label_column
    params = {k: v for k, v in {
        "epochs": args.epochs, "dim": args.dim, "loss": args.loss, "p": args.products,
        "k": args.per_product, "lr": args.lr, "patience": args.patience,
        "checkpoint_dir": args.checkpoint_dir}.items() if v is not None}
    if args.tune_text:
        params["tune_text"] = True
    start = time.perf_counter()
    matcher.fit(args.catalogue, label_column=label, columns=parse_columns(args.columns),
                valid_fraction=args.valid_fraction, mode=args.mode, freeze=args.freeze,
                n_views=args.views, output=args.output, seed=args.seed, **params)
    model = matcher.model_
    if not args.quiet:
        info = model.info
        cal = info.get("calibration", {})
        print(f"mmmatch: trained on {info['train_rows']} rows ({info['valid_rows']} held out) "
              f"in {time.perf_counter() - start:.1f} s; best epoch {info['best_epoch']}, "
              f"valid score {info['valid_score']}", file=sys.stderr)
        if cal:
            print(f"mmmatch: threshold {cal['threshold']:.4f} (best F1 {cal['valid_f1']:.3f} "
                  f"on held-out products, fused weight {cal['fused_weight']})", file=sys.stderr)
        print(f"mmmatch: model written to {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mmmatch`` command."""
    parser = argparse.ArgumentParser(
        prog="mmmatch",
        description="Find the same product across catalogues from its photo and its title.",
    )
    parser.add_argument("--version", action="version", version=f"mmmatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="match two generated catalogues end to end")
    p.add_argument("--out", help="folder for the generated data (default: a temp folder)")
    p.add_argument("--n-products", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=12, help="matches to print")
    _add_matcher_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("match", help="join two catalogues: matched pairs with scores")
    p.add_argument("left", help="left catalogue (.csv, .parquet, .jsonl)")
    p.add_argument("right", help="right catalogue")
    p.add_argument("-o", "--output", required=True, help="output .csv or .parquet")
    _add_pair_column_options(p)
    p.add_argument("--how", choices=["inner", "left"], default="inner",
                   help="'left' keeps unmatched left rows")
    p.add_argument("--all-candidates", action="store_true",
                   help="write every candidate pair with is_match, not only matches")
    p.add_argument("--one-to-one", nargs="?", const="greedy", choices=["greedy", "hungarian"],
                   help="each row matches at most one row of the other side (greedy by "
                   "score, or hungarian: best total)")
    _add_matcher_options(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("dedupe", help="give every row a cluster_id")
    p.add_argument("catalogue")
    p.add_argument("-o", "--output", required=True, help="output .csv or .parquet")
    p.add_argument("--columns", help=_COLUMN_HELP)
    p.add_argument("--pairs", help="also write the matched pairs here")
    p.add_argument("--cross-source", action="store_true",
                   help="only link rows of different sources (needs source=COLUMN)")
    p.add_argument("--mutual-k", type=int, default=5,
                   help="link rows only when each is in the other's top k (0: every match "
                   "links; default: %(default)s)")
    p.add_argument("--max-cluster-size", type=int, default=20,
                   help="split larger clusters at their weakest links (0: no limit; "
                   "default: %(default)s)")
    p.add_argument("--linkage", choices=["single", "average"], default="single",
                   help="average: re-cluster linked rows by average linkage (needs "
                   "--min-average; default: %(default)s)")
    p.add_argument("--min-average", type=float,
                   help="smallest mean similarity of an average-linkage merge")
    _add_matcher_options(p)
    p.set_defaults(func=cmd_dedupe)

    p = sub.add_parser("index", help="build a searchable index folder of a catalogue")
    p.add_argument("catalogue")
    p.add_argument("-o", "--output", required=True, help="index folder (written atomically)")
    p.add_argument("--columns", help=_COLUMN_HELP)
    p.add_argument("--index-factory", default="auto-search",
                   help="FAISS index: auto-search (exact up to 128 MB of vectors, then IVF), "
                   "Flat (always exact) or a FAISS factory string (default: %(default)s)")
    p.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    _add_matcher_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("train-reranker", help="train the pair reranker on labelled pairs, or "
                       "on pairs mined from a labelled catalogue")
    p.add_argument("left", help="left catalogue")
    p.add_argument("right", nargs="?", help="right catalogue (default: the left one)")
    p.add_argument("--pairs", help="labelled pairs: left_id, right_id, label")
    p.add_argument("--label-column", help="instead of --pairs: mine pairs (retrieved "
                   "candidates labelled by this product-id column, so hard negatives) ")
    p.add_argument("--valid", help="held-out labelled pairs for the threshold (default: "
                   "--valid-fraction of the left items' pairs, or of the products)")
    p.add_argument("--valid-fraction", type=float, default=0.2)
    p.add_argument("-o", "--output", required=True, help="output folder (atomic): with "
                   "--model, the model folder with the reranker inside; else a reranker folder")
    p.add_argument("--cross-encoder", action="store_true",
                   help="also fine-tune a MiniLM cross-encoder (slower)")
    p.add_argument("--objective", choices=["f1", "precision_at", "recall_at"], default="f1",
                   help="operating point (default: %(default)s)")
    p.add_argument("--target", type=float, help="precision / recall floor of the objective")
    _add_pair_column_options(p)
    p.add_argument("--seed", type=int, default=0)
    _add_matcher_options(p)
    p.set_defaults(func=cmd_train_reranker)

    p = sub.add_parser("explain", help="print the evidence behind one pair's score")
    p.add_argument("left", help="left catalogue")
    p.add_argument("right", nargs="?", help="right catalogue (default: the left one, for "
                   "duplicates within a catalogue)")
    p.add_argument("--left-id", required=True, help="id of the left row")
    p.add_argument("--right-id", required=True, help="id of the right row")
    _add_pair_column_options(p)
    _add_matcher_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("report", help="write a self-contained HTML report of matches")
    p.add_argument("matches_or_model", metavar="MATCHES_OR_MODEL",
                   help="a matches file (mmmatch match --all-candidates; dedupe pairs) or a "
                   "model / reranker folder to match LEFT [RIGHT] with first")
    p.add_argument("left", nargs="?", help="left catalogue (thumbnails, titles, sizes)")
    p.add_argument("right", nargs="?", help="right catalogue (without it, with a model: "
                   "a dedupe of LEFT)")
    p.add_argument("-o", "--output", required=True, help="the .html file (written atomically)")
    p.add_argument("--gold", help="true pairs (left_id, right_id[, label]): adds precision / "
                   "recall / F1 and the precision-recall curve")
    p.add_argument("--calibration", help="JSON of how the threshold was chosen")
    p.add_argument("--title", default="mmmatch match report")
    p.add_argument("--max-pairs", type=int, default=500, help="pair cards (default: "
                   "%(default)s, the most uncertain first)")
    p.add_argument("--max-clusters", type=int, default=20)
    p.add_argument("--one-to-one", nargs="?", const="greedy", choices=["greedy", "hungarian"])
    _add_pair_column_options(p)
    _add_matcher_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve search indexes over HTTP (FastAPI + uvicorn)")
    p.add_argument("paths", nargs="+", metavar="MODEL_OR_INDEX_DIR",
                   help="an index folder (mmmatch index), a model folder (served as an empty "
                   "index to add items to), a folder of index folders, or NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--api-key", help="require this X-API-Key header (default: "
                   "$MMMATCH_API_KEY; none: open)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="concurrent queries embedded together (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=25.0,
                   help="at most how long a query waits for as many others as the last "
                   "batch had (an idle server answers at once; default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=64, help="largest request body")
    p.add_argument("--max-k", type=int, default=100, help="largest k (default: %(default)s)")
    p.add_argument("--compact-every", type=int, default=1000,
                   help="rewrite the index snapshot after this many journaled changes")
    p.add_argument("--device", help="torch device")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("search", help="search an index with a photo, a title, or both")
    p.add_argument("index", help="folder written by 'mmmatch index'")
    p.add_argument("--image", help="query photo (path or URL)")
    p.add_argument("--title", help="query title")
    p.add_argument("-k", type=int, default=10, help="results (default: %(default)s)")
    p.add_argument("-o", "--output", help="also write the results (.csv / .parquet)")
    p.add_argument("--device", help="torch device")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("train", help="train a model on a labelled (or unlabelled) catalogue")
    p.add_argument("catalogue", help="catalogue (.csv, .parquet, .jsonl) with a label column")
    p.add_argument("-o", "--output", required=True, help="model folder (written atomically)")
    p.add_argument("--label-column", default="label",
                   help="column whose equal values are the same product (default: %(default)s)")
    p.add_argument("--no-labels", action="store_true",
                   help="train without labels: each row against augmented copies of itself")
    p.add_argument("--columns", help=_COLUMN_HELP)
    p.add_argument("--mode", choices=["head", "finetune"], default="head",
                   help="head: frozen encoders, cached embeddings (fast); finetune: also the "
                   "top of the image backbone (default: %(default)s)")
    p.add_argument("--freeze", default="last:5",
                   help="finetune: 'last:N' blocks train, or 'none' (default: %(default)s)")
    p.add_argument("--views", type=int, default=4,
                   help="views per row: the original plus augmented copies (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 40, stops early)")
    p.add_argument("--dim", type=int, help="fused embedding width (default 256)")
    p.add_argument("--loss", help="loss terms joined by '+' (default triplet+arcface; "
                   "ntxent without labels)")
    p.add_argument("--products", type=int, help="products per batch (default 16)")
    p.add_argument("--per-product", type=int, help="examples per product in a batch (default 4)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, help="epochs without improvement before stopping")
    p.add_argument("--valid-fraction", type=float, default=0.15,
                   help="share of products held out for early stopping and the threshold")
    p.add_argument("--checkpoint-dir", help="checkpoint every epoch here; rerun to resume")
    p.add_argument("--tune-text", action="store_true",
                   help="first fine-tune the text encoder on rows of one product")
    p.add_argument("--seed", type=int, default=0)
    _add_matcher_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="write a catalogue's embeddings to .npz")
    p.add_argument("catalogue")
    p.add_argument("-o", "--output", required=True, help="output .npz")
    p.add_argument("--columns", help=_COLUMN_HELP)
    _add_matcher_options(p)
    p.set_defaults(func=cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmmatch`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MmmatchError, FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("MMMATCH_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mmmatch: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmmatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
