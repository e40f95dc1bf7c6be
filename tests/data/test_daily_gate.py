"""The gate for data that changes every day, on real ml-100k files from the mirror: drift against the last
validated data stops a truncated or a duplicated export; timestamps outside [epoch, now + tolerance] and an item id
with two texts are stopped; over-long texts are cut at prepare; `prepare` refuses raw files that differ from the
registry's sha256 (the Airflow check's message) and leaves datasets without checksums to the expectations.

Everything runs the real `prepare` code and real Great Expectations; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from m6rec.config import PrepareParams, ValidateParams, load_section
from m6rec.data import schema
from m6rec.data.checkpoint import failure_messages, run_checks
from m6rec.data.expectations import build_batches, build_suites
from m6rec.data.parsers import parse
from m6rec.data.prepare import PrepareError, prepare_datasets
from m6rec.data.raw_check import RawDataError
from m6rec.data.sources import load_registry
from m6rec.data.validation import load_tables, thresholds, validate_and_publish, validate_folder
from m6rec.stages import prepare as prepare_stage
from tests.data_fixtures import REPO, mirror_dir

REGISTRY = REPO / "config" / "datasets.yaml"
FILES = ("u.data", "u.item", "u.genre")  # what the ml-100k parser reads
DAY = 86400


def raw_copy(root: Path, edit: dict[str, bytes] | None = None) -> Path:
    """A raw folder holding ml-100k's parsed files from the mirror, with `edit` replacing some files' bytes."""
    folder = root / "raw" / "ml-100k"
    folder.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(mirror_dir() / "ml-100k" / name, folder / name)
    for name, data in (edit or {}).items():
        (folder / name).write_bytes(data)
    return root / "raw"


def prepare(raw: Path, out: Path, **kw: object) -> Path:
    prepare_datasets(raw, out, REGISTRY, PrepareParams(**{"domains": ("ml-100k",), "max_users": 40,
                                                          "verify_raw": False, **kw}))
    return out


def lines(name: str) -> list[bytes]:
    return (mirror_dir() / "ml-100k" / name).read_bytes().splitlines(keepends=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cfg() -> ValidateParams:
    return load_section("validate", ValidateParams, REPO / "params.yaml")


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Yesterday's data: ml-100k as in the mirror, prepared (40 users) and taken as the last validated folder."""
    root = tmp_path_factory.mktemp("yesterday")
    return prepare(raw_copy(root), root / "validated")


def drift_failures(outcome) -> dict[str, dict]:
    return {f["kwargs"]["column"]: f for f in outcome.summary["suites"]["drift"]["failed"]}


# ------------------------------------------------------------------------------------------------------ drift

def test_unchanged_data_passes_against_itself(validated, cfg, tmp_path):
    today = prepare(raw_copy(tmp_path), tmp_path / "prepared")
    outcome = validate_folder(today, cfg, tmp_path / "report", data_docs=False, baseline=validated)
    assert outcome.success, failure_messages(outcome.summary)
    drift = outcome.summary["drift"]
    assert drift["status"] == "compared 1 domains with the last validated data" and drift["skipped"] == {}
    d = drift["domains"]["ml-100k"]
    assert d["raw_rows_ratio"] == d["train_ratio"] == d["test_ratio"] == 1.0
    assert d["new_user_share"] == d["new_item_share"] == d["rating_mean_shift"] == 0.0
    assert outcome.summary["suites"]["drift"]["passed"] == outcome.summary["suites"]["drift"]["evaluated"] == 8


def test_first_run_passes_and_says_so(cfg, tmp_path):
    today = prepare(raw_copy(tmp_path), tmp_path / "prepared")
    outcome = validate_folder(today, cfg, tmp_path / "report", data_docs=False, baseline=tmp_path / "none")
    assert outcome.success and "drift" not in outcome.summary["suites"]
    assert outcome.summary["drift"]["status"].startswith("first run: no validated data to compare with")
    written = json.loads((tmp_path / "report" / "drift.json").read_text(encoding="utf-8"))
    assert written["baseline"] is None and written["suite"] is None and written["success"] is True


