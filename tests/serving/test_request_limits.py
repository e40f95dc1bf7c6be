"""What a request body must be (m6rec.serving.limits) over real HTTP, against a `bentoml serve` with a small
serve.max_body_bytes; and the client-error logging, on BentoML's own log function."""

from __future__ import annotations

import json
import logging
import sys

import httpx
import pytest
import yaml
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from m6rec.serving import limits
from m6rec.serving.bundle_io import export_bundle
from m6rec.serving.local_server import LocalServer
from tests.serving.conftest import PLAIN_DOMAIN, TEXT_DOMAIN
from tests.serving.svd_bundles import svd_bundle

MAX_BODY = 4096


@pytest.fixture(scope="module")
def guarded(tiny_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    bundle = export_bundle(root / "bundle", svd_bundle(tiny_prepared, [TEXT_DOMAIN, PLAIN_DOMAIN], 8),
                           {"model": "svd8"})
    (root / "params.yaml").write_text(yaml.safe_dump({"serve": {"bundle_dir": str(bundle),
                                                                "max_body_bytes": MAX_BODY}}))
    srv = LocalServer(env={"M6REC_PARAMS": str(root / "params.yaml"), "HF_HUB_OFFLINE": "1"}, cwd=root,
                      log_path=root / "serve.log")
    srv.start()
    users = json.loads((bundle / TEXT_DOMAIN / "ids.json").read_text())["raw_user"]
    yield srv, users
    srv.stop()


def raw(srv: LocalServer, endpoint: str, content, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(f"{srv.url}/{endpoint}", content=content, headers=headers, timeout=60)


def test_a_body_over_the_limit_is_413_and_the_server_keeps_answering(guarded):
    srv, users = guarded
    items = json.dumps({"domain": TEXT_DOMAIN, "items": [str(i) for i in range(2000)]}).encode()
    assert len(items) > MAX_BODY
    r = raw(srv, "recommend_items", items)  # Content-Length says it all: refused unread
    assert r.status_code == 413, r.text
    assert r.json()["error"].endswith(f"over the limit of {MAX_BODY} bytes (serve.max_body_bytes)")
    assert str(len(items)) in r.json()["error"]

    def chunks():  # no Content-Length: counted as it streams
        for i in range(0, len(items), 1000):
            yield items[i:i + 1000]

    r = raw(srv, "recommend_items", chunks())
    assert r.status_code == 413, r.text
    ok = raw(srv, "recommend", json.dumps({"domain": TEXT_DOMAIN, "user": users[0], "k": 3}).encode())
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    just_under = json.dumps({"domain": TEXT_DOMAIN, "user": users[0], "k": 3, "exclude_seen": True})
    assert raw(srv, "recommend", just_under.encode()).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1", "application/vnd.bentoml+pickle"])
def test_only_json_is_accepted(guarded, content_type):
    srv, users = guarded
    r = raw(srv, "recommend", json.dumps({"domain": TEXT_DOMAIN, "user": users[0]}).encode(), content_type)
    assert r.status_code == 415, r.text
    assert r.json()["field"] == "content-type" and "application/json" in r.json()["error"]


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "application/problem+json"])
def test_json_content_types_are_accepted(guarded, content_type):
    srv, users = guarded
    r = raw(srv, "recommend", json.dumps({"domain": TEXT_DOMAIN, "user": users[0], "k": 2}).encode(), content_type)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body,field", [
    (b'{"domain": "ml-100k", "user": "1", "k": 3, "k": 50}', "k"),  # duplicate key: not "the last wins"
    (b'{"domain": "ml-100k", "domain": "ml-latest-small", "user": "1"}', "domain"),
    (b'{"domain": "ml-100k", "user": "1", "k": true}', "k"),  # a bool is not an integer
    (b'{"domain": "ml-100k", "user": "1", "k": "5"}', "k"),  # nor a string
    (b'{"domain": "ml-100k", "user": "1", "k": 2.5}', "k"),
    (b'{"domain": "ml-100k", "user": "1", "exclude_seen": 1}', "exclude_seen"),
    (b'{"domain": "ml-100k", "user": true}', "user"),
    (b'{"domain": "ml-100k", "user": "1", "k": NaN}', ""),
    (b'{"domain": "ml-100k", "user": "1", "k": Infinity}', ""),
])
def test_strict_json(guarded, body, field):
    srv, _ = guarded
    r = raw(srv, "recommend", body)
    assert r.status_code == 400, r.text
    payload = r.json()
    named = [payload.get("field")] + [str(x) for d in payload.get("detail") or [] for x in d["loc"]]
    assert not field or field in named, payload


