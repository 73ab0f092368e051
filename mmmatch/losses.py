"""Metric-learning losses for fine-tuning the encoders, built from small parts.

The pieces compose the way pytorch-metric-learning's do (a *distance*, a *miner*, a
*reducer*), but are written here:

* :func:`pairwise_similarity`: the (n, m) score matrix under a :class:`~mmmatch.similarity.Metric`
  (``cosine`` / ``ip`` similarities, ``l2`` *squared* distance; ``Metric.higher_is_better``
  says which way is closer).
* miners: :func:`mine_all_triplets`, :func:`mine_batch_hard`, :func:`mine_semi_hard`, each
  returning ``(anchor, positive, negative)`` long index tensors.
* reducers: :func:`reduce_losses` with ``"mean"``, ``"nonzero_mean"`` or ``"sum"``.

Losses, all ``forward(embeddings (n, d) float, labels (n,) int) -> scalar``:

* pair / triplet based: :class:`TripletLoss`, :class:`MultiSimilarityLoss`,
  :class:`SupConLoss`, :class:`NTXentLoss`. Labels are arbitrary integers; rows with the
  same label are positives of each other.
* classification based: :class:`ClassificationLoss` (softmax, NormFace, ArcFace, CosFace)
  and :class:`PartialFCLoss` (sampled ArcFace / CosFace / NormFace for millions of
  classes). Labels are class indices in ``[0, num_classes)``.
* :class:`WeightedLoss` sums several terms and remembers their last values for logging;
  :func:`build_loss` builds one from a string such as ``"triplet+arcface"`` (the default
  objective) or a dict.

Every loss returns a scalar connected to ``embeddings`` even when the batch holds nothing to
learn from (no positive pair, a single class...): it is then ``0`` with a ``grad_fn``, so
``loss.backward()`` always works.

Example:
    >>> import torch
    >>> loss_fn = build_loss("triplet+arcface", dim=4, num_classes=3)
    >>> emb = torch.randn(6, 4, requires_grad=True)
    >>> loss = loss_fn(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    >>> loss.backward()
    >>> sorted(loss_fn.last_terms)
    ['arcface', 'triplet']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmmatch.similarity import Metric

__all__ = [
    "CLASSIFICATION_KINDS",
    "DEFAULT_LOSS",
    "LOSS_NAMES",
    "MINERS",
    "REDUCERS",
    "ClassificationLoss",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "PartialFCLoss",
    "SupConLoss",
    "TripletLoss",
    "WeightedLoss",
    "build_loss",
    "mine_all_triplets",
    "mine_batch_hard",
    "mine_semi_hard",
    "pairwise_similarity",
    "reduce_losses",
    "split_sparse_parameters",
]

Triplets = tuple[Tensor, Tensor, Tensor]

REDUCERS = ("mean", "nonzero_mean", "sum")
MINERS = ("batch_hard", "semi_hard", "all")
CLASSIFICATION_KINDS = ("softmax", "normface", "arcface", "cosface")
DEFAULT_LOSS = "triplet+arcface"


# -- checks -----------------------------------------------------------------------------------


def _check_batch(embeddings: Tensor, labels: Any) -> tuple[Tensor, Tensor]:
    """Validate a ``(embeddings, labels)`` batch; return labels as a long tensor."""
    if not isinstance(embeddings, Tensor):
        raise ValueError(f"embeddings: expected a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings: expected a 2-D tensor (n, d), got shape {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings: expected a float tensor, got {embeddings.dtype}")
    labels = _check_labels(labels, len(embeddings), embeddings.device)
    return embeddings, labels


def _check_labels(labels: Any, n: int, device: torch.device | None = None) -> Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.numel() == 0 and labels.ndim == 1:  # ``[]`` comes in as float
        labels = labels.long()
    if labels.ndim != 1:
        raise ValueError(f"labels: expected a 1-D tensor (n,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} labels (one per embedding), got {len(labels)}")
    return labels.long()


def _check_class_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels: class indices must lie in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(choices)}")
    return value


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def _zero(embeddings: Tensor) -> Tensor:
    """A scalar 0 that is still part of ``embeddings``' graph (so backward works)."""
    return embeddings.sum() * 0.0


def _label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(n, n) boolean masks: positives (same label, not self) and negatives."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _closeness(sim: Tensor, metric: str | Metric) -> Tensor:
    """Scores turned so that higher is always closer (l2 distances are negated)."""
    return sim if Metric.parse(metric).higher_is_better else -sim


def _check_sim(sim: Tensor, labels: Any) -> Tensor:
    if not isinstance(sim, Tensor) or sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        shape = tuple(sim.shape) if isinstance(sim, Tensor) else type(sim).__name__
        raise ValueError(f"sim: expected a square (n, n) tensor, got {shape}")
    return _check_labels(labels, sim.shape[0], sim.device)


