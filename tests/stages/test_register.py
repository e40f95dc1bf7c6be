"""The register stage's per-domain champion gate, end to end on a real sqlite MLflow store and real (tiny) data.

Candidates are real bundles (truncated SVD or seeded random vectors per domain, different on every candidate so
that their scores differ); the gate reads each bundle's recorded figures when they refer to the current data, so
the tests choose the figures there and check the decisions, then check the measuring path on changed data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from m6rec import registry, tracking
from m6rec.config import ConfigError, RegisterParams, TrackingParams, parse_metric
from m6rec.promotion import decide_domain, domain_figure, recorded_figures, resolve_candidates
from m6rec.serving.bundle_io import content_hash, export_bundle, load_bundle, read_meta
from m6rec.serving.recommender import Recommender
from m6rec.stages import register
from tests.serving.svd_bundles import svd_domain

SETTINGS = TrackingParams()  # the store itself comes from MLFLOW_TRACKING_URI in the fixture
A, B = "ml-100k", "amazon-office"
DOMAINS = [A, B]
METRIC = "valid.ndcg@20"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_prepared_dir: Path):
    """A project folder: the data, a store, and :func:`make` to write candidate bundles with chosen figures."""
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
        seeds = iter(range(1000))

        def make(name: str, figures: dict[str, float], data_version: str = version, folder: str = "models") -> str:
            """Bundle ``<folder>/<name>`` serving the domains of ``figures``, recording those valid figures."""
            domains = {d: svd_domain(prepared, d, 4 + next(seeds) % 5, random=True, seed=next(seeds))
                       for d in figures}
            metrics = {d: {name: {"valid": {"ndcg@20": v}}} for d, v in figures.items()}
            export_bundle(root / folder / name, domains, {"model": name, "data_version": data_version,
                                                          "metrics": metrics})
            return f"{folder}/{name}"

        yield {"root": root, "prepared": prepared, "version": version, "make": make}


def cfg(*bundles: str, **kw) -> RegisterParams:
    return RegisterParams(candidates=tuple(bundles), metric=METRIC, domains=tuple(kw.pop("domains", DOMAINS)), **kw)


def checks(root: Path, success: bool | None) -> Path:
    path = root / "reports" / "validation" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if success is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps({"success": success, "suites": {}}))
    return path


def champions(name: str = "m6rec") -> dict[str, str]:
    return registry.aliases(name, settings=SETTINGS)


def model_of(version: str, name: str = "m6rec") -> str:
    return registry.get_version(name, version, settings=SETTINGS).tags["model"]


def served_scores(domain: str, user: str, k: int = 10, name: str = "m6rec") -> tuple[list[str], list[float]]:
    import mlflow
    import pandas as pd

    out = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        pd.DataFrame({"domain": [domain], "user": [user], "k": [k]}))
    return list(out["item"]), list(out["score"])


def bundle_scores(bundle: str, domain: str, user: str, k: int = 10) -> tuple[list[str], list[float]]:
    answer = Recommender(load_bundle(bundle)).recommend(domain, user, k)
    return [r["item"] for r in answer["items"]], [r["score"] for r in answer["items"]]


def changed_copy(root: Path, name: str, times: int = 1) -> Path:
    """A byte-different copy of the data (same interactions): another data version, the same figures."""
    other = root / "data" / name
    if not other.exists():
        shutil.copytree(root / "data" / "validated", other)
        (other / "meta.json").write_text((other / "meta.json").read_text() + "\n" * times)
    return other


# ------------------------------------------------------------------------------------------------ pure parts


def test_params_are_checked():
    assert parse_metric("valid.ndcg@20") == ("valid", "ndcg@20", (20,))
    with pytest.raises(ConfigError, match="register.metric"):
        RegisterParams(metric="ndcg@20")
    RegisterParams(candidates=("models/a", {"bundle": "models/b/*", "optional": True}))
    with pytest.raises(ConfigError, match="candidates\\[0\\]"):
        RegisterParams(candidates=({"metrics": "x"},))
    with pytest.raises(ConfigError, match="candidates\\[1\\]"):
        RegisterParams(candidates=("x", {"bundle": "y", "optional": "yes"}))
    with pytest.raises(ConfigError, match="margin"):
        RegisterParams(margin=-1.0)


def test_decide_domain_is_the_gate():
    assert decide_domain(A, [0.1, 0.3], None, 0.0, True, "").winner == 1  # no champion: the best
    assert decide_domain(A, [0.3, 0.3], None, 0.0, True, "").winner == 0  # the first of equals
    assert decide_domain(A, [0.3, None], 0.2, 0.05, True, "").promote
    assert not decide_domain(A, [0.24], 0.2, 0.05, True, "").promote  # within the margin
    assert not decide_domain(A, [0.2], 0.2, 0.0, True, "").promote  # a tie keeps the champion
    assert not decide_domain(A, [0.9], 0.2, 0.0, True, "", champion_index=0).promote  # it is the champion
    assert not decide_domain(A, [None, None], None, 0.0, True, "").promote  # nobody serves the domain
    failed = decide_domain(A, [0.9], None, 0.0, False, "data checks failed (x)")
    assert not failed.promote and "data checks failed" in failed.reason


def test_candidates_are_paths_and_globs(project):
    make, root = project["make"], project["root"]
    make("bprmf", {A: 0.1}, folder="models/baselines/bundles")
    make("itemknn", {A: 0.1}, folder="models/baselines/bundles")
    (root / "models" / "baselines" / "bundles" / "not-a-bundle").mkdir(exist_ok=True)
    got = resolve_candidates(["models/baselines/bundles/*", "models/baselines/bundles/bprmf",
                              {"bundle": "models/blend/bundle", "optional": True}])
    assert [c.bundle for c in got] == ["models/baselines/bundles/bprmf", "models/baselines/bundles/itemknn"]
    with pytest.raises(FileNotFoundError, match=r"candidates\[0\]: models/blend/bundle is not a bundle folder"):
        resolve_candidates(["models/blend/bundle"])
    with pytest.raises(FileNotFoundError, match=r"candidates\[1\]: models/nothing/\* matches no bundle"):
        resolve_candidates(["models/baselines/bundles/*", "models/nothing/*"])


# ------------------------------------------------------------------------------------------------ the gate


def test_per_domain_champions_sequence(project):
    """First run: the best per domain; worse: nothing; better on one domain only: that domain only; failed data
    check: nothing; margin and tie respected. @champion always serves each domain's own champion."""
    make, root = project["make"], project["root"]
    ok = checks(root, True)
    p = make("p", {A: 0.30, B: 0.10})
    q = make("q", {A: 0.20, B: 0.25})

    first = register.run(cfg(p, q), ok, settings=SETTINGS)
    assert first["promoted_domains"] == [A, B]
    assert first["domains"][A]["champion_before"] is None and "no champion yet" in first["domains"][A]["reason"]
    al = champions()
    assert model_of(al[f"champion-{A}"]) == "p" and model_of(al[f"champion-{B}"]) == "q"
    served = registry.get_version("m6rec", al["champion"], settings=SETTINGS)
    assert served.tags["composed"] == "true"
    assert served.tags[f"lineage.{A}.version"] == al[f"champion-{A}"]
    assert served.tags[f"lineage.{B}.version"] == al[f"champion-{B}"]
    assert first["served"]["composed"] and first["served"]["domains"] == {A: al[f"champion-{A}"],
                                                                         B: al[f"champion-{B}"]}
    # The served model scores each domain exactly as that domain's winner does.
    for domain, winner in ((A, p), (B, q)):
        user = load_bundle(winner).domains[domain].raw_user[2]
        items, scores = served_scores(domain, user)
        want_items, want_scores = bundle_scores(winner, domain, user)
        assert items == want_items and scores == pytest.approx(want_scores, rel=1e-6)
    on_disk = json.loads((root / "reports" / "promotion.json").read_text())
    assert on_disk == first

    worse = register.run(cfg(make("r", {A: 0.29, B: 0.05})), ok, settings=SETTINGS)
    assert worse["promoted_domains"] == [] and not worse["served"]["composed"]
    assert {d: r["decision"] for d, r in worse["domains"].items()} == {A: "kept", B: "kept"}
    assert worse["domains"][A]["champion_before"]["source"] == "tags"  # p is not a candidate: its version tags
    assert champions() == al  # no alias moved, @champion included

    s = make("s", {A: 0.10, B: 0.40})  # far worse on A, better on B
    better_b = register.run(cfg(s), ok, settings=SETTINGS)
    assert better_b["promoted_domains"] == [B]
    assert better_b["domains"][A]["decision"] == "kept"
    assert better_b["domains"][A]["champion_before"]["source"] == "tags"  # p is not a candidate now
    al2 = champions()
    assert al2[f"champion-{A}"] == al[f"champion-{A}"] and model_of(al2[f"champion-{B}"]) == "s"
    assert al2["champion"] != al["champion"] and better_b["served"]["composed"]
    user_a = load_bundle(p).domains[A].raw_user[5]
    user_b = load_bundle(s).domains[B].raw_user[5]
    assert served_scores(A, user_a)[0] == bundle_scores(p, A, user_a)[0]  # A still served by p
    assert served_scores(B, user_b)[0] == bundle_scores(s, B, user_b)[0]  # B now by s

    best = make("t", {A: 0.9, B: 0.9})
    failed = register.run(cfg(best), checks(root, False), settings=SETTINGS)
    assert failed["promoted_domains"] == [] and "data checks failed" in failed["domains"][A]["reason"]
    missing = register.run(cfg(best), checks(root, None), settings=SETTINGS)
    assert "no data-check summary" in missing["domains"][B]["reason"]
    assert champions() == al2

    ok = checks(root, True)
    u = make("u", {A: 0.32})
    assert register.run(cfg(u, margin=0.05), ok, settings=SETTINGS)["promoted_domains"] == []
    tie = register.run(cfg(make("tie", {A: 0.30})), ok, settings=SETTINGS)
    assert tie["promoted_domains"] == [] and "<=" in tie["domains"][A]["reason"]
    assert register.run(cfg(u, margin=0.01), ok, settings=SETTINGS)["promoted_domains"] == [A]
    al3 = champions()
    assert model_of(al3[f"champion-{A}"]) == "u" and al3[f"champion-{B}"] == al2[f"champion-{B}"]
    served = registry.get_version("m6rec", al3["champion"], settings=SETTINGS)
    assert served.tags[f"lineage.{A}.model"] == "u" and served.tags[f"lineage.{B}.model"] == "s"


