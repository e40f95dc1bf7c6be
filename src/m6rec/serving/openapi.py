"""The service's OpenAPI document, built from its pydantic request and response models (OpenAPI 3.1).

BentoML's own document (``Service.openapi_spec``) is close, but it flattens every ``anyOf`` to its first branch
(a nullable field such as ``fallback`` is declared a plain string, so the ``null`` the server sends violates it),
declares error bodies the server never sends (``InvalidArgument``/``NotFound``) and cannot state limits that come
from the params at start-up. Schemathesis found all three (ST108, ST202). This document keeps BentoML's infra
endpoints and, for each API:

- the request schema exactly as pydantic validates it (strict types, lengths), with the start-up limits filled in:
  a field marked with :func:`serve_limit` gets ``maximum`` (numbers) or ``maxItems`` (arrays) = that ``serve`` key;
- the 200 response as pydantic serializes it;
- the error answers the server really sends, all :class:`ErrorResponse`: 400 (schema or limit), 404 (unknown
  domain, item or explained user), 413 (body over ``serve.max_body_bytes``), 415 (not JSON), 422 (valid but
  unusable, e.g. no known item), 500 and 504 (timeout).
"""

from __future__ import annotations

import copy
import typing
from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

LIMIT_KEY = "x-serve-limit"
REF = "#/components/schemas/{model}"


class ErrorResponse(BaseModel):
    """Every error the service answers: a message, and the request field at fault where there is one."""

    error: str = Field(description="what is wrong, starting with the field name")
    field: str | None = Field(None, description="the request field (or header) at fault, if any")
    detail: list[dict[str, Any]] | None = Field(None, description="pydantic's errors, for schema errors (400)")


ERRORS: dict[int, str] = {
    400: "invalid request: schema, type or limit (serve.max_k, serve.max_history), duplicate key, NaN",
    404: "unknown domain, item, or user to explain",
    413: "request body over serve.max_body_bytes",
    415: "content type is not JSON",
    422: "a valid request the model cannot answer (no known item, text on a domain without text projection)",
    500: "server error",
    504: "not answered within the traffic timeout",
}
NO_DOMAIN_ERRORS = (404, 422)  # endpoints that take no domain never answer these


def serve_limit(key: str) -> dict[str, Any]:
    """``json_schema_extra`` marking a field whose bound is the ``serve`` setting ``key`` (filled in at start-up)."""
    return {LIMIT_KEY: key}


def _fill_limits(node: Any, settings: Any) -> None:
    if isinstance(node, dict):
        key = node.pop(LIMIT_KEY, None)
        if key is not None:
            node["maxItems" if node.get("type") == "array" else "maximum"] = int(getattr(settings, key))
        for value in node.values():
            _fill_limits(value, settings)
    elif isinstance(node, list):
        for value in node:
            _fill_limits(value, settings)


def api_models(service: Any) -> dict[str, tuple[type[BaseModel], type[BaseModel]]]:
    """``{api name: (request model, response model)}`` from the annotations of each ``@bentoml.api`` method."""
    out = {}
    for name, api in service.apis.items():
        hints = typing.get_type_hints(api.func)
        request = [v for k, v in hints.items() if k != "return"]
        if len(request) != 1 or not all(isinstance(m, type) and issubclass(m, BaseModel)
                                        for m in (request[0], hints.get("return"))):
            raise TypeError(f"API {name}: expected one pydantic request argument and a pydantic return type")
        out[name] = (request[0], hints["return"])
    return out


def _error_responses(domain: bool) -> dict[str, Any]:
    return {str(code): {"description": text,
                        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
            for code, text in ERRORS.items() if domain or code not in NO_DOMAIN_ERRORS}


def openapi_document(service: Any, settings: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``service`` (a BentoML service) with the limits of ``settings`` (ServeParams)."""
    doc = copy.deepcopy(service.openapi_spec.asdict())
    models = api_models(service)
    inputs = [(m, "validation") for m, _ in models.values()]
    outputs = [(m, "serialization") for _, m in models.values()] + [(ErrorResponse, "serialization")]
    refs, defs = models_json_schema(inputs + outputs, ref_template=REF)
    schemas = defs.get("$defs", {})
    _fill_limits(schemas, settings)
    doc["openapi"] = "3.1.0"
    doc["components"] = {"schemas": schemas}
    for name, (request, response) in models.items():
        api = service.apis[name]
        op = doc["paths"][api.route]["post"]
        # A model with no required field (metadata) is also answered without a body, as {}.
        required = any(f.is_required() for f in request.model_fields.values())
        op["requestBody"] = {"required": required, "content": {
            "application/json": {"schema": refs[(request, "validation")]}}}
        takes_domain = "domain" in request.model_fields
        op["responses"] = {"200": {"description": "OK", "content": {
            "application/json": {"schema": refs[(response, "serialization")]}}}, **_error_responses(takes_domain)}
    return doc
