"""The BentoML service over real HTTP: a `bentoml serve` subprocess on a free 127.0.0.1 port, serving the
`@champion` of a real sqlite MLflow registry in tmp. One server for the module (restarted by the last tests)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from m6rec import registry as model_registry
from m6rec import tracking
from m6rec.config import TrackingParams
from m6rec.serving.bundle_io import HASH_TAG, content_hash, export_bundle, load_bundle
from m6rec.serving.encoder import LazyEncoder
from m6rec.serving.local_server import LocalServer
from m6rec.serving.recommender import Recommender
from tests.serving.conftest import HISTORY_DOMAIN, PLAIN_DOMAIN, TEXT_DOMAIN, assert_same_listing, flat
from tests.serving.svd_bundles import svd_bundle

SETTINGS = TrackingParams()  # the store itself comes from MLFLOW_TRACKING_URI

MAX_K = 50


@pytest.fixture(scope="module")
def registry(tmp_path_factory, serving_bundle_dir, tiny_prepared):
    """Store with v1 = the serving bundle (@champion) and v2 = random vectors (registered later, not promoted)."""
    root = tmp_path_factory.mktemp("registry")
    other = export_bundle(root / "random-bundle", svd_bundle(tiny_prepared, [TEXT_DOMAIN, PLAIN_DOMAIN], 16,
                                                             random=True), {"model": "random16"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        with tracking.start_run("register", {}, settings=SETTINGS):
            # Tagged with the content hash as the register stage does: the service refuses an untagged version.
            v1 = model_registry.register_model(model_registry.log_model(serving_bundle_dir, "svd16"), settings=SETTINGS,
                                         tags={HASH_TAG: content_hash(serving_bundle_dir)})
            v2 = model_registry.register_model(model_registry.log_model(other, "random16"), settings=SETTINGS,
                                         tags={HASH_TAG: content_hash(other)})
        model_registry.set_alias(v1.version, settings=SETTINGS)
        yield {"root": root, "v1": v1.version, "v2": v2.version, "random_bundle": other}


@pytest.fixture(scope="module")
def server(registry):
    srv = LocalServer(env={"MLFLOW_TRACKING_URI": f"sqlite:///{registry['root'] / 'mlflow.db'}",
                           "M6REC_MAX_K": str(MAX_K), "HF_HUB_OFFLINE": "1", "M6REC_THREADS": "1"},
                      cwd=registry["root"], log_path=registry["root"] / "serve.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local(serving_bundle_dir, sentence_encoder) -> Recommender:
    """The same bundle in-process: what every HTTP answer must equal."""
    return Recommender(load_bundle(serving_bundle_dir), max_k=MAX_K, encoder=LazyEncoder.of(sentence_encoder))


def post(server: LocalServer, endpoint: str, body=None, content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return httpx.post(f"{server.url}/{endpoint}", content=content,
                          headers={"content-type": "application/json"}, timeout=120)
    return httpx.post(f"{server.url}/{endpoint}", json=body if body is not None else {}, timeout=120)


def test_binds_localhost_only(server):
    assert server.url.startswith("http://127.0.0.1:")


def test_probes_and_metadata(server, registry, serving_bundle_dir):
    """Health is BentoML's GET /livez and /readyz (ready once __init__ loaded the model and the encoder)."""
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert post(server, "health").status_code == 404 and post(server, "ready").status_code == 404
    meta = post(server, "metadata").json()
    assert sorted(meta["domains"]) == sorted([TEXT_DOMAIN, PLAIN_DOMAIN, HISTORY_DOMAIN])
    assert meta["encoder_loaded"]  # preloaded by default: the bundle has a text domain
    assert meta["origin"] == "registry"
    bundle_meta = json.loads((serving_bundle_dir / "bundle.json").read_text())
    assert meta["version"] == registry["v1"] and meta["source"] == f"models:/m6rec/{registry['v1']}"
    assert meta["model"] == "svd16" and meta["max_k"] == MAX_K
    assert meta["data_version"] == bundle_meta["data_version"] and meta["metrics"] == bundle_meta["metrics"]
    assert meta["domains"][TEXT_DOMAIN]["text"] is True


