"""The preflight stage: seconds, before the model stages, on real stores (a dead port, sqlite files in tmp)."""

from __future__ import annotations

import json
import socket

import yaml

from m6rec.stages import preflight


def _params(root, **register) -> str:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"tracking": {}, "preflight": {"out": str(root / "reports" / "preflight.json")},
                                    "register": {"decision_log": str(root / "promotions.jsonl"), **register}}))
    return str(path)


def test_dead_server_fails_and_writes_nothing(tmp_path, monkeypatch, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    assert preflight.main(["--params", _params(tmp_path)]) == 1
    assert f"{dead} is unreachable" in caplog.text
    assert not (tmp_path / "reports" / "preflight.json").exists()


def test_first_run_passes_with_constant_output(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert preflight.main(["--params", _params(tmp_path)]) == 0
    out = (tmp_path / "reports" / "preflight.json").read_text()
    assert json.loads(out) and uri not in out  # constant: a new store does not rerun the model stages
    assert not (tmp_path / "mlflow.db").exists()  # checking never creates the store


def test_recorded_registry_that_is_gone_fails(tmp_path, monkeypatch, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "promotions.jsonl").write_text(json.dumps({"time": "t", "store": uri, "model_name": "m6rec",
                                                           "decision": "promoted", "champion_after": "3"}) + "\n")
    assert preflight.main(["--params", _params(tmp_path)]) == 1
    assert "records champion v3" in caplog.text and "does not exist" in caplog.text
    assert preflight.main(["--params", _params(tmp_path, init_registry=True)]) == 0
