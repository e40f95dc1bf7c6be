"""Data-expectation tests: the GX suites pass on real prepared data and catch each kind of corruption by name;
the `validate` stage publishes only on a pass; raw-file problems give ParseErrors that name the file.

Every check runs Great Expectations for real (no mocks) on a small prepared folder built by the real `prepare`
code from the real datasets (tests/data/conftest.py). Data Docs are rendered only in the stage tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from m6rec.config import ConfigError, PrepareParams, ValidateParams, load_section
from m6rec.data import schema
from m6rec.data.checkpoint import failure_messages, run_checks
from m6rec.data.expectations import Thresholds, build_batches, build_suites
from m6rec.data.parsers import ParseError
from m6rec.data.prepare import prepare_datasets as prepare_run
from m6rec.data.validation import load_tables, thresholds
from m6rec.stages import validate as stage

REPO = Path(__file__).resolve().parents[2]
# Two explicit domains with different rating scales (0.5-5 in halves, 1-5) and one implied-feedback domain.
SMALL_DOMAINS = ("ml-latest-small", "ml-100k", "amazon-office")


def mirror() -> Path:
    """$M6REC_DATA_MIRROR, else shared/data beside the repository (the parsers read the mirror's files as is)."""
    return Path(os.environ.get("M6REC_DATA_MIRROR") or REPO.parent / "shared" / "data")


# --------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared for 40 sampled users of each SMALL_DOMAINS dataset, by the real `prepare` code from the real
    files (read-only: copy before changing)."""
    raw = mirror()
    if not all((raw / d).is_dir() for d in SMALL_DOMAINS):
        pytest.fail(f"data mirror {raw} lacks {SMALL_DOMAINS} (set $M6REC_DATA_MIRROR)")
    out = tmp_path_factory.mktemp("small") / "prepared"
    prepare_run(raw, out, REPO / "config" / "datasets.yaml", PrepareParams(domains=SMALL_DOMAINS, max_users=40))
    return out


@pytest.fixture(scope="module")
def cfg() -> ValidateParams:
    """The repository's own `validate` params (so these tests also prove params.yaml fits the data)."""
    return load_section("validate", ValidateParams, REPO / "params.yaml")


@pytest.fixture(scope="module")
def clean(small_prepared: Path) -> tuple[dict[str, pd.DataFrame], dict]:
    return load_tables(small_prepared)


def fresh(clean: tuple[dict[str, pd.DataFrame], dict]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Private copies of the clean tables, safe to corrupt."""
    tables, meta = clean
    return {k: v.copy(deep=True) for k, v in tables.items()}, json.loads(json.dumps(meta))


def check(tables: dict[str, pd.DataFrame], meta: dict, cfg: ValidateParams, tmp_path: Path):
    suites = build_suites(meta, thresholds(cfg))
    return run_checks(build_batches(tables, meta), suites, tmp_path / "docs", cfg.max_examples, data_docs=False)


def failures(outcome) -> list[dict]:
    return [{"suite": name, **f} for name, s in outcome.summary["suites"].items() for f in s["failed"]]


def caught(outcome, suite: str, expectation: str, column: str | None = None) -> dict:
    """The failure of `expectation` (on `column`) in `suite`; fails the test, listing what failed, if absent."""
    for f in failures(outcome):
        cols = {f["kwargs"].get("column"), f["kwargs"].get("column_A")}
        if f["suite"] == suite and f["expectation"] == expectation and (column is None or column in cols):
            return f
    got = [(f["suite"], f["expectation"], f["kwargs"].get("column")) for f in failures(outcome)]
    raise AssertionError(f"{suite}: {expectation}({column}) did not fail; failures: {got}")


def first_row(frame: pd.DataFrame, **where: object) -> int:
    mask = pd.Series(True, index=frame.index)
    for col, value in where.items():
        mask &= frame[col] == value
    assert mask.any(), f"no row with {where}"
    return int(frame.index[mask][0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- clean data

def test_clean_real_data_passes_every_suite(clean, cfg, tmp_path):
    tables, meta = clean
    outcome = check(tables, meta, cfg, tmp_path)
    assert failures(outcome) == []
    assert outcome.success
    suites = outcome.summary["suites"]
    expected = {"interactions", "items", "users", "relations", "sizes", "timestamps",
                *(f"{t}.{d}" for t in ("interactions", "items", "users") for d in SMALL_DOMAINS)}
    assert set(suites) == expected
    assert all(s["evaluated"] == s["passed"] > 0 for s in suites.values())
    assert outcome.summary["expectations_evaluated"] == outcome.summary["expectations_passed"] >= 80


def test_explicit_domain_needs_a_rating_scale(clean):
    _, meta = clean
    with pytest.raises(ConfigError, match="ml-100k"):
        build_suites(meta, Thresholds(rating_scales={"ml-latest-small": (0.5, 5.0)}))
    with pytest.raises(ConfigError, match="ml-100k"):
        Thresholds(rating_scales={"ml-100k": (5.0, 1.0)})


# ------------------------------------------------------------------------------------------ corrupted data

def test_schema_drift_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    tables["interactions"] = tables["interactions"].drop(columns=["ts"])
    tables["users"]["user"] = tables["users"]["user"].astype(str)  # ids as text cannot be joined any more
    outcome = check(tables, meta, cfg, tmp_path)
    cols = caught(outcome, "interactions", "expect_table_columns_to_match_ordered_list")
    assert "ts" not in cols["examples"][0]["observed_value"]
    assert caught(outcome, "interactions", "expect_column_values_to_not_be_null", "ts")["error"]
    assert caught(outcome, "users", "expect_column_values_to_be_of_type", "user")["examples"] == [
        {"observed_value": "str"}]
    # The cross-table frames cannot be built; their suites count as failed, not as silently skipped.
    assert outcome.summary["suites_not_run"] == ["relations", "sizes", "timestamps"] and not outcome.success


def test_null_text_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    row = first_row(tables["items"], domain="ml-100k")
    tables["items"].loc[row, "text"] = None
    outcome = check(tables, meta, cfg, tmp_path)
    f = caught(outcome, "items", "expect_column_values_to_not_be_null", "text")
    assert f["domain"] == "ml-100k" and f["table"] == "items" and f["unexpected_count"] == 1
    assert f["examples"][0]["item"] == int(tables["items"].loc[row, "item"])
    assert not outcome.success


def test_out_of_range_ratings_are_caught_per_domain_scale(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    inter = tables["interactions"]
    inter.loc[first_row(inter, domain="ml-latest-small"), "value"] = 5.5
    inter.loc[first_row(inter, domain="ml-100k"), "value"] = 0.5  # fine on the 0.5-5 scale, not on 1-5
    outcome = check(tables, meta, cfg, tmp_path)
    latest = caught(outcome, "interactions.ml-latest-small", "expect_column_values_to_be_between", "value")
    assert [e["value"] for e in latest["examples"]] == [5.5]
    assert caught(outcome, "interactions.ml-100k", "expect_column_values_to_be_between", "value")["examples"][0][
        "value"] == 0.5
    assert outcome.summary["suites"]["interactions.amazon-office"]["success"]
    lines = failure_messages(outcome.summary)
    assert any("ml-100k" in ln and "interactions" in ln and "expect_column_values_to_be_between" in ln
               and "0.5" in ln for ln in lines)


def test_duplicate_rows_are_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    inter = tables["interactions"]
    row = first_row(inter, domain="amazon-office")
    tables["interactions"] = pd.concat([inter, inter.loc[[row]]], ignore_index=True)
    outcome = check(tables, meta, cfg, tmp_path)
    f = caught(outcome, "interactions", "expect_compound_columns_to_be_unique")
    assert f["domain"] == "amazon-office" and f["unexpected_count"] == 2
    assert f["examples"][0] == {k: inter.loc[row, k].item() if hasattr(inter.loc[row, k], "item")
                                else inter.loc[row, k] for k in ("domain", "user", "item")}
    caught(outcome, "sizes", "expect_column_pair_values_to_be_equal", "n_interactions")


def test_unknown_item_id_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    inter = tables["interactions"]
    n_items = meta["per_domain"]["amazon-office"]["n_items"]
    inter.loc[first_row(inter, domain="amazon-office"), "item"] = n_items + 7
    outcome = check(tables, meta, cfg, tmp_path)
    in_map = caught(outcome, "interactions.amazon-office", "expect_column_values_to_be_between", "item")
    assert in_map["examples"][0]["item"] == n_items + 7 and in_map["kwargs"]["max_value"] == n_items - 1
    rel = caught(outcome, "relations", "expect_column_values_to_be_in_set", "item_known")
    assert rel["domain"] == "amazon-office" and rel["examples"][0]["item"] == n_items + 7


def test_unknown_user_id_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    inter, users = tables["interactions"], tables["users"]
    user = int(inter.loc[first_row(inter, domain="ml-100k"), "user"])
    tables["users"] = users[~((users["domain"] == "ml-100k") & (users["user"] == user))]
    outcome = check(tables, meta, cfg, tmp_path)
    rel = caught(outcome, "relations", "expect_column_values_to_be_in_set", "user_known")
    assert rel["domain"] == "ml-100k" and {e["user"] for e in rel["examples"]} == {user}
    assert rel["unexpected_count"] == int(((inter["domain"] == "ml-100k") & (inter["user"] == user)).sum())
    caught(outcome, "sizes", "expect_column_pair_values_to_be_equal", "n_users")


def test_pair_in_two_splits_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    inter = tables["interactions"]
    row = first_row(inter, domain="ml-latest-small", split="train")
    tables["interactions"] = pd.concat([inter, inter.loc[[row]].assign(split="test")], ignore_index=True)
    outcome = check(tables, meta, cfg, tmp_path)
    f = caught(outcome, "relations", "expect_column_values_to_be_between", "n_splits")
    assert f["domain"] == "ml-latest-small" and {e["split"] for e in f["examples"]} == {"train", "test"}


def test_cold_item_outside_cold_split_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    inter = tables["interactions"]
    row = first_row(inter, domain="ml-100k", split="cold")
    inter.loc[row, "split"] = "train"
    outcome = check(tables, meta, cfg, tmp_path)
    f = caught(outcome, "relations", "expect_column_pair_values_to_be_equal", "item_cold")
    assert f["examples"] == [{"item_cold": True, "in_cold_split": False, "domain": "ml-100k",
                              "user": int(inter.loc[row, "user"]), "item": int(inter.loc[row, "item"]),
                              "split": "train"}]


def test_empty_interactions_table_is_caught(clean, cfg, tmp_path):
    tables, meta = fresh(clean)
    tables["interactions"] = tables["interactions"].iloc[0:0]
    outcome = check(tables, meta, cfg, tmp_path)
    f = caught(outcome, "interactions", "expect_table_row_count_to_be_between")
    assert f["examples"] == [{"observed_value": 0}]
    sizes = caught(outcome, "sizes", "expect_column_values_to_be_between", "n_train")
    assert {e["domain"] for e in sizes["examples"]} == set(SMALL_DOMAINS)


# ------------------------------------------------------------------------------------------------ the stage

def stage_params(tmp_path: Path, in_dir: Path, cfg: ValidateParams) -> tuple[Path, dict]:
    section = {**cfg.__dict__, "in_dir": str(in_dir), "out_dir": str(tmp_path / "data" / "validated"),
               "report_dir": str(tmp_path / "reports" / "validation"),
               "metrics_file": str(tmp_path / "metrics" / "validation.json")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"validate": section}), encoding="utf-8")
    return path, section


def test_stage_publishes_on_success(small_prepared, cfg, tmp_path):
    params, sec = stage_params(tmp_path, small_prepared, cfg)
    out = Path(sec["out_dir"])
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older run", encoding="utf-8")
    (out / schema.INTERACTIONS).write_bytes(b"old bytes")
    assert stage.main(["--params", str(params)]) == 0
    assert snapshot(out) == snapshot(small_prepared)  # replaced, byte-identical to what was validated
    assert [p.name for p in out.parent.iterdir()] == ["validated"]  # no staging folders left behind
    metrics = json.loads(Path(sec["metrics_file"]).read_text(encoding="utf-8"))
    assert metrics["expectations_evaluated"] == metrics["expectations_passed"] > 0
    summary = json.loads((Path(sec["report_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert summary["success"] and summary["in_dir"] == str(small_prepared)
    assert (Path(sec["report_dir"]) / "data_docs" / "index.html").is_file()


def test_stage_failure_keeps_last_good_data(small_prepared, cfg, tmp_path, caplog):
    bad = tmp_path / "prepared"
    shutil.copytree(small_prepared, bad)
    inter = pd.read_parquet(bad / schema.INTERACTIONS)
    row = first_row(inter, domain="ml-100k")
    inter.loc[row, "value"] = 9.0
    inter.to_parquet(bad / schema.INTERACTIONS, index=False)
    params, sec = stage_params(tmp_path, bad, cfg)
    out, metrics = Path(sec["out_dir"]), Path(sec["metrics_file"])
    shutil.copytree(small_prepared, out)  # the last good data
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"from": "the last good run"}', encoding="utf-8")
    before = snapshot(out)

    with caplog.at_level(logging.ERROR, logger="m6rec"):
        assert stage.main(["--params", str(params)]) == 1
    assert snapshot(out) == before
    assert metrics.read_text(encoding="utf-8") == '{"from": "the last good run"}'
    assert sorted(p.name for p in out.parent.iterdir()) == ["validated"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    bad_value = [m for m in errors if "expect_column_values_to_be_between(column=value" in m]
    assert bad_value and "domain ml-100k" in bad_value[0] and "table interactions" in bad_value[0]
    assert "9.0" in bad_value[0] and f"'user': {int(inter.loc[row, 'user'])}" in bad_value[0]
    docs = Path(sec["report_dir"]) / "data_docs"
    assert any(str((docs / "index.html").resolve()) in m for m in errors)
    pages = list((docs / "validations" / "interactions" / "ml-100k").rglob("*.html"))
    assert pages and "9.0" in pages[0].read_text(encoding="utf-8")  # the bad value is shown in the Data Docs
    summary = json.loads((Path(sec["report_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert not summary["success"] and not summary["suites"]["interactions.ml-100k"]["success"]


# ------------------------------------------------------------------------------------------ raw-file errors

def raw_copy(tmp_path: Path, dataset: str, files: list[str]) -> Path:
    src = mirror() / dataset
    if not src.is_dir():
        pytest.fail(f"data mirror lacks {dataset} (set $M6REC_DATA_MIRROR)")
    dst = tmp_path / "raw" / dataset
    dst.mkdir(parents=True)
    for name in files:
        shutil.copy2(src / name, dst / name)
    return dst


def prepare_one(tmp_path: Path, dataset: str) -> None:
    prepare_run(tmp_path / "raw", tmp_path / "prepared", REPO / "config" / "datasets.yaml",
                PrepareParams(domains=(dataset,), max_users=10, verify_raw=False))  # edited files: parser errors


def test_utf16_u_item_names_the_file(tmp_path):
    folder = raw_copy(tmp_path, "ml-100k", ["u.data", "u.item", "u.genre"])
    text = (folder / "u.item").read_bytes().decode("latin-1")
    (folder / "u.item").write_bytes(text.encode("utf-16"))
    with pytest.raises(ParseError) as err:
        prepare_one(tmp_path, "ml-100k")
    assert str(folder / "u.item") in str(err.value)
    assert not (tmp_path / "prepared").exists()


def test_empty_ratings_csv_names_the_file(tmp_path):
    folder = raw_copy(tmp_path, "ml-latest-small", ["movies.csv", "tags.csv"])
    (folder / "ratings.csv").write_bytes(b"")
    with pytest.raises(ParseError) as err:
        prepare_one(tmp_path, "ml-latest-small")
    assert str(folder / "ratings.csv") in str(err.value)


def test_empty_json_names_the_file(tmp_path):
    folder = raw_copy(tmp_path, "amazon-office", ["Office.item.json"])
    (folder / "Office.inter.json").write_bytes(b"")
    with pytest.raises(ParseError) as err:
        prepare_one(tmp_path, "amazon-office")
    assert str(folder / "Office.inter.json") in str(err.value)
