"""The :class:`Matcher`: a thin composition of the stages.

catalogue -> encode -> fuse -> index -> retrieve (dense + lexical) -> compare -> decide ->
cluster. Each stage is a plain function in its own module; the Matcher only holds the
settings and the loaded encoders, and passes arrays and DataFrames between stages.

Example:
    >>> import pandas as pd, mmmatch
    >>> left = pd.DataFrame({"id": [1, 2], "title": ["Sony turntable PS-LX350H", "Oat milk 1L"]})
    >>> right = pd.DataFrame({"id": ["a", "b"], "title": ["oatly oat drink 1 l", "sony pslx350h"]})
    >>> pairs = mmmatch.match(left, right, image_encoder=None)  # doctest: +SKIP
    >>> pairs[["id_left", "id_right", "score"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mmmatch.cache import EmbeddingCache, default_cache_dir
from mmmatch.catalogue import PROBLEM_COLUMNS, Catalogue, ColumnMap, load_catalogue
from mmmatch.cluster import DEFAULT_MAX_SIZE, DEFAULT_MUTUAL_K, safe_clusters
from mmmatch.cluster import one_to_one as assign_one_to_one
from mmmatch.compare import (
    EVIDENCE_COLUMNS,
    SEARCH_WEIGHTS,
    TITLE_SEARCH_WEIGHTS,
    FusedLayout,
    ScoreWeights,
    compare_pairs,
)
from mmmatch.decide import apply_threshold
from mmmatch.encode import EncodedCatalogue, OnBadImage, encode_catalogue
from mmmatch.encoders import get_encoder
from mmmatch.fusion import FusionWeights, fuse
from mmmatch.hubness import dense_neighbourhood, sparse_neighbourhood
from mmmatch.images import ImageLimits
from mmmatch.index import EmbeddingIndex
from mmmatch.lexical import LexicalModel, fit_lexical_signals
from mmmatch.metrics import best_f1_threshold
from mmmatch.model import MatchModel
from mmmatch.retrieve import retrieve_candidates

__all__ = ["DEFAULT_THRESHOLD", "Matcher", "dedupe", "match"]

DEFAULT_THRESHOLD = 0.0
"""Zero-shot decision threshold on the hubness-corrected ``score``: a pair matches when it is
closer than both items' typical nearest neighbours. The thresholds that maximise F1 on the
Abt-Buy and Amazon-Google *valid* splits are -0.016 and -0.004. Without hubness correction
scores are raw cosines and need a threshold of their own (calibrate on labelled pairs)."""

_EVIDENCE_FLOOR = 1e-4

PAIR_COLUMNS = ["left_id", "right_id", "score", *EVIDENCE_COLUMNS, "rank"]


class Matcher:
    """Match and deduplicate catalogues by photo and title.

    Args:
        image_encoder: preset name, Hugging Face id or folder; ``None`` ignores images.
        text_encoder: preset name, sentence-transformers id or folder; ``None`` ignores text.
        weights: weight of the image, text-embedding and lexical signals in the match score
            (default :class:`~mmmatch.compare.ScoreWeights`).
        search_weights: the same for searching a :class:`~mmmatch.search.SearchIndex` with
            a photo, and a typed title or not (default :data:`~mmmatch.compare.SEARCH_WEIGHTS`).
        title_search_weights: the same for title-only searches of an index that has images
            (default :data:`~mmmatch.compare.TITLE_SEARCH_WEIGHTS`); a text-only index
            scores every query with ``search_weights``, keeping the n-gram evidence that
            tells model numbers apart.
        lexical: add TF-IDF character n-gram and word evidence (and candidates) from the text.
        hubness: correct each signal for hubness (CSLS, see :mod:`mmmatch.hubness`) when
            matching and deduplicating; search scores stay raw.
        hubness_k: neighbourhood size of the hubness correction (2 was best on the Abt-Buy
            and Amazon-Google valid splits, against 5; a catalogue where one product has
            many duplicates may want more, or ``hubness=False``).
        k: candidates retrieved per item.
        threshold: pairs with ``score >= threshold`` are matches (default: the model's
            calibrated threshold, else :data:`DEFAULT_THRESHOLD`).
        cache_dir: embedding cache folder; ``None`` uses :func:`~mmmatch.cache.default_cache_dir`,
            ``False`` disables caching.
        device: torch device for the encoders (default CUDA when available).
        on_bad_image: ``"text_only"``, ``"skip"`` or ``"raise"`` (see
            :func:`~mmmatch.encode.encode_catalogue`).
        image_limits: byte / pixel / timeout limits for images.
        show_progress: show tqdm progress bars.
        model: a trained model folder (see :mod:`mmmatch.model`) or
            :class:`~mmmatch.model.MatchModel`: its encoders replace ``image_encoder`` /
            ``text_encoder``, its learned embedding joins retrieval and the score (the
            ``fused`` signal), and its weights and threshold apply unless given here.
        reranker: a :class:`~mmmatch.rerank.PairReranker` (or its folder): candidates get a
            ``probability`` and the decision is ``probability >= threshold`` (default: the
            reranker's calibrated threshold, else 0.5).

    Example:
        >>> m = Matcher(image_encoder=None)  # doctest: +SKIP
        >>> pairs = m.match(left_df, right_df)  # doctest: +SKIP
    """

    def __init__(
        self,
        image_encoder: str | None = "efficientnet-lite0",
        text_encoder: str | None = "minilm-l6",
        weights: ScoreWeights | None = None,
        search_weights: ScoreWeights | None = None,
        title_search_weights: ScoreWeights | None = None,
        lexical: bool = True,
        hubness: bool = True,
        hubness_k: int = 2,
        k: int = 10,
        threshold: float | None = None,
        cache_dir: str | Path | Literal[False] | None = None,
        device: str | None = None,
        on_bad_image: OnBadImage = "text_only",
        image_limits: ImageLimits | None = None,
        show_progress: bool = False,
        model: str | Path | MatchModel | None = None,
        reranker: str | Path | Any = None,
    ) -> None:
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.weights = weights
        self.search_weights = search_weights
        self.title_search_weights = title_search_weights
        self.lexical = lexical
        self.hubness = hubness
        self.hubness_k = hubness_k
        self.k = k
        self.threshold = threshold
        self.cache_dir = cache_dir
        self.device = device
        self.on_bad_image = on_bad_image
        self.image_limits = image_limits
        self.show_progress = show_progress
        self.model = model
        self.reranker = reranker

    # -- stage helpers ----------------------------------------------------------------------
    def _resolve(self, fitted: str, given: str, load: Any) -> Any:
        """A learned part: fitted here (``fitted``), else the ``given`` object or folder
        (loaded once and kept aside, so the constructor argument stays as given)."""
        value = getattr(self, fitted, None)
        if value is not None:
            return value
        param = getattr(self, given)
        if param is None:
            return None
        cache = self.__dict__.setdefault("_loaded", {})
        key = (given, id(param))
        if key not in cache:
            cache[key] = param if not isinstance(param, str | Path) else load(param,
                                                                              self.device)
        return cache[key]

    @property
    def trained(self) -> MatchModel | None:
        """The trained model in use: fitted by :meth:`fit`, else loaded from ``model``."""
        return self._resolve("model_", "model", MatchModel.load)

    @property
    def trained_reranker(self) -> Any:
        """The reranker in use: fitted by :meth:`fit_reranker`, else loaded from
        ``reranker``, else the trained model's; ``None`` without one."""
        from mmmatch.rerank import PairReranker

        reranker = self._resolve("reranker_", "reranker", PairReranker.load)
        if reranker is None and self.trained is not None:
            return self.trained.reranker
        return reranker

    @property
    def decision_threshold(self) -> float:
        """The threshold in use: given, else the reranker's (on its probability), else the
        model's, else :data:`DEFAULT_THRESHOLD`."""
        if self.threshold is not None:
            return float(self.threshold)
        reranker = self.trained_reranker
        if reranker is not None:
            return 0.5 if reranker.threshold_ is None else float(reranker.threshold_)
        model = self.trained
        if model is not None and model.threshold is not None:
            return float(model.threshold)
        return DEFAULT_THRESHOLD

    @property
    def score_weights(self) -> ScoreWeights:
        """The score weights in use (given, the model's, or the default)."""
        model = self.trained
        return self.weights or (model.score_weights if model else ScoreWeights())

    @property
    def search_score_weights(self) -> ScoreWeights:
        """The search weights in use (given, the model's, or the default)."""
        model = self.trained
        return self.search_weights or (model.search_weights if model else SEARCH_WEIGHTS)

    @property
    def title_search_score_weights(self) -> ScoreWeights:
        """The title-only search weights in use (given, the model's, or the default)."""
        model = self.trained
        return self.title_search_weights or (
            model.search_weights if model else TITLE_SEARCH_WEIGHTS)

    def fusion_weights_for(self, w: ScoreWeights) -> FusionWeights:
        """Dense retrieval weights for score weights ``w``: image vs. the text signals
        (vs. the learned embedding, with a trained model)."""
        text = w.text + (w.lexical + w.word if self.lexical else 0.0)
        learned = w.fused if self.trained is not None else 0.0
        if w.image + text + learned <= 0:
            return FusionWeights()
        # a signal weighted 0 keeps a sliver of its part, so its evidence column (a cosine,
        # blind to scale) is still reported; retrieval is unaffected at this size
        return FusionWeights(image=max(w.image, _EVIDENCE_FLOOR), text=max(text, _EVIDENCE_FLOOR),
                             learned=max(learned, _EVIDENCE_FLOOR) if self.trained else 0.0)

    @property
    def fusion_weights(self) -> FusionWeights:
        """Dense retrieval weights of matching: image vs. the text signals together."""
        return self.fusion_weights_for(self.score_weights)

    def _cache(self) -> EmbeddingCache | None:
        if self.cache_dir is False:
            return None
        return EmbeddingCache(self.cache_dir or default_cache_dir())

    def encoders(self, use_images: bool = True, use_text: bool = True) -> tuple[Any, Any]:
        """The (image, text) encoders, loaded on first use; ``None`` where not used."""
        model = self.trained
        if model is not None:
            return model.encoders(self.device, use_images, use_text)
        image = get_encoder(self.image_encoder, "image", self.device) if (
            use_images and self.image_encoder) else None
        text = get_encoder(self.text_encoder, "text", self.device) if (
            use_text and self.text_encoder) else None
        return image, text

    def load(
        self, catalogue: Any, columns: ColumnMap | dict | None = None, name: str | None = None
    ) -> Catalogue:
        """:func:`~mmmatch.catalogue.load_catalogue` with this matcher's settings."""
        return load_catalogue(catalogue, columns, name=name)

    def encode(
        self, catalogue: Catalogue, use_images: bool | None = None, use_text: bool | None = None
    ) -> EncodedCatalogue:
        """Embed a catalogue (bad images handled per ``on_bad_image``).

        Args:
            catalogue: a loaded catalogue.
            use_images: embed images; default: when the catalogue has any.
            use_text: embed text; default: when the catalogue has any.
        """
        if use_images is None:
            use_images = any(im is not None for im in catalogue.images)
        if use_text is None:
            use_text = any(bool(t) for t in catalogue.texts)
        image, text = self.encoders(use_images, use_text)
        cache = self._cache()
        try:
            encoded = encode_catalogue(
                catalogue, image, text, cache, self.on_bad_image, self.image_limits,
                self.show_progress,
            )
        finally:
            if cache is not None:
                cache.close()
        model = self.trained
        if model is not None:
            encoded.learned = model.embed_encoded(encoded)
        return encoded

    def _encode_pair(
        self, left: Catalogue, right: Catalogue
    ) -> tuple[EncodedCatalogue, EncodedCatalogue, FusedLayout]:
        use_images = any(im is not None for c in (left, right) for im in c.images)
        use_text = any(bool(t) for c in (left, right) for t in c.texts)
        if not (use_images and self.image_encoder) and not (use_text and self.text_encoder):
            raise ValueError("nothing to compare: the encoders in use see no images or text")
        le = self.encode(left, use_images, use_text)
        re_ = le if right is left else self.encode(right, use_images, use_text)
        return le, re_, FusedLayout.of(le)

    def _fuse(self, encoded: EncodedCatalogue, weights: FusionWeights | None = None
              ) -> np.ndarray:
        return fuse(encoded.image, encoded.image_ok, encoded.text, encoded.text_ok,
                    weights or self.fusion_weights, learned=encoded.learned)

    def candidates(
        self,
        left: EncodedCatalogue,
        right: EncodedCatalogue,
        layout: FusedLayout,
        k: int | None = None,
        exclude_self: bool = False,
        cross_source: bool = False,
    ) -> pd.DataFrame:
        """Retrieve and compare candidate pairs.

        Dense candidates (FAISS over the fused vectors) and lexical candidates (TF-IDF) are
        merged, compared (:func:`~mmmatch.compare.compare_pairs`) and the best ``k`` per
        left item kept by ``score``.

        Returns:
            DataFrame ``left_id, right_id, score``, the evidence columns, ``rank``
            plus ``left_pos, right_pos`` (row positions in the encoded catalogues).
        """
        return self._candidates(left, right, layout, k, exclude_self, cross_source)[0]

    def _candidates(
        self,
        left: EncodedCatalogue,
        right: EncodedCatalogue,
        layout: FusedLayout,
        k: int | None = None,
        exclude_self: bool = False,
        cross_source: bool = False,
    ) -> tuple[pd.DataFrame, Any]:
        """:meth:`candidates`, and a function ``(li, ri) -> evidence`` that scores other
        pairs of positions in the same context (fused vectors, TF-IDF, hubness terms)."""
        k = k or self.k
        lf = self._fuse(left)
        rf = lf if right is left else self._fuse(right)
        index = EmbeddingIndex(rf.shape[1], "cosine")
        index.add(rf, right.ids)
        query_sources = cand_sources = None
        if cross_source:
            if left.catalogue.sources is None or right.catalogue.sources is None:
                raise ValueError("cross_source needs a source column (columns={'source': ...})")
            query_sources = left.catalogue.sources
            cand_sources = dict(zip(right.ids, right.catalogue.sources, strict=True))
        dense = retrieve_candidates(
            index, lf, left.ids, k, exclude_self, query_sources, cand_sources
        )
        right_pos = pd.Index(right.ids)
        left_pos = pd.Index(left.ids)
        li = left_pos.get_indexer(dense["query_id"])
        ri = right_pos.get_indexer(dense["cand_id"])
        lexical = self._lexical(left, right, layout)
        if "lexical" in lexical:
            lex_l, lex_r = lexical["lexical"]
            _, pos = LexicalModel.search(lex_l, lex_r, k + int(exclude_self))
            ql = np.repeat(np.arange(len(left)), pos.shape[1])
            qr = pos.ravel()
            keep = qr >= 0
            ql, qr = ql[keep], qr[keep]
            if exclude_self:
                keep = left.ids[ql] != right.ids[qr]
                ql, qr = ql[keep], qr[keep]
            if cross_source:
                keep = left.catalogue.sources[ql] != right.catalogue.sources[qr]
                ql, qr = ql[keep], qr[keep]
            li = np.concatenate([li, ql])
            ri = np.concatenate([ri, qr])
        pairs = np.unique(np.stack([li, ri], axis=1), axis=0) if len(li) else np.empty((0, 2), int)
        li, ri = pairs[:, 0], pairs[:, 1]
        hub = self._hubness(left, right, layout, lf, rf, lexical)
        out = self._compare(left, right, layout, li, ri, lf, rf, lexical, hub)
        out = out.sort_values(["left_pos", "score"], ascending=[True, False], kind="stable")
        out["rank"] = (out.groupby("left_pos", sort=False).cumcount() + 1).astype(np.int32)
        out = out[out["rank"] <= k].reset_index(drop=True)

        def score(li: np.ndarray, ri: np.ndarray) -> pd.DataFrame:
            return self._compare(left, right, layout, li, ri, lf, rf, lexical, hub)

        return out[[*PAIR_COLUMNS, "left_pos", "right_pos"]], score

    def _rerank(self, pairs: pd.DataFrame, left: EncodedCatalogue, right: EncodedCatalogue
                ) -> pd.DataFrame:
        """Add the reranker's ``probability`` (the column decisions then use) and
        ``decisive``, the features that moved it most."""
        reranker = self.trained_reranker
        if reranker is None:
            return pairs
        if pairs.empty:
            return pairs.assign(probability=np.zeros(0, np.float32),
                                decisive=pd.Series([], dtype=object))
        from mmmatch.rerank import with_texts

        frame = with_texts(pairs, left.catalogue, right.catalogue)
        scored = reranker.predict_explained(frame)
        return pairs.assign(probability=scored["probability"].to_numpy(),
                            decisive=scored["decisive"].to_numpy())

    def _decide(self, pairs: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
        column = "probability" if "probability" in pairs else "score"
        return apply_threshold(pairs, self.decision_threshold if threshold is None
                               else threshold, score_column=column)

    def _lexical(
        self, left: EncodedCatalogue, right: EncodedCatalogue, layout: FusedLayout
    ) -> dict[str, tuple[Any, Any]]:
        """TF-IDF vectors of both sides per lexical signal, fitted on their union."""
        w = self.score_weights
        if not (self.lexical and layout.text_dim > 0):
            return {}
        texts_l, texts_r = left.catalogue.texts, right.catalogue.texts
        corpus = texts_l if right is left else np.concatenate([texts_l, texts_r])
        out = {}
        for name, model in fit_lexical_signals(corpus, word=w.word > 0).items():
            vec_l = model.transform(texts_l)
            out[name] = (vec_l, vec_l if right is left else model.transform(texts_r))
        return out

    def _hubness(
        self,
        left: EncodedCatalogue,
        right: EncodedCatalogue,
        layout: FusedLayout,
        lf: np.ndarray,
        rf: np.ndarray,
        lexical: dict[str, tuple[Any, Any]],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """Per-signal neighbourhood means of both sides (``None`` when hubness is off)."""
        if not self.hubness:
            return None
        k, same = self.hubness_k, right is left
        hub: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        lp, rp = layout.parts(lf), layout.parts(rf)
        oks = {"image": (left.image_ok, right.image_ok), "text": (left.text_ok, right.text_ok),
               "fused": (left.image_ok | left.text_ok, right.image_ok | right.text_ok)}
        for name in lp:
            (l_ok, r_ok), a, b = oks[name], lp[name], rp[name]
            r_left = dense_neighbourhood(a, l_ok, b, r_ok, k, same)
            r_right = r_left if same else dense_neighbourhood(b, r_ok, a, l_ok, k)
            hub[name] = (r_left, r_right)
        for name, (a, b) in lexical.items():
            r_left = sparse_neighbourhood(a, b, k, same)
            hub[name] = (r_left, r_left if same else sparse_neighbourhood(b, a, k))
        return hub

    def _compare(
        self,
        left: EncodedCatalogue,
        right: EncodedCatalogue,
        layout: FusedLayout,
        li: np.ndarray,
        ri: np.ndarray,
        lf: np.ndarray,
        rf: np.ndarray,
        lexical: dict[str, tuple[Any, Any]],
        hub: dict[str, tuple[np.ndarray, np.ndarray]] | None,
    ) -> pd.DataFrame:
        sparse_sims = {
            name: LexicalModel.pair_similarity(a, b, li, ri)
            for name, (a, b) in lexical.items()
        }
        evidence = compare_pairs(
            lf, rf, li, ri, layout, self.score_weights, sparse_sims, hub
        )
        out = pd.DataFrame({"left_id": left.ids[li], "right_id": right.ids[ri]})
        out = pd.concat([out, evidence], axis=1)
        out["left_pos"], out["right_pos"] = li, ri
        return out

    # -- training ---------------------------------------------------------------------------
    def fit(
        self,
        data: Any,
        label_column: str | None = "label",
        columns: ColumnMap | dict | None = None,
        *,
        valid_fraction: float = 0.15,
        mode: Literal["head", "finetune"] = "head",
        freeze: str = "last:5",
        n_views: int = 4,
        output: str | Path | None = None,
        seed: int = 0,
        **fusion_params: Any,
    ) -> Matcher:
        """Train a model on a labelled catalogue (or an unlabelled one) and use it.

        Rows sharing a label are the same product. Whole products are held out for
        validation: training stops early on them, and then the score weights and the
        threshold that give the best F1 on them are chosen. The trained model is
        ``self.model_`` (and written to ``output`` when given).

        Args:
            data: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            label_column: the column with product ids; ``None`` trains without labels
                (each row against augmented copies of itself, NT-Xent).
            columns: column mapping of the other roles.
            valid_fraction: share of products held out for validation.
            mode: ``"head"`` (encoders frozen: fast, the default) or ``"finetune"``
                (also the top of the image backbone).
            freeze: freeze policy of ``"finetune"`` (``"last:N"``, ``"none"``).
            n_views: views per training row (the original plus augmented copies).
            output: folder to save the model in.
            seed: seed of everything random.
            **fusion_params: :class:`~mmmatch.train.LearnedFusion` parameters (``epochs``,
                ``dim``, ``loss``, ``p``, ``k``, ``lr``...).

        Returns:
            ``self``.
        """
        from mmmatch.train import train_model

        cat = (load_catalogue(data, columns) if label_column is None
               else self._labelled(data, columns, label_column))
        cache = self._cache()
        try:
            model, (_, valid_rows) = train_model(
                cat, self.image_encoder, self.text_encoder,
                supervised=label_column is not None, valid_fraction=valid_fraction, mode=mode,
                freeze=freeze, n_views=n_views, cache=cache, device=self.device, seed=seed,
                show_progress=self.show_progress, **fusion_params)
        finally:
            if cache is not None:
                cache.close()
        self.model_ = model
        if label_column is not None and len(valid_rows):
            self._calibrate(cat.subset(valid_rows))
        if output is not None:
            model.save(output)
            model.path = Path(output)
        return self

    def mine_pairs(
        self,
        left: Any,
        right: Any = None,
        label_column: str = "label",
        *,
        k: int | None = None,
        left_columns: ColumnMap | dict | None = None,
        right_columns: ColumnMap | dict | None = None,
        missed_positives: int = 1,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Labelled training pairs mined from labelled catalogues: what retrieval finds.

        Every candidate pair this matcher retrieves (top ``k`` per left row) is labelled
        by whether the two rows share a label: the negatives are the hard ones retrieval
        confuses, the positives the ones it finds. Up to ``missed_positives`` same-label
        partners per left row that retrieval missed are added, so every product teaches.

        Args:
            left: labelled catalogue (DataFrame, path or Catalogue).
            right: a second labelled catalogue whose labels mean the same products;
                ``None`` mines duplicates within ``left`` (each unordered pair once).
            label_column: the product-id column of both catalogues.
            k: candidates per row (default: the matcher's ``k``).
            left_columns: column mapping of ``left``.
            right_columns: column mapping of ``right``.
            missed_positives: same-label partners added per row when retrieval missed them.
            seed: seeds the choice of missed positives.

        Returns:
            DataFrame ``left_id, right_id, label, left_label, right_label`` (label 1: same
            product), with every pair's ``score`` and evidence, as :meth:`score_pairs`
            gives them.

        Raises:
            ValueError: a catalogue has no labels.
        """
        lc = self._labelled(left, left_columns, label_column, "left")
        same = right is None or right is left
        rc = lc if same else self._labelled(right, right_columns, label_column, "right")
        le, re_, layout = self._encode_pair(lc, rc)
        cands, score = self._candidates(le, re_, layout, k=k, exclude_self=same)
        lpos, rpos = cands["left_pos"].to_numpy(), cands["right_pos"].to_numpy()
        if same:  # a pair and its mirror are one pair: keep the better-ranked copy
            lo, hi = np.minimum(lpos, rpos), np.maximum(lpos, rpos)
            keep = ~pd.DataFrame({"a": lo, "b": hi}).duplicated().to_numpy()
            cands = cands[keep].assign(left_pos=lo[keep], right_pos=hi[keep])
            cands = cands.assign(left_id=le.ids[cands["left_pos"]],
                                 right_id=re_.ids[cands["right_pos"]])
        llab = np.asarray(le.catalogue.labels).astype(str)
        rlab = np.asarray(re_.catalogue.labels).astype(str)
        found = set(zip(cands["left_pos"], cands["right_pos"], strict=True))
        rng = np.random.default_rng(seed)
        by_label = pd.Series(np.arange(len(rlab))).groupby(rlab).apply(np.asarray).to_dict()
        extra = []
        for i, lab in enumerate(llab):
            partners = [j for j in by_label.get(lab, ()) if not (same and j == i)
                        and (i, j) not in found and (j, i) not in found]
            if partners and missed_positives > 0:
                take = rng.choice(partners, size=min(missed_positives, len(partners)),
                                  replace=False)
                extra.extend((i, int(j)) if not same else (min(i, j), max(i, j))
                             for j in take)
        extra = np.array(sorted(set(extra)), dtype=np.int64).reshape(-1, 2)
        added = score(extra[:, 0], extra[:, 1])  # scored as the candidates were
        out = pd.concat([cands, added], ignore_index=True)
        li, ri = out["left_pos"].to_numpy(), out["right_pos"].to_numpy()
        out["left_label"], out["right_label"] = llab[li], rlab[ri]
        out["label"] = (llab[li] == rlab[ri]).astype(int)
        cols = ["left_id", "right_id", "label", "left_label", "right_label", "score",
                *EVIDENCE_COLUMNS]
        return out[cols].reset_index(drop=True)

    def _labelled(self, data: Any, columns: ColumnMap | dict | None, label_column: str,
                  name: str | None = None) -> Catalogue:
        """``data`` loaded with ``label_column`` as its label role (a Catalogue as is)."""
        if isinstance(data, Catalogue):
            cat = data
        else:
            cmap = columns if isinstance(columns, ColumnMap) else ColumnMap(**(columns or {}))
            cat = load_catalogue(data, dataclasses.replace(cmap, label=label_column), name=name)
        if cat.labels is None:
            raise ValueError(f"{name or cat.name}: no label column {label_column!r}")
        return cat

    def fit_reranker(
        self,
        left: Any,
        right: Any = None,
        pairs: pd.DataFrame | None = None,
        valid: pd.DataFrame | None = None,
        *,
        label_column: str | None = None,
        valid_fraction: float = 0.2,
        left_columns: ColumnMap | dict | None = None,
        right_columns: ColumnMap | dict | None = None,
        cross_encoder: bool | Any = False,
        objective: str = "f1",
        target: float | None = None,
        output: str | Path | None = None,
        seed: int = 0,
        **params: Any,
    ) -> Matcher:
        """Train the pair reranker and calibrate its threshold on held-out pairs.

        Either on labelled pairs (``pairs``), or on pairs mined from labelled catalogues
        (``label_column``: :meth:`mine_pairs`, positives plus the hard negatives retrieval
        finds; whole products are then held out for the threshold).

        Args:
            left: left catalogue (DataFrame, path or Catalogue).
            right: right catalogue; ``None`` for duplicates within ``left``.
            pairs: ``left_id, right_id, label`` (1 = same product).
            valid: held-out labelled pairs for the threshold; default: ``valid_fraction``
                of the left items' (or, mined, the products') pairs are held out.
            label_column: mine the pairs from this product-id column instead.
            valid_fraction: share held out when ``valid`` is not given.
            left_columns: column mapping of ``left``.
            right_columns: column mapping of ``right``.
            cross_encoder: also fine-tune a MiniLM cross-encoder (``True``) or the given
                :class:`~mmmatch.rerank.CrossEncoderScorer`; slower, better on hard text.
            objective: operating point: ``"f1"``, ``"precision_at"``, ``"recall_at"``.
            target: the floor of ``precision_at`` / ``recall_at``.
            output: folder to save in: with a trained model in use, the model folder with
                the reranker inside (``reranker/``); otherwise a reranker folder.
            seed: seed of the split and the models.
            **params: :class:`~mmmatch.rerank.PairReranker` parameters.

        Returns:
            ``self``; the reranker is ``self.reranker_`` and decides from now on (and joins
            the trained model, when there is one).

        Raises:
            ValueError: neither ``pairs`` nor ``label_column``, or both.
        """
        from mmmatch.rerank import CrossEncoderScorer, PairReranker, with_texts

        if (pairs is None) == (label_column is None):
            raise ValueError("give labelled pairs (pairs=...) or a label column to mine them "
                             "from (label_column=...), not both")
        rng = np.random.default_rng(seed)
        if pairs is not None:
            lc = load_catalogue(left, left_columns, name="left")
            rc = lc if right is None or right is left else load_catalogue(
                right, right_columns, name="right")
            pairs = _labelled_pairs(pairs, "pairs")
            if valid is None:
                lefts = pairs["left_id"].unique()
                held = set(rng.choice(lefts, size=max(1, round(valid_fraction * len(lefts))),
                                      replace=False))
                is_valid = pairs["left_id"].isin(held)
                train, valid = pairs[~is_valid], pairs[is_valid]
            else:
                train, valid = pairs, _labelled_pairs(valid, "valid")
        else:
            lc = self._labelled(left, left_columns, label_column, "left")
            rc = lc if right is None or right is left else self._labelled(
                right, right_columns, label_column, "right")
            mined = self.mine_pairs(lc, rc, label_column)
            if valid is None:  # hold out whole products; train never touches their rows
                labels = np.unique(mined["left_label"])
                held = rng.choice(labels, size=max(1, round(valid_fraction * len(labels))),
                                  replace=False)
                in_l, in_r = mined["left_label"].isin(held), mined["right_label"].isin(held)
                train, valid = mined[~in_l & ~in_r], mined[in_l]
            else:
                train, valid = mined, self.score_pairs(lc, rc, _labelled_pairs(valid, "valid"))
            if train["label"].nunique() < 2 or valid["label"].nunique() < 2:
                raise ValueError("the mined pairs need matches and non-matches on both sides "
                                 "of the split; label more products or raise k")
        keep = ["left_id", "right_id", "label"]
        if pairs is None:  # mined pairs come with their evidence
            keep += ["score", *EVIDENCE_COLUMNS]
        both = pd.concat([train[keep].assign(_part="train"), valid[keep].assign(_part="valid")],
                         ignore_index=True)
        if pairs is not None:  # labelled pairs: their evidence, in one scoring context
            both = self.score_pairs(lc, rc, both)
        scored = with_texts(both, lc, rc)
        ce = None
        if cross_encoder is True:
            ce = CrossEncoderScorer(seed=seed, device=self.device,
                                    show_progress=self.show_progress)
        elif cross_encoder:
            ce = cross_encoder
        reranker = PairReranker(ce, seed=seed, **params).fit(
            scored[scored["_part"] == "train"].reset_index(drop=True))
        reranker.calibrate(scored[scored["_part"] == "valid"].reset_index(drop=True),
                           objective, target)
        self.reranker_ = reranker
        model = self.trained
        if model is not None:
            model.reranker = reranker
        if output is not None:
            if model is not None:
                model.save(output)
                model.path = Path(output)
            else:
                reranker.save(output)
        return self

    def _calibrate(self, valid: Catalogue) -> None:
        """Pick the score weights and threshold with the best F1 on held-out products."""
        model = self.model_
        labels = np.asarray(valid.labels).astype(str)
        counts = np.unique(labels, return_counts=True)[1]
        positives = int((counts * (counts - 1)).sum())  # ordered pairs, as retrieved
        if positives == 0:
            return
        enc, _, layout = self._encode_pair(valid, valid)
        base, given = ScoreWeights(), self.weights
        best: tuple[float, float, ScoreWeights] | None = None
        try:
            for f in (1.0, 0.8, 0.6, 0.4):
                w = ScoreWeights(image=base.image * (1 - f), text=base.text * (1 - f),
                                 lexical=base.lexical * (1 - f), word=base.word * (1 - f),
                                 fused=f)
                self.weights = w
                pairs = self.candidates(enc, enc, layout, exclude_self=True)
                y = labels[pairs["left_pos"]] == labels[pairs["right_pos"]]
                threshold, f1 = best_f1_threshold(pairs["score"].to_numpy(), y, positives)
                if best is None or f1 > best[1]:
                    best = (threshold, f1, w)
        finally:
            self.weights = given
        assert best is not None
        model.threshold, model.score_weights = best[0], best[2]
        model.info["calibration"] = {"objective": "f1", "f1": best[1],
                                     "valid_f1": best[1], "threshold": best[0],
                                     "fused_weight": best[2].fused, "valid_rows": len(valid)}

    # -- user-level operations --------------------------------------------------------------
    def match(
        self,
        left: Any,
        right: Any,
        how: Literal["inner", "left"] = "inner",
        threshold: float | None = None,
        left_columns: ColumnMap | dict | None = None,
        right_columns: ColumnMap | dict | None = None,
        suffixes: tuple[str, str] = ("_left", "_right"),
        all_candidates: bool = False,
        one_to_one: bool | Literal["greedy", "hungarian"] = False,
    ) -> pd.DataFrame:
        """Join two catalogues on "same product".

        Args:
            left: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            right: likewise.
            how: ``"inner"`` keeps matched pairs; ``"left"`` also keeps unmatched left rows
                (their right columns and scores are missing), like :func:`pandas.merge`.
            threshold: overrides the matcher's threshold.
            left_columns: column mapping of ``left``.
            right_columns: column mapping of ``right``.
            suffixes: appended to the columns of each side.
            all_candidates: return every candidate with ``is_match`` instead of matches only.
            one_to_one: each row matches at most one row of the other side: ``True`` or
                ``"greedy"`` keeps the best-scoring pairs first, ``"hungarian"`` maximises
                the total score (:func:`~mmmatch.cluster.one_to_one`).

        Returns:
            One row per pair: ``left_id, right_id, score``, the ``*_sim`` evidence,
            ``rank``, with a reranker ``probability`` and ``decisive`` (the features that
            moved the probability most, with their log-odds contributions), ``is_match``
            and every column of both catalogues, suffixed. Rows that
            could not be used (bad images, empty rows) are listed in
            ``result.attrs["problems"]`` (records; ``pd.DataFrame(...)`` tabulates them).
        """
        if how not in ("inner", "left"):
            raise ValueError(f"how must be 'inner' or 'left', got {how!r}")
        lc = load_catalogue(left, left_columns, name="left")
        rc = load_catalogue(right, right_columns, name="right")
        le, re_, layout = self._encode_pair(lc, rc)
        pairs = self._rerank(self.candidates(le, re_, layout), le, re_)
        pairs = self._decide(pairs, threshold)
        if one_to_one:
            method = "greedy" if one_to_one is True else one_to_one
            column = "probability" if "probability" in pairs else "score"
            kept = assign_one_to_one(pairs[pairs["is_match"]], method=method, score=column)
            pairs = pairs.assign(is_match=pairs.index.isin(kept.index))
        if not all_candidates:
            pairs = pairs[pairs["is_match"]]
        ldata = le.catalogue.data.add_suffix(suffixes[0])
        rdata = re_.catalogue.data.add_suffix(suffixes[1])
        extra = ["probability", "decisive"] if "probability" in pairs else []
        out = pd.concat([
            pairs[[*PAIR_COLUMNS, *extra, "is_match"]].reset_index(drop=True),
            ldata.iloc[pairs["left_pos"].to_numpy()].reset_index(drop=True),
            rdata.iloc[pairs["right_pos"].to_numpy()].reset_index(drop=True),
        ], axis=1)
        if how == "left":
            unmatched = np.setdiff1d(np.arange(len(le)), pairs["left_pos"].to_numpy())
            extra = ldata.iloc[unmatched].reset_index(drop=True)
            extra.insert(0, "left_id", le.ids[unmatched])
            out = pd.concat([out, extra], ignore_index=True)
            order = pd.Index(le.ids).get_indexer(out["left_id"])
            out = out.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
        out.attrs["problems"] = _problems(lc, rc).to_dict("records")
        return out

    def score_pairs(
        self,
        left: Any,
        right: Any,
        pairs: pd.DataFrame,
        left_columns: ColumnMap | dict | None = None,
        right_columns: ColumnMap | dict | None = None,
    ) -> pd.DataFrame:
        """Evidence and score of given pairs (for example labelled pairs to evaluate).

        Args:
            left: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            right: likewise.
            pairs: ``left_id, right_id`` (other columns, such as a label, are kept).
                Pass the same object as ``left`` and ``right`` for pairs within one
                catalogue.
            left_columns: column mapping of ``left``.
            right_columns: column mapping of ``right``.

        Returns:
            ``pairs`` with ``score`` and the ``*_sim`` evidence added; pairs naming a
            row that could not be used get NaN scores.

        Raises:
            KeyError: a pair names an id that is in neither catalogue.
        """
        lc = load_catalogue(left, left_columns, name="left")
        # one catalogue against itself (duplicates): scored as dedupe scores it, an item
        # never counting as its own neighbour
        same = right is left and right_columns == left_columns
        rc = lc if same else load_catalogue(right, right_columns, name="right")
        le, re_, layout = self._encode_pair(lc, rc)
        lid = pairs["left_id"].astype(str).to_numpy()
        rid = pairs["right_id"].astype(str).to_numpy()
        for side, ids, cat in (("left", lid, lc), ("right", rid, rc)):
            unknown = ~np.isin(ids, cat.ids)
            if unknown.any():
                raise KeyError(f"{side} ids not in the {side} catalogue: {ids[unknown][:5]}")
        li = pd.Index(le.ids).get_indexer(lid)
        ri = pd.Index(re_.ids).get_indexer(rid)
        usable = (li >= 0) & (ri >= 0)
        lf = self._fuse(le)
        rf = lf if re_ is le else self._fuse(re_)
        lexical = self._lexical(le, re_, layout)
        hub = self._hubness(le, re_, layout, lf, rf, lexical)
        evidence = self._compare(le, re_, layout, li[usable], ri[usable], lf, rf, lexical, hub)
        out = pairs.reset_index(drop=True).copy()
        for col in ["score", *EVIDENCE_COLUMNS]:
            values = np.full(len(out), np.nan, dtype=np.float32)
            values[usable] = evidence[col].to_numpy()
            out[col] = values
        return out

    def dedupe(
        self,
        catalogue: Any,
        threshold: float | None = None,
        columns: ColumnMap | dict | None = None,
        cross_source: bool = False,
        return_pairs: bool = False,
        mutual_k: int | None = DEFAULT_MUTUAL_K,
        max_cluster_size: int | None = DEFAULT_MAX_SIZE,
        linkage: Literal["single", "average"] = "single",
        min_average: float | None = None,
    ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """Give every row a ``cluster_id``; rows of one product share it.

        Args:
            catalogue: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            threshold: overrides the matcher's threshold.
            columns: column mapping.
            cross_source: only link rows from different sources (needs a source column).
            return_pairs: also return the matched pairs.
            mutual_k: link two rows only when each is among the other's ``mutual_k`` best
                candidates (``None``: every match links), so a chain of one-sided weak
                links cannot glue products together.
            max_cluster_size: split larger clusters at their weakest links (``None``: no
                limit). See :func:`~mmmatch.cluster.safe_clusters`.
            linkage: ``"average"`` re-clusters each linked group by average linkage: two
                parts merge only while the mean score of their pairs stays at least
                ``min_average`` (a pair that is not a match counts as the lowest match
                score), which stops chains of weak links between confusable products.
                (Scoring every pair of a group instead was worse on the Grocery Store
                ``val`` photos: per-item F1 0.749 against 0.837.)
            min_average: the smallest mean similarity of a merge, needed by
                ``linkage="average"``: a little above the threshold (on the reranker's
                probability when there is one); choose it on labelled data.

        Returns:
            The catalogue's rows with ``cluster_id`` (and ``cluster_size``); rows that could
            not be used are their own cluster and are listed in ``attrs["problems"]`` (records).
            With ``return_pairs``: ``(rows, pairs)``.
        """
        if linkage not in ("single", "average"):
            raise ValueError(f"linkage must be 'single' or 'average', got {linkage!r}")
        if linkage == "average" and min_average is None:
            raise ValueError("linkage='average' needs min_average (a similarity a little "
                             "above the threshold; choose it on labelled data)")
        cat = load_catalogue(catalogue, columns)
        enc, _, layout = self._encode_pair(cat, cat)
        pairs = self.candidates(enc, enc, layout, exclude_self=True, cross_source=cross_source)
        pairs = self._decide(self._rerank(pairs, enc, enc), threshold)
        matched = pairs[pairs["is_match"]]
        column = "probability" if "probability" in matched else "score"
        clusters = safe_clusters(matched, cat.ids, k=mutual_k, max_size=max_cluster_size,
                                 linkage=linkage, min_average=min_average, score=column)
        out = cat.data.copy()
        out["cluster_id"] = clusters["cluster_id"].to_numpy()
        out["cluster_size"] = out.groupby("cluster_id")["cluster_id"].transform("size")
        out.attrs["problems"] = cat.problems.to_dict("records")
        if return_pairs:
            return out, matched.drop(columns=["left_pos", "right_pos"]).reset_index(drop=True)
        return out


def _labelled_pairs(pairs: pd.DataFrame, name: str) -> pd.DataFrame:
    """``left_id, right_id`` as strings and ``label`` as 0/1 ints (CSV cells may be text)."""
    missing = [c for c in ("left_id", "right_id", "label") if c not in pairs]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; expected left_id, right_id, "
                         "label")
    labels = pd.to_numeric(pairs["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{name}: row {row} has label {pairs['label'].iloc[row]!r}, "
                         "expected 0 or 1")
    return pairs.assign(left_id=pairs["left_id"].astype(str),
                        right_id=pairs["right_id"].astype(str), label=labels.astype(int))


def _problems(left: Catalogue, right: Catalogue) -> pd.DataFrame:
    frames = []
    for side, cat in (("left", left), ("right", right)):
        if not cat.problems.empty:
            frames.append(cat.problems.assign(catalogue=side))
    if not frames:
        return pd.DataFrame(columns=["catalogue", *PROBLEM_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    return out[["catalogue", *PROBLEM_COLUMNS]]


def _split_kwargs(
    method: Any, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into Matcher settings and arguments of ``method``.

    A name both accept (``threshold``) goes to the method, which overrides the setting.
    """
    import inspect

    call_names = set(inspect.signature(method).parameters) - {"self"}
    return (
        {k: v for k, v in kwargs.items() if k not in call_names},
        {k: v for k, v in kwargs.items() if k in call_names},
    )


def match(
    left: Any, right: Any, matcher: Matcher | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Join two catalogues on "same product", like :func:`pandas.merge`.

    Args:
        left: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
        right: likewise.
        matcher: a configured :class:`Matcher` (default: one built from ``kwargs``).
        **kwargs: :class:`Matcher` settings (``image_encoder``, ``threshold``, ``k``...) and
            :meth:`Matcher.match` arguments (``how``, ``left_columns``, ``suffixes``...).

    Returns:
        See :meth:`Matcher.match`.
    """
    settings, call = _split_kwargs(Matcher.match, kwargs)
    if matcher is not None and settings:
        raise TypeError(f"pass settings to the Matcher, not beside it: {sorted(settings)}")
    return (matcher or Matcher(**settings)).match(left, right, **call)


def dedupe(data: Any, matcher: Matcher | None = None, **kwargs: Any) -> pd.DataFrame:
    """Give every row of a catalogue a ``cluster_id`` (see :meth:`Matcher.dedupe`).

    Args:
        data: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
        matcher: a configured :class:`Matcher` (default: one built from ``kwargs``).
        **kwargs: :class:`Matcher` settings and :meth:`Matcher.dedupe` arguments.
    """
    settings, call = _split_kwargs(Matcher.dedupe, kwargs)
    if matcher is not None and settings:
        raise TypeError(f"pass settings to the Matcher, not beside it: {sorted(settings)}")
    return (matcher or Matcher(**settings)).dedupe(data, **call)


