import numpy as np
import pandas as pd
import pytest

from mmmatch.catalogue import (
    PROBLEM_COLUMNS,
    Catalogue,
    ColumnMap,
    load_catalogue,
    read_table,
)
from mmmatch.exceptions import CatalogueError


@pytest.fixture
def frame():
    return pd.DataFrame({
        "id": ["a", "b", "c"],
        "title": ["Oat milk 1L", "  Green tea  ", None],
        "brand": ["Oatly", None, "Sony"],
        "image": ["a.jpg", "", "c.jpg"],
        "shop": ["s1", "s2", "s1"],
        "product": ["p1", "p2", "p1"],
    })


def test_load_dataframe_auto_detects_columns(frame):
    cat = load_catalogue(frame)
    assert isinstance(cat, Catalogue)
    assert len(cat) == 3
    assert cat.columns == ColumnMap(id="id", title="title", image="image", brand="brand")
    assert list(cat.ids) == ["a", "b", "c"]
    assert list(cat.titles) == ["Oat milk 1L", "Green tea", ""]
    assert list(cat.texts) == ["Oat milk 1L", "Green tea", ""]
    assert list(cat.images) == ["a.jpg", None, "c.jpg"]
    assert cat.sources is None and cat.labels is None
    assert cat.base_dir is None
    assert cat.name == "catalogue"
    np.testing.assert_array_equal(cat.rows, [0, 1, 2])
    assert cat.problems.empty and list(cat.problems.columns) == PROBLEM_COLUMNS


def test_auto_detection_of_other_common_names():
    df = pd.DataFrame({"sku": [10, 11], "product_name": ["x", "y"], "photo": ["p.png", None]})
    cat = load_catalogue(df)
    assert cat.columns.id == "sku" and cat.columns.title == "product_name"
    assert cat.columns.image == "photo"
    assert list(cat.ids) == ["10", "11"]
    assert list(cat.images) == ["p.png", None]


def test_without_id_column_the_index_is_the_id():
    df = pd.DataFrame({"title": ["x", "y"]}, index=["k1", "k2"])
    cat = load_catalogue(df)
    assert list(cat.ids) == ["k1", "k2"]
    assert cat.columns.id is None


def test_explicit_column_map_with_text_source_and_label(frame):
    cols = ColumnMap(id="id", title="title", text=("brand",), image=None, source="shop",
                     label="product")
    cat = load_catalogue(frame, cols)
    assert list(cat.texts) == ["Oat milk 1L | Oatly", "Green tea", "Sony"]
    assert list(cat.sources) == ["s1", "s2", "s1"]
    assert list(cat.labels) == ["p1", "p2", "p1"]
    # image=None still auto-detects
    assert cat.columns.image == "image"


def test_column_map_from_dict():
    cm = ColumnMap.from_dict({"id": "sku", "text": "brand"})
    assert cm == ColumnMap(id="sku", text=("brand",))
    assert ColumnMap.from_dict({"text": ["a", "b"]}).text == ("a", "b")
    assert ColumnMap.from_dict(None) == ColumnMap()
    with pytest.raises(CatalogueError, match="colour"):
        ColumnMap.from_dict({"colour": "c"})


def test_dict_columns_are_accepted(frame):
    cat = load_catalogue(frame, {"text": "brand"})
    assert cat.texts[0] == "Oat milk 1L | Oatly"


def test_load_csv(tmp_path, frame):
    path = tmp_path / "shop.csv"
    frame.assign(id=["007", "b", "c"]).to_csv(path, index=False)
    cat = load_catalogue(path)
    assert list(cat.ids) == ["007", "b", "c"]  # read as text: leading zeros kept
    assert cat.name == "shop.csv"
    assert cat.base_dir == tmp_path.resolve()
    assert list(cat.images) == ["a.jpg", None, "c.jpg"]
    assert cat.titles[2] == ""


def test_load_parquet(tmp_path, frame):
    path = tmp_path / "shop.parquet"
    frame.to_parquet(path, index=False)
    cat = load_catalogue(path, {"text": ["brand"]})
    assert list(cat.ids) == ["a", "b", "c"]
    assert cat.texts[0] == "Oat milk 1L | Oatly"
    assert cat.name == "shop.parquet"


def test_load_tsv_and_jsonl(tmp_path, frame):
    tsv, jsonl = tmp_path / "a.tsv", tmp_path / "a.jsonl"
    frame.to_csv(tsv, sep="\t", index=False)
    frame.to_json(jsonl, orient="records", lines=True)
    assert list(load_catalogue(tsv).ids) == ["a", "b", "c"]
    assert list(load_catalogue(jsonl).titles) == ["Oat milk 1L", "Green tea", ""]