def test_report_is_deterministic_and_names_no_run_or_machine(project):
    make, root = project["make"], project["root"]
    ok = checks(root, True)
    w = make("w", {A: 0.01, B: 0.01})
    register.run(cfg(w), ok, settings=SETTINGS)  # registers w (and promotes it on a fresh registry)
    register.run(cfg(w), ok, settings=SETTINGS)
    first = (root / "reports" / "promotion.json").read_bytes()
    register.run(cfg(w), ok, settings=SETTINGS)  # the same inputs (the bundle's version is reused)
    assert (root / "reports" / "promotion.json").read_bytes() == first
    text = first.decode()
    assert str(root) not in text and "/tmp" not in text
    import mlflow

    run_ids = {r.info.run_id for r in mlflow.search_runs(output_format="list", search_all_experiments=True)}
    assert not any(r in text for r in run_ids)
    log = [json.loads(x) for x in (root / "reports" / "promotions.jsonl").read_text().splitlines()]
    assert log[-1]["run_id"] in run_ids  # the run id goes to the decision log instead


def test_version_is_registered_from_its_training_run(project):
    """A bundle that a training run logged (registry.log_bundle_model) is registered from that run's model."""
    make, root = project["make"], project["root"]
    bundle = make("trained", {A: 0.02})
    with tracking.start_run("baselines", {"baselines": {"dim": 4}}, settings=SETTINGS) as training_run:
        tracking.log_epoch({f"{A}.trained.loss": 0.5}, step=0)
        registry.log_bundle_model(bundle, project["prepared"])
    report = register.run(cfg(bundle, domains=[A], model_name="m6rec-lineage"), checks(root, True),
                          settings=SETTINGS)
    version = registry.get_version("m6rec-lineage", report["candidates"][0]["version"], settings=SETTINGS)
    assert version.run_id == training_run and version.tags[register.TAG_LOGGED_BY] == "training run"
    assert version.tags[register.TAG_HASH] == content_hash(bundle)
    assert report["candidates"][0]["logged_by"] == "training run"
    served = registry.get_alias("m6rec-lineage", settings=SETTINGS)
    assert served.tags[f"lineage.{A}.run_id"] == training_run


