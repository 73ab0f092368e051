import math
import time

import numpy as np
import pandas as pd
import pytest

from mmmatch.pair_features import (
    PAIR_FEATURE_COLUMNS,
    UNIT_FAMILIES,
    ItemParse,
    pair_features,
    parse_item,
    parse_items,
)


def one(left: str, right: str, **kw) -> pd.Series:
    return pair_features([left], [right], **kw).iloc[0]


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("sony turntable pslx350h", {"pslx350h"}),
        ("Sony PS-LX350H Belt-Drive Turntable", {"pslx350h"}),
        ("Panasonic Lumix DMC-FZ8K", {"dmcfz8k"}),
        ("Sony Bravia KDL-40V4100 40\" LCD", {"kdl40v4100"}),
        ("garmin nuvi 265t gps 0100057610", {"265t", "0100057610"}),  # digit part number
        ("quickbooks pro 2007", set()),  # a year is not a code
        ("WD 500GB 40-inch 2nd 4th-6th grade mp3 1920x1080 2-line", set()),  # units, ordinals...
        ("lg lfc25770st fridge", {"lfc25770st"}),  # ends like an ordinal, still a code
        ("", set()),
    ],
)
def test_codes(text, codes):
    assert set(parse_item(text).codes) == codes


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("500gb", {("gb", 500.0)}),
        ("500 GB", {("gb", 500.0)}),
        ("1.5tb", {("gb", 1500.0)}),
        ("512 mb", {("gb", 0.512)}),
        ('32" lcd', {("inch", 32.0)}),
        ("haier 13 ' silver tube tv", {("inch", 13.0)}),
        ("40-inch", {("inch", 40.0)}),
        ("2 x 4gb kit", {("gb", 4.0), ("gb", 8.0)}),
        ("5.8ghz phone", {("mhz", 5800.0)}),
        ("300w", {("w", 300.0)}),
        ("12 oz", {("g", 340.0)}),  # 12 * 28.3495 = 340.19 -> 3 significant digits
        ("1.5l", {("ml", 1500.0)}),
        ("12x zoom 1080p", {("zoom", 12.0), ("res", 1080.0)}),
        ("8-port switch", {("port", 8.0)}),
        ("iphone 3g", set()),  # a network, not 3 grams
        ("5 in 1 card reader", set()),  # "in" needs no space to be inches
        ("kdl-40v4100", set()),  # inside a code
    ],
)
def test_units(text, units):
    assert set(parse_item(text).units) == units
    assert {f for f, _ in units} <= set(UNIT_FAMILIES)


def test_numbers_and_brand():
    p = parse_item("Sony 5 disc CD player CDP-CE375 25.0 lbs")
    assert p.numbers == {"5", "25"}  # "375" belongs to the code; "25.0" -> "25"
    assert (p.brand, p.brand_known) == ("sony", True)
    assert p.tokens[:2] == ("sony", "5")
    guess = parse_item("the acme widget 3000")
    assert (guess.brand, guess.brand_known) == ("acme", False)  # first token, not known
    assert parse_item("hoyle kids games", "Encore Software, Inc.").brand == "encore"
    assert parse_item("acme arcserve", "Computer Associates").brand == "ca"
    assert parse_item("hp 3 pack", float("nan")).brand == "hp"  # NaN brand: guess
    assert parse_item("desk lamp by Western Digital").brand_mentions == {"wd"}


def test_parse_items_reuses_parses():
    out = parse_items(["a1b2c", "x", "a1b2c"], ["acme", None, "acme"])
    assert out[0] is out[2] and out[0].brand == "acme" and out[1].brand == "x"
    with pytest.raises(ValueError, match="brands"):
        parse_items(["a"], ["b", "c"])


# ----------------------------------------------------------------------------- pair features


def test_columns_and_dtypes():
    f = pair_features(["a", "b"], ["c", "d"])
    assert tuple(f.columns) == PAIR_FEATURE_COLUMNS
    assert (f.dtypes == np.float32).all() and list(f.index) == [0, 1]


def test_code_match_across_spellings():
    f = one("sony turntable pslx350h", "Sony PS-LX350H Belt-Drive Turntable")
    assert f.code_match == 1 and f.code_clash == 0 and f.code_in_text == 1
    assert f.code_jaccard == 1 and f.code_match_len == 8
    assert f.n_codes_left == 1 and f.n_codes_right == 1
    assert f.brand_match == 1 and f.brand_clash == 0 and f.first_token_match == 1
    # tokens {sony, turntable, pslx350h} vs {sony, pslx350h, beltdrive, turntable}: 3 / 4
    assert f.token_jaccard == pytest.approx(0.75)
    assert f.len_ratio == pytest.approx(3 / 4)


def test_code_clash():
    f = one("canon powershot sd1100is silver", "canon sd1000 digital elph")
    assert f.code_clash == 1 and f.code_match == 0 and f.code_jaccard == 0
    assert f.code_match_len == 0 and f.code_digits_match == 0
    assert f.brand_match == 1


def test_code_containment_respects_digit_runs():
    f = one("sony alpha dslr-a200", "sony dslra200w kit")  # colour / kit suffix
    assert f.code_match == 1 and f.code_match_len == len("dslra200") and f.code_jaccard == 0
    f = one("canon sd100 camera", "canon sd1000 camera")  # a different model
    assert f.code_match == 0 and f.code_clash == 1
    f = one("lg lfc25770st fridge", "lg lfc25770ss fridge")
    assert f.code_clash == 1 and f.code_digits_match == 1


def test_code_in_text_finds_split_codes():
    f = one("sony pslx350h turntable", "sony ps-lx 350h turntable")  # codes pslx, 350h
    assert f.code_in_text == 1 and f.code_match == 0 and f.code_clash == 0