def test_tracked_summary_is_the_same_with_and_without_a_baseline(validated, cfg, tmp_path):
    """summary.json (a DVC out) must not depend on the last run: a forced rerun of the same data keeps dvc.lock."""
    today = prepare(raw_copy(tmp_path), tmp_path / "prepared")
    first = validate_folder(today, cfg, tmp_path / "first", data_docs=False, baseline=tmp_path / "none")
    second = validate_folder(today, cfg, tmp_path / "second", data_docs=False, baseline=validated)
    assert first.success and second.success and "drift" in second.summary["suites"]
    read = {name: json.loads((tmp_path / name / "summary.json").read_text(encoding="utf-8"))
            for name in ("first", "second")}
    for name, summary in read.items():  # the two report folders differ here, not in the pipeline
        assert summary.pop("data_docs") == str(tmp_path / name / "data_docs" / "index.html")
    assert read["first"] == read["second"] and "drift" not in read["second"]["suites"]
    assert read["second"]["suites_evaluated"] == second.summary["suites_evaluated"] - 1
    drift = json.loads((tmp_path / "second" / "drift.json").read_text(encoding="utf-8"))
    assert drift["status"].startswith("compared") and drift["suite"]["passed"] == drift["suite"]["evaluated"] == 8


def test_truncated_export_is_stopped_and_the_last_good_data_kept(validated, cfg, tmp_path, caplog):
    data = lines("u.data")
    today = prepare(raw_copy(tmp_path, {"u.data": b"".join(data[: len(data) // 2])}), tmp_path / "prepared")
    out = tmp_path / "data" / "validated"
    shutil.copytree(validated, out)
    before = snapshot(out)
    outcome = validate_and_publish(cfg, today, out, tmp_path / "report")
    assert not outcome.success
    assert snapshot(out) == before  # not published
    raw = drift_failures(outcome)["raw_rows_ratio"]
    assert raw["domain"] == "ml-100k" and raw["examples"] == [{"domain": "ml-100k", "raw_rows_ratio": 0.5}]
    line = next(m for m in failure_messages(outcome.summary) if "raw_rows_ratio" in m)
    assert "domain ml-100k" in line and "suite drift" in line and "min_value=0.7" in line and "max_value=1.5" in line
    assert outcome.summary["drift"]["domains"]["ml-100k"]["rows_now_then"]["raw_rows"] == [50000, 100000]


def test_duplicated_export_is_stopped(validated, cfg, tmp_path):
    # Every row twice: prepare collapses repeated pairs, so only the export's own row count shows it
    data = lines("u.data")
    today = prepare(raw_copy(tmp_path, {"u.data": b"".join(row for r in data for row in (r, r))}),
                    tmp_path / "prepared")
    assert load_tables(today)[0]["interactions"].equals(load_tables(validated)[0]["interactions"])
    outcome = validate_folder(today, cfg, tmp_path / "report", data_docs=False, baseline=validated)
    assert not outcome.success
    failed = drift_failures(outcome)
    assert set(failed) == {"raw_rows_ratio"}
    assert failed["raw_rows_ratio"]["examples"] == [{"domain": "ml-100k", "raw_rows_ratio": 2.0}]


def test_changed_split_params_are_not_compared(validated, cfg, tmp_path):
    today = prepare(raw_copy(tmp_path), tmp_path / "prepared", test_frac=0.3)
    outcome = validate_folder(today, cfg, tmp_path / "report", data_docs=False, baseline=validated)
    assert outcome.success and outcome.summary["drift"]["status"].startswith("not compared: prepare's split")


# ------------------------------------------------------------------------------------------------ timestamps

@pytest.mark.parametrize("when", ["future", "before_epoch"])
def test_timestamps_outside_the_window_are_stopped(validated, cfg, tmp_path, when):
    tables, meta = load_tables(validated)
    tables = {k: v.copy() for k, v in tables.items()}
    inter = tables["interactions"]
    now = float(inter["ts"].max()) + 30 * DAY  # the run's clock, fixed so the test does not depend on today
    bad = now + cfg.max_future_s + DAY if when == "future" else pd.Timestamp(cfg.ts_epoch).timestamp() - DAY
    inter.loc[0, "ts"] = int(bad)
    outcome = run_checks(build_batches(tables, meta), build_suites(meta, thresholds(cfg, now=now)),
                         tmp_path / "docs", cfg.max_examples, data_docs=False)
    failed = outcome.summary["suites"]["timestamps"]["failed"]
    assert not outcome.success and len(failed) == 1
    f = failed[0]
    assert f["domain"] == "ml-100k" and f["unexpected_count"] == 1
    assert f["examples"][0]["ts"] == int(bad) and f["examples"][0]["user"] == int(inter.loc[0, "user"])
    key = "max_value" if when == "future" else "min_value"
    assert f["kwargs"][key] == thresholds(cfg, now=now).__dict__["ts_max" if when == "future" else "ts_min"]
    assert all(s["success"] for name, s in outcome.summary["suites"].items() if name != "timestamps")


# --------------------------------------------------------------------------------------------------- prepare

def test_item_listed_twice_with_another_text_is_stopped(tmp_path):
    items = lines("u.item")
    fields = items[0].split(b"|")
    fields[1] = b"Not Toy Story (1995)"
    raw = raw_copy(tmp_path, {"u.item": b"".join(items) + b"|".join(fields)})
    with pytest.raises(PrepareError, match=r"ml-100k: 1 item ids are listed with different texts, e\.g\. item '1'"):
        prepare(raw, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_exact_repeat_of_an_item_is_merged(tmp_path):
    items = lines("u.item")
    prepared = prepare(raw_copy(tmp_path, {"u.item": b"".join(items) + items[0]}), tmp_path / "prepared")
    assert len(load_tables(prepared)[0]["items"]) == len(items)


def test_a_megabyte_text_is_cut_at_prepare(tmp_path, caplog):
    items = lines("u.item")
    fields = items[0].split(b"|")
    fields[1] = b"Toy Story " * 100_000 + b"(1995)"  # a 1 MB title of a real row
    raw = raw_copy(tmp_path, {"u.item": b"|".join(fields) + b"".join(items[1:])})
    with caplog.at_level(logging.WARNING, logger="m6rec"):
        prepared = prepare(raw, tmp_path / "prepared", max_text_chars=1000)
    item = load_tables(prepared)[0]["items"].iloc[0]
    assert item["raw_item"] == "1" and len(item["title"]) == 1000 and len(item["text"]) == 1000
    assert all(len(v) <= 1000 for v in json.loads(item["fields"]).values() if isinstance(v, str))
    assert any("ml-100k: 1 items had a title, text or field longer than prepare.max_text_chars=1000" in r.message
               for r in caplog.records)


def test_default_text_limit_cuts_no_registered_dataset():
    """The default leaves every figure of the default pipeline unchanged: no real text reaches it."""
    limit = PrepareParams().max_text_chars
    assert limit == load_section("prepare", PrepareParams, REPO / "params.yaml").max_text_chars
    for name, spec in load_registry(REGISTRY).items():
        _, items = parse(spec.parser, mirror_dir() / name)
        longest = max(items["text"].fillna("").str.len().max(), items["title"].fillna("").str.len().max())
        assert longest < limit, f"{name}: a text of {longest} chars would be cut by max_text_chars={limit}"


def stage_params(tmp_path: Path, raw: Path, registry: Path = REGISTRY) -> Path:
    params = {"data": {"registry": str(registry), "raw_dir": str(raw)},
              "prepare": {"out_dir": str(tmp_path / "prepared"), "domains": ["ml-100k"], "max_users": 40}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_prepare_stage_refuses_raw_data_that_differs_from_the_registry(tmp_path, caplog):
    data = lines("u.data")
    raw = raw_copy(tmp_path, {"u.data": b"".join(data[:-1])})
    with caplog.at_level(logging.ERROR, logger="m6rec"):
        assert prepare_stage.main(["--params", str(stage_params(tmp_path, raw))]) == 1
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{raw}/ml-100k/u.data: sha256 " in message and "nothing was overwritten" in message
    assert "registry expects" in message and not (tmp_path / "prepared").exists()
    with pytest.raises(RawDataError, match="u.data"):
        prepare_datasets(raw, tmp_path / "prepared", REGISTRY, PrepareParams(domains=("ml-100k",)))


def test_dataset_without_checksums_is_left_to_the_expectations(tmp_path):
    # A user's own dataset: the registry names its files but no sha256, so changed bytes are expected
    registry = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    registry["datasets"]["ml-100k"]["files"] = {name: None for name in registry["datasets"]["ml-100k"]["files"]}
    own = tmp_path / "datasets.yaml"
    own.write_text(yaml.safe_dump(registry), encoding="utf-8")
    data = lines("u.data")
    raw = raw_copy(tmp_path, {"u.data": b"".join(data[:-1])})
    assert prepare_stage.main(["--params", str(stage_params(tmp_path, raw, own))]) == 0
    meta = json.loads((tmp_path / "prepared" / schema.META).read_text(encoding="utf-8"))
    assert meta["per_domain"]["ml-100k"]["n_raw_interactions"] == len(data) - 1