def test_changed_data_reevaluates_candidates_and_champions(project):
    """On other data (another version) recorded figures are not trusted: bundles are measured, and the figures
    are the protocol's own on that data."""
    make, root, prepared = project["make"], project["root"], project["prepared"]
    changed_copy(root, "validated-v2")
    ok = checks(root, True)
    old = make("old", {A: 0.5, B: 0.5}, data_version="stale")
    first = register.run(cfg(old, model_name="m6rec-eval", data_dir="data/validated-v2"), ok, settings=SETTINGS)
    measured = {d: domain_figure(load_bundle(old), prepared, METRIC, d) for d in DOMAINS}
    assert first["candidates"][0]["figures"] == pytest.approx(measured, abs=1e-6)
    assert first["domains"][A]["candidates"][0]["source"] == "re-evaluated"
    champ = registry.get_version("m6rec-eval", champions("m6rec-eval")[f"champion-{A}"], settings=SETTINGS)

    # A different candidate on data the champion's tags do not describe: its bundle is downloaded and measured.
    changed_copy(root, "validated-v3", times=2)
    again = register.run(cfg(make("other", {A: 0.0}, data_version="stale"), model_name="m6rec-eval",
                             data_dir="data/validated-v3", domains=[A]), ok, settings=SETTINGS)
    before = again["domains"][A]["champion_before"]
    assert before["version"] == champ.version and before["source"] == "re-evaluated"
    assert before["value"] == pytest.approx(measured[A], abs=1e-6)


