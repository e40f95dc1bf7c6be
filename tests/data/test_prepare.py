"""Parsers and the canonical schema on the real datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m6rec.data import schema
from m6rec.data.parsers import ParseError, parse
from m6rec.data.prepare import PrepareError, SplitParams, canonicalise
from m6rec.data.sources import load_registry
from tests.data_fixtures import REPO

REGISTRY = load_registry(REPO / "config" / "datasets.yaml")

# Counts verified in each mirror folder's DATASET.md.
EXPECTED = {
    "ml-latest-small": (100_836, 610, 9_742),
    "ml-100k": (100_000, 943, 1_682),
    "amazon-office": (53_258, 4_905, 2_420),
    "amazon-scientific": (59_384, 8_442, 4_385),
    "lastfm-hetrec2011": (92_834, 1_892, 17_632),
    "lightgcn-gowalla": (1_027_370, 29_858, 40_981),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parsers_reproduce_published_counts(raw_dir: Path, name: str):
    inter, items = parse(REGISTRY[name].parser, raw_dir / name)
    n_inter, n_users, n_items = EXPECTED[name]
    assert len(inter) == n_inter
    assert inter["raw_user"].nunique() == n_users
    assert len(items) == n_items
    assert inter["raw_item"].isin(items["raw_item"]).all()


def test_item_text_is_decoded_and_joined(raw_dir: Path):
    _, ml100k = parse("movielens_100k", raw_dir / "ml-100k")
    # u.item is ISO-8859-1: the accented title must decode, not turn into replacement characters.
    assert ml100k["title"].str.contains("\ufffd").sum() == 0
    assert ml100k["text"].str.contains("é").any()
    toy = ml100k.loc[ml100k["raw_item"] == "1", "text"].item()
    assert toy.startswith("Toy Story (1995). Genres: Animation, Children's, Comedy")
    _, office = parse("amazon_lcrec_json", raw_dir / "amazon-office")
    assert not office["title"].str.contains("&amp;").any()  # HTML entities unescaped
    _, ml = parse("movielens_latest", raw_dir / "ml-latest-small")
    assert ml.loc[ml["raw_item"] == "1", "text"].item().startswith("Toy Story (1995). Genres: Adventure")


def test_canonical_tables_follow_the_schema(tiny_prepared_dir: Path, tiny_prepared):
    inter, items, users = tiny_prepared.interactions, tiny_prepared.items, tiny_prepared.users
    assert {c: str(t) for c, t in inter.dtypes.items()} == {
        c: ("object" if t == "object" else t) for c, t in schema.INTERACTION_COLUMNS.items()} | {
        c: str(inter[c].dtype) for c in ("domain", "ts_kind", "feedback", "split")}
    assert set(items.columns) == set(schema.ITEM_COLUMNS)
    assert set(users.columns) == set(schema.USER_COLUMNS)
    assert set(inter["split"]) <= set(schema.SPLITS)
    meta = json.loads((tiny_prepared_dir / schema.META).read_text())
    for domain, m in meta["per_domain"].items():
        d_inter = inter[inter["domain"] == domain]
        assert d_inter["user"].max() < m["n_users"] and d_inter["item"].max() < m["n_items"]
        assert (items["domain"] == domain).sum() == m["n_items"]
        assert m["n_users"] == 60
        # json fields round-trip
        json.loads(items.loc[items["domain"] == domain, "fields"].iloc[0])
    # Feedback values by kind.
    assert inter.loc[inter["feedback"] == "implied", "value"].eq(1.0).all()
    assert inter.loc[inter["feedback"] == "implicit_count", "value"].ge(1).all()
    ml = inter[inter["domain"] == "ml-100k"]
    assert ml["value"].between(1, 5).all()


def test_chronological_split_puts_the_latest_interactions_in_test(tiny_prepared):
    inter = tiny_prepared.interactions
    ml = inter[(inter["domain"] == "ml-latest-small") & (inter["split"] != "cold")]
    for _, rows in ml.groupby("user"):
        train_last = rows.loc[rows["split"] == "train", "ts"].max()
        valid = rows.loc[rows["split"] == "valid", "ts"]
        test = rows.loc[rows["split"] == "test", "ts"]
        assert len(test) >= 1 and len(valid) >= 1
        assert train_last <= valid.min() <= valid.max() <= test.min()
        n = len(rows)
        assert len(test) == max(1, round(0.2 * n))


def test_cold_items_never_appear_outside_the_cold_split(tiny_prepared):
    inter, items = tiny_prepared.interactions, tiny_prepared.items
    for domain in ("ml-latest-small", "amazon-office"):
        cold = set(items.loc[(items["domain"] == domain) & items["cold"], "item"])
        d = inter[inter["domain"] == domain]
        assert cold, domain
        assert not d.loc[d["split"] != "cold", "item"].isin(cold).any()
        assert d.loc[d["split"] == "cold", "item"].isin(cold).all()
    gowalla = items[items["domain"] == "lightgcn-gowalla"]
    assert not gowalla["cold"].any()  # no text, so no cold-start hold-out


def test_gowalla_keeps_its_fixed_test_split(raw_dir: Path):
    inter, items = parse("lightgcn_split", raw_dir / "lightgcn-gowalla")
    tables = canonicalise(REGISTRY["lightgcn-gowalla"], inter, items, SplitParams(max_users=200))
    out = tables.interactions
    raw_test = inter[inter["fixed_split"] == "test"]
    users = tables.users.set_index("user")["raw_user"]
    items_raw = tables.items.set_index("item")["raw_item"]
    test_pairs = set(zip(users[out.loc[out["split"] == "test", "user"]].to_numpy(),
                         items_raw[out.loc[out["split"] == "test", "item"]].to_numpy()))
    expected = set(zip(raw_test["raw_user"], raw_test["raw_item"]))
    assert test_pairs and test_pairs <= expected
    assert len(test_pairs) == len(raw_test[raw_test["raw_user"].isin(set(users))])
    assert (out["split"] == "valid").sum() > 0  # validation carved from the training part


def test_split_is_deterministic_given_the_seed(raw_dir: Path):
    inter, items = parse("lastfm_hetrec", raw_dir / "lastfm-hetrec2011")
    a = canonicalise(REGISTRY["lastfm-hetrec2011"], inter, items, SplitParams(max_users=100, seed=1))
    b = canonicalise(REGISTRY["lastfm-hetrec2011"], inter, items, SplitParams(max_users=100, seed=1))
    c = canonicalise(REGISTRY["lastfm-hetrec2011"], inter, items, SplitParams(max_users=100, seed=2))
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert not a.interactions["split"].equals(c.interactions["split"])


def test_unknown_item_ids_are_rejected_with_the_dataset_name(raw_dir: Path):
    inter, items = parse("movielens_100k", raw_dir / "ml-100k")
    inter.loc[0, "raw_item"] = "99999"
    with pytest.raises(PrepareError, match="ml-100k: 1 interactions name items missing"):
        canonicalise(REGISTRY["ml-100k"], inter, items, SplitParams())


def test_bad_raw_files_raise_parse_errors_naming_the_file(raw_dir: Path, tmp_path: Path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name in ("u.data", "u.genre", "u.item"):
        (folder / name).write_bytes((raw_dir / "ml-100k" / name).read_bytes())
    (folder / "u.data").write_text("")
    with pytest.raises(ParseError, match="u.data"):
        parse("movielens_100k", folder)
    with pytest.raises(ParseError, match="unknown parser"):
        parse("nope", folder)


def test_repeated_pairs_keep_the_latest(raw_dir: Path):
    inter, items = parse("movielens_100k", raw_dir / "ml-100k")
    first = inter.iloc[[0]].copy()
    first["value"] = 1.0 if first["value"].item() != 1.0 else 2.0
    first["ts"] = inter["ts"].max() + 1
    tables = canonicalise(REGISTRY["ml-100k"], pd.concat([inter, first], ignore_index=True), items, SplitParams())
    assert len(tables.interactions) == len(inter)
    uid = np.flatnonzero(tables.users["raw_user"] == first["raw_user"].item())[0]
    iid = np.flatnonzero(tables.items["raw_item"] == first["raw_item"].item())[0]
    row = tables.interactions[(tables.interactions["user"] == uid) & (tables.interactions["item"] == iid)]
    assert row["value"].item() == first["value"].item()


def test_leave_one_out_reproduces_unisrec_split_on_amazon_scientific(raw_dir: Path):
    """split: leave_one_out puts each user's last item in test and the one before in validation: on the UniSRec
    files that is exactly their own test.inter / valid.inter targets, and nothing leaks."""
    from dataclasses import replace

    from tests.data_fixtures import mirror_dir

    inter, items = parse("amazon_unisrec", raw_dir / "amazon-scientific")
    folder = mirror_dir() / "amazon-scientific"  # the reference valid/test files (the parser needs only test.inter)
    spec = replace(REGISTRY["amazon-scientific"], split="leave_one_out")
    tables = canonicalise(spec, inter, items, SplitParams(min_user_interactions=3, cold_item_frac=0.0))
    out = tables.interactions
    raw_user = tables.users.set_index("user")["raw_user"]
    raw_item = tables.items.set_index("item")["raw_item"]
    index_to_asin = pd.read_csv(folder / "Scientific.item2index", sep="\t", header=None, names=["asin", "idx"],
                                dtype=str).set_index("idx")["asin"]
    index_to_user = pd.read_csv(folder / "Scientific.user2index", sep="\t", header=None, names=["uid", "idx"],
                                dtype=str).set_index("idx")["uid"]
    for split, file in (("test", "Scientific.test.inter"), ("valid", "Scientific.valid.inter")):
        rows = out[out["split"] == split]
        assert rows.groupby("user").size().eq(1).all()  # exactly one item per user
        ours = set(zip(raw_user[rows["user"]].to_numpy(), raw_item[rows["item"]].to_numpy()))
        ref = pd.read_csv(folder / file, sep="\t", dtype=str)
        theirs = set(zip(index_to_user[ref["user_id:token"]].to_numpy(), index_to_asin[ref["item_id:token"]].to_numpy()))
        # users who bought an item twice keep its latest purchase only (dedup), which shifts their targets
        repeat = set(inter.loc[inter.duplicated(["raw_user", "raw_item"]), "raw_user"])
        assert 0 < len(repeat) < 0.05 * len(tables.users)
        assert {p for p in ours if p[0] not in repeat} == {p for p in theirs if p[0] not in repeat}
    # every user with >= 3 interactions (after dedup) is split; test is the latest item, valid the one before
    sizes = out.groupby("user").size()
    split_users = set(sizes[sizes >= 3].index)
    assert len(split_users) > 0.99 * len(tables.users)
    assert set(out.loc[out["split"] == "test", "user"]) == split_users
    from m6rec.data.splits import leakage_report

    assert not any(leakage_report(out).values())
    last2 = out[out["user"].isin(split_users)].sort_values(["user", "ts"]).groupby("user")["split"].apply(
        lambda s: tuple(s.iloc[-2:]))
    assert (last2 == ("valid", "test")).all()


def test_leave_one_out_keeps_short_users_in_train():
    from m6rec.data.splits import per_user_split

    users = np.array([0, 0, 0, 0, 1, 1])
    ts = np.array([3, 1, 4, 2, 1, 2])
    labels = per_user_split(users, ts, "leave_one_out", test_frac=0.2, valid_frac=0.1, min_user_interactions=3,
                            seed=0)
    assert list(labels) == ["valid", "train", "test", "train", "train", "train"]


def test_ordered_domains_follow_each_domains_split_method(tiny_prepared):
    """Sequence order means something after a chronological or a leave-one-out split, nothing after a random one:
    models use it to decide between a learned recency prior and a flat one, and calibration between the last
    training item and a random one."""
    from m6rec.data.splits import ordered_domains

    meta = tiny_prepared.meta
    ordered = ordered_domains(meta, list(meta["per_domain"]))
    assert ordered["ml-100k"] and ordered["amazon-scientific"]
    assert meta["per_domain"]["lastfm-hetrec2011"]["split_method"] == "random" and not ordered["lastfm-hetrec2011"]
    loo = {"per_domain": {"amazon-scientific": {**meta["per_domain"]["amazon-scientific"],
                                                "split_method": "leave_one_out"}}}
    assert ordered_domains(loo, ["amazon-scientific"]) == {"amazon-scientific": True}
