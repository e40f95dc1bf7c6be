"""Generic dataset formats: a CSV and a RecBole .inter dataset registered with no code, parsed to canonical tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from m6rec.data.parsers import ParseError, parse_dataset
from m6rec.data.prepare import SplitParams, canonicalise
from m6rec.data.sources import DataSourceError, fetch_dataset, load_registry
from tests.data.generic_samples import csv_sample, inter_sample


def registry(tmp_path: Path, entries: dict) -> dict:
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": entries}), encoding="utf-8")
    return load_registry(path)


def csv_entry(folder: Path, **extra) -> dict:
    entry = {"parser": "csv", "domain": "movies", "feedback": "explicit", "split": "chronological", "has_text": True,
             "path": str(folder), "interactions": "ratings.csv", "items": "movies.csv",
             "columns": {"user": "customer", "item": "product", "rating": "stars", "timestamp": "when"},
             "item_columns": {"title": "name", "text": ["genres"]}}
    entry.update(extra)
    return entry


def test_csv_dataset_parses_to_canonical_tables(tmp_path: Path):
    _, _, kept = csv_sample(tmp_path / "src")
    spec = registry(tmp_path, {"shop": csv_entry(tmp_path / "src")})["shop"]
    assert spec.files == {"ratings.csv": "", "movies.csv": ""}  # derived from the file names, no sha256
    inter, items = parse_dataset(spec, tmp_path / "src")
    assert len(inter) == len(kept) and inter["raw_user"].nunique() == kept["userId"].nunique()
    # Dates were parsed back to the very unix seconds they were written from; ratings kept exactly.
    np.testing.assert_array_equal(inter["ts"].to_numpy(), kept["timestamp"].to_numpy())
    np.testing.assert_array_equal(inter["value"].to_numpy(), kept["rating"].to_numpy())
    assert set(inter["ts_kind"]) == {"unix"}
    toy = items.loc[items["raw_item"] == "1"].iloc[0]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["text"] == "Toy Story (1995). Adventure|Animation|Children|Comedy|Fantasy"
    tables = canonicalise(spec, inter, items, SplitParams())
    counts = tables.meta["splits"]
    assert tables.meta["n_interactions"] == len(kept) and counts["test"] > 0 and counts["valid"] > 0
    assert tables.meta["n_cold_items"] > 0  # has_text: cold-start items held out


def test_inter_dataset_matches_the_dedicated_parser(tmp_path: Path):
    _, _, kept = inter_sample(tmp_path / "src")
    spec = registry(tmp_path, {"ml": {"parser": "inter", "domain": "movies", "feedback": "explicit",
                                      "split": "chronological", "has_text": True, "path": str(tmp_path / "src"),
                                      "items": "ml.item"}})["ml"]
    assert spec.interactions == "ml.inter"  # the RecBole default name
    inter, items = parse_dataset(spec, tmp_path / "src")
    assert len(inter) == len(kept)
    np.testing.assert_array_equal(inter["raw_user"].to_numpy(), kept["u"].astype(str).to_numpy())
    np.testing.assert_array_equal(inter["value"].to_numpy(), kept["r"].to_numpy(dtype=float))
    np.testing.assert_array_equal(inter["ts"].to_numpy(), kept["t"].to_numpy())
    assert len(items) == 1682
    star = items.loc[items["raw_item"] == "50"].iloc[0]
    assert star["title"] == "Star Wars (1977)" and star["text"] == "Star Wars (1977). 01-Jan-1977"
    tables = canonicalise(spec, inter, items, SplitParams())
    assert tables.meta["n_users"] == 60 and tables.meta["feedback"] == "explicit"


def test_csv_without_ratings_or_times_is_implied_feedback_in_file_order(tmp_path: Path):
    ratings, _, kept = csv_sample(tmp_path / "src", n_users=30)
    spec = registry(tmp_path, {"clicks": {"parser": "csv", "domain": "shop", "feedback": "implied",
                                          "split": "random", "has_text": False, "path": str(tmp_path / "src"),
                                          "interactions": ratings.name,
                                          "columns": {"user": "customer", "item": "product"}}})["clicks"]
    inter, items = parse_dataset(spec, tmp_path / "src")
    assert set(inter["value"]) == {1.0} and set(inter["ts_kind"]) == {"order"}
    assert len(items) == kept["movieId"].nunique()  # no item file: the ids the interactions use
    first = inter[inter["raw_user"] == inter["raw_user"].iloc[0]]
    assert first["ts"].tolist() == list(range(len(first)))


def test_missing_column_and_file_are_named(tmp_path: Path):
    csv_sample(tmp_path / "src", n_users=20)
    bad = csv_entry(tmp_path / "src", columns={"user": "customer", "item": "sku", "rating": "stars"})
    spec = registry(tmp_path, {"shop": bad})["shop"]
    with pytest.raises(ParseError, match=r"ratings.csv: no column 'sku' \(the registry's columns.item\)"):
        parse_dataset(spec, tmp_path / "src")
    spec = registry(tmp_path, {"shop": csv_entry(tmp_path / "src", item_columns={"title": "headline"})})["shop"]
    with pytest.raises(ParseError, match=r"movies.csv: no column 'headline' \(the registry's item_columns.title\)"):
        parse_dataset(spec, tmp_path / "src")
    spec = registry(tmp_path, {"shop": csv_entry(tmp_path / "src", items="catalogue.csv")})["shop"]
    with pytest.raises(DataSourceError, match=r"catalogue.csv named in the registry is missing"):
        fetch_dataset(spec, tmp_path / "raw", None, offline=True)
    with pytest.raises(DataSourceError, match=r"parser csv needs columns.user"):
        registry(tmp_path, {"shop": csv_entry(tmp_path / "src", columns={"item": "product"})})
    with pytest.raises(DataSourceError, match=r"has_text: true needs an item file"):
        registry(tmp_path, {"shop": csv_entry(tmp_path / "src", items=None)})
    with pytest.raises(DataSourceError, match=r"columns must map some of"):
        registry(tmp_path, {"shop": csv_entry(tmp_path / "src", columns={"user": "a", "item": "b", "score": "c"})})


def test_local_source_is_copied_and_recopied_when_it_changes(tmp_path: Path):
    ratings, _, _ = csv_sample(tmp_path / "src", n_users=20)
    spec = registry(tmp_path, {"shop": csv_entry(tmp_path / "src")})["shop"]
    raw = tmp_path / "raw"
    assert fetch_dataset(spec, raw, None, offline=True).startswith("local")
    assert (raw / "shop" / "ratings.csv").read_bytes() == ratings.read_bytes()
    assert fetch_dataset(spec, raw, None, offline=True) == "cached"
    ratings.write_text(ratings.read_text(encoding="utf-8") + "c1,1,4.0,2001-01-01 00:00:00\n", encoding="utf-8")
    assert fetch_dataset(spec, raw, None, offline=True).startswith("local")  # the user's file changed
    assert (raw / "shop" / "ratings.csv").read_bytes() == ratings.read_bytes()


def test_tsv_with_byte_order_mark_and_unix_seconds(tmp_path: Path):
    _, _, kept = csv_sample(tmp_path / "src", n_users=20)
    folder = tmp_path / "tsv"
    folder.mkdir()
    lines = ["uid\tiid\tts"] + [f"{u}\t{i}\t{t}" for u, i, t in kept[["userId", "movieId", "timestamp"]]
                                .itertuples(index=False)]
    (folder / "events.tsv").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # as Excel saves it
    spec = registry(tmp_path, {"ev": {"parser": "csv", "domain": "movies", "feedback": "implied",
                                      "split": "chronological", "has_text": False, "path": str(folder),
                                      "interactions": "events.tsv",
                                      "columns": {"user": "uid", "item": "iid", "timestamp": "ts"}}})["ev"]
    inter, _ = parse_dataset(spec, folder)
    assert inter["raw_user"].tolist() == kept["userId"].astype(str).tolist()
    np.testing.assert_array_equal(inter["ts"].to_numpy(), kept["timestamp"].to_numpy())