def test_history_model_is_gated_on_its_own_scores(project):
    """A history-attention bundle (old ``{domain: {split}}`` meta): its figure comes from its meta; on changed data
    it is re-evaluated from the histories the protocol builds (training items for valid), reproducing it."""
    from m6rec.config import ProtocolParams
    from m6rec.evaluation.history import evaluate_model
    from tests.serving.history_bundles import FAST, attention_domain, attention_model

    root, prepared = project["root"], project["prepared"]
    model, data = attention_model(prepared, B)
    figure = evaluate_model(model, {B: data}, ("valid",), ProtocolParams(ks=(20,)), FAST.train,
                            pairs=False)[B]["valid"]["ndcg@20"]
    export_bundle(root / "models" / "attention", {B: attention_domain(prepared, model, data)},
                  {"model": "attention", "data_version": project["version"],
                   "metrics": {B: {"valid": {"ndcg@20": figure}}}})
    assert recorded_figures(read_meta(root / "models" / "attention"), METRIC, [B]) == {B: figure}
    params = cfg("models/attention", domains=[B], model_name="m6rec-history")
    first = register.run(params, checks(root, True), settings=SETTINGS)
    assert first["promoted_domains"] == [B] and first["domains"][B]["candidates"][0]["source"] == "bundle-meta"

    changed_copy(root, "validated-v2")
    assert tracking.data_version(paths=["data/validated-v2"]) != project["version"]
    again = register.run(cfg("models/attention", domains=[B], model_name="m6rec-history",
                             data_dir="data/validated-v2"), checks(root, True), settings=SETTINGS)
    cand = again["domains"][B]["candidates"][0]
    assert cand["source"] == "re-evaluated" and cand["value"] == pytest.approx(figure, abs=1e-6)
    assert not again["promoted"]  # the champion is this very bundle


