import numpy as np
import pytest

from mmmatch.similarity import Metric


@pytest.mark.parametrize(
    ("metric", "higher"), [(Metric.COSINE, True), (Metric.IP, True), (Metric.L2, False)]
)
def test_higher_is_better(metric, higher):
    assert metric.higher_is_better is higher


def test_is_better_follows_direction():
    assert Metric.COSINE.is_better(0.9, 0.5)
    assert not Metric.COSINE.is_better(0.5, 0.5)
    assert Metric.L2.is_better(0.1, 0.5)
    assert not Metric.L2.is_better(0.5, 0.1)


def test_passes_is_inclusive_and_direction_aware():
    scores = np.array([0.2, 0.5, 0.8])
    np.testing.assert_array_equal(Metric.COSINE.passes(scores, 0.5), [False, True, True])
    np.testing.assert_array_equal(Metric.IP.passes(scores, 0.5), [False, True, True])
    np.testing.assert_array_equal(Metric.L2.passes(scores, 0.5), [True, True, False])


def test_worst_score():
    assert Metric.COSINE.worst == -np.inf
    assert Metric.L2.worst == np.inf


def test_parse_accepts_names_and_members():
    assert Metric.parse("cosine") is Metric.COSINE
    assert Metric.parse("l2") is Metric.L2
    assert Metric.parse(Metric.IP) is Metric.IP


def test_parse_error_lists_valid_names():
    with pytest.raises(ValueError, match="manhattan") as info:
        Metric.parse("manhattan")
    message = str(info.value)
    for name in ("cosine", "ip", "l2"):
        assert name in message