def test_units_match_and_clash():
    f = one("seagate 500gb drive", "seagate drive 500 GB")
    assert f.unit_match == 1 and f.unit_clash == 0 and f.unit_families_shared == 1
    f = one("seagate 1tb drive", "seagate 500gb drive")
    assert f.unit_match == 0 and f.unit_clash == 1
    assert one("1.5tb", "1500 gb").unit_match == 1
    f = one("toshiba 32 ' lcd", "toshiba 31.5 ' lcd")  # within tolerance: neither
    assert f.unit_match == 0 and f.unit_clash == 0 and f.unit_families_shared == 1
    f = one("wd 1tb 40-inch", "wd 1000 gb 46 inch")  # one family agrees, another not
    assert f.unit_match == 1 and f.unit_clash == 1 and f.unit_families_shared == 2
    f = one("seagate 500gb", "seagate 40-inch")  # no common family
    assert f.unit_match == 0 and f.unit_clash == 0 and f.unit_families_shared == 0


def test_numbers_brand_and_price():
    f = one("acme 5 disc 2007", "acme 5 disc changer 2008", left_prices=[50.0],
            right_prices=["200"])
    assert f.number_jaccard == pytest.approx(1 / 3)  # {5, 2007} vs {5, 2008}
    assert f.price_ratio == pytest.approx(0.25)
    f = one("sony tv", "samsung tv")
    assert f.brand_clash == 1 and f.brand_match == 0
    f = one("acme tv", "samsung tv")  # a first-token guess never clashes
    assert f.brand_clash == 0 and f.brand_match == 0
    f = one("hoyle kids games", "encore hoyle kids games", left_brands=["encore software"])
    assert f.brand_match == 1
    f = one("i love the usa", "global a1055 i love the usa",
            left_brands=["globalsoftwarepublishing"], right_brands=[None])
    assert f.brand_match == 1  # glued manufacturer name starts with the other's brand
    f = one("x", "y", left_brands=["panasonic"], right_brands=["panavise"])
    assert f.brand_match == 0 and f.brand_clash == 1  # a common prefix alone is no match


@pytest.mark.parametrize(("lp", "rp"), [(None, 10.0), (0.0, 10.0), (-1.0, 10.0), ("n/a", 1.0)])
def test_price_ratio_missing_is_nan(lp, rp):
    assert math.isnan(one("a", "b", left_prices=[lp], right_prices=[rp]).price_ratio)


def test_empty_texts():
    f = pair_features(["", None, "sony tv"], ["", "sony tv", float("nan")])
    for col in ("code_jaccard", "number_jaccard", "len_ratio", "token_jaccard", "price_ratio"):
        assert f[col].isna().all(), col
    flags = [c for c in PAIR_FEATURE_COLUMNS if c not in (
        "code_jaccard", "number_jaccard", "len_ratio", "token_jaccard", "price_ratio")]
    assert (f[flags] == 0).all().all()
    assert len(pair_features([], [])) == 0
    assert tuple(pair_features([], []).columns) == PAIR_FEATURE_COLUMNS


LEFT = [
    "sony turntable pslx350h", "canon powershot sd1100is silver 8gb", "seagate 1tb drive",
    "", "hoyle kids games",
]
RIGHT = [
    "Sony PS-LX350H Belt-Drive Turntable", "canon sd1000 digital elph", "seagate 500 GB",
    "encore software 10671 hoyle kids games",
]


def test_index_pairs_equal_expanded_lists():
    li = np.array([0, 1, 2, 3, 4, 0, 2, 4])
    ri = np.array([0, 1, 2, 3, 3, 1, 2, 0])
    lp, rp = [10.0, None, 80.0, 5.0, 20.0], [12.0, 100.0, 40.0, None]
    lb, rb = [None, None, None, None, "encore"], [None, "canon", None, None]
    got = pair_features(LEFT, RIGHT, lp, rp, lb, rb, li=li, ri=ri)
    want = pair_features(
        [LEFT[i] for i in li], [RIGHT[i] for i in ri], [lp[i] for i in li], [rp[i] for i in ri],
        [lb[i] for i in li], [rb[i] for i in ri])
    pd.testing.assert_frame_equal(got, want)
    parsed = pair_features(parse_items(LEFT, lb), parse_items(RIGHT, rb), lp, rp, li=li, ri=ri)
    pd.testing.assert_frame_equal(got, parsed)
    assert got.loc[4, "brand_match"] == 1 and got.loc[2, "unit_clash"] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="li / ri"):
        pair_features(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="li has"):
        pair_features(["a"], ["c"], li=[0, 0], ri=[0])
    with pytest.raises(IndexError):
        pair_features(["a"], ["c"], li=[1], ri=[0])
    with pytest.raises(ValueError, match="left_prices"):
        pair_features(["a"], ["c"], left_prices=[1.0, 2.0])
    with pytest.raises(ValueError, match="brands"):
        pair_features([parse_item("a")], ["c"], left_brands=["x"])
    assert isinstance(parse_item("a"), ItemParse)


def test_speed_10k_pairs():
    rng = np.random.default_rng(0)
    brands = ["sony", "canon", "acme", "lg", "seagate"]
    left = [f"{brands[i % 5]} widget model ab{i}x{i % 7} {i % 9}00gb {i % 40}-inch"
            for i in range(1000)]
    right = [f"{brands[i % 4]} AB-{i}X{i % 5} widget {i % 3}tb black" for i in range(1000)]
    li, ri = rng.integers(0, 1000, 10_000), rng.integers(0, 1000, 10_000)
    pair_features(left[:10], right[:10])  # warm-up
    start = time.perf_counter()
    f = pair_features(left, right, li=li, ri=ri)
    assert len(f) == 10_000
    assert time.perf_counter() - start < 1.0