def test_legacy_single_champion_counts_per_domain(project):
    """A registry from before per-domain champions: its one @champion is every served domain's champion, so a
    candidate worse on a domain does not replace it there."""
    make, root = project["make"], project["root"]
    legacy = make("legacy", {A: 0.3, B: 0.3})
    with tracking.start_run("register", {}, settings=SETTINGS):
        uri = registry.log_model(legacy, "legacy")
    v = registry.register_model(uri, "m6rec-legacy", tags={"model": "legacy", register.TAG_HASH: content_hash(legacy)},
                                settings=SETTINGS)
    registry.set_alias(v.version, "m6rec-legacy", settings=SETTINGS)
    # Its tags predate per-domain figures: it is measured on each domain, and "newer" ties it on B.
    measured = {d: domain_figure(load_bundle(legacy), project["prepared"], METRIC, d) for d in DOMAINS}
    report = register.run(cfg(make("newer", {A: measured[A] + 0.1, B: measured[B]}), model_name="m6rec-legacy"),
                          checks(root, True), settings=SETTINGS)
    assert report["domains"][B]["champion_before"] == {
        "version": v.version, "model": "legacy", "bundle_sha256": content_hash(legacy), "value": measured[B],
        "source": "re-evaluated"}
    assert report["promoted_domains"] == [A]
    al = champions("m6rec-legacy")
    assert al[f"champion-{B}"] == v.version and model_of(al[f"champion-{A}"], "m6rec-legacy") == "newer"
    assert report["served"]["domains"] == {A: al[f"champion-{A}"], B: v.version}


def test_main_reads_params_and_validate_report_dir(project):
    import yaml

    make, root = project["make"], project["root"]
    make("main1", {A: 0.001}, folder="models/main")
    checks(root, False)
    good = root / "checks-ok"
    good.mkdir(exist_ok=True)
    (good / "summary.json").write_text(json.dumps({"success": True}))
    params = {
        "validate": {"report_dir": "checks-ok"},
        "tracking": {},  # defaults; the store comes from MLFLOW_TRACKING_URI
        "register": {"candidates": ["models/main/*", {"bundle": "models/blend/bundle", "optional": True}],
                     "metric": METRIC, "domains": [A], "margin": 0.0, "report": "reports/main.json",
                     "model_name": "m6rec-main"},
    }
    (root / "params-register.yaml").write_text(yaml.safe_dump(params))
    assert register.main(["--params", "params-register.yaml"]) == 0
    report = json.loads((root / "reports" / "main.json").read_text())
    assert report["data_checks_passed"] is True  # read from validate.report_dir, not the default folder
    assert report["promoted_domains"] == [A]  # the first run of m6rec-main
    assert [c["bundle"] for c in report["candidates"]] == ["models/main/main1"]


def test_registered_versions_carry_the_bundle_hash_and_are_reused(project):
    make, root = project["make"], project["root"]
    bundle = make("hashed", {A: 0.001})
    log_file = root / "reports" / "promotions.jsonl"
    first = register.run(cfg(bundle, domains=[A]), checks(root, True), settings=SETTINGS)
    before = log_file.read_text()
    second = register.run(cfg(bundle, domains=[A]), checks(root, True), settings=SETTINGS)
    assert log_file.read_text().startswith(before)  # appended, not rewritten
    assert first["candidates"][0]["version"] == second["candidates"][0]["version"]  # same bundle, same version
    version = registry.get_version("m6rec", second["candidates"][0]["version"], settings=SETTINGS)
    assert version.tags[register.TAG_HASH] == content_hash(bundle)
    served = registry.get_alias("m6rec", settings=SETTINGS)
    assert served.tags[register.TAG_HASH].startswith("sha256:")  # the composed one too: the service checks it
    lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert lines[-1]["decision"] == second["decision"] and lines[-1]["store"] == tracking.tracking_uri(SETTINGS)


