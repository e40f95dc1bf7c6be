"""The m6rec BentoML service: loads one bundle at start-up and answers typed JSON requests.

Run: ``bentoml serve m6rec.serving.service:M6RecService`` (binds 127.0.0.1:3000 unless ``--host/--port``), or a
built bento, ``bentoml serve m6rec:latest``. What it serves is decided by ``m6rec.serving.loader``: an ``M6REC_BUNDLE``
folder; else the BentoML model a bento packs (bento argument ``model``: ``bentoml build --arg model=<tag>``, which
``m6rec.orchestration.bento`` passes, so the bento needs no registry); else ``models:/m6rec@champion`` from the MLflow
store in ``MLFLOW_TRACKING_URI``, falling back to the newest champion in the BentoML model store when there is no
registry to ask. Health is BentoML's own ``GET /livez`` and ``GET /readyz`` (ready once the model is loaded:
``__is_ready__``). The endpoints are ``POST`` with a JSON object body; a listing answers ``items``:
``[{"item", "title", "score"}, ...]`` with ``source`` ``"model"`` or ``"popularity"``. Client errors are 4xx
JSON objects that name the field: schema errors from pydantic (400, ``{"error", "detail": [{"loc": [field], ...}]}``,
malformed JSON included) and the Recommender's checks (``{"error": "<field>: <message>", "field": ...}``; 400 for a
bad value, 404 for an unknown domain, item or user, 422 for a valid request that leaves nothing to score). Unknown
item ids in ``recommend_items`` are ignored and reported in ``unknown_items`` (422 only if nothing usable is left).
Before any of that, ``m6rec.serving.limits.RequestGuard`` refuses bodies over ``serve.max_body_bytes`` (413), that
are not JSON (415) or that carry duplicate keys or NaN (400); ``GET /docs.json`` is ``m6rec.serving.openapi``'s
document, which states all of these limits and answers.

Worker count and access logs are BentoML config, e.g.
``BENTOML_CONFIG_OPTIONS="services.m6rec.workers=2 services.m6rec.logging.access.enabled=false"``.
"""

import gc
import logging
import os
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator
from starlette.responses import JSONResponse

with bentoml.importing():
    import torch

    from m6rec.serving import limits, timeout
    from m6rec.serving.batching import MicroBatcher
    from m6rec.serving.loader import (BENTO_MODEL_ENV, ann_settings, check_served_model, load_served_model,
                                      serve_settings)
    from m6rec.serving.openapi import ErrorResponse, openapi_document, serve_limit
    from m6rec.serving.recommender import Recommender, RecommendQuery, RequestError


log = logging.getLogger("m6rec.serving")
STARTUP_FAILURE_EXIT = 3  # `bentoml serve` exit status when the model cannot be served

timeout.install()  # BentoML's own request timeout keeps every request alive for 30 s (see m6rec.serving.timeout)
limits.install_error_logging()  # a client's 400 is one INFO line, not an ERROR with a traceback

# The champion a bento packs: `bentoml build --arg model=m6rec-champion:<version>` (m6rec.orchestration.bento). As a
# class attribute below it makes `bentoml build` pack the model and `bentoml containerize` copy it into the image;
# serving the bento restores the same argument, so the bento serves exactly the model it was built with.
PACKED_MODEL: str | None = getattr(bentoml.use_arguments(), "model", None) or None

_ID_LEN = 256
_INT64 = (-(2**63), 2**63 - 1)


