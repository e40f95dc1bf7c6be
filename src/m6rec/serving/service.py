"""The m6rec BentoML service: loads one bundle at start-up and answers typed JSON requests.

Run: ``bentoml serve m6rec.serving.service:M6RecService`` (binds 127.0.0.1:3000 unless ``--host/--port``). What it
serves is decided by ``m6rec.serving.loader`` (``M6REC_BUNDLE`` folder, else ``models:/m6rec@champion`` from the
MLflow store in ``MLFLOW_TRACKING_URI``). All endpoints are ``POST`` with a JSON object body. Client errors are 4xx
JSON objects that name the field: schema errors from pydantic (400, ``{"error", "detail": [{"loc": [field], ...}]}``,
malformed JSON included) and the Recommender's checks (``{"error": "<field>: <message>", "field": ...}``; 400 for a
bad value, 404 for an unknown domain, item or user). Unknown item ids in ``recommend_items`` are ignored and
reported in ``unknown_items`` (400 only if nothing usable is left).

Worker count and access logs are BentoML config, e.g.
``BENTOML_CONFIG_OPTIONS="services.m6rec.workers=2 services.m6rec.logging.access.enabled=false"``.
"""

import gc
import logging
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.responses import JSONResponse

with bentoml.importing():
    import torch

    from m6rec.serving import timeout
    from m6rec.serving.batching import MicroBatcher
    from m6rec.serving.loader import check_served_model, load_served_model, serve_settings
    from m6rec.serving.recommender import Recommender, RecommendQuery, RequestError


log = logging.getLogger("m6rec.serving")
STARTUP_FAILURE_EXIT = 3  # `bentoml serve` exit status when the model cannot be served

timeout.install()  # BentoML's own request timeout keeps every request alive for 30 s (see m6rec.serving.timeout)


def _id_text(value: Any) -> Any:
    """Ids may arrive as JSON numbers (MovieLens user 42); they are matched as strings."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 400 that names it, not silently ignored

    domain: str = Field(min_length=1, max_length=128, description="domain name, e.g. ml-latest-small")


class RecommendRequest(_Request):
    user: Id = Field(description="raw user id as in the source data")
    k: int = Field(10, ge=1, description="number of items (at most serve.max_k)")
    exclude_seen: bool = Field(True, description="leave out items the user already interacted with")


class RecommendItemsRequest(_Request):
    items: list[Id] = Field(default_factory=list, description="raw item ids the anonymous user liked")
    text: str | None = Field(None, max_length=2000, description="free-text query (sentence encoder)")
    k: int = Field(10, ge=1)


class SimilarItemsRequest(_Request):
    item: Id
    k: int = Field(10, ge=1)


class ExplainRequest(_Request):
    user: Id
    item: Id
    n: int | None = Field(None, ge=1, description="history items to return (default serve.explain_n)")


class Listing(BaseModel):
    domain: str
    items: list[str]
    titles: list[str]
    scores: list[float]


class RecommendResponse(Listing):
    user: str
    fallback: str | None = Field(description='"popularity" when the user is unknown, else null')


class RecommendItemsResponse(Listing):
    unknown_items: list[str]
    used_text: bool


class SimilarItemsResponse(Listing):
    item: str


class ExplainResponse(BaseModel):
    domain: str
    user: str
    item: str
    score: float
    method: str
    history: list[str]
    history_titles: list[str]
    weights: list[float]


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    version: str | None
    domains: list[str]
    encoder_loaded: bool
    recommend_batches: int = Field(description="matrix products run for recommend since start-up")
    recommend_queries: int = Field(description="recommend requests they answered (queries / batches = batch size)")


class Metadata(BaseModel):
    model: str | None
    version: str | None
    source: str
    data_version: str | None
    metrics: dict[str, Any]
    encoder: str | None
    created: str | None
    explainer: str
    max_k: int
    domains: dict[str, dict[str, Any]]


def _client_error(exc: RequestError) -> JSONResponse:
    """A 4xx answer naming the field (returned, not raised: a client mistake is not a server traceback)."""
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


@bentoml.service(name="m6rec", http={"host": "127.0.0.1", "port": 3000}, traffic={"timeout": 30}, workers=1)
class M6RecService:
    """Loads the bundle once; each endpoint validates its request and calls the Recommender."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Once, in the server process, before any worker starts (BentoML's deployment hook): verify and cache the
        model. A fault raised in a worker's ``__init__`` only makes circus restart the worker for minutes; raised
        here it ends ``bentoml serve`` with one line naming it and exit status 3."""
        try:
            source = check_served_model()
        except Exception as exc:  # any fault: the one line says what it was
            if not logging.getLogger().handlers:  # the CLI process has no m6rec logging set up
                logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            log.critical("m6rec cannot serve: %s: %s", type(exc).__name__, exc)
            raise SystemExit(STARTUP_FAILURE_EXIT) from None
        log.info("m6rec start-up check passed: serving %s", source)

    def __init__(self) -> None:
        cfg, store = serve_settings()
        torch.set_num_threads(cfg.torch_threads)
        served = load_served_model(cfg, store)
        self.rec = Recommender(served.bundle, max_k=cfg.max_k, max_history=cfg.max_history,
                               explain_n=cfg.explain_n, version=served.version, source=served.source)
        # Concurrent recommend requests share one matrix product (see m6rec.serving.batching).
        self.batcher = MicroBatcher(self.rec.recommend_batch, cfg.max_batch) if cfg.max_batch > 1 else None
        if cfg.preload_encoder and self.rec.encoder is not None:
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
            return _client_error(answer)
        return RecommendResponse(**answer)

    @bentoml.api
    def recommend_items(self, req: RecommendItemsRequest, /) -> RecommendItemsResponse:
        """Top-k items for an anonymous user from item ids and/or free text."""
        try:
            return RecommendItemsResponse(**self.rec.recommend_items(req.domain, req.items, req.text, req.k))
        except RequestError as exc:
            return _client_error(exc)

    @bentoml.api
    async def similar_items(self, req: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """Items most similar to one item."""
        try:
            return SimilarItemsResponse(**self.rec.similar_items(req.domain, req.item, req.k))
        except RequestError as exc:
            return _client_error(exc)

    @bentoml.api
    async def explain(self, req: ExplainRequest, /) -> ExplainResponse:
        """The user's history items that best support recommending the item."""
        try:
            return ExplainResponse(**self.rec.explain(req.domain, req.user, req.item, req.n))
        except RequestError as exc:
            return _client_error(exc)

    @bentoml.api
    async def health(self, req: Empty, /) -> Health:
        """Liveness (BentoML's GET /livez and /readyz work too)."""
        return Health(status="ok")

    @bentoml.api
    async def ready(self, req: Empty, /) -> Ready:
        """Whether the model is loaded, and which version."""
        return Ready(ready=self.__is_ready__(), version=self.rec.version, domains=sorted(self.rec.domains),
                     encoder_loaded=bool(self.rec.encoder and self.rec.encoder.loaded),
                     recommend_batches=self.batcher.batches if self.batcher else 0,
                     recommend_queries=self.batcher.queries if self.batcher else 0)

    @bentoml.api
    async def metadata(self, req: Empty, /) -> Metadata:
        """Model name, registry version, source, metrics, data version and domains."""
        return Metadata(**self.rec.metadata())
