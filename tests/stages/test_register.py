"""The register stage's promotion gate, end to end on a real sqlite MLflow store and real (tiny) data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from m6rec import tracking
from m6rec.config import ConfigError, RegisterParams, TrackingParams, parse_metric
from m6rec.promotion import bundle_figure, decide, recorded_figure
from m6rec.serving.bundle import Bundle
from m6rec.serving.bundle_io import export_bundle, load_bundle, read_meta
from m6rec.stages import register
from tests.serving.svd_bundles import svd_bundle

SETTINGS = TrackingParams()  # the store itself comes from MLFLOW_TRACKING_URI in the fixture

DOMAINS = ["ml-100k", "amazon-office"]
METRIC = "valid.ndcg@20"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_prepared_dir: Path):
    """A folder with the data and three candidate bundles of clearly different quality, their figures in their meta."""
    from m6rec.data.dataset import load_prepared

    root = tmp_path_factory.mktemp("register")
    data_dir = root / "data" / "validated"
    shutil.copytree(tiny_prepared_dir, data_dir)
    prepared = load_prepared(data_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("M6REC_ARTIFACT_ROOT", raising=False)
        mp.chdir(root)
        version = tracking.data_version(paths=["data/validated"])
        figures = {}
        for name, dim, random in (("random", 8, True), ("svd2", 2, False), ("svd16", 16, False)):
            domains = svd_bundle(prepared, DOMAINS, dim, random=random)
            fig = bundle_figure(Bundle(meta={}, domains=domains), prepared, METRIC, DOMAINS)
            metrics = {d: {name: {"valid": {"ndcg@20": v}}} for d, v in fig.per_domain.items()}
            export_bundle(root / "models" / name, domains, {"model": name, "data_version": version,
                                                            "metrics": metrics})
            # The metrics files stay listed in the candidates (accepted for compatibility) but are not read.
            (root / "metrics").mkdir(exist_ok=True)
            (root / "metrics" / f"{name}.json").write_text(json.dumps({"not": "read"}))
            figures[name] = fig.value
        low, mid, high = sorted(figures, key=figures.get)
        assert figures[low] < figures[mid] < figures[high], f"candidates not separable on tiny data: {figures}"
        yield {"root": root, "figures": figures, "low": low, "mid": mid, "high": high, "version": version}


def cfg(name: str, **kw) -> RegisterParams:
    return RegisterParams(candidates=({"bundle": f"models/{name}", "metrics": f"metrics/{name}.json"},),
                          metric=METRIC, domains=tuple(DOMAINS), **kw)


def checks(root: Path, success: bool | None) -> Path:
    path = root / "reports" / "validation" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if success is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps({"success": success, "suites": {}}))
    return path


def test_parse_metric_and_params_are_checked():
    assert parse_metric("valid.ndcg@20") == ("valid", "ndcg@20", (20,))
    assert parse_metric("test.mrr") == ("test", "mrr", (10,))
    with pytest.raises(ConfigError, match="register.metric"):
        RegisterParams(metric="ndcg@20")
    with pytest.raises(ConfigError, match="candidates\\[0\\]"):
        RegisterParams(candidates=({"metrics": "x"},))
    with pytest.raises(ConfigError, match="candidates\\[1\\]"):
        RegisterParams(candidates=({"bundle": "x"}, {"bundle": "y", "metric": "typo"}))
    with pytest.raises(ConfigError, match="margin"):
        RegisterParams(margin=-1.0)


def test_decide_is_the_gate():
    assert decide(0.1, None, 0.0, True, "").promote
    assert decide(0.3, 0.2, 0.05, True, "").promote
    assert not decide(0.24, 0.2, 0.05, True, "").promote
    assert not decide(0.2, 0.2, 0.0, True, "").promote  # a tie keeps the champion
    assert not decide(0.9, None, 0.0, False, "data checks failed").promote


def test_promotion_sequence(project):
    """First promoted; worse kept; failed or missing checks kept; margin respected; better promoted."""
    root, figs = project["root"], project["figures"]
    low, mid, high = project["low"], project["mid"], project["high"]
    ok = checks(root, True)

    first = register.run(cfg(mid), ok, settings=SETTINGS)
    assert first["promoted"] and first["reason"] == "promoted: no champion yet"
    assert first["champion_before"] is None
    assert first["candidate"]["value"] == pytest.approx(figs[mid]) and first["candidate"]["source"] == "bundle-meta"
    champ = tracking.get_alias("m6rec", settings=SETTINGS)
    assert champ.version == first["candidate"]["version"] == first["champion_after"]
    assert float(champ.tags[register.TAG_VALUE]) == pytest.approx(figs[mid])
    assert champ.tags[register.TAG_DATA] == project["version"]
    on_disk = json.loads((root / "reports" / "promotion.json").read_text())
    assert on_disk == first

    worse = register.run(cfg(low), ok, settings=SETTINGS)
    assert not worse["promoted"] and worse["decision"] == "kept"
    assert worse["champion_before"]["source"] == "tags"
    assert worse["champion_before"]["value"] == pytest.approx(figs[mid])
    assert tracking.get_alias("m6rec", settings=SETTINGS).version == champ.version
    registered = tracking.get_version("m6rec", worse["candidate"]["version"], settings=SETTINGS)
    assert registered.tags["model"] == low  # registered anyway

    failed = register.run(cfg(high), checks(root, False), settings=SETTINGS)
    assert not failed["promoted"] and "data checks failed" in failed["reason"]
    missing = register.run(cfg(high), checks(root, None), settings=SETTINGS)
    assert not missing["promoted"] and "no data-check summary" in missing["reason"]
    assert tracking.get_alias("m6rec", settings=SETTINGS).version == champ.version

    gap = figs[high] - figs[mid]
    within_margin = register.run(cfg(high, margin=gap + 1e-3), checks(root, True), settings=SETTINGS)
    assert not within_margin["promoted"]

    better = register.run(cfg(high, margin=gap / 2), checks(root, True), settings=SETTINGS)
    assert better["promoted"]
    assert better["champion_before"]["version"] == champ.version
    assert tracking.get_alias("m6rec", settings=SETTINGS).version == better["candidate"]["version"] != champ.version

    # Every run registered its candidate: 6 versions, the champion the last one.
    assert tracking.get_version("m6rec", 6, settings=SETTINGS).version == "6"
    assert tracking.get_alias("m6rec", settings=SETTINGS).version == "6"


def test_changed_data_reevaluates_the_champion(project):
    """On other data (different version) the champion's recorded figure is not trusted: its bundle is re-evaluated.

    The data here is a byte-different copy of the same interactions, so the re-evaluated figure must reproduce
    the recorded one: that checks the download, id alignment and evaluation path.
    """
    root, figs = project["root"], project["figures"]
    other = root / "data" / "validated-v2"
    if not other.exists():
        shutil.copytree(root / "data" / "validated", other)
        meta = other / "meta.json"
        meta.write_text(meta.read_text() + "\n")
    assert tracking.data_version(paths=["data/validated-v2"]) != project["version"]
    champ = tracking.get_alias("m6rec", settings=SETTINGS)
    report = register.run(cfg(project["low"], data_dir="data/validated-v2"), checks(root, True),
                          settings=SETTINGS)
    before = report["champion_before"]
    assert before["version"] == champ.version and before["source"] == "re-evaluated"
    assert before["value"] == pytest.approx(float(champ.tags[register.TAG_VALUE]), abs=1e-6)
    # The candidate's bundle says it was built on the old data: it is re-evaluated too, not read from its file.
    assert report["candidate"]["source"] == "re-evaluated"
    assert report["candidate"]["value"] == pytest.approx(figs[project["low"]], abs=1e-6)
    assert not report["promoted"]


def test_main_reads_params_and_validate_report_dir(project):
    import yaml

    root, low = project["root"], project["low"]
    checks(root, False)
    good = root / "checks-ok"
    good.mkdir(exist_ok=True)
    (good / "summary.json").write_text(json.dumps({"success": True}))
    params = {
        "validate": {"report_dir": "checks-ok"},
        "tracking": {},  # defaults; the store comes from MLFLOW_TRACKING_URI
        "register": {"candidates": [{"bundle": f"models/{low}", "metrics": f"metrics/{low}.json"}],
                     "metric": METRIC, "domains": DOMAINS, "margin": 0.0, "report": "reports/main.json"},
    }
    (root / "params-register.yaml").write_text(yaml.safe_dump(params))
    assert register.main(["--params", "params-register.yaml"]) == 0
    report = json.loads((root / "reports" / "main.json").read_text())
    assert report["data_checks_passed"] is True  # read from validate.report_dir, not the default folder
    assert report["decision"] == "kept"


def test_recorded_figure_reads_one_schema(project):
    """The bundle's meta in the metrics files' schema; the old ``{domain: {split}}`` shape reads the same; a served
    domain without a figure is an error; a meta without metrics has no recorded figure."""
    meta = read_meta(project["root"] / "models" / project["mid"])
    fig = recorded_figure(meta, METRIC, DOMAINS)
    assert fig.source == "bundle-meta" and fig.value == pytest.approx(project["figures"][project["mid"]])
    old = {**meta, "metrics": {d: r[meta["model"]] for d, r in meta["metrics"].items()}}
    assert recorded_figure(old, METRIC, DOMAINS).per_domain == fig.per_domain
    assert recorded_figure(meta, METRIC, [*DOMAINS, "not-served"]).per_domain["not-served"] is None
    with pytest.raises(KeyError, match="amazon-office"):
        recorded_figure({**meta, "metrics": {"ml-100k": meta["metrics"]["ml-100k"]}}, METRIC, DOMAINS)
    assert recorded_figure({**meta, "metrics": {}}, METRIC, DOMAINS) is None


def test_candidate_without_recorded_metrics_is_evaluated(project):
    """Current data but no metrics in the bundle's meta: the bundle is evaluated rather than trusted blindly."""
    root, mid = project["root"], project["mid"]
    bundle = load_bundle(root / "models" / mid)
    export_bundle(root / "models" / "bare", bundle.domains, {"model": "bare", "data_version": project["version"]})
    params = RegisterParams(candidates=({"bundle": "models/bare"},), metric=METRIC, domains=tuple(DOMAINS),
                            model_name="m6rec-bare")
    report = register.run(params, checks(root, True), settings=SETTINGS)
    assert report["candidate"]["source"] == "re-evaluated" and report["candidate"]["metrics_file"] is None
    assert report["candidate"]["value"] == pytest.approx(project["figures"][mid], abs=1e-6)