def test_recommend_known_users(server, local):
    b = local.domains[TEXT_DOMAIN].bundle
    for u in (0, 11, b.n_users - 1):
        user = b.raw_user[u]
        r = post(server, "recommend", {"domain": TEXT_DOMAIN, "user": user, "k": 15})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["source"] == "model" and got["user"] == user and len(got["items"]) == 15
        assert_same_listing(got, local.recommend(TEXT_DOMAIN, user, k=15))
    r = post(server, "recommend", {"domain": TEXT_DOMAIN, "user": b.raw_user[0], "exclude_seen": False})
    assert_same_listing(r.json(), local.recommend(TEXT_DOMAIN, b.raw_user[0], k=10, exclude_seen=False))


def test_concurrent_requests_each_get_their_own_answer(server, local):
    """Concurrent requests are scored in shared batches: every answer must still be the one for its user."""
    import asyncio

    b = local.domains[TEXT_DOMAIN].bundle
    users = [b.raw_user[i % b.n_users] for i in range(48)]

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{server.url}/recommend",
                                                      json={"domain": TEXT_DOMAIN, "user": u, "k": 5 + i % 7})
                                          for i, u in enumerate(users)))

    before = post(server, "metadata").json()
    responses = asyncio.run(fire())
    after = post(server, "metadata").json()
    queries = after["recommend_queries"] - before["recommend_queries"]
    batches = after["recommend_batches"] - before["recommend_batches"]
    assert queries == len(users) and batches < queries  # some requests shared a matrix product
    for i, (u, r) in enumerate(zip(users, responses, strict=True)):
        assert r.status_code == 200, r.text
        assert r.json()["user"] == u
        assert_same_listing(r.json(), local.recommend(TEXT_DOMAIN, u, k=5 + i % 7))


def test_numeric_user_id(server, local):
    b = local.domains[TEXT_DOMAIN].bundle
    user = b.raw_user[5]
    r = post(server, "recommend", {"domain": TEXT_DOMAIN, "user": int(user), "k": 3})  # MovieLens ids are numbers
    assert r.status_code == 200, r.text
    assert_same_listing(r.json(), local.recommend(TEXT_DOMAIN, user, k=3))


def test_unknown_user_falls_back_to_popularity(server, local):
    r = post(server, "recommend", {"domain": PLAIN_DOMAIN, "user": "new-visitor", "k": 7})
    assert r.status_code == 200
    got = flat(r.json())
    assert got["source"] == "popularity"
    b = local.domains[PLAIN_DOMAIN].bundle
    np.testing.assert_allclose(got["scores"], np.sort(b.popularity / b.popularity.sum())[::-1][:7], rtol=1e-6)
    assert_same_listing(r.json(), local.recommend(PLAIN_DOMAIN, "new-visitor", k=7))


def test_recommend_items_ids_and_text(server, local):
    b = local.domains[TEXT_DOMAIN].bundle
    liked = [b.raw_item[b.titles.index("Star Wars (1977)")], "not-an-item"]
    r = post(server, "recommend_items", {"domain": TEXT_DOMAIN, "items": liked, "k": 8})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_items"] == ["not-an-item"]
    assert_same_listing(r.json(), local.recommend_items(TEXT_DOMAIN, liked, k=8))
    body = {"domain": TEXT_DOMAIN, "text": "a space opera with jedi knights", "k": 8}
    r = post(server, "recommend_items", body)
    assert r.status_code == 200, r.text
    assert r.json()["used_text"] is True
    assert_same_listing(r.json(), local.recommend_items(TEXT_DOMAIN, text=body["text"], k=8))


