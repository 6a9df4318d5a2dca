"""Each Hub dataset in catalog.yaml, fetched by the real fetch stage from a small folder in the Hub layout of
that dataset (config folders, split file names, column names and ClassLabel names as on the Hub): its
columns and labels must land in the data contract the way the catalog entry says."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from peftlab.config.params import Params, build
from peftlab.data.fetch import fetch_data


def hub_folder(root: Path, configs: dict[str, dict[str, datasets.Dataset]]) -> Path:
    """configs: {config: {split: Dataset}} -> <config>/<split>-00000-of-00001.parquet + README.md configs."""
    readme = ["---", "configs:"]
    for config, splits in configs.items():
        folder = "data" if config == "default" else config
        readme += [f"- config_name: {config}", "  data_files:"]
        for split, ds in splits.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            ds.to_parquet(root / folder / f"{split}-00000-of-00001.parquet")
            readme += [f"  - split: {split}", f"    path: {folder}/{split}-*"]
    (root / "README.md").write_text("\n".join(readme + ["---", ""]))
    return root


def fetch(project: Path, key: str, folder: Path, **data) -> tuple[pd.DataFrame, dict]:
    """Run the fetch stage on catalog entry `key` with its source pointed at `folder`."""
    p = Params()
    p.data = build(type(p.data), {"name": key, "source": f"hf:{folder}", **data}, "data")
    fetch_data(p, project / "data" / "raw")
    manifest = json.loads((project / "data" / "raw" / "manifest.json").read_text())
    files = manifest.get("shards") or ["data.parquet"]
    df = pd.concat([pd.read_parquet(project / "data" / "raw" / f) for f in files], ignore_index=True)
    return df, manifest


def classlabel(names: list[str], **cols) -> datasets.Features:
    return datasets.Features({**{c: datasets.Value(t) for c, t in cols.items()},
                              "label": datasets.ClassLabel(names=names)})


def test_imdb_neg_pos_classlabel_and_only_the_train_split(project, tmp_path):
    feats = classlabel(["neg", "pos"], text="string")
    def mk(texts, labels):
        return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=feats)

    folder = hub_folder(tmp_path / "imdb", {"plain_text": {
        "train": mk(["A dull, lifeless film.<br /><br />Avoid.", "Wonderful acting throughout."], [0, 1]),
        "test": mk(["test review kept out"], [1]),
        "unsupervised": mk(["no label here"], [-1])}})
    df, manifest = fetch(project, "imdb", folder, config="plain_text")
    assert list(df["label_text"]) == ["negative", "positive"] and list(df["label"]) == [0, 1]
    assert "test review kept out" not in set(df["text"])
    assert manifest["labels"] == ["negative", "positive"]


def test_sst2_reads_the_sentence_column(project, tmp_path):
    feats = classlabel(["negative", "positive"], idx="int32", sentence="string")
    train = datasets.Dataset.from_dict({"idx": [0, 1, 2], "sentence": ["hide new secretions ", "a charming film ",
                                                                        "the worst of the year "],
                                        "label": [0, 1, 0]}, features=feats)
    folder = hub_folder(tmp_path / "sst2", {"default": {"train": train}})
    df, _ = fetch(project, "sst2", folder)
    assert list(df["text"]) == ["hide new secretions ", "a charming film ", "the worst of the year "]
    assert list(df["label_text"]) == ["negative", "positive", "negative"]


def test_amazon_polarity_joins_title_and_content_and_streams_to_shards(project, tmp_path):
    feats = classlabel(["negative", "positive"], title="string", content="string")
    train = datasets.Dataset.from_dict({"label": [1, 0], "title": ["Great CD", "Broken"],
                                        "content": ["My lovely Pat has one of the great voices.", "Died in a day."]},
                                       features=feats)
    folder = hub_folder(tmp_path / "amazon_polarity", {"amazon_polarity": {"train": train}})
    df, manifest = fetch(project, "amazon_polarity", folder, config="amazon_polarity")
    assert list(df["text"]) == ["Great CD\n\nMy lovely Pat has one of the great voices.", "Broken\n\nDied in a day."]
    assert list(df["label_text"]) == ["positive", "negative"]
    assert manifest["shards"] == ["data-00000.parquet"]      # the streaming fetch wrote it


def test_yelp_polarity_class_names_1_and_2_are_negative_and_positive(project, tmp_path):
    feats = classlabel(["1", "2"], text="string")
    train = datasets.Dataset.from_dict({"text": ["Terrible service.", "Best tacos in town!", "Never again."],
                                        "label": [0, 1, 0]}, features=feats)
    folder = hub_folder(tmp_path / "yelp", {"plain_text": {"train": train}})
    df, _ = fetch(project, "yelp_polarity", folder, config="plain_text")
    assert list(df["label_text"]) == ["negative", "positive", "negative"]


def test_rotten_tomatoes_hub(project, tmp_path):
    feats = classlabel(["neg", "pos"], text="string")
    train = datasets.Dataset.from_dict({"text": ["the rock is destined to be great", "a mess"], "label": [1, 0]},
                                       features=feats)
    df, _ = fetch(project, "rotten_tomatoes_hub", hub_folder(tmp_path / "rt", {"default": {"train": train}}))
    assert list(df["label_text"]) == ["positive", "negative"]


def amazon_2023_folder(root: Path, rows_per_category: int, categories: list[str]) -> Path:
    """Review rows with the real columns and float ratings, one config per category, split `full`."""
    configs = {}
    for c in categories:
        n = rows_per_category
        configs[f"raw_review_{c}"] = {"full": datasets.Dataset.from_dict({
            "rating": [float(1 + i % 5) for i in range(n)], "title": [f"title {i}" for i in range(n)],
            "text": [f"{c} review {i} rated {1 + i % 5}" for i in range(n)], "images": [[] for _ in range(n)],
            "asin": [f"B{i:09d}" for i in range(n)], "parent_asin": [f"P{i // 3:09d}" for i in range(n)],
            "user_id": [f"U{i}" for i in range(n)], "timestamp": [1588687728923 + i for i in range(n)],
            "helpful_vote": [i % 4 for i in range(n)], "verified_purchase": [i % 2 == 0 for i in range(n)]},
            features=datasets.Features({"rating": datasets.Value("float64"), "title": datasets.Value("string"),
                                        "text": datasets.Value("string"),
                                        "images": datasets.List(datasets.Value("string")),
                                        "asin": datasets.Value("string"), "parent_asin": datasets.Value("string"),
                                        "user_id": datasets.Value("string"), "timestamp": datasets.Value("int64"),
                                        "helpful_vote": datasets.Value("int64"),
                                        "verified_purchase": datasets.Value("bool")}))}
    return hub_folder(root, configs)


def test_amazon_reviews_2023_maps_ratings_drops_three_stars_and_caps_each_category(project, tmp_path):
    from peftlab.data.sources import load_catalog

    entry = load_catalog()["datasets"]["amazon_reviews_2023"]
    cats = [c.removeprefix("raw_review_") for c in entry["configs"]]
    assert len(cats) == 33 and "All_Beauty" in cats and "Unknown" not in cats
    folder = amazon_2023_folder(tmp_path / "amazon2023", 20, cats[:3])
    df, manifest = fetch(project, "amazon_reviews_2023", folder, configs=[f"raw_review_{c}" for c in cats[:3]],
                         per_category=10)
    assert manifest["category_counts"] == {c: 10 for c in cats[:3]}
    assert set(df["rating"]) <= {1.0, 2.0, 4.0, 5.0}                 # 3 stars dropped
    assert (df.loc[df["rating"] <= 2, "label_text"] == "negative").all()
    assert (df.loc[df["rating"] >= 4, "label_text"] == "positive").all()
    assert df["group"].str.startswith("P").all()                      # parent_asin, for grouped splits
    # first-N: the first 10 mapped rows of each category, in source order (rows 0..12 minus the 3-star ones)
    beauty = df[df["category"] == cats[0]]
    assert list(beauty["text"].str.split().str[2].astype(int)) == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]
    assert manifest["counts"]["dropped_label_map_null"] >= 6


def test_fake_reviews_int_labels_and_the_original_cg_or_strings(project, tmp_path):
    train = datasets.Dataset.from_dict({
        "category": ["Home_and_Kitchen_5", "Toys_and_Games_5", "Books_5"], "rating": [5.0, 1.0, 4.0],
        "text": ["Love this!  Well made, sturdy.", "Bought it for my son.", "A real page turner."],
        "label": [1, 0, 0]})
    df, _ = fetch(project, "fake_reviews", hub_folder(tmp_path / "fake", {"default": {"train": train}}))
    assert list(df["label_text"]) == ["fake", "real", "real"]
    assert list(df["category"]) == ["Home_and_Kitchen_5", "Toys_and_Games_5", "Books_5"]
    csv = tmp_path / "fake reviews dataset.csv"
    csv.write_text("category,rating,label,text_\nHome_and_Kitchen_5,5.0,CG,\"Love this!\"\nBooks_5,4.0,OR,Fine.\n")
    p = Params()
    p.data = build(type(p.data), {"name": "fake_reviews", "source": f"local:{csv}", "text_column": "text_"}, "data")
    fetch_data(p, project / "data" / "raw2")
    df2 = pd.read_parquet(project / "data" / "raw2" / "data.parquet")
    assert list(df2["label_text"]) == ["fake", "real"]


def orgaccess_split(n: int, offset: int = 0) -> datasets.Dataset:
    responses = ["full", "partial", "rejected"]
    return datasets.Dataset.from_dict({
        "user_role": [f"Admin_Assistant_{i}" for i in range(offset, offset + n)],
        "permissions": [{"department": ["Marketing", "Finance"], "access_level": "Restricted",
                         "session_timeout": 30 + i} for i in range(offset, offset + n)],
        "query": [f"Please share the Q{i} marketing report with Sales." for i in range(offset, offset + n)],
        "expected_response": [responses[i % 3] for i in range(n)],
        "rationale": ["because" for _ in range(n)]})


def test_orgaccess_builds_text_from_role_permissions_and_query_with_three_classes(project, tmp_path):
    folder = hub_folder(tmp_path / "orgaccess", {"default": {"easy": orgaccess_split(6),
                                                             "medium": orgaccess_split(3, 100),
                                                             "hard": orgaccess_split(3, 200)}})
    df, manifest = fetch(project, "orgaccess", folder)
    assert manifest["labels"] == ["full", "partial", "rejected"]
    assert list(df["label"]) == [0, 1, 2, 0, 1, 2]
    first = df.loc[0, "text"]
    assert first.startswith("Role: Admin_Assistant_0\nPermissions: {")
    assert '"access_level": "Restricted"' in first and first.endswith("Query: Please share the Q0 marketing "
                                                                       "report with Sales.")
    assert not df["text"].str.contains("Admin_Assistant_100").any()   # only the easy split


def test_text_template_naming_a_missing_column_is_one_clear_line(project, tmp_path):
    from peftlab.core.errors import PeftlabError

    feats = classlabel(["negative", "positive"], title="string", content="string")
    train = datasets.Dataset.from_dict({"label": [1], "title": ["t"], "content": ["c"]}, features=feats)
    folder = hub_folder(tmp_path / "ap", {"default": {"train": train}})
    with pytest.raises(PeftlabError, match=r"text_template = '\{headline\}' names column 'headline'.*columns: "
                                           r"label, title, content") as e:
        fetch(project, "amazon_polarity", folder, text_template="{headline}")
    assert "\n" not in str(e.value)
    assert not (project / "data" / "raw").exists()