def test_lost_registry_is_an_error_not_a_first_run(project, tmp_path, monkeypatch):
    """A store that once held a champion is deleted: register refuses with the reason, creates no empty store and
    promotes nothing; with init_registry it starts a new registry knowingly."""
    import os
    import subprocess
    import sys

    import yaml

    make, root = project["make"], project["root"]
    high, low = root / make("lost-high", {A: 0.5}), root / make("lost-low", {A: 0.1})
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    ok = checks(root, True)
    params = dict(metric=METRIC, domains=(A,), data_dir=str(root / "data" / "validated"))
    first = register.run(RegisterParams(candidates=(str(high),), **params), ok, settings=SETTINGS)
    assert first["promoted"]  # no record yet: a first run starts the registry
    db.unlink()
    shutil.rmtree(tmp_path / "mlartifacts")
    (tmp_path / "reports" / "promotion.json").unlink()  # as DVC does before the stage runs

    with pytest.raises(register.decision_log.RegistryError, match=r"mlflow\.db does not exist.*records champion v"):
        register.run(RegisterParams(candidates=(str(low),), **params), ok, settings=SETTINGS)
    assert not db.exists() and not (tmp_path / "reports" / "promotion.json").exists()

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "validate": {"report_dir": str(ok.parent)}, "tracking": {},
        "register": {"candidates": [str(low)], "metric": METRIC, "domains": [A],
                     "data_dir": str(root / "data" / "validated")}}))
    assert register.main([]) == 1
    log = [json.loads(x) for x in (tmp_path / "reports" / "promotions.jsonl").read_text().splitlines()]
    assert [e["decision"] for e in log] == ["promoted", "refused"] and "does not exist" in log[-1]["reason"]
    assert not db.exists()

    # An empty store (a fresh database where the champion's was) is refused the same way. Fresh processes, as
    # the stages are: this one's MLflow keeps the deleted database open.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{db}').search_experiments()"],
                   check=True, env=env, capture_output=True)
    stage = [sys.executable, "-m", "m6rec.stages.register"]
    refused = subprocess.run(stage, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "has no registered model 'm6rec'" in refused.stderr, refused.stderr[-2000:]

    params_file = tmp_path / "params.yaml"
    params_file.write_text(params_file.read_text().replace("register:", "register:\n  init_registry: true", 1))
    started = subprocess.run(stage, env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr[-2000:]
    again = json.loads((tmp_path / "reports" / "promotion.json").read_text())
    assert again["promoted_domains"] == [A] and again["candidates"][0]["model"] == "lost-low"


def test_composed_bundle_copies_domain_bundles(project):
    """The composed bundle's domain arrays are the sources' own (copied, never re-scored)."""
    from m6rec.stages.register import compose

    make, root = project["make"], project["root"]
    x, y = make("cx", {A: 0.1, B: 0.1}), make("cy", {A: 0.1, B: 0.1})
    info = registry.ModelVersionInfo(name="m", version="1", source="", run_id=None, tags={"model": "cx"})
    out = compose({A: (info, Path(x)), B: (info, Path(y))}, root / "composed-test", "v")
    got = load_bundle(out)
    for d, src in ((A, x), (B, y)):
        want = load_bundle(src).domains[d]
        np.testing.assert_array_equal(got.domains[d].item_vectors, want.item_vectors)
        np.testing.assert_array_equal(got.domains[d].user_vectors, want.user_vectors)
        assert got.domains[d].raw_user == want.raw_user
    assert got.meta["sources"] == {A: {"version": "1", "model": "cx"}, B: {"version": "1", "model": "cx"}}
    assert got.meta["metrics"][A]["champions"]["valid"]["ndcg@20"] == 0.1