def test_similar_items_and_explain(server, local):
    b = local.domains[TEXT_DOMAIN].bundle
    star_wars = b.raw_item[b.titles.index("Star Wars (1977)")]
    r = post(server, "similar_items", {"domain": TEXT_DOMAIN, "item": star_wars, "k": 5})
    assert r.status_code == 200, r.text
    assert_same_listing(r.json(), local.similar_items(TEXT_DOMAIN, star_wars, k=5))
    assert "Return of the Jedi (1983)" in flat(r.json())["titles"]
    user = b.raw_user[3]
    r = post(server, "explain", {"domain": TEXT_DOMAIN, "user": user, "item": star_wars})
    assert r.status_code == 200, r.text
    want = flat(local.explain(TEXT_DOMAIN, user, star_wars))
    got = flat(r.json())
    assert got["history"] == want["history"] and got["method"] == "similarity" and len(got["history"]) == 5
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)


def test_history_attention_domain_over_http(server, local):
    """The attention model's domain: recommendations, the attention behind one, and an anonymous history."""
    b = local.domains[HISTORY_DOMAIN].bundle
    u = int(np.argmax((b.scorer.history >= 0).sum(1) >= 3))
    user = b.raw_user[u]
    r = post(server, "recommend", {"domain": HISTORY_DOMAIN, "user": user, "k": 5})
    assert r.status_code == 200, r.text
    assert_same_listing(r.json(), local.recommend(HISTORY_DOMAIN, user, k=5))
    top = r.json()["items"][0]["item"]
    r = post(server, "explain", {"domain": HISTORY_DOMAIN, "user": user, "item": top, "n": 3})
    assert r.status_code == 200, r.text
    got, want = flat(r.json()), flat(local.explain(HISTORY_DOMAIN, user, top, n=3))
    assert got["method"] == "attention" and got["history"] == want["history"] and len(got["history"]) == 3
    np.testing.assert_allclose(got["weights"], want["weights"], rtol=1e-5)
    best = post(server, "recommend", {"domain": HISTORY_DOMAIN, "user": user, "k": 1}).json()["items"][0]["score"]
    np.testing.assert_allclose(got["score"], best, rtol=1e-5, atol=1e-6)  # the score that ranked it first
    assert 0 < sum(got["weights"]) <= 1 + 1e-6  # the top 3 of a distribution over the whole history
    liked = [b.raw_item[i] for i in b.scorer.history[u][b.scorer.history[u] >= 0][-3:]]
    r = post(server, "recommend_items", {"domain": HISTORY_DOMAIN, "items": liked, "k": 6})
    assert r.status_code == 200, r.text
    assert_same_listing(r.json(), local.recommend_items(HISTORY_DOMAIN, liked, k=6))


BAD_INPUT = [
    # (endpoint, json body or raw bytes, status, field the message must name)
    ("recommend", {"domain": "no-such-domain", "user": "1"}, 404, "domain"),
    ("recommend", {"domain": TEXT_DOMAIN, "user": "1", "k": 0}, 400, "k"),
    ("recommend", {"domain": TEXT_DOMAIN, "user": "1", "k": -3}, 400, "k"),
    ("recommend", {"domain": TEXT_DOMAIN, "user": "1", "k": MAX_K + 1}, 400, "k"),
    ("recommend", {"domain": TEXT_DOMAIN, "user": "1", "k": "ten"}, 400, "k"),
    ("recommend", {"domain": TEXT_DOMAIN}, 400, "user"),
    ("recommend", {"domain": TEXT_DOMAIN, "usr": "1"}, 400, "usr"),
    ("recommend", {"domain": TEXT_DOMAIN, "user": ""}, 400, "user"),
    ("recommend", b'{"domain": "ml-100k", "user": ', 400, "json"),
    ("recommend", b"[1, 2]", 400, ""),
    ("recommend_items", {"domain": TEXT_DOMAIN, "items": []}, 400, "items"),
    ("recommend_items", {"domain": TEXT_DOMAIN}, 400, "items"),
    ("recommend_items", {"domain": TEXT_DOMAIN, "items": ["nope-1", "nope-2"]}, 422, "items"),  # valid, unusable
    ("recommend_items", {"domain": TEXT_DOMAIN, "items": "50"}, 400, "items"),
    ("recommend_items", {"domain": PLAIN_DOMAIN, "text": "space opera"}, 422, "text"),
    ("recommend_items", {"domain": TEXT_DOMAIN, "items": ["50"], "k": 10_000}, 400, "k"),
    ("similar_items", {"domain": TEXT_DOMAIN, "item": "no-such-item"}, 404, "item"),
    ("similar_items", {"domain": "nope", "item": "50"}, 404, "domain"),
    ("explain", {"domain": TEXT_DOMAIN, "user": "no-such-user", "item": "50"}, 404, "user"),
    ("explain", {"domain": TEXT_DOMAIN, "user": "1", "item": "no-such-item"}, 404, "item"),
    ("explain", {"domain": TEXT_DOMAIN, "user": "1", "item": "50", "n": 0}, 400, "n"),
]


