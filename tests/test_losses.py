"""The losses against brute-force loops over every pair / triplet on tiny seeded batches."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmmatch.losses import (
    ClassificationLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    PartialFCLoss,
    SupConLoss,
    TripletLoss,
    WeightedLoss,
    build_loss,
    mine_all_triplets,
    mine_batch_hard,
    mine_semi_hard,
    pairwise_similarity,
    reduce_losses,
    split_sparse_parameters,
)
from mmmatch.similarity import Metric

LABELS = [0, 1, 2, 0, 1, 0, 2, 1]  # n=8, 3 labels
METRICS = ["cosine", "ip", "l2"]

# float(loss) on a loss that requires grad is what the brute-force comparisons want
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def batch(seed=0, n=8, d=4, labels=LABELS, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(True)
    return emb, torch.tensor(labels[:n])


def score(x, y, metric):
    """One score, the slow way."""
    if metric == "cosine":
        return float(x @ y / (x.norm() * y.norm()))
    if metric == "ip":
        return float(x @ y)
    return float(((x - y) ** 2).sum())


def closeness(x, y, metric):
    s = score(x, y, metric)
    return s if Metric(metric).higher_is_better else -s


def brute_triplets(labels):
    n = len(labels)
    return [(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
            if a != p and labels[a] == labels[p] and labels[q] != labels[a]]


def as_list(triplets):
    return list(zip(*(t.tolist() for t in triplets), strict=True))


def connected_zero(loss, emb):
    assert loss.ndim == 0 and float(loss) == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros_like(emb))


# -- distance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_similarity_matches_loop(metric):
    x, _ = batch(0, n=5)
    y, _ = batch(1, n=3)
    got = pairwise_similarity(x, y, metric)
    want = torch.tensor([[score(a, b, metric) for b in y.detach()] for a in x.detach()],
                        dtype=got.dtype)
    assert got.shape == (5, 3)
    assert torch.allclose(got, want, atol=1e-10)
    assert torch.allclose(pairwise_similarity(x, None, metric),
                          pairwise_similarity(x, x, metric), atol=1e-10)


def test_pairwise_l2_is_differentiable_at_zero_distance():
    x = torch.ones(2, 3, requires_grad=True)
    pairwise_similarity(x, None, "l2").sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pairwise_similarity_rejects_bad_input():
    with pytest.raises(ValueError, match="manhattan"):
        pairwise_similarity(torch.ones(2, 3), None, "manhattan")
    with pytest.raises(ValueError, match="same width"):
        pairwise_similarity(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        pairwise_similarity(torch.ones(3))


# -- miners -----------------------------------------------------------------------------------


def test_mine_all_triplets_matches_loop():
    assert as_list(mine_all_triplets(torch.tensor(LABELS))) == brute_triplets(LABELS)


@pytest.mark.parametrize("metric", METRICS)
def test_mine_batch_hard_matches_loop(metric):
    emb, labels = batch(2)
    e = emb.detach()
    want = []
    for a in range(8):
        pos = [p for p in range(8) if p != a and LABELS[p] == LABELS[a]]
        neg = [q for q in range(8) if LABELS[q] != LABELS[a]]
        if pos and neg:
            hardest_p = min(pos, key=lambda p: closeness(e[a], e[p], metric))
            hardest_n = max(neg, key=lambda q: closeness(e[a], e[q], metric))
            want.append((a, hardest_p, hardest_n))
    got = mine_batch_hard(pairwise_similarity(emb, None, metric), labels, metric)
    assert as_list(got) == want
    assert all(t.dtype == torch.long for t in got)


@pytest.mark.parametrize("metric", METRICS)
def test_mine_semi_hard_matches_loop(metric):
    emb, labels = batch(3)
    e = emb.detach()
    margin = 0.5 if metric == "cosine" else 2.0
    want = [(a, p, q) for a, p, q in brute_triplets(LABELS)
            if 0 < closeness(e[a], e[p], metric) - closeness(e[a], e[q], metric) < margin]
    assert want, "the seed should give some semi-hard triplets"
    got = mine_semi_hard(pairwise_similarity(emb, None, metric), labels, metric, margin)
    assert as_list(got) == want


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5], [7]])
def test_miners_without_valid_triplets_return_empty(labels):
    emb, y = batch(0, n=len(labels), labels=labels)
    sim = pairwise_similarity(emb)
    for triplets in (mine_all_triplets(y), mine_batch_hard(sim, y), mine_semi_hard(sim, y)):
        assert all(t.numel() == 0 and t.dtype == torch.long for t in triplets)


def test_miners_check_shapes():
    with pytest.raises(ValueError, match="square"):
        mine_batch_hard(torch.ones(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 labels"):
        mine_semi_hard(torch.ones(3, 3), torch.tensor([0, 1]))


# -- reducers / triplet loss ------------------------------------------------------------------


def test_reducers():
    losses = torch.tensor([0.0, 1.0, 3.0, 0.0])
    assert float(reduce_losses(losses, "mean")) == 1.0
    assert float(reduce_losses(losses, "nonzero_mean")) == 2.0
    assert float(reduce_losses(losses, "sum")) == 4.0
    assert float(reduce_losses(torch.zeros(3), "nonzero_mean")) == 0.0
    with pytest.raises(ValueError, match="nonzero_mean"):
        reduce_losses(losses, "median")


def brute_triplet_loss(emb, triplets, margin, metric, reducer):
    e = emb.detach()
    losses = [max(0.0, closeness(e[a], e[q], metric) - closeness(e[a], e[p], metric) + margin)
              for a, p, q in triplets]
    if not losses:
        return 0.0
    if reducer == "sum":
        return sum(losses)
    if reducer == "mean":
        return sum(losses) / len(losses)
    nonzero = [v for v in losses if v > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("miner", ["all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("reducer", ["mean", "nonzero_mean", "sum"])
def test_triplet_loss_matches_loop(metric, miner, reducer):
    emb, labels = batch(4)
    margin = 0.3 if metric == "cosine" else 2.0
    sim = pairwise_similarity(emb, None, metric)
    triplets = {"all": mine_all_triplets(labels),
                "batch_hard": mine_batch_hard(sim, labels, metric),
                "semi_hard": mine_semi_hard(sim, labels, metric, margin)}[miner]
    loss_fn = TripletLoss(margin=margin, miner=miner, metric=metric, reducer=reducer)
    loss = loss_fn(emb, labels)
    want = brute_triplet_loss(emb, as_list(triplets), margin, metric, reducer)
    assert math.isclose(float(loss), want, rel_tol=1e-9, abs_tol=1e-12)
    assert loss_fn.last_triplets == len(triplets[0])
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_triplet_all_miner_uses_every_triplet():
    emb, labels = batch(5)
    loss = TripletLoss(margin=0.2, miner="all", reducer="mean")(emb, labels)
    want = brute_triplet_loss(emb, brute_triplets(LABELS), 0.2, "cosine", "mean")
    assert math.isclose(float(loss), want, rel_tol=1e-9)


def test_triplet_accepts_a_callable_miner():
    emb, labels = batch(6)
    loss = TripletLoss(miner=lambda sim, y: mine_all_triplets(y), reducer="sum")(emb, labels)
    assert math.isclose(float(loss), float(TripletLoss(miner="all", reducer="sum")(emb, labels)))


# -- multi-similarity -------------------------------------------------------------------------


def brute_ms(emb, labels, alpha, beta, base, eps):
    e = F.normalize(emb.detach(), dim=1)
    n = len(labels)
    per_anchor = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(n) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        s = [float(e[i] @ e[j]) for j in range(n)]
        kept_pos = [j for j in pos if s[j] - eps < max(s[k] for k in neg)]
        kept_neg = [k for k in neg if s[k] + eps > min(s[j] for j in pos)]
        per_anchor.append(
            math.log(1 + sum(math.exp(-alpha * (s[j] - base)) for j in kept_pos)) / alpha
            + math.log(1 + sum(math.exp(beta * (s[k] - base)) for k in kept_neg)) / beta)
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_multi_similarity_matches_loop(seed, eps):
    emb, labels = batch(seed)
    loss = MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, epsilon=eps)(emb, labels)
    assert math.isclose(float(loss), brute_ms(emb, LABELS, 2.0, 50.0, 0.5, eps), rel_tol=1e-9)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_multi_similarity_mining_drops_easy_pairs():
    emb, labels = batch(1)
    loss_fn = MultiSimilarityLoss(epsilon=0.0)
    keep_pos, keep_neg = loss_fn.mine(pairwise_similarity(emb), labels)
    pos = (labels[:, None] == labels[None, :]) & ~torch.eye(8, dtype=torch.bool)
    assert bool((keep_pos <= pos).all()) and bool((keep_neg <= ~pos).all())
    assert int(keep_pos.sum()) < int(pos.sum()) or int(keep_neg.sum()) < int((~pos).sum() - 8)


# -- SupCon / NT-Xent -------------------------------------------------------------------------


def brute_supcon(emb, labels, t):
    e = F.normalize(emb.detach(), dim=1)
    n = len(labels)
    per_anchor = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denominator = sum(math.exp(float(e[i] @ e[k]) / t) for k in range(n) if k != i)
        per_anchor.append(-sum(math.log(math.exp(float(e[i] @ e[p]) / t) / denominator)
                               for p in pos) / len(pos))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def brute_ntxent(emb, labels, t):
    e = F.normalize(emb.detach(), dim=1)
    n = len(labels)
    terms = []
    for a, p in itertools.permutations(range(n), 2):
        if labels[a] != labels[p]:
            continue
        top = math.exp(float(e[a] @ e[p]) / t)
        negs = sum(math.exp(float(e[a] @ e[k]) / t) for k in range(n) if labels[k] != labels[a])
        terms.append(-math.log(top / (top + negs)))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_loop(temperature):
    emb, labels = batch(7)
    loss = SupConLoss(temperature)(emb, labels)
    assert math.isclose(float(loss), brute_supcon(emb, LABELS, temperature), rel_tol=1e-9)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_loop(temperature):
    emb, labels = batch(8)
    loss = NTXentLoss(temperature)(emb, labels)
    assert math.isclose(float(loss), brute_ntxent(emb, LABELS, temperature), rel_tol=1e-9)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_two_views_ntxent_is_simclr_and_equals_supcon():
    n_pairs, t = 4, 0.2
    emb, _ = batch(9, n=2 * n_pairs, labels=list(range(8)))
    labels = torch.arange(n_pairs).repeat(2)  # row i and row i + N are the two views
    # SimCLR as written in the paper: 2N terms, denominator over all k != i
    z = F.normalize(emb.detach(), dim=1)
    sim = z @ z.T / t
    simclr = 0.0
    for i in range(2 * n_pairs):
        j = (i + n_pairs) % (2 * n_pairs)
        simclr += -(sim[i, j] - torch.logsumexp(sim[i][torch.arange(2 * n_pairs) != i], 0))
    simclr = float(simclr) / (2 * n_pairs)
    assert math.isclose(float(NTXentLoss(t)(emb, labels)), simclr, rel_tol=1e-9)
    assert math.isclose(float(SupConLoss(t)(emb, labels)), simclr, rel_tol=1e-9)


def test_ntxent_and_supcon_differ_with_more_positives():
    emb, labels = batch(10)
    assert not math.isclose(float(NTXentLoss()(emb, labels)), float(SupConLoss()(emb, labels)))


# -- edge cases shared by the pair losses -----------------------------------------------------


PAIR_LOSSES = [
    lambda: TripletLoss(miner="batch_hard"),
    lambda: TripletLoss(miner="semi_hard", reducer="mean"),
    lambda: TripletLoss(miner="all", metric="l2", reducer="sum"),
    MultiSimilarityLoss,
    SupConLoss,
    NTXentLoss,
]


@pytest.mark.parametrize("make", PAIR_LOSSES)
@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [3], []], ids=["no-positives", "one", "none"])
def test_pair_losses_without_positives_are_connected_zero(make, labels):
    emb, y = batch(0, n=len(labels), labels=labels)
    connected_zero(make()(emb, y), emb)


@pytest.mark.parametrize("make", [*PAIR_LOSSES[:4], NTXentLoss])
def test_single_class_batch_gives_connected_zero(make):
    emb, y = batch(0, n=5, labels=[2] * 5)  # positives but no negatives
    connected_zero(make()(emb, y), emb)


def test_supcon_single_class_is_finite_and_trains():
    emb, y = batch(0, n=5, labels=[2] * 5)
    loss = SupConLoss()(emb, y)
    assert float(loss) > 0  # every other row is in the denominator: log(4) at best
    assert float(loss) >= math.log(4) - 1e-9
    loss.backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("make", PAIR_LOSSES)
def test_pair_losses_work_in_float32(make):
    emb, y = batch(11, dtype=torch.float32)
    loss = make()(emb, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(emb.grad).all()


# -- classification ---------------------------------------------------------------------------


def brute_margin_logit(c, kind, m, easy=False):
    if kind == "cosface":
        return c - m
    theta = math.acos(max(-1.0, min(1.0, c)))
    if easy:
        return math.cos(theta + m) if c > 0 else c
    return math.cos(theta + m) if theta + m <= math.pi else c - math.sin(m) * m


@pytest.mark.parametrize(("kind", "margin", "easy"), [
    ("arcface", 0.3, False), ("arcface", 0.5, True), ("arcface", 2.5, False),
    ("cosface", 0.35, False), ("normface", 0.0, False),
])
def test_classification_matches_loop(kind, margin, easy):
    torch.manual_seed(0)
    emb, labels = batch(12)
    loss_fn = ClassificationLoss(4, 3, kind=kind, margin=margin, scale=16.0,
                                 easy_margin=easy).double()
    w = F.normalize(loss_fn.weight.detach(), dim=1)
    e = F.normalize(emb.detach(), dim=1)
    total = 0.0
    for i, y in enumerate(LABELS):
        logits = [16.0 * float(e[i] @ w[c]) for c in range(3)]
        if kind != "normface":
            logits[y] = 16.0 * brute_margin_logit(float(e[i] @ w[y]), kind, margin, easy)
        total += -logits[y] + math.log(sum(math.exp(v) for v in logits))
    loss = loss_fn(emb, labels)
    assert math.isclose(float(loss), total / len(LABELS), rel_tol=1e-7)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(loss_fn.weight.grad).all()
    # prediction logits carry no margin
    assert torch.allclose(loss_fn.logits(emb), 16.0 * e @ w.T)


def test_arcface_beyond_pi_uses_the_linear_fallback():
    loss_fn = ClassificationLoss(2, 2, kind="arcface", margin=0.5, scale=1.0).double()
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angle = math.pi - 0.2  # theta + m > pi
    emb = torch.tensor([[math.cos(angle), math.sin(angle)]], dtype=torch.float64)
    got = float(loss_fn.margin_logits(emb, torch.tensor([0]))[0, 0])
    c = math.cos(angle)
    assert math.isclose(got, c - math.sin(0.5) * 0.5, rel_tol=1e-9)
    assert got < c  # still a penalty, not cos(theta + m) turning back up
    easy = ClassificationLoss(2, 2, kind="arcface", margin=0.5, scale=1.0,
                              easy_margin=True).double()
    easy.load_state_dict(loss_fn.state_dict())
    assert math.isclose(float(easy.margin_logits(emb, torch.tensor([0]))[0, 0]), c)


def test_softmax_is_linear_cross_entropy():
    emb, labels = batch(13, dtype=torch.float32)
    loss_fn = ClassificationLoss(4, 3, kind="softmax")
    assert loss_fn.bias is not None
    want = F.cross_entropy(emb @ loss_fn.weight.T + loss_fn.bias, labels)
    assert torch.allclose(loss_fn(emb, labels), want)
    assert torch.allclose(loss_fn.logits(emb), emb @ loss_fn.weight.T + loss_fn.bias)


def test_margin_zero_arcface_equals_cosface_equals_scaled_cosine():
    emb, labels = batch(14, dtype=torch.float32)
    arc = ClassificationLoss(4, 3, kind="arcface", margin=0.0, scale=10.0)
    cos = ClassificationLoss(4, 3, kind="cosface", margin=0.0, scale=10.0)
    cos.load_state_dict(arc.state_dict())
    scaled = 10.0 * F.normalize(emb, dim=1) @ F.normalize(arc.weight, dim=1).T
    for module in (arc, cos):
        assert torch.allclose(module.margin_logits(emb, labels), scaled, atol=1e-5)
        assert torch.allclose(module.logits(emb), scaled, atol=1e-5)
        assert torch.allclose(module(emb, labels), F.cross_entropy(scaled, labels), atol=1e-5)


def test_classification_checks_labels_and_arguments():
    loss_fn = ClassificationLoss(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="kind"):
        ClassificationLoss(4, 3, kind="sphereface")
    with pytest.raises(ValueError, match="margin"):
        ClassificationLoss(4, 3, margin=-0.1)
    with pytest.raises(ValueError, match="pi"):
        ClassificationLoss(4, 3, kind="arcface", margin=4.0)
    with pytest.raises(ValueError, match="scale"):
        ClassificationLoss(4, 3, scale=0)
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationLoss(4, 0)


# -- Partial FC -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["arcface", "cosface", "normface"])
def test_partial_fc_with_all_classes_equals_full_softmax(kind):
    emb, labels = batch(15, dtype=torch.float32)
    full = ClassificationLoss(4, 3, kind=kind, margin=0.3, scale=20.0)
    pfc = PartialFCLoss(4, 3, num_sampled=5, kind=kind, margin=0.3, scale=20.0)
    with torch.no_grad():
        pfc.centres.weight.copy_(full.weight)
    assert torch.allclose(pfc(emb, labels), full(emb, labels), atol=1e-6)
    assert torch.equal(pfc.last_sampled, torch.arange(3))
    assert torch.allclose(pfc.logits(emb, chunk_size=2), full.logits(emb), atol=1e-5)


def test_partial_fc_sampled_loss_equals_full_loss_over_the_sampled_classes():
    emb, _ = batch(16, dtype=torch.float32)
    labels = torch.tensor([3, 7, 3, 12, 7, 19, 3, 12])
    pfc = PartialFCLoss(4, 20, num_sampled=8, seed=1)
    loss = pfc(emb, labels)
    index = pfc.last_sampled
    assert len(index) == 8 and len(torch.unique(index)) == 8
    assert set(labels.tolist()) <= set(index.tolist())
    w = pfc.weight.detach()[index]
    target = torch.searchsorted(index, labels)
    ref = ClassificationLoss(4, 8, kind="arcface", margin=pfc.margin, scale=pfc.scale)
    with torch.no_grad():
        ref.weight.copy_(w)
    assert torch.allclose(loss, ref(emb, target), atol=1e-6)


def test_partial_fc_gradient_touches_only_sampled_rows():
    emb, _ = batch(17, dtype=torch.float32)
    labels = torch.tensor([0, 5, 9, 0, 5, 33, 9, 41])
    pfc = PartialFCLoss(4, 50, num_sampled=10, seed=3)
    before = pfc.weight.detach().clone()
    opt = torch.optim.SGD(pfc.parameters(), lr=0.5)
    pfc(emb, labels).backward()
    grad = pfc.weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    assert touched == set(pfc.last_sampled.tolist())
    opt.step()
    changed = (pfc.weight.detach() != before).any(1)
    assert set(changed.nonzero()[:, 0].tolist()) <= touched
    untouched = torch.tensor(sorted(set(range(50)) - touched))
    assert torch.equal(pfc.weight.detach()[untouched], before[untouched])
    assert torch.isfinite(emb.grad).all()


def test_partial_fc_works_with_sparse_adam_and_split_parameters():
    emb, _ = batch(18, dtype=torch.float32)
    labels = torch.tensor([1, 2, 3, 1, 2, 3, 4, 4])
    head = torch.nn.Linear(4, 4)
    pfc = PartialFCLoss(4, 30, num_sampled=6)
    dense, sparse = split_sparse_parameters(head, pfc)
    assert sparse == [pfc.weight] and len(dense) == 2
    opts = [torch.optim.Adam(dense, lr=0.01), torch.optim.SparseAdam(sparse, lr=0.01)]
    before = pfc.weight.detach().clone()
    pfc(head(emb.detach()), labels).backward()
    for opt in opts:
        opt.step()
    changed = set((pfc.weight.detach() != before).any(1).nonzero()[:, 0].tolist())
    assert changed and changed <= set(pfc.last_sampled.tolist())


def test_partial_fc_sampling_is_reproducible():
    labels = torch.tensor([0, 1, 2, 3])

    def draws(seed):
        pfc = PartialFCLoss(4, 1000, num_sampled=20, seed=seed)
        return [pfc.sample(labels)[0] for _ in range(3)]

    a, b, c = draws(7), draws(7), draws(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # a fresh draw each step
    for index in a:
        assert len(index) == 20 and {0, 1, 2, 3} <= set(index.tolist())
        assert torch.equal(index, index.sort().values)


def test_partial_fc_keeps_all_positives_when_they_outnumber_num_sampled():
    pfc = PartialFCLoss(4, 100, num_sampled=3)
    labels = torch.tensor([5, 9, 11, 40, 77, 9])
    index, target = pfc.sample(labels)
    assert index.tolist() == [5, 9, 11, 40, 77]
    assert torch.equal(index[target], labels)


def test_partial_fc_topk_matches_full_logits():
    emb, _ = batch(19, dtype=torch.float32)
    pfc = PartialFCLoss(4, 37, num_sampled=5)
    scores, classes = pfc.topk(emb, k=4, chunk_size=10)
    full = pfc.logits(emb, chunk_size=7)
    want_s, want_i = full.topk(4, dim=1)
    assert torch.allclose(scores, want_s) and torch.equal(classes, want_i)


def test_partial_fc_checks_arguments():
    with pytest.raises(ValueError, match="num_sampled"):
        PartialFCLoss(4, 10, num_sampled=0)
    with pytest.raises(ValueError, match="kind"):
        PartialFCLoss(4, 10, kind="triplet")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        PartialFCLoss(4, 10)(torch.randn(2, 4), torch.tensor([1, 10]))
    assert PartialFCLoss(4, 10, kind="softmax").kind == "normface"
    assert PartialFCLoss(4, 1000).num_sampled == 100


# -- combining --------------------------------------------------------------------------------


def test_weighted_loss_sums_and_logs_terms():
    emb, labels = batch(20, dtype=torch.float32)
    triplet, arc = TripletLoss(), ClassificationLoss(4, 3)
    loss_fn = WeightedLoss({"triplet": (triplet, 1.0), "arcface": (arc, 0.5)})
    loss = loss_fn(emb, labels)
    t, a = float(triplet(emb, labels)), float(arc(emb, labels))
    assert math.isclose(float(loss), t + 0.5 * a, rel_tol=1e-6)
    assert loss_fn.last_terms == pytest.approx({"triplet": t, "arcface": a})
    assert any(p is arc.weight for p in loss_fn.parameters())
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_build_loss_default_and_specs():
    loss_fn = build_loss("default", dim=4, num_classes=3)
    assert list(loss_fn.terms) == ["triplet", "arcface"]
    assert loss_fn.weights == {"triplet": 1.0, "arcface": 1.0}
    assert loss_fn.terms["triplet"].miner == "batch_hard"
    assert loss_fn.terms["arcface"].kind == "arcface"
    loss_fn = build_loss("supcon:0.5 + partial_fc:2", dim=4, num_classes=50)
    assert loss_fn.weights == {"supcon": 0.5, "partial_fc": 2.0}
    loss_fn = build_loss({"hard": {"loss": "triplet", "margin": 0.1, "weight": 2},
                          "cls": {"loss": "cosface", "margin": 0.2}, "ms": 0.1},
                         dim=4, num_classes=3)
    assert loss_fn.terms["hard"].margin == 0.1 and loss_fn.terms["cls"].kind == "cosface"
    emb, labels = batch(21, dtype=torch.float32)
    loss_fn(emb, labels).backward()
    assert set(loss_fn.last_terms) == {"hard", "cls", "ms"}


def test_build_loss_errors():
    with pytest.raises(ValueError, match="unknown loss 'tripplet'"):
        build_loss("tripplet")
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("arcface", dim=4)
    with pytest.raises(ValueError, match="bad weight"):
        build_loss("triplet:x")
    with pytest.raises(ValueError, match="weight"):
        build_loss({"triplet": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        WeightedLoss({})


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown miner 'hardest'"):
        TripletLoss(miner="hardest")
    with pytest.raises(ValueError, match="unknown reducer"):
        TripletLoss(reducer="max")
    with pytest.raises(ValueError, match="unknown metric"):
        TripletLoss(metric="dot")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-1)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=-0.1)
    with pytest.raises(ValueError, match="beta"):
        MultiSimilarityLoss(beta=0)
    with pytest.raises(ValueError, match="2-D"):
        TripletLoss()(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="3 labels"):
        SupConLoss()(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        NTXentLoss()(torch.randn(2, 2), torch.tensor([0.0, 1.0]))
