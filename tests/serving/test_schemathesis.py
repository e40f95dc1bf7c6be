"""Schemathesis against a real `bentoml serve`: requests generated from the service's own OpenAPI document.

Positive cases (schema-valid) must be accepted, negative ones (schema-invalid) rejected with a 4xx, no case may get
a 5xx, and every answer must have a declared status, content type and body schema. Derandomized
(``--generation-deterministic``, fixed seed, no example database), so a CI failure reproduces.

The bundle is two SVD domains without a text projection (a text query is a 422 there), so no request loads the
sentence encoder; the text path is covered by test_service_http.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from m6rec.serving.bundle_io import export_bundle
from m6rec.serving.local_server import LocalServer
from tests.serving.conftest import PLAIN_DOMAIN, TEXT_DOMAIN
from tests.serving.svd_bundles import svd_bundle

MAX_EXAMPLES = 150  # per operation and phase; 7 operations x (examples + coverage + fuzzing) give > 1,000 cases
MIN_CASES = 1000
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "positive_data_acceptance", "negative_data_rejection"]
# A schema cannot list the catalogue: a valid request naming an unknown domain or item is a 404, one that leaves
# nothing to score (only unknown items, text on a domain without text projection) a 422. Both are answers to
# valid requests, not rejections of their form. Without 5xx: a server error must never count as "accepted".
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404", "422"]
[checks.negative_data_rejection]
expected-statuses = ["400", "404", "413", "415", "422"]
"""


@pytest.fixture(scope="module")
def fuzz_server(tiny_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis")
    bundle = export_bundle(root / "bundle", svd_bundle(tiny_prepared, [TEXT_DOMAIN, PLAIN_DOMAIN], 8),
                           {"model": "svd8"})
    srv = LocalServer(env={"M6REC_BUNDLE": str(bundle), "M6REC_MAX_K": "20", "HF_HUB_OFFLINE": "1",
                           "BENTOML_CONFIG_OPTIONS": "services.m6rec.logging.access.enabled=false"},
                      cwd=root, log_path=root / "serve.log")
    srv.start()
    yield srv, root
    srv.stop()


def test_the_document_states_the_limits(fuzz_server):
    srv, _ = fuzz_server
    doc = httpx.get(f"{srv.url}/docs.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    assert schemas["RecommendRequest"]["properties"]["k"]["maximum"] == 20  # M6REC_MAX_K, not the default 100
    assert schemas["RecommendItemsRequest"]["properties"]["items"]["maxItems"] == 1000
    assert schemas["RecommendResponse"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Scored"}
    assert set(schemas["Scored"]["required"]) == {"item", "title", "score"}
    assert set(doc["paths"]["/recommend_items"]["post"]["responses"]) >= {"200", "400", "404", "413", "415", "422"}


def test_generated_requests_find_no_server_error_and_no_schema_violation(fuzz_server):
    srv, root = fuzz_server
    config = root / "schemathesis.toml"
    config.write_text(CONFIG)
    report = root / "report.json"
    cmd = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run", f"{srv.url}/docs.json",
           "--checks", ",".join(CHECKS), "--mode", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", "14",
           "--generation-deterministic", "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "30", "--no-color",
           "--suppress-health-check", "too_slow,filter_too_much",
           "--report", "json", "--report-json-path", str(report)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=900)
    (root / "schemathesis.out").write_text(run.stdout + run.stderr)
    out = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, out
    summary = json.loads(report.read_text())
    assert summary["complete"] and summary["failures"] == [] and summary["errors"] == [], out
    cases = summary["test_cases"]["generated"]
    assert cases >= MIN_CASES, (cases, out)
    assert summary["test_cases"]["with_failures"] == 0, out
    assert "Traceback" not in srv.log_tail(10**7), srv.log_tail()  # 4xx are INFO lines; nothing else went wrong