@pytest.mark.parametrize("endpoint,body,status,field", BAD_INPUT,
                         ids=[f"{e}-{i}" for i, (e, *_rest) in enumerate(BAD_INPUT)])
def test_bad_input_is_a_4xx_naming_the_field(server, local, endpoint, body, status, field):
    b = local.domains[TEXT_DOMAIN].bundle
    if isinstance(body, dict) and body.get("user") == "1":
        body = {**body, "user": b.raw_user[0]}  # a user that exists, so only the field under test is wrong
    r = post(server, endpoint, content=body) if isinstance(body, bytes) else post(server, endpoint, body)
    assert r.status_code == status, r.text
    payload = r.json()
    assert "error" in payload
    if field == "json":
        assert payload["detail"][0]["type"] == "json_invalid"
    elif field:
        named = payload.get("field") or [str(x) for d in payload.get("detail", []) for x in d["loc"]]
        assert field in named, payload


def test_checked_client_errors_leave_no_traceback_in_the_log(server):
    """4xx are answers, not crashes: one INFO line each (endpoint, status, field), schema errors included."""
    before = server.log_tail(10**7).count("Traceback")
    assert post(server, "recommend", {"domain": "no-such-domain", "user": "1"}).status_code == 404
    assert post(server, "recommend", {"domain": TEXT_DOMAIN, "user": "1", "k": MAX_K + 1}).status_code == 400
    assert post(server, "recommend", {"domain": TEXT_DOMAIN, "user": "1", "k": "ten"}).status_code == 400
    assert post(server, "metadata").status_code == 200  # its access-log line follows the three above
    log = server.log_tail(10**7)
    assert log.count("Traceback") == before
    assert "client error /recommend 404 fields=domain" in log and "client error /recommend 400 fields=k" in log
    assert not [line for line in log.splitlines() if "client error" in line and "ERROR" in line]


def test_restart_keeps_serving_the_same_champion(server, registry, local):
    b = local.domains[TEXT_DOMAIN].bundle
    body = {"domain": TEXT_DOMAIN, "user": b.raw_user[2], "k": 10}
    before = post(server, "recommend", body).json()
    server.restart()
    assert post(server, "metadata").json()["version"] == registry["v1"]
    assert post(server, "recommend", body).json() == before


def test_a_promotion_does_not_change_a_running_server(server, registry, local):
    """The alias is resolved once at start-up (test_probes_and_metadata: @champion -> v1 although v2 is newer);
    moving it must not change what a running server answers."""
    b = local.domains[TEXT_DOMAIN].bundle
    body = {"domain": TEXT_DOMAIN, "user": b.raw_user[2], "k": 10}
    before = post(server, "recommend", body).json()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root'] / 'mlflow.db'}")
        model_registry.set_alias(registry["v2"], settings=SETTINGS)
        assert model_registry.get_alias(settings=SETTINGS).version == registry["v2"]
    assert post(server, "metadata").json()["version"] == registry["v1"]
    assert post(server, "recommend", body).json() == before