def test_history_model_is_gated_on_its_own_scores(project):
    """A history-attention bundle without a metrics file, written with the old ``{domain: {split}}`` meta shape
    (champions served before the one schema): its figure comes from the bundle's meta; re-evaluated on changed
    data it reproduces the model's own validation figure, i.e. its histories are rebuilt from the data as the
    protocol says (training items only for valid), not taken from the bundle (train + valid)."""
    from m6rec.config import ProtocolParams
    from m6rec.data.dataset import load_prepared
    from m6rec.evaluation.history import evaluate_model
    from tests.serving.history_bundles import FAST, attention_domain, attention_model

    root = project["root"]
    domain = "amazon-office"
    prepared = load_prepared(root / "data" / "validated")
    model, data = attention_model(prepared, domain)
    figure = evaluate_model(model, {domain: data}, ("valid",), ProtocolParams(ks=(20,)), FAST.train,
                            pairs=False)[domain]["valid"]["ndcg@20"]
    export_bundle(root / "models" / "attention", {domain: attention_domain(prepared, model, data)},
                  {"model": "attention", "data_version": project["version"],
                   "metrics": {domain: {"valid": {"ndcg@20": figure}}}})
    params = RegisterParams(candidates=({"bundle": "models/attention"},), metric=METRIC, domains=(domain,),
                            model_name="m6rec-history")
    first = register.run(params, checks(root, True), settings=SETTINGS)
    assert first["promoted"] and first["candidate"]["source"] == "bundle-meta"
    assert first["candidate"]["value"] == pytest.approx(figure) and first["candidate"]["metrics_file"] is None

    assert tracking.data_version(paths=["data/validated-v2"]) != project["version"]  # from the test above
    again = register.run(RegisterParams(**{**params.__dict__, "data_dir": "data/validated-v2"}), checks(root, True),
                         settings=SETTINGS)
    assert again["candidate"]["source"] == "re-evaluated" and again["champion_before"]["source"] == "re-evaluated"
    assert again["candidate"]["value"] == pytest.approx(figure, abs=1e-6)
    assert again["champion_before"]["value"] == pytest.approx(figure, abs=1e-6)
    assert not again["promoted"]  # a tie keeps the champion


