import pandas as pd

from mmmatch.demo import DemoData, make_demo_catalogues
from mmmatch.images import load_image


def test_demo_files_and_truth(demo):
    assert isinstance(demo, DemoData)
    left, right = pd.read_csv(demo.left), pd.read_csv(demo.right)
    assert list(left.columns) == ["id", "title", "brand", "image"]
    assert list(right.columns) == ["sku", "name", "image"]
    assert len(left) == 8 and len(right) == 8
    assert left["id"].is_unique and right["sku"].is_unique
    assert len(demo.truth) == 6  # overlap 0.75 of 8
    assert set(demo.truth["left_id"]) <= set(left["id"])
    assert set(demo.truth["right_id"]) <= set(right["sku"])
    assert demo.truth["left_id"].is_unique and demo.truth["right_id"].is_unique
    saved = pd.read_csv(demo.folder / "truth.csv")
    assert saved.values.tolist() == demo.truth.values.tolist()
    for ref in [*left["image"], *right["image"]]:
        img = load_image(ref, base_dir=demo.folder)
        assert img.size == (256, 256)


def test_demo_titles_differ_between_retailers(demo):
    left = pd.read_csv(demo.left).set_index("id")
    right = pd.read_csv(demo.right).set_index("sku")
    pairs = demo.truth.itertuples(index=False)
    differ = [left.loc[p.left_id, "title"] != right.loc[p.right_id, "name"] for p in pairs]
    assert all(differ)


def test_demo_is_deterministic(tmp_path, demo):
    again = make_demo_catalogues(tmp_path / "again", n_products=8)
    assert again.left.read_bytes() == demo.left.read_bytes()
    assert again.right.read_bytes() == demo.right.read_bytes()
    for name in sorted(p.name for p in (demo.folder / "images").iterdir()):
        assert (tmp_path / "again" / "images" / name).read_bytes() == \
            (demo.folder / "images" / name).read_bytes()
    other = make_demo_catalogues(tmp_path / "other", n_products=8, seed=1)
    assert other.left.read_bytes() != demo.left.read_bytes()