# -- distance ---------------------------------------------------------------------------------


def pairwise_similarity(x: Tensor, y: Tensor | None = None, metric: str | Metric = "cosine"
                        ) -> Tensor:
    """All scores between the rows of ``x`` and the rows of ``y``.

    Args:
        x: (n, d) float tensor.
        y: (m, d) float tensor; ``None`` means ``x`` (the (n, n) self-similarity).
        metric: ``"cosine"`` (inner product of L2-normalised rows, higher is closer),
            ``"ip"`` (raw inner product, higher is closer) or ``"l2"`` (**squared** Euclidean
            distance, as in :class:`~mmmatch.similarity.Metric`; lower is closer).

    Returns:
        (n, m) tensor of the same dtype; differentiable everywhere (also l2 at distance 0).

    Raises:
        ValueError: unknown metric, or inputs that are not 2-D with the same width.
    """
    metric = Metric.parse(metric)
    y = x if y is None else y
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a 2-D tensor (n, d), got {shape}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same width, got {x.shape[1]} and {y.shape[1]}")
    if metric is Metric.COSINE:
        xn = F.normalize(x, dim=1)
        return xn @ (xn if y is x else F.normalize(y, dim=1)).T
    if metric is Metric.IP:
        return x @ y.T
    sq_x = (x * x).sum(1)
    sq_y = sq_x if y is x else (y * y).sum(1)
    return (sq_x[:, None] + sq_y[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)


# -- miners -----------------------------------------------------------------------------------


def _anchor_positive_pairs(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positive pairs ``(a, p)`` in row-major order and the negative mask of each anchor."""
    pos, neg = _label_masks(labels)
    a, p = pos.nonzero(as_tuple=True)
    return a, p, neg


def mine_all_triplets(labels: Tensor) -> Triplets:
    """Every valid triplet: ``labels[a] == labels[p]``, ``a != p``, ``labels[n] != labels[a]``.

    Args:
        labels: (n,) integer tensor.

    Returns:
        ``(anchor, positive, negative)``: three (t,) long tensors, in lexicographic
        ``(a, p, n)`` order; memory is O(positive pairs x n), not O(n^3).
    """
    labels = _check_labels(labels, len(torch.as_tensor(labels)))
    a, p, neg = _anchor_positive_pairs(labels)
    pair, n = neg[a].nonzero(as_tuple=True)
    return a[pair], p[pair], n


def mine_batch_hard(sim: Tensor, labels: Tensor, metric: str | Metric = "cosine") -> Triplets:
    """Batch-hard mining (Hermans et al. 2017): one triplet per anchor.

    For each anchor with at least one positive and one negative: its farthest positive and
    its closest negative ("closest" follows ``metric``'s direction; ties go to the lowest
    index).

    Args:
        sim: (n, n) scores from :func:`pairwise_similarity` under ``metric``.
        labels: (n,) integer tensor.
        metric: the metric ``sim`` was computed with.

    Returns:
        ``(anchor, positive, negative)``: three (t,) long tensors, anchors ascending.
    """
    labels = _check_sim(sim, labels)
    c = _closeness(sim.detach(), metric)
    pos, neg = _label_masks(labels)
    valid = pos.any(1) & neg.any(1)
    anchor = valid.nonzero(as_tuple=True)[0]
    if len(anchor) == 0:
        return anchor, anchor.clone(), anchor.clone()
    hardest_pos = c.masked_fill(~pos, math.inf).argmin(1)
    hardest_neg = c.masked_fill(~neg, -math.inf).argmax(1)
    return anchor, hardest_pos[anchor], hardest_neg[anchor]


def mine_semi_hard(sim: Tensor, labels: Tensor, metric: str | Metric = "cosine",
                   margin: float = 0.2) -> Triplets:
    """Semi-hard triplets (Schroff et al. 2015): the negative is farther than the positive,
    but by less than the margin.

    With closeness ``c`` (``sim``, or ``-sim`` for l2): all valid triplets with
    ``0 < c[a, p] - c[a, n] < margin``, i.e. exactly those whose triplet loss is in
    ``(0, margin)``. Like pytorch-metric-learning's ``"semihard"`` triplets (all of them,
    not one per positive pair).

    Args:
        sim: (n, n) scores from :func:`pairwise_similarity` under ``metric``.
        labels: (n,) integer tensor.
        metric: the metric ``sim`` was computed with.
        margin: the triplet margin, >= 0.

    Returns:
        ``(anchor, positive, negative)``: three (t,) long tensors, lexicographic order.
    """
    labels = _check_sim(sim, labels)
    margin = _check_positive("margin", margin, allow_zero=True)
    c = _closeness(sim.detach(), metric)
    a, p, neg = _anchor_positive_pairs(labels)
    gap = c[a, p][:, None] - c[a]  # (pairs, n): how much closer the positive is
    pair, n = (neg[a] & (gap > 0) & (gap < margin)).nonzero(as_tuple=True)
    return a[pair], p[pair], n


# -- reducers ---------------------------------------------------------------------------------


def reduce_losses(losses: Tensor, reducer: str = "mean", like: Tensor | None = None) -> Tensor:
    """Reduce per-element losses to a scalar.

    Args:
        losses: (t,) per-triplet / per-pair / per-anchor losses, >= 0.
        reducer: ``"mean"`` (over all t), ``"nonzero_mean"`` (over the elements > 0 only,
            so easy triplets do not dilute the hard ones) or ``"sum"``.
        like: a tensor whose graph the result stays connected to when ``losses`` is empty
            (defaults to ``losses``).

    Returns:
        Scalar tensor; 0 (with a ``grad_fn`` when the inputs have one) when there is
        nothing to average.
    """
    _check_choice("reducer", reducer, REDUCERS)
    if losses.numel() == 0:
        return _zero(like if like is not None else losses)
    if reducer == "sum":
        return losses.sum()
    if reducer == "mean":
        return losses.mean()
    nonzero = losses > 0
    count = int(nonzero.sum())
    return losses.sum() / count if count else losses.sum() * 0.0


# -- pair / triplet losses --------------------------------------------------------------------


class TripletLoss(nn.Module):
    """Triplet margin loss ``max(0, c[a, n] - c[a, p] + margin)`` over mined triplets.

    ``c`` is the closeness under ``metric`` (cosine / ip similarity, or minus the squared
    l2 distance), so the loss asks each positive to be closer than each negative by
    ``margin``.

    Args:
        margin: >= 0, in the metric's units (cosine: similarity; l2: squared distance).
        miner: ``"batch_hard"`` (one hardest triplet per anchor), ``"semi_hard"`` (see
            :func:`mine_semi_hard`), ``"all"`` (every valid triplet) or a callable
            ``(sim (n, n), labels (n,)) -> (anchor, positive, negative)``.
        metric: ``"cosine"``, ``"ip"`` or ``"l2"``.
        reducer: ``"mean"``, ``"nonzero_mean"`` or ``"sum"`` over the mined triplets.

    Attributes:
        last_triplets: how many triplets the last forward mined.
    """

    def __init__(self, margin: float = 0.2,
                 miner: str | Callable[[Tensor, Tensor], Triplets] = "batch_hard",
                 metric: str | Metric = "cosine", reducer: str = "nonzero_mean") -> None:
        super().__init__()
        self.margin = _check_positive("margin", margin, allow_zero=True)
        if not callable(miner):
            _check_choice("miner", miner, MINERS)
        self.miner = miner
        self.metric = Metric.parse(metric)
        self.reducer = _check_choice("reducer", reducer, REDUCERS)
        self.last_triplets = 0

    def mine(self, sim: Tensor, labels: Tensor) -> Triplets:
        """The ``(anchor, positive, negative)`` triplets of a batch's (n, n) scores."""
        if callable(self.miner):
            return self.miner(sim, labels)
        if self.miner == "batch_hard":
            return mine_batch_hard(sim, labels, self.metric)
        if self.miner == "semi_hard":
            return mine_semi_hard(sim, labels, self.metric, self.margin)
        return mine_all_triplets(labels)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Loss of a batch.

        Args:
            embeddings: (n, d) float tensor.
            labels: (n,) integer tensor.

        Returns:
            Scalar tensor.
        """
        embeddings, labels = _check_batch(embeddings, labels)
        sim = pairwise_similarity(embeddings, None, self.metric)
        a, p, n = self.mine(sim, labels)
        self.last_triplets = len(a)
        c = _closeness(sim, self.metric)
        losses = F.relu(c[a, n] - c[a, p] + self.margin)
        return reduce_losses(losses, self.reducer, like=embeddings)

    def extra_repr(self) -> str:
        miner = getattr(self.miner, "__name__", self.miner)
        return (f"margin={self.margin}, miner={miner!r}, metric={self.metric.value!r}, "
                f"reducer={self.reducer!r}")


def _log1p_sum_exp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise ``log(1 + sum_{mask} exp(x))``, stable; an empty row gives 0."""
    x = x.masked_fill(~mask, -math.inf)
    return torch.logsumexp(torch.cat([torch.zeros_like(x[:, :1]), x], dim=1), dim=1)


class MultiSimilarityLoss(nn.Module):
    """Multi-Similarity loss with its pair mining (Wang et al., CVPR 2019), cosine similarity.

    Mining, per anchor ``i`` (``S`` the cosine similarity matrix): a positive pair ``(i, j)``
    is kept when ``S_ij - epsilon < max_{k negative} S_ik``; a negative pair ``(i, k)`` when
    ``S_ik + epsilon > min_{j positive} S_ij``. Then, over the kept pairs ``P_i``, ``N_i``::

        L_i = 1/alpha * log(1 + sum_{P_i} exp(-alpha (S_ij - base)))
            + 1/beta  * log(1 + sum_{N_i} exp( beta (S_ik - base)))

    and the loss is the mean of ``L_i`` over the anchors that have at least one positive
    and one negative in the batch (an empty mined set contributes 0).

    Args:
        alpha: positive scale (paper: 2).
        beta: negative scale (paper: 50; the authors' code uses 40).
        base: the similarity offset lambda (0.5).
        epsilon: mining margin (0.1).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 epsilon: float = 0.1) -> None:
        super().__init__()
        self.alpha = _check_positive("alpha", alpha)
        self.beta = _check_positive("beta", beta)
        self.base = float(base)
        if not math.isfinite(self.base):
            raise ValueError(f"base must be finite, got {base!r}")
        self.epsilon = _check_positive("epsilon", epsilon, allow_zero=True)

    def mine(self, sim: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The kept (n, n) positive and negative pair masks of a batch."""
        pos, neg = _label_masks(labels)
        s = sim.detach()
        min_pos = s.masked_fill(~pos, math.inf).amin(1, keepdim=True)
        max_neg = s.masked_fill(~neg, -math.inf).amax(1, keepdim=True)
        return pos & (s - self.epsilon < max_neg), neg & (s + self.epsilon > min_pos)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Loss of a batch: (n, d) float embeddings, (n,) integer labels -> scalar."""
        embeddings, labels = _check_batch(embeddings, labels)
        pos, neg = _label_masks(labels)
        valid = pos.any(1) & neg.any(1)
        if not bool(valid.any()):
            return _zero(embeddings)
        sim = pairwise_similarity(embeddings, None, "cosine")
        keep_pos, keep_neg = self.mine(sim, labels)
        sim, keep_pos, keep_neg = sim[valid], keep_pos[valid], keep_neg[valid]
        pos_term = _log1p_sum_exp(-self.alpha * (sim - self.base), keep_pos) / self.alpha
        neg_term = _log1p_sum_exp(self.beta * (sim - self.base), keep_neg) / self.beta
        return (pos_term + neg_term).mean()

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, base={self.base}, "
                f"epsilon={self.epsilon}")


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, the ``L_out`` form).

    On L2-normalised embeddings, with ``s = z_i . z_k / temperature``, ``P(i)`` the other
    rows with anchor ``i``'s label and ``A(i)`` all rows but ``i``::

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{k in A(i)} exp(s_ik) )

    averaged over the anchors with ``|P(i)| > 0``. The denominator holds the *other
    positives too*, and each anchor weighs the same whatever its number of positives; see
    :class:`NTXentLoss` for the per-pair variant. With exactly two rows per label both are
    SimCLR's NT-Xent.

    Args:
        temperature: > 0.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Loss of a batch: (n, d) float embeddings, (n,) integer labels -> scalar."""
        embeddings, labels = _check_batch(embeddings, labels)
        pos, _ = _label_masks(labels)
        rows = pos.any(1).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            return _zero(embeddings)
        logits = pairwise_similarity(embeddings, None, "cosine")[rows] / self.temperature
        is_self = rows[:, None] == torch.arange(len(labels), device=rows.device)[None, :]
        log_denominator = torch.logsumexp(logits.masked_fill(is_self, -math.inf), dim=1)
        log_prob = logits - log_denominator[:, None]
        pos = pos[rows]
        per_anchor = -torch.where(pos, log_prob, 0.0).sum(1) / pos.sum(1)
        return per_anchor.mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR, Chen et al. 2020) generalised to labels: one term per positive pair.

    On L2-normalised embeddings, with ``s = z_a . z_k / temperature``, every ordered positive
    pair ``(a, p)`` (same label, ``a != p``) is its own classification of ``p`` against the
    negatives of ``a`` (rows with another label)::

        l(a, p) = -log( exp(s_ap) / (exp(s_ap) + sum_{n: y_n != y_a} exp(s_an)) )

    and the loss is the mean over all ordered positive pairs (pytorch-metric-learning's
    ``NTXentLoss``). With exactly two views per label this is SimCLR's loss
    (``2N`` terms, denominator = the other view + the ``2N - 2`` negatives).

    Difference to :class:`SupConLoss` with more than two rows per label: here the *other
    positives are left out of the denominator* (they do not compete with ``p``), and the
    mean runs over pairs, so a label with ``k`` rows weighs ``k (k - 1)`` rather than
    ``k``. Anchors with positives but no negatives give ``l = 0``.

    Args:
        temperature: > 0.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Loss of a batch: (n, d) float embeddings, (n,) integer labels -> scalar."""
        embeddings, labels = _check_batch(embeddings, labels)
        a, p, neg = _anchor_positive_pairs(labels)
        if len(a) == 0:
            return _zero(embeddings)
        logits = pairwise_similarity(embeddings, None, "cosine") / self.temperature
        positive = logits[a, p]
        negatives = logits[a].masked_fill(~neg[a], -math.inf)  # (pairs, n)
        log_denominator = torch.logsumexp(torch.cat([positive[:, None], negatives], 1), 1)
        return (log_denominator - positive).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# -- classification losses --------------------------------------------------------------------


def _cosine(x: Tensor, w: Tensor) -> Tensor:
    """(n, C) cosines between rows of ``x`` (n, d) and rows of ``w`` (C, d)."""
    return F.normalize(x, dim=1) @ F.normalize(w, dim=1).T


def _margin_logits(cos: Tensor, target: Tensor, kind: str, margin: float, scale: float,
                   easy_margin: bool) -> Tensor:
    """Scaled cosine logits with the margin applied to each row's target column.

    ``arcface``: ``cos(theta + m)`` at the target; where ``theta + m > pi`` (the function
    would turn back up) it uses ``cos(theta) - m sin(m)`` instead (the InsightFace
    ``th``/``mm`` rule; continuous at ``theta = pi - m``), or with ``easy_margin`` applies
    the margin only where ``cos(theta) > 0``. ``cosface``: ``cos(theta) - m``.
    ``normface``: no margin.
    """
    if kind == "normface":
        return cos * scale
    idx = target[:, None]
    c = cos.gather(1, idx).squeeze(1)
    if kind == "cosface":
        phi = c - margin
    else:
        sin = torch.sqrt((1.0 - c * c).clamp_min(1e-12))
        phi = c * math.cos(margin) - sin * math.sin(margin)
        if easy_margin:
            phi = torch.where(c > 0, phi, c)
        else:
            th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
            phi = torch.where(c > th, phi, c - mm)
    logits = cos * scale  # a fresh tensor autograd does not save: safe to edit in place
    return logits.scatter_(1, idx, (phi[:, None] * scale).to(cos.dtype))


def _check_kind_args(kind: str, kinds: Iterable[str], margin: float, scale: float
                     ) -> tuple[str, float, float]:
    kind = _check_choice("kind", kind, kinds)
    margin = _check_positive("margin", margin, allow_zero=True)
    if kind == "arcface" and margin >= math.pi:
        raise ValueError(f"arcface margin is an angle in radians; expected < pi, got {margin}")
    return kind, margin, _check_positive("scale", scale)


def _check_dims(dim: int, num_classes: int) -> tuple[int, int]:
    for name, v in (("dim", dim), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return dim, num_classes


class ClassificationLoss(nn.Module):
    """Cross-entropy over a learned class layer: softmax, NormFace, ArcFace or CosFace.

    Args:
        dim: embedding width ``d``.
        num_classes: ``C``; labels are class indices in ``[0, C)``.
        kind: ``"softmax"`` (plain linear layer with bias, unnormalised), ``"normface"``
            (``scale * cos``), ``"arcface"`` (additive angular margin, Deng et al. 2019:
            ``scale * cos(theta + margin)`` at the target) or ``"cosface"`` (additive cosine
            margin, Wang et al. 2018: ``scale * (cos - margin)`` at the target). The last
            three L2-normalise both the embeddings and the class weights.
        margin: >= 0; radians for arcface (< pi), cosine units for cosface; unused otherwise.
        scale: > 0, the logit scale ``s`` of the normalised kinds.
        easy_margin: arcface only; apply the margin only where ``cos > 0`` instead of the
            default ``cos - margin * sin(margin)`` fallback beyond ``theta + m > pi``.

    Attributes:
        weight: (C, d) class weights (``nn.Parameter``, dense gradient).
        bias: (C,) for ``"softmax"``, else ``None``.
    """

    def __init__(self, dim: int, num_classes: int, kind: str = "arcface", margin: float = 0.3,
                 scale: float = 30.0, easy_margin: bool = False) -> None:
        super().__init__()
        self.dim, self.num_classes = _check_dims(dim, num_classes)
        self.kind, self.margin, self.scale = _check_kind_args(
            kind, CLASSIFICATION_KINDS, margin, scale)
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if kind == "softmax" else None
        if kind == "softmax":
            bound = 1.0 / math.sqrt(dim)
            nn.init.uniform_(self.weight, -bound, bound)
        else:
            nn.init.normal_(self.weight, std=0.01)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Prediction logits, no margin: (n, d) float -> (n, C) (``scale * cos`` or linear)."""
        if self.kind == "softmax":
            return F.linear(embeddings, self.weight, self.bias)
        return _cosine(embeddings, self.weight) * self.scale

    def margin_logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Training logits, margin applied at each row's label: (n, d), (n,) -> (n, C)."""
        embeddings, labels = _check_batch(embeddings, labels)
        _check_class_labels(labels, self.num_classes)
        if self.kind == "softmax":
            return self.logits(embeddings)
        return _margin_logits(_cosine(embeddings, self.weight), labels, self.kind,
                              self.margin, self.scale, self.easy_margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of a batch: (n, d) float, (n,) class indices -> scalar."""
        embeddings, labels = _check_batch(embeddings, labels)
        if len(labels) == 0:
            return _zero(embeddings) + _zero(self.weight)
        return F.cross_entropy(self.margin_logits(embeddings, labels), labels)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_classes={self.num_classes}, kind={self.kind!r}, "
                f"margin={self.margin}, scale={self.scale}")


class PartialFCLoss(nn.Module):
    """Sampled margin softmax for very many classes (Partial FC, An et al. 2021).

    Each forward uses the classes present in the batch (the positives) plus negative classes
    drawn uniformly without replacement from the others, ``num_sampled`` in all (all
    positives are kept if there are more of them). Only the (n, num_sampled) logits and
    the sampled rows of the class centres are touched: the centres live in an
    ``nn.Embedding(num_classes, dim, sparse=True)``, so their gradient is a sparse tensor
    holding just the sampled rows and no (num_classes, dim) gradient is ever materialised.

    Optimizers: the centres (``self.centres.weight``, sparse gradient) need an optimizer
    that accepts sparse gradients and leaves unsampled rows alone: ``torch.optim.SGD``
    **without momentum or weight decay** (these would make the update dense), or
    ``torch.optim.SparseAdam`` (lazy Adam: only sampled rows' moments are updated; it keeps
    two dense (C, d) state tensors). Dense optimizers such as ``Adam`` / ``AdamW`` raise on
    sparse gradients: give them the rest of the model. :func:`split_sparse_parameters`
    separates the two sets.

    Sampling uses its own ``torch.Generator`` seeded with ``seed`` (reproducible, and
    independent of the global RNG), or the global RNG when ``seed`` is ``None``. It happens
    in eval mode too.

    Args:
        dim: embedding width ``d``.
        num_classes: ``C``; labels are class indices in ``[0, C)``.
        num_sampled: classes per step (positives + negatives); default 10% of ``C`` (at
            least 1). ``>= num_classes`` uses every class (then this equals
            :class:`ClassificationLoss` of the same kind with the same weights).
        kind: ``"arcface"``, ``"cosface"`` or ``"normface"`` (alias ``"softmax"``: the
            normalised softmax ``scale * cos``, no bias, no margin).
        margin: see :class:`ClassificationLoss`.
        scale: see :class:`ClassificationLoss`.
        seed: seed of the sampler, or ``None``.
        easy_margin: see :class:`ClassificationLoss`.

    Attributes:
        centres: ``nn.Embedding(C, d, sparse=True)``; ``weight`` is its (C, d) table.
        last_sampled: (k,) sorted long tensor, the classes the last forward used.
    """

    def __init__(self, dim: int, num_classes: int, num_sampled: int | None = None,
                 kind: str = "arcface", margin: float = 0.3, scale: float = 30.0,
                 seed: int | None = 0, easy_margin: bool = False) -> None:
        super().__init__()
        self.dim, self.num_classes = _check_dims(dim, num_classes)
        if kind == "softmax":
            kind = "normface"
        self.kind, self.margin, self.scale = _check_kind_args(
            kind, ("normface", "arcface", "cosface"), margin, scale)
        if num_sampled is None:
            num_sampled = max(1, math.ceil(0.1 * num_classes))
        if isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 1:
            raise ValueError(f"num_sampled must be a positive integer, got {num_sampled!r}")
        self.num_sampled = num_sampled
        self.seed = seed
        self.easy_margin = bool(easy_margin)
        self.centres = nn.Embedding(num_classes, dim, sparse=True)
        nn.init.normal_(self.centres.weight, std=0.01)
        self.last_sampled: Tensor | None = None
        self._generators: dict[str, torch.Generator] = {}

    @property
    def weight(self) -> nn.Parameter:
        """The (C, d) class-centre table (sparse gradient)."""
        return self.centres.weight

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def reset_sampler(self) -> None:
        """Restart the sampler from ``seed`` (the same classes are drawn again)."""
        self._generators.clear()

    def sample(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Draw this step's classes.

        Args:
            labels: (n,) class indices.

        Returns:
            ``(index, target)``: (k,) sorted long class indices, and (n,) long positions of
            each label within ``index``.
        """
        device = self.weight.device
        labels = _check_labels(labels, len(torch.as_tensor(labels)), device)
        _check_class_labels(labels, self.num_classes)
        positives = torch.unique(labels)
        if self.num_sampled >= self.num_classes:
            index = torch.arange(self.num_classes, device=device)
        elif len(positives) >= self.num_sampled:
            index = positives
        else:  # uniform without replacement among the negatives: random keys, positives first
            keys = torch.rand(self.num_classes, generator=self._generator(device),
                              device=device)
            keys[positives] = 2.0
            index = torch.topk(keys, self.num_sampled, sorted=False).indices.sort().values
        return index, torch.searchsorted(index, labels)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the sampled classes: (n, d) float, (n,) ints -> scalar."""
        embeddings, labels = _check_batch(embeddings, labels)
        if len(labels) == 0:
            return _zero(embeddings)
        index, target = self.sample(labels)
        self.last_sampled = index
        cos = _cosine(embeddings, self.centres(index))
        logits = _margin_logits(cos, target, self.kind, self.margin, self.scale,
                                self.easy_margin)
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def logits(self, embeddings: Tensor, chunk_size: int = 65_536) -> Tensor:
        """Prediction logits over all classes, no margin, computed in class chunks.

        Args:
            embeddings: (n, d) float tensor.
            chunk_size: classes normalised at a time (bounds the temporary memory).

        Returns:
            (n, C) tensor ``scale * cos`` (no gradient: for evaluation).
        """
        x = F.normalize(embeddings, dim=1)
        w = self.weight
        out = torch.empty(len(x), self.num_classes, dtype=x.dtype, device=x.device)
        for start in range(0, self.num_classes, chunk_size):
            chunk = F.normalize(w[start:start + chunk_size], dim=1)
            out[:, start:start + chunk_size] = x @ chunk.T * self.scale
        return out

    @torch.no_grad()
    def topk(self, embeddings: Tensor, k: int = 1, chunk_size: int = 65_536
             ) -> tuple[Tensor, Tensor]:
        """Best ``k`` classes per row without materialising the (n, C) logits.

        Returns:
            ``(scores, classes)``: (n, k) logits (``scale * cos``) and (n, k) long indices,
            best first.
        """
        k = min(int(k), self.num_classes)
        x = F.normalize(embeddings, dim=1)
        best_s = torch.full((len(x), 0), -math.inf, dtype=x.dtype, device=x.device)
        best_i = torch.zeros((len(x), 0), dtype=torch.long, device=x.device)
        for start in range(0, self.num_classes, chunk_size):
            s = x @ F.normalize(self.weight[start:start + chunk_size], dim=1).T * self.scale
            i = torch.arange(start, start + s.shape[1], device=x.device).expand_as(s)
            s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), 1)
            best_s, best_i = s, torch.cat([best_i, i], 1).gather(1, pick)
        return best_s, best_i

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_classes={self.num_classes}, "
                f"num_sampled={self.num_sampled}, kind={self.kind!r}, margin={self.margin}, "
                f"scale={self.scale}, seed={self.seed}")


def split_sparse_parameters(*modules: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into ``(dense, sparse)`` for two optimizers.

    ``sparse`` holds the weights of ``nn.Embedding(sparse=True)`` modules (e.g. the
    :class:`PartialFCLoss` centres: use ``SGD`` without momentum or ``SparseAdam``);
    ``dense`` everything else (any optimizer). Shared parameters are listed once.

    Example:
        >>> dense, sparse = split_sparse_parameters(model, loss_fn)  # doctest: +SKIP
        >>> opt = [torch.optim.AdamW(dense), torch.optim.SparseAdam(sparse)]  # doctest: +SKIP
    """
    sparse_ids: set[int] = set()
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.Embedding) and sub.sparse:
                sparse_ids.add(id(sub.weight))
    dense: list[nn.Parameter] = []
    sparse: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                (sparse if id(param) in sparse_ids else dense).append(param)
    return dense, sparse