def test_registered_versions_carry_the_bundle_hash_and_decisions_are_logged(project):
    from m6rec.serving.bundle_io import content_hash

    root, mid = project["root"], project["mid"]
    log_file = root / "reports" / "promotions.jsonl"
    register.run(cfg(mid), checks(root, True), settings=SETTINGS)
    before = log_file.read_text()
    report = register.run(cfg(mid), checks(root, True), settings=SETTINGS)
    assert log_file.read_text().startswith(before)  # appended, not rewritten
    version = tracking.get_version("m6rec", report["candidate"]["version"], settings=SETTINGS)
    assert version.tags[register.TAG_HASH] == content_hash(root / "models" / mid)
    lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert len(lines) == len(before.splitlines()) + 1
    assert lines[-1]["candidate"]["version"] == report["candidate"]["version"]
    assert lines[-1]["decision"] == report["decision"] and lines[-1]["store"] == tracking.tracking_uri(SETTINGS)


def test_lost_registry_is_an_error_not_a_first_run(project, tmp_path, monkeypatch):
    """A store that once held a champion is deleted: register refuses with the reason, creates no empty store and
    promotes nothing; with init_registry it starts a new registry knowingly."""
    import yaml

    root, low, high = project["root"], project["low"], project["high"]
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    ok = checks(root, True)
    params = dict(metric=METRIC, domains=tuple(DOMAINS), data_dir=str(root / "data" / "validated"))
    first = register.run(RegisterParams(candidates=({"bundle": str(root / "models" / high)},), **params), ok,
                         settings=SETTINGS)
    assert first["promoted"]  # no record yet: a first run starts the registry
    db.unlink()
    shutil.rmtree(tmp_path / "mlartifacts")
    (tmp_path / "reports" / "promotion.json").unlink()  # as DVC does before the stage runs

    worse = RegisterParams(candidates=({"bundle": str(root / "models" / low)},), **params)
    with pytest.raises(register.decision_log.RegistryError, match=r"mlflow\.db does not exist.*records champion v1"):
        register.run(worse, ok, settings=SETTINGS)
    assert not db.exists() and not (tmp_path / "reports" / "promotion.json").exists()

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "validate": {"report_dir": str(ok.parent)}, "tracking": {},
        "register": {"candidates": [{"bundle": str(root / "models" / low)}], "metric": METRIC, "domains": DOMAINS,
                     "data_dir": str(root / "data" / "validated")}}))
    assert register.main([]) == 1
    log = [json.loads(x) for x in (tmp_path / "reports" / "promotions.jsonl").read_text().splitlines()]
    assert [e["decision"] for e in log] == ["promoted", "refused"] and "does not exist" in log[-1]["reason"]
    assert not db.exists()

    # An empty store (a fresh database where the champion's was) is refused the same way. Fresh processes, as
    # the stages are: this one's MLflow keeps the deleted database open.
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{db}').search_experiments()"],
                   check=True, env=env, capture_output=True)
    assert db.is_file()
    stage = [sys.executable, "-m", "m6rec.stages.register"]
    refused = subprocess.run(stage, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "has no registered model 'm6rec'" in refused.stderr, refused.stderr

    params_file = tmp_path / "params.yaml"
    params_file.write_text(params_file.read_text().replace("register:", "register:\n  init_registry: true", 1))
    started = subprocess.run(stage, env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    again = json.loads((tmp_path / "reports" / "promotion.json").read_text())
    assert again["promoted"] and again["reason"] == "promoted: no champion yet"
    assert again["candidate"]["model"] == low