def test_explicit_base_dir_and_name(tmp_path, frame):
    cat = load_catalogue(frame, base_dir=tmp_path, name="left")
    assert cat.base_dir == tmp_path
    assert cat.name == "left"
    assert cat.row_name(1) == "left row 1 (id 'b')"


def test_catalogue_passes_through():
    cat = load_catalogue(pd.DataFrame({"title": ["x"]}))
    assert load_catalogue(cat) is cat


def test_missing_explicit_id_column(frame):
    with pytest.raises(CatalogueError) as info:
        load_catalogue(frame, {"id": "product_id"})
    message = str(info.value)
    assert "'product_id'" in message and "id" in message and "'title'" in message


def test_missing_explicit_text_column(frame):
    with pytest.raises(CatalogueError, match="description"):
        load_catalogue(frame, {"text": ["description"]})


def test_missing_ids_name_the_rows():
    df = pd.DataFrame({"id": ["a", None, "c", "  "], "title": ["w", "x", "y", "z"]})
    with pytest.raises(CatalogueError) as info:
        load_catalogue(df)
    message = str(info.value)
    assert "2 row(s) have no id" in message
    assert "rows 1, 3" in message


def test_duplicate_ids_name_the_ids_and_rows():
    df = pd.DataFrame({"id": ["a", "dup", "b", "dup"], "title": ["w", "x", "y", "z"]})
    with pytest.raises(CatalogueError) as info:
        load_catalogue(df)
    message = str(info.value)
    assert "unique" in message
    assert "'dup' (row 1)" in message and "'dup' (row 3)" in message
    assert "'a'" not in message


def test_duplicate_ids_in_csv(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,title\nx,a\ny,b\nx,c\n")
    with pytest.raises(CatalogueError, match=r"c\.csv.*'x' \(row 0\), 'x' \(row 2\)"):
        load_catalogue(path)


def test_empty_rows_raise_by_default():
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d"], "title": ["x", "", None, "y"], "image": [None, None, "", None]
    })
    with pytest.raises(CatalogueError) as info:
        load_catalogue(df)
    message = str(info.value)
    assert "neither text nor an image" in message
    assert "rows 1, 2" in message
    assert "'b'" in message and "'c'" in message
    assert "on_empty_row='skip'" in message


def test_empty_rows_skipped_are_recorded_with_original_row_numbers():
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e"],
        "title": ["x", "", "z", None, "w"],
        "image": [None, None, None, None, "e.jpg"],
    })
    cat = load_catalogue(df, on_empty_row="skip")
    assert list(cat.ids) == ["a", "c", "e"]
    np.testing.assert_array_equal(cat.rows, [0, 2, 4])
    assert len(cat.data) == 3 and list(cat.data["id"]) == ["a", "c", "e"]
    assert cat.row_name(1) == "catalogue row 2 (id 'c')"
    probs = cat.problems
    assert list(probs.columns) == PROBLEM_COLUMNS
    assert list(probs["row"]) == [1, 3]
    assert list(probs["id"]) == ["b", "d"]
    assert set(probs["problem"]) == {"empty_row"}
    assert set(probs["action"]) == {"skipped"}


def test_on_empty_row_must_be_valid():
    with pytest.raises(ValueError, match="on_empty_row"):
        load_catalogue(pd.DataFrame({"title": ["x"]}), on_empty_row="drop")


def test_no_usable_columns():
    with pytest.raises(CatalogueError, match="no title, text or image column"):
        load_catalogue(pd.DataFrame({"id": [1], "price": [2.0]}))


def test_unsupported_file_format(tmp_path):
    path = tmp_path / "catalogue.xlsx"
    path.write_bytes(b"not really excel")
    with pytest.raises(CatalogueError, match=r"unsupported catalogue format '\.xlsx'"):
        load_catalogue(path)


def test_missing_file(tmp_path):
    with pytest.raises(CatalogueError, match="not found"):
        read_table(tmp_path / "nope.csv")


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"garbage")
    with pytest.raises(CatalogueError, match="could not read"):
        read_table(path)


def test_subset_and_add_problems(frame):
    cat = load_catalogue(frame)
    cat.add_problems([{"row": 0, "id": "a", "field": "image", "problem": "missing",
                       "detail": "", "action": "text_only"}])
    sub = cat.subset(np.array([2, 0]))
    assert list(sub.ids) == ["c", "a"]
    np.testing.assert_array_equal(sub.rows, [2, 0])
    assert list(sub.data["id"]) == ["c", "a"]
    assert len(sub.problems) == 1
    cat.add_problems([])
    assert len(cat.problems) == 1