def test_integral_numbers_are_integers(guarded):
    """JSON Schema's integer includes 3.0 (the OpenAPI says integer): accepted as k = 3, and as user id."""
    srv, users = guarded
    r = raw(srv, "recommend", json.dumps({"domain": TEXT_DOMAIN, "user": float(users[0]), "k": 3.0}).encode())
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3 and r.json()["user"] == users[0] and r.json()["source"] == "model"


def test_client_errors_are_one_info_line(guarded):
    srv, _ = guarded
    assert raw(srv, "recommend", b'{"domain": "x", "user": "1", "k": true}').status_code == 400
    assert raw(srv, "recommend", b"{}", "text/plain").status_code == 415
    assert httpx.post(f"{srv.url}/metadata", json={}, timeout=30).status_code == 200  # flushes the lines above
    log = srv.log_tail(10**7)
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "client error" in line]
    assert any("/recommend 400 fields=k" in line and "[INFO]" in line for line in lines), lines
    assert any("/recommend 415 fields=content-type" in line and "[INFO]" in line for line in lines), lines


class _Body(BaseModel):
    k: int


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/recommend", "headers": [], "query_string": b""})


def test_bentoml_log_function_keeps_server_errors_at_error(caplog):
    """The patched BentoML log function: a pydantic error is one INFO line, anything else ERROR with traceback."""
    from _bentoml_impl.server import app as bento_app

    assert limits.install_error_logging()
    caplog.set_level(logging.INFO)
    try:
        _Body.model_validate({"k": "x"})
    except ValidationError:
        bento_app.log_exception(_request())
    try:
        raise RuntimeError("scorer broke")
    except RuntimeError:
        bento_app.log_exception(_request())
    client, server = caplog.records[-2:]
    assert client.levelno == logging.INFO and client.exc_info is None and "400 fields=k" in client.getMessage()
    assert server.levelno == logging.ERROR and server.exc_info and server.exc_info[0] is RuntimeError
    assert sys.exc_info() == (None, None, None)


@pytest.mark.parametrize("value,ok", [(None, True), ("application/json", True), ("Application/JSON; charset=UTF-8",
                                      True), ("application/ld+json", True), ("text/json", False),
                                      ("application/json; charset=utf-16", False), ("multipart/form-data", False)])
def test_check_content_type(value, ok):
    if ok:
        limits.check_content_type(value)
    else:
        with pytest.raises(limits.BodyError) as err:
            limits.check_content_type(value)
        assert err.value.status == 415


def test_check_json():
    limits.check_json(b'{"a": [1, 2.5, {"b": null}], "c": "d"}')
    limits.check_json(b'{"a": ')  # bad syntax is pydantic's to report, with its position
    limits.check_json(b"\xff\xfe")
    for body, field in [(b'{"a": {"b": 1, "b": 2}}', "b"), (b'[NaN]', None), (b'{"k": -Infinity}', None),
                        (b'{"k": 1' + b"0" * 5000 + b"}", None), (b"[" * 100_000, None)]:
        with pytest.raises(limits.BodyError) as err:
            limits.check_json(body)
        assert err.value.status == 400 and err.value.field == field, body[:40]