def _id_text(value: Any) -> Any:
    """Ids may arrive as JSON numbers (MovieLens user 42, or 42.0: JSON Schema's integer); matched as strings."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
        return str(value)
    return value  # a bool or a huge number stays as it is and fails the strict string check: a 400


# The schema states both forms the validator accepts, so a numeric id is not a "schema-violating request accepted".
Id = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=_ID_LEN),
               WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": _ID_LEN},
                                         {"type": "integer", "minimum": _INT64[0], "maximum": _INT64[1]}]})]


class _Request(BaseModel):
    # extra="forbid": a misspelt field is a 400 that names it, not silently ignored. strict: JSON types only,
    # no coercion ("k": true or "k": "5" is a 400 naming k, not k=1 or k=5).
    model_config = ConfigDict(extra="forbid", strict=True)

    domain: str = Field(min_length=1, max_length=128, description="domain name, e.g. ml-latest-small")


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer, so the service does too; 5.5, true and "5" stay errors."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The schema is spelt out: pydantic writes a constraint behind a BeforeValidator as "ge", which no tool reads.
Count = Annotated[int, BeforeValidator(_integral), Field(ge=1), WithJsonSchema({"type": "integer", "minimum": 1})]


# k and n are bounded by serve.max_k and items by serve.max_history: the OpenAPI document fills in the values the
# server started with (m6rec.serving.openapi), and the Recommender answers 400 above them.
def _k(default: int | None = 10, description: str = "number of items (1 to serve.max_k)") -> Any:
    return Field(default, description=description, json_schema_extra=serve_limit("max_k"))


class RecommendRequest(_Request):
    user: Id = Field(description="raw user id as in the source data")
    k: Count = _k()
    exclude_seen: bool = Field(True, description="leave out items the user already interacted with")


class RecommendItemsRequest(_Request):
    # The schema's anyOf is the validator below: at least one item id, or a text.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["items"], "properties": {"items": {"minItems": 1}}},
        {"required": ["text"], "properties": {"text": {"type": "string"}}}]})

    text: str | None = Field(None, min_length=1, max_length=2000, description="free-text query (sentence encoder)")
    items: list[Id] = Field(default_factory=list, validate_default=True,
                            description="raw item ids the anonymous user liked, oldest first (at most "
                                        "serve.max_history)", json_schema_extra=serve_limit("max_history"))
    k: Count = _k()

    @field_validator("items")
    @classmethod
    def _items_or_text(cls, items: list[str], info: ValidationInfo) -> list[str]:
        if not items and info.data.get("text") is None:
            raise ValueError("empty history: give at least one item id or a text")
        return items


class SimilarItemsRequest(_Request):
    item: Id
    k: Count = _k()


class ExplainRequest(_Request):
    user: Id
    item: Id
    n: Count | None = _k(None, "history items to return (1 to serve.max_k; default serve.explain_n)")


class Scored(BaseModel):
    item: str = Field(description="raw item id")
    title: str
    score: float = Field(description='the model\'s score; for source "popularity" the item\'s share of the '
                                     'domain\'s training interactions, in [0, 1]')


class Listing(BaseModel):
    domain: str
    source: str = Field(description='"model", or "popularity" for an unknown user\'s fallback')
    items: list[Scored] = Field(description="best first")


class RecommendResponse(Listing):
    user: str


class RecommendItemsResponse(Listing):
    unknown_items: list[str]
    used_text: bool


class SimilarItemsResponse(Listing):
    item: str


class Support(BaseModel):
    item: str = Field(description="raw id of a history item")
    title: str
    weight: float = Field(description="attention weight (method attention) or cosine similarity (similarity)")


class ExplainResponse(BaseModel):
    domain: str
    user: str
    item: str
    score: float
    method: str
    history: list[Support] = Field(description="the history items that support the item most, strongest first")


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(BaseModel):
    model: str | None
    version: str | None
    source: str
    origin: str = Field(description='where the model was loaded from: "folder", "registry" or "store" (BentoML '
                                    'model store)')
    data_version: str | None
    metrics: dict[str, Any]
    encoder: str | None
    created: str | None
    explainer: str
    max_k: int
    domains: dict[str, dict[str, Any]]
    encoder_loaded: bool
    recommend_batches: int = Field(description="matrix products run for recommend since start-up")
    recommend_queries: int = Field(description="recommend requests they answered (queries / batches = batch size)")


def _client_error(endpoint: str, exc: RequestError) -> JSONResponse:
    """A 4xx answer naming the field (returned, not raised: a client mistake is not a server traceback)."""
    limits.log_client_error(f"/{endpoint}", exc.status, str(exc), [exc.field])
    return JSONResponse(ErrorResponse(error=str(exc), field=exc.field).model_dump(exclude_none=True),
                        status_code=exc.status)


@bentoml.service(name="m6rec", http={"host": "127.0.0.1", "port": 3000}, traffic={"timeout": 30}, workers=1)
class M6RecService:
    """Loads the bundle once; each endpoint validates its request and calls the Recommender."""

    if PACKED_MODEL:
        champion = bentoml.models.BentoModel(PACKED_MODEL)

    @bentoml.on_deployment
    def check_model() -> None:
        """Once, in the server process, before any worker starts (BentoML's deployment hook): verify and cache the
        model. A fault raised in a worker's ``__init__`` only makes circus restart the worker for minutes; raised
        here it ends ``bentoml serve`` with one line naming it and exit status 3."""
        if not logging.getLogger().handlers:  # the CLI process has no m6rec logging set up
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if logging.getLogger("m6rec").level == logging.NOTSET:
            logging.getLogger("m6rec").setLevel(logging.INFO)  # which model, from where: said once, at start-up
        try:
            served = check_served_model(bento_model=PACKED_MODEL)
        except Exception as exc:  # any fault: the one line says what it was
            log.critical("m6rec cannot serve: %s: %s", type(exc).__name__, exc)
            raise SystemExit(STARTUP_FAILURE_EXIT) from None
        where = {"folder": "a bundle folder", "registry": "the MLflow registry",
                 "store": "the BentoML model store"}[served.origin]
        log.info("m6rec start-up check passed: serving %s (version %s) from %s", served.source, served.version, where)

    def __init__(self) -> None:
        cfg, store = serve_settings()
        torch.set_num_threads(cfg.torch_threads)
        served = load_served_model(cfg, store, os.environ.get(BENTO_MODEL_ENV) or PACKED_MODEL)
        self.origin = served.origin
        self.rec = Recommender(served.bundle, max_k=cfg.max_k, max_history=cfg.max_history,
                               explain_n=cfg.explain_n, version=served.version, source=served.source,
                               ann=ann_settings(cfg), threads=cfg.torch_threads)
        # Concurrent recommend requests share one matrix product (see m6rec.serving.batching).
        self.batcher = MicroBatcher(self.rec.recommend_batch, cfg.max_batch) if cfg.max_batch > 1 else None
        # Loading the encoder takes ~20 s: paid here, before /readyz turns 200, not by the first text query.
        # preload_encoder None (the default) = preload when some domain takes text.
        if self.rec.encoder is not None and cfg.preload_encoder is not False:
            self.rec.encoder.get()
        # Everything loaded so far lives as long as the worker: keep it out of the cyclic GC, whose full
        # collections otherwise stall every in-flight request for hundreds of ms (measured, bench_serving.py).
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return bool(self.rec.domains)

    @bentoml.api
    async def recommend(self, req: RecommendRequest, /) -> RecommendResponse:
        """Top-k items for a known user (popularity fallback for an unknown one)."""
        query = RecommendQuery(req.domain, req.user, req.k, req.exclude_seen)
        if self.batcher is None:
            answer = self.rec.recommend_batch([query])[0]
        else:
            answer = await self.batcher.submit(query)
        if isinstance(answer, RequestError):
            return _client_error("recommend", answer)
        return RecommendResponse(**answer)

    @bentoml.api
    def recommend_items(self, req: RecommendItemsRequest, /) -> RecommendItemsResponse:
        """Top-k items for an anonymous user from item ids and/or free text."""
        try:
            return RecommendItemsResponse(**self.rec.recommend_items(req.domain, req.items, req.text, req.k))
        except RequestError as exc:
            return _client_error("recommend_items", exc)

    @bentoml.api
    async def similar_items(self, req: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """Items most similar to one item."""
        try:
            return SimilarItemsResponse(**self.rec.similar_items(req.domain, req.item, req.k))
        except RequestError as exc:
            return _client_error("similar_items", exc)

    @bentoml.api
    async def explain(self, req: ExplainRequest, /) -> ExplainResponse:
        """The user's history items that best support recommending the item."""
        try:
            return ExplainResponse(**self.rec.explain(req.domain, req.user, req.item, req.n))
        except RequestError as exc:
            return _client_error("explain", exc)

    @bentoml.api
    async def metadata(self, req: Empty, /) -> Metadata:
        """Model name, registry version, source and origin, metrics, data version, domains, encoder and batch
        counters (liveness and readiness are BentoML's GET /livez and /readyz)."""
        return Metadata(**self.rec.metadata(), origin=self.origin,
                        encoder_loaded=bool(self.rec.encoder and self.rec.encoder.loaded),
                        recommend_batches=self.batcher.batches if self.batcher else 0,
                        recommend_queries=self.batcher.queries if self.batcher else 0)


def _max_body_bytes() -> int:
    return serve_settings()[0].max_body_bytes


def _openapi() -> dict[str, Any]:
    return openapi_document(M6RecService, serve_settings()[0])


# Size, content-type and strict-JSON checks before BentoML reads a body; GET /docs.json states the limits.
M6RecService.add_asgi_middleware(limits.RequestGuard, max_body_bytes=_max_body_bytes, openapi=_openapi)