# -- combining --------------------------------------------------------------------------------


class WeightedLoss(nn.Module):
    """A weighted sum of loss terms, each ``forward(embeddings, labels) -> scalar``.

    Args:
        terms: ``{name: (module, weight)}`` or an iterable of ``(name, module, weight)``.
            Names must be non-empty and free of ``"."``; weights finite and >= 0.

    Attributes:
        terms: ``nn.ModuleDict`` of the term modules (their parameters are this module's).
        weights: ``{name: weight}``.
        last_terms: ``{name: value}`` of the last forward, *unweighted*, as floats (for
            logging; reading them synchronises with the device once per term).

    Example:
        >>> loss_fn = WeightedLoss({"triplet": (TripletLoss(), 1.0),
        ...                         "arcface": (ClassificationLoss(8, 10), 1.0)})
    """

    def __init__(self, terms: Mapping[str, tuple[nn.Module, float]]
                 | Iterable[tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        items = ([(k, m, w) for k, (m, w) in terms.items()] if isinstance(terms, Mapping)
                 else [tuple(t) for t in terms])
        if not items:
            raise ValueError("WeightedLoss needs at least one term")
        modules: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for item in items:
            if len(item) != 3:
                raise ValueError(f"each term must be (name, module, weight), got {item!r}")
            name, module, weight = item
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"term names must be non-empty strings without '.', got {name!r}")
            if name in modules:
                raise ValueError(f"duplicate term name {name!r}")
            if not isinstance(module, nn.Module):
                raise ValueError(f"term {name!r}: expected an nn.Module, got {type(module)}")
            modules[name] = module
            self.weights[name] = _check_positive(f"weight of {name!r}", weight, allow_zero=True)
        self.terms = nn.ModuleDict(modules)
        self.last_terms: dict[str, float] = {}

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Weighted sum of the terms: (n, d) float, (n,) ints -> scalar."""
        total: Tensor | None = None
        last: dict[str, float] = {}
        for name, module in self.terms.items():
            value = module(embeddings, labels)
            last[name] = float(value.detach())
            weighted = value * self.weights[name]
            total = weighted if total is None else total + weighted
        self.last_terms = last
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return "weights=" + repr(self.weights)


_METRIC_LOSSES: dict[str, type[nn.Module]] = {
    "triplet": TripletLoss,
    "multi_similarity": MultiSimilarityLoss,
    "ms": MultiSimilarityLoss,
    "supcon": SupConLoss,
    "ntxent": NTXentLoss,
}
LOSS_NAMES = (*_METRIC_LOSSES, *CLASSIFICATION_KINDS, "partial_fc")


def _make_term(loss: str, kwargs: dict[str, Any], dim: int | None, num_classes: int | None
               ) -> nn.Module:
    _check_choice("loss", loss, LOSS_NAMES)
    if loss in _METRIC_LOSSES:
        return _METRIC_LOSSES[loss](**kwargs)
    if dim is None or num_classes is None:
        raise ValueError(f"loss {loss!r} needs dim and num_classes")
    if loss == "partial_fc":
        return PartialFCLoss(dim, num_classes, **kwargs)
    return ClassificationLoss(dim, num_classes, kind=loss, **kwargs)


def build_loss(spec: str | Mapping[str, Any] = DEFAULT_LOSS, dim: int | None = None,
               num_classes: int | None = None) -> WeightedLoss:
    """Build a :class:`WeightedLoss` from a short description.

    Args:
        spec: a string of ``+``-joined terms ``name`` or ``name:weight``, e.g.
            ``"triplet+arcface"`` (the default objective, weights 1) or
            ``"triplet:1+partial_fc:0.5"``; ``"default"`` means :data:`DEFAULT_LOSS`. Or a
            dict ``{name: weight}`` / ``{name: {"weight": w, "loss": type, **kwargs}}``
            where ``loss`` (default: ``name``) picks the type and the other keys go to its
            constructor. Types: ``triplet``, ``multi_similarity`` (``ms``), ``supcon``,
            ``ntxent``, ``softmax``, ``normface``, ``arcface``, ``cosface``, ``partial_fc``.
        dim: embedding width (classification terms only).
        num_classes: number of classes (classification terms only).

    Returns:
        The :class:`WeightedLoss`; its term names are the spec's names.

    Raises:
        ValueError: unknown term, bad weight, or missing ``dim`` / ``num_classes``.
    """
    terms: list[tuple[str, nn.Module, float]] = []
    if isinstance(spec, str):
        spec = DEFAULT_LOSS if spec.strip() == "default" else spec
        for part in spec.split("+"):
            name, _, weight = part.strip().partition(":")
            name = name.strip()
            try:
                w = float(weight) if weight.strip() else 1.0
            except ValueError:
                raise ValueError(f"bad weight {weight!r} in loss spec {spec!r}") from None
            terms.append((name, _make_term(name, {}, dim, num_classes), w))
    elif isinstance(spec, Mapping):
        for name, cfg in spec.items():
            if isinstance(cfg, Mapping):
                kwargs = dict(cfg)
                w = kwargs.pop("weight", 1.0)
                loss = kwargs.pop("loss", name)
            else:
                kwargs, w, loss = {}, cfg, name
            terms.append((name, _make_term(loss, kwargs, dim, num_classes), w))
    else:
        raise ValueError(f"loss spec must be a string or a dict, got {type(spec).__name__}")
    return WeightedLoss(terms)
